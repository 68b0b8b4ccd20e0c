"""Tracking that cannot stop a stage (srvau.tracking.runs): bounded HTTP client, local fallback after a
tracking failure, rank awareness, and runs of killed stages ending KILLED; under a pipeline run, each
stage's run is a child of it holding that stage's params, and every run says what produced it.

The fast tests use the session's sqlite store; the slow ones run the real ``srvau ingest`` in a
subprocess against a real ``mlflow server`` and kill one or the other mid-stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from services import local_mlflow_server
from srvau.config import PROJECT_ROOT, load_params
from srvau.numerics import cpu_kernels
from srvau.tracking import runs

HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
STAGE_TAG = "srvau.stage"


@pytest.fixture()
def experiment(monkeypatch, tmp_path):
    """A fresh experiment in the session store, no pipeline run id, and the reports under tmp_path."""
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv(runs.ENV_PARENT, raising=False)
    for k in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    name = f"tracking-{uuid.uuid4().hex[:8]}"
    return load_params(overrides={"tracking.experiment": name, "paths.reports": str(tmp_path / "reports")})


def _runs(p):
    import mlflow

    runs.configure(p)
    return mlflow.search_runs(experiment_names=[p.tracking.experiment], output_format="list")


def _local_log(p, stage: str) -> list[dict]:
    path = p.resolve(p.paths.reports) / "tracking" / f"{stage}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------------------- fast


def test_http_limits_come_from_params_unless_the_environment_sets_them(monkeypatch):
    for k in HTTP_ENV:
        monkeypatch.setenv(k, "")  # so that monkeypatch restores the variable as it was, set or not
        monkeypatch.delenv(k)
    p = load_params(overrides={"tracking.http_max_retries": 1, "tracking.http_timeout_s": 3})
    assert runs.apply_http_limits(p) == dict(zip(HTTP_ENV, ("1", "3", "1")))
    monkeypatch.setenv(HTTP_ENV[0], "5")
    monkeypatch.setenv(HTTP_ENV[1], "60")
    assert runs.apply_http_limits(p)[HTTP_ENV[0]] == "5"
    assert os.environ[HTTP_ENV[1]] == "60"


def test_a_non_main_rank_yields_none_and_logs_nothing(experiment, monkeypatch):
    import mlflow

    monkeypatch.setenv("RANK", "1")
    with runs.stage_run(experiment, "sft") as run:
        assert run is None and mlflow.active_run() is None
        runs.log_stage_metrics("sft", {"loss": 1.0})
    monkeypatch.setenv("RANK", "0")
    assert _runs(experiment) == []


def test_the_run_carries_its_owner_and_ends_finished_failed_or_killed(experiment):
    with runs.stage_run(experiment, "cot") as run:
        runs.log_stage_metrics("cot", {"kept": 3, "flag": True, "nested": {"x": 0.5}, "nan": float("nan")})
    with pytest.raises(ValueError), runs.stage_run(experiment, "cot"):
        raise ValueError("stage bug")
    with pytest.raises(KeyboardInterrupt), runs.stage_run(experiment, "cot"):
        raise KeyboardInterrupt
    by_status = {r.info.status: r for r in _runs(experiment)}
    assert set(by_status) == {"FINISHED", "FAILED", "KILLED"}
    done = by_status["FINISHED"]
    assert done.info.run_id == run.info.run_id
    assert done.data.metrics == {"cot.kept": 3.0, "cot.nested.x": 0.5}  # bools and NaN are not metrics
    assert done.data.tags[runs.TAG_STAGE] == "cot" and done.data.tags[runs.TAG_PID] == str(os.getpid())
    assert done.info.run_name == "stage-cot" and runs.TAG_PARENT not in done.data.tags  # by hand: top level
    assert done.data.params["seed"] == str(experiment.seed)
    assert "grpo.learning_rate" in done.data.params  # no pipeline run holds the params: all of them
    _assert_lineage(done.data.tags)


def _assert_lineage(tags: dict[str, str]) -> None:
    """The tags every run carries: the commit (``-dirty`` when the tree differs), dvc.lock, the recipe."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert tags[runs.TAG_GIT].removesuffix("-dirty") == head.stdout.strip()
    else:
        assert tags[runs.TAG_GIT] == "unknown"
    lock = PROJECT_ROOT / "dvc.lock"
    assert tags[runs.TAG_DVC_LOCK] == (hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else "none")
    assert tags[runs.TAG_RECIPE] == "demo"
    assert tags[runs.TAG_CPU_KERNELS] == cpu_kernels()


