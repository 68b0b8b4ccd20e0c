"""The backbone: the Prefect flow runs DVC stages in a copy of the project, under one MLflow run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from srvau.config import PROJECT_ROOT


def project_copy(dest: Path) -> Path:
    """The tracked + untracked-not-ignored files of this checkout, as a fresh git+DVC project."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        src = PROJECT_ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = project_copy(tmp_path_factory.mktemp("project"))
    p = yaml.safe_load((dest / "params.yaml").read_text())
    p["synth"].update(n_train=4, n_val=1, n_test=2)
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dest


def run_flow(project: Path, *stages: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env["PREFECT_HOME"] = str(project / ".prefect")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--stages", *stages],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_flow_runs_stages_through_dvc_under_one_mlflow_run(project):
    import mlflow

    proc = run_flow(project, "synth", "build_tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pipeline finished" in proc.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert {"synth", "build_tiny"} <= set(lock["stages"])
    assert (project / "data/demo/train.csv").exists()
    assert (project / "models/tiny-base/model.safetensors").exists()
    # dvc push went to the local remote
    assert any((project / ".dvcstore").rglob("*"))

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("srvau")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "stages must log into the pipeline's run, not open their own"
    run = runs[0]
    assert run.data.tags["srvau.stages"] == "synth,build_tiny"
    assert run.data.params["synth.n_train"] == "4"
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "dvc.lock" in arts


def test_second_run_skips_fresh_stages_and_reruns_stale_ones(project):
    model = project / "models/tiny-base/model.safetensors"
    before = model.stat().st_mtime_ns
    proc = run_flow(project, "synth", "build_tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert model.stat().st_mtime_ns == before  # nothing stale: DVC skipped both stages

    p = yaml.safe_load((project / "params.yaml").read_text())
    p["model"]["tiny"]["hidden_size"] = 64  # a model param changes: only build_tiny is stale
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    csv_before = (project / "data/demo/train.csv").stat().st_mtime_ns
    proc = run_flow(project, "synth", "build_tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert model.stat().st_mtime_ns != before
    assert (project / "data/demo/train.csv").stat().st_mtime_ns == csv_before


def test_a_failing_stage_fails_the_flow(project):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["synth"]["classes"] = ["Fire", "Arson"]  # no drawing style: the stage exits non-zero
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run_flow(project, "synth")
    assert proc.returncode != 0
    assert "stage synth failed" in (proc.stdout + proc.stderr)
