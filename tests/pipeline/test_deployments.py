"""prefect.yaml against a real Prefect server: deployments, schedules, the scheduler, a worker run.

A temp copy of the project is deployed with ``prefect deploy --all`` to a process pool and to a
kubernetes pool created from infra/k8s/work-pool-template.json (no cluster is needed to register
it: the server validates the deployment's job variables against the template). A process worker then
runs one triggered demo run (``stages=["synth"]``) to completion in that copy.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from services import BIN, Service, free_port, project_copy, wait_until
from srvau.config import PROJECT_ROOT

pytestmark = pytest.mark.timeout(600)

IMAGE = "registry.example.com/srvau:0123abc"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = project_copy(tmp_path_factory.mktemp("project"))
    p = yaml.safe_load((dest / "params.yaml").read_text())
    p["synth"].update(n_train=4, n_val=1, n_test=2)
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` on a free loopback port; yields (api_url, env for Prefect clients)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    svc = Service("prefect server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  env, home / "server.log").start()
    try:
        svc.wait_http(f"{api}/health", timeout=180)
        yield api, env
    finally:
        svc.stop()


def prefect_cli(env: dict[str, str], cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    if check:
        assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def api_post(api: str, path: str, body: dict | None = None):
    r = httpx.post(f"{api}{path}", json=body or {}, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def deployments(server, project) -> dict[str, dict]:
    """prefect.yaml deployed as the README says; name -> deployment as the server stores it."""
    api, env = server
    prefect_cli(env, project, "work-pool", "create", "srvau-process", "--type", "process")
    prefect_cli(env, project, "work-pool", "create", "srvau-k8s", "--type", "kubernetes",
                "--base-job-template", str(project / "infra/k8s/work-pool-template.json"))
    prefect_cli({**env, "SRVAU_IMAGE": IMAGE}, project, "deploy", "--all")
    return {d["name"]: d for d in api_post(api, "/deployments/filter")}


def test_deployments_carry_schedule_parameters_pool_and_pull_steps(deployments):
    assert set(deployments) == {"demo-nightly", "paper-3b"}

    demo = deployments["demo-nightly"]
    assert demo["entrypoint"] == "flows/pipeline.py:pipeline"
    assert demo["work_pool_name"] == "srvau-process"
    [sched] = demo["schedules"]
    assert sched["active"] and sched["schedule"]["cron"] == "0 3 * * *" and sched["schedule"]["timezone"] == "UTC"
    assert demo["global_concurrency_limit"]["limit"] == 1
    # resolved by the worker at run time, not frozen to the deployer's path
    assert demo["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $SRVAU_PROJECT_DIR }}"}}
    ]

    paper = deployments["paper-3b"]
    assert paper["work_pool_name"] == "srvau-k8s"
    assert paper["parameters"]["recipe"] == "paper-3b"
    recipe = PROJECT_ROOT / "configs" / "recipe" / f"{paper['parameters']['recipe']}.yaml"
    assert recipe.is_file(), "prefect.yaml names a recipe the project lacks"
    assert paper["job_variables"]["image"] == IMAGE
    # the pod holds the GPUs the recipe launches its stages on (srvau.launch)
    from srvau.config import load_params

    assert paper["job_variables"]["gpu_count"] == load_params(recipe=paper["parameters"]["recipe"]).launch.num_processes
    [sched] = paper["schedules"]
    assert sched["schedule"]["cron"] == "0 2 * * 0"
    steps = [next(iter(s)) for s in paper["pull_steps"]]
    assert steps[0] == "prefect.deployments.steps.set_working_directory"
    assert "{{ $SRVAU_DVC_REMOTE }}" in json.dumps(paper["pull_steps"])  # from the pod's ConfigMap


def test_scheduler_creates_runs_at_the_cron_times(server, deployments):
    api, _ = server

    def scheduled(dep_id: str) -> list[dict]:
        return api_post(api, "/flow_runs/filter", {
            "deployments": {"id": {"any_": [dep_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        })

    now = datetime.now(timezone.utc)
    demo = wait_until(lambda: scheduled(deployments["demo-nightly"]["id"]), 120, "scheduled demo runs", interval=2)
    starts = [datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in demo]
    assert all(r["auto_scheduled"] for r in demo)
    assert all(s > now and (s.hour, s.minute) == (3, 0) for s in starts), starts

    paper = wait_until(lambda: scheduled(deployments["paper-3b"]["id"]), 120, "scheduled paper runs", interval=2)
    starts = [datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in paper]
    assert all(s.weekday() == 6 and (s.hour, s.minute) == (2, 0) for s in starts), starts  # Sundays 02:00 UTC


def test_paper_deployment_without_image_is_refused(server, deployments, project):
    """The work-pool template requires a real image: an unset SRVAU_IMAGE must not deploy."""
    api, env = server
    env = {k: v for k, v in env.items() if k != "SRVAU_IMAGE"}
    proc = prefect_cli(env, project, "deploy", "--name", "paper-3b", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "does not match" in out, out[-3000:]  # the server's schema check on `image`
    [paper] = [d for d in api_post(api, "/deployments/filter") if d["name"] == "paper-3b"]
    assert paper["job_variables"]["image"] == IMAGE  # the good deployment is untouched


@pytest.fixture
def worker(server, project, tmp_path):
    """A process worker for srvau-process, running flow runs in the project copy. Stopped before the server."""
    _, env = server
    wenv = {
        **env,
        "SRVAU_PROJECT_DIR": str(project),
        "PYTHONPATH": str(project),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    svc = Service("prefect worker", [str(BIN / "prefect"), "worker", "start", "--pool", "srvau-process",
                                     "--type", "process", "--limit", "1"], wenv, tmp_path / "worker.log").start()
    try:
        yield svc
    finally:
        # SIGINT is the worker's graceful stop; it has been seen to ignore SIGTERM.
        svc.stop(sig=signal.SIGINT, grace=20)


@pytest.mark.slow  # ~25-40 s: worker start, flow-run subprocess, dvc repro + push
def test_triggered_run_completes_through_a_process_worker(server, deployments, project, worker):
    api, _ = server
    dep = deployments["demo-nightly"]
    run = api_post(api, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"stages": ["synth"]}})

    def state() -> str | None:
        s = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=30).json()["state_type"]
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
        return s if s in TERMINAL else None

    final = wait_until(state, 300, "the triggered flow run to finish", interval=2)
    assert final == "COMPLETED", worker.log_tail()

    # It ran in the copy: the stage's outputs, DVC's record, the push, one MLflow run for the flow.
    assert (project / "data/demo/train.csv").exists()
    assert "synth" in yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert any(p.is_file() for p in (project / ".dvcstore").rglob("*"))
    with sqlite3.connect(project / "mlflow.db") as db:
        tags = db.execute("select value from tags where key = 'srvau.stages'").fetchall()
    assert tags == [("synth",)]