def _pipeline_run(p) -> str:
    import mlflow

    runs.configure(p)
    exp_id = mlflow.get_experiment_by_name(p.tracking.experiment).experiment_id
    return mlflow.MlflowClient().create_run(exp_id, run_name="pipeline").info.run_id


def test_under_a_pipeline_run_each_stage_opens_a_child_with_its_own_params(experiment, monkeypatch):
    """SRVAU_PARENT_RUN_ID (what the flow hands each stage): the stage's run is a child named after the
    stage, holding the params that stage reads (dvc.yaml), its metrics and its lineage; the parent holds
    none of them and stays RUNNING for the flow. A failed stage's child ends FAILED."""
    import mlflow

    parent = _pipeline_run(experiment)
    monkeypatch.setenv(runs.ENV_PARENT, parent)
    with runs.stage_run(experiment, "sft") as sft:
        runs.log_stage_metrics("sft", {"train_loss": 0.5}, step=3)
    with pytest.raises(ValueError), runs.stage_run(experiment, "grpo") as grpo:
        raise ValueError("stage bug")
    children = runs.stage_children(parent)
    assert {s: [r.info.run_id for r in rs] for s, rs in children.items()} == {"sft": [sft.info.run_id], "grpo": [grpo.info.run_id]}
    child = children["sft"][0]
    assert child.info.run_name == "sft" and child.info.status == "FINISHED"
    assert child.data.tags[runs.TAG_PARENT] == parent and child.data.metrics == {"sft.train_loss": 0.5}
    assert child.data.params["sft.max_steps"] == str(experiment.sft.max_steps) and "seed" in child.data.params
    assert not [k for k in child.data.params if k.startswith(("grpo.", "evaluate.", "synth."))]  # not its params
    assert runs.stage_params(experiment, "sft") == child.data.params
    _assert_lineage(child.data.tags)
    assert children["grpo"][0].info.status == "FAILED"
    stored = mlflow.get_run(parent)
    assert stored.info.status == "RUNNING" and stored.data.metrics == {} and stored.data.params == {}
    mlflow.MlflowClient().set_terminated(parent)


def test_a_stage_dvc_did_not_run_is_recorded_as_an_up_to_date_child(experiment):
    parent = _pipeline_run(experiment)
    run_id = runs.record_stage_without_run(experiment, parent, "validate", "up to date")
    (child,) = runs.stage_children(parent)["validate"]
    assert child.info.run_id == run_id and child.info.status == "FINISHED" and child.info.run_name == "validate"
    assert child.data.tags[runs.TAG_UP_TO_DATE] == "true" and child.data.tags[runs.TAG_PARENT] == parent
    assert child.data.params == runs.stage_params(experiment, "validate") and "validate.max_examples" in child.data.params
    _assert_lineage(child.data.tags)


def test_a_tracking_error_does_not_stop_the_stage_and_the_rest_is_logged_locally(experiment, caplog):
    """A real MLflow error mid-stage (a param logged again with another value): the stage body keeps
    running, a warning says where the tracking went, later calls land in the local JSONL."""
    import mlflow

    after = []
    with caplog.at_level("WARNING"), runs.stage_run(experiment, "validate") as run:
        runs.log_stage_metrics("validate", {"checks": 4})
        runs.log_stage_params({"seed": "not-the-seed"})  # MLflow refuses to change a logged param
        assert mlflow.active_run() is None  # tracking is off for the rest of the stage
        runs.log_stage_metrics("validate", {"success": 1})
        runs.set_stage_tags({"gate": "ok"})
        after.append("the stage went on")
    assert after == ["the stage went on"]
    assert "MLflow tracking failed" in caplog.text and "logs locally to" in caplog.text
    kinds = [(r["kind"], r.get("metrics")) for r in _local_log(experiment, "validate")]
    assert kinds[0][0] == "tracking_failed"
    assert ("metrics", {"validate.success": 1.0}) in kinds and ("tags", None) in kinds
    stored = mlflow.get_run(run.info.run_id)
    assert stored.data.metrics == {"validate.checks": 4.0}  # what went through before the error stays
    assert stored.info.status == "FAILED" and "srvau.tracking_failed" in stored.data.tags


def test_a_run_left_running_by_a_dead_process_is_marked_killed_at_the_next_start(experiment):
    """What SIGKILL leaves behind (a RUNNING run whose pid is gone) is reaped by the stage's next start;
    runs of live processes and of other stages are left alone."""
    import mlflow

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs.configure(experiment)
    client = mlflow.MlflowClient()
    exp_id = mlflow.get_experiment_by_name(experiment.tracking.experiment).experiment_id

    def running(stage: str, pid: int) -> str:
        tags = {**runs.owner_tags(stage), runs.TAG_PID: str(pid), runs.TAG_PID_START: runs._proc_start(pid) or ""}
        return client.create_run(exp_id, tags=tags).info.run_id

    orphan, alive, other = running("ingest", dead.pid), running("ingest", os.getpid()), running("cot", dead.pid)
    with runs.stage_run(experiment, "ingest"):
        pass
    status = {rid: client.get_run(rid).info.status for rid in (orphan, alive, other)}
    assert status == {orphan: "KILLED", alive: "RUNNING", other: "RUNNING"}
    for rid in (alive, other):
        client.set_terminated(rid)


def test_a_run_given_by_mlflow_run_id_is_attached_to_and_left_running(experiment, monkeypatch):
    """MLFLOW_RUN_ID (set by hand, not by the flow): the stage logs into that run and leaves it for its owner."""
    import mlflow

    runs.configure(experiment)
    pipeline = mlflow.MlflowClient().create_run(
        mlflow.get_experiment_by_name(experiment.tracking.experiment).experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", pipeline)
    with runs.stage_run(experiment, "cot") as run:
        runs.log_stage_metrics("cot", {"kept": 2})
    assert run.info.run_id == pipeline and mlflow.active_run() is None
    stored = mlflow.get_run(pipeline)
    assert stored.info.status == "RUNNING" and stored.data.metrics == {"cot.kept": 2.0}
    assert runs.TAG_PID not in stored.data.tags  # not the stage's run to reap
    mlflow.MlflowClient().set_terminated(pipeline)


# ----------------------------------------------------------------------------- real server, real stage


def _db_runs(root: Path, stage: str) -> dict[str, str]:
    """run id -> status of ``stage``'s runs, read from the server's own store (no client, no retries)."""
    try:
        con = sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(
                "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = ? AND t.value = ?", (STAGE_TAG, stage)).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return dict(rows)


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_ingest(demo_dir: Path, tmp_path: Path, url: str, experiment: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = url
    cmd = [str(Path(sys.executable).parent / "srvau"),
           "--set", f"tracking.experiment={experiment}", "--set", f"paths.reports={tmp_path / 'reports'}",
           "--set", "tracking.http_max_retries=1", "--set", "tracking.http_timeout_s=2",
           "ingest", "--annotations", *[str(c) for c in sorted(demo_dir.glob("*.csv"))],
           "--video-root", str(demo_dir / "videos"), "--out", str(tmp_path / "ingest")]
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("death", ["killed", "frozen"])
def test_the_stage_finishes_and_writes_its_outputs_when_the_tracking_server_dies(death, demo_dir, tmp_path):
    """The server dies (SIGKILL: connections refused) or hangs (SIGSTOP: requests time out) while the
    stage is inside its run: the stage still exits 0 with its outputs, within a bounded time, and
    what it would have logged is in the local JSONL."""
    root = tmp_path / "server"
    root.mkdir()
    svc, url = local_mlflow_server(root)
    stage = None
    try:
        stage = _start_ingest(demo_dir, tmp_path, url, "server-dies")
        _wait_for(lambda: "RUNNING" in _db_runs(root, "ingest").values() or stage.poll() is not None, 120, "the stage's run")
        assert stage.poll() is None, "the stage ended before the server could be killed mid-stage"
        os.killpg(stage.pid, signal.SIGSTOP)  # hold the stage mid-run while the server goes away
        os.killpg(svc.proc.pid, signal.SIGKILL if death == "killed" else signal.SIGSTOP)
        t0 = time.monotonic()
        os.killpg(stage.pid, signal.SIGCONT)
        out, err = stage.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if stage is not None and stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
        if svc.proc.poll() is None:
            os.killpg(svc.proc.pid, signal.SIGCONT)
        svc.stop(signal.SIGKILL, grace=5)
    assert stage.returncode == 0, err[-3000:]
    assert elapsed < 60, f"the stage took {elapsed:.0f} s after the server died"
    assert (tmp_path / "ingest" / "manifest.parquet").is_file()
    assert json.loads(out.strip().splitlines()[-1])["videos_ingested"] > 0
    assert "MLflow tracking failed" in err
    records = [json.loads(x) for x in (tmp_path / "reports" / "tracking" / "ingest.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "metrics" and "ingest.videos_ingested" in r["metrics"] for r in records)
    assert records[-1] == {**records[-1], "kind": "run_end", "status": "FINISHED"}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-live")
    svc, url = local_mlflow_server(root)
    try:
        yield root, url
    finally:
        svc.stop()


@pytest.mark.slow
def test_a_terminated_stage_ends_its_run_killed(live_server, demo_dir, tmp_path):
    root, url = live_server
    stage = _start_ingest(demo_dir, tmp_path, url, "sigterm")
    try:
        (run_id,) = _wait_for(lambda: [r for r, s in _db_runs(root, "ingest").items() if s == "RUNNING"], 120, "the run")
        stage.send_signal(signal.SIGTERM)
        _, err = stage.communicate(timeout=60)
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
    assert stage.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert _db_runs(root, "ingest")[run_id] == "KILLED"


@pytest.mark.slow
def test_a_sigkilled_stage_is_marked_killed_by_the_next_start(live_server, demo_dir, tmp_path, monkeypatch):
    root, url = live_server
    stage = _start_ingest(demo_dir, tmp_path, url, "sigkill")
    try:
        (run_id,) = _wait_for(lambda: [r for r, s in _db_runs(root, "ingest").items() if s == "RUNNING"], 120, "the run")
    finally:
        os.killpg(stage.pid, signal.SIGKILL)
        stage.wait(timeout=30)
    assert _db_runs(root, "ingest")[run_id] == "RUNNING"  # nothing could end it

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    p = load_params(overrides={"tracking.experiment": "sigkill", "paths.reports": str(tmp_path / "reports")})
    import mlflow

    previous_uri = mlflow.get_tracking_uri()
    try:
        with runs.stage_run(p, "ingest") as again:
            pass
    finally:
        mlflow.set_tracking_uri(previous_uri)
    statuses = _db_runs(root, "ingest")
    assert statuses[run_id] == "KILLED" and statuses[again.info.run_id] == "FINISHED"


def test_git_commit_is_dirty_for_tracked_changes_but_not_for_dvc_lock(tmp_path, monkeypatch):
    """Every stage rewrites dvc.lock (its digest is a tag of its own): that alone must not mark a run
    dirty. Regression: every run after the first stage of a pipeline was tagged ``-dirty``."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("stages: {}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(runs, "PROJECT_ROOT", tmp_path)
    assert runs.git_commit() == head
    (tmp_path / "dvc.lock").write_text("stages: {ingest: {}}\n")
    assert runs.git_commit() == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert runs.git_commit() == f"{head}-dirty"
