"""The Prefect flow: runs the pipeline's DVC stages in order, one task each, under one MLflow run.

The flow only wires: each task is ``dvc repro <stage>`` (DVC decides staleness and calls the
``srvau`` CLI, where the stage logic lives). The MLflow run id travels to the stages through
``MLFLOW_RUN_ID``, so a whole pipeline run is one MLflow run. Retries cover transient failures
(a flaky teacher endpoint, a pre-empted GPU node); a failed stage fails the flow.

    python -m flows.pipeline [--recipe configs/paper-3b.yaml] [--stages synth build_tiny ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Prefect state inside the project unless the user points elsewhere; no telemetry from test machines.
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task  # noqa: E402

# Order of the pipeline; each name is a stage in dvc.yaml.
STAGES = ["synth", "build_tiny", "ingest", "cot", "validate", "sft", "grpo", "evaluate", "register"]


def available_stages() -> list[str]:
    import yaml

    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [s for s in STAGES if s in declared]


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else (shutil.which("dvc") or "dvc")


def _stage_env(run_id: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `srvau` on PATH
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    return env


@task(retries=1, retry_delay_seconds=5, task_run_name="dvc repro {stage}")
def run_stage(stage: str, run_id: str | None) -> str:
    logger = get_run_logger()
    # --pull: a fresh worker restores outputs already in the remote (or its run-cache) instead of
    # recomputing them, even when its dvc.lock is older than the remote's state.
    cmd = [_dvc(), "repro", "--pull", stage]
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT, env=_stage_env(run_id), text=True, capture_output=True)
    tail = (proc.stdout + proc.stderr)[-4000:]
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}):\n{tail}")
    logger.info(tail[-1500:])
    return stage


@task(task_run_name="dvc push")
def push_data() -> None:
    """Version what the run produced in the default DVC remote (local folder or S3)."""
    proc = subprocess.run([_dvc(), "push", "--run-cache"], cwd=ROOT, env=_stage_env(None), text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc push failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


@flow(name="srvau-pipeline", log_prints=True)
def pipeline(recipe: str | None = None, stages: list[str] | None = None, push: bool = True) -> dict:
    """Run the pipeline stages (default: all stages declared in dvc.yaml) under one MLflow run."""
    import mlflow

    from srvau.config import load_params
    from srvau.tracking.runs import configure, safe_params

    if recipe:
        os.environ["SRVAU_RECIPE"] = recipe
    params = load_params(recipe=recipe)
    configure(params)
    todo = stages or available_stages()
    with mlflow.start_run(run_name="pipeline") as run:
        mlflow.set_tags({"srvau.stages": ",".join(todo), "srvau.recipe": params.recipe or "demo"})
        mlflow.log_params(safe_params(params))
        for stage in todo:
            run_stage(stage, run.info.run_id)
        lock = ROOT / "dvc.lock"
        if lock.exists():
            mlflow.log_artifact(str(lock))
        if push:
            push_data()
    return {"run_id": run.info.run_id, "stages": todo}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--stages", nargs="*", default=None)
    ap.add_argument("--no-push", action="store_true")
    args = ap.parse_args(argv)
    result = pipeline(recipe=args.recipe, stages=args.stages, push=not args.no_push)
    print(f"pipeline finished: MLflow run {result['run_id']}; stages {', '.join(result['stages'])}")
    from srvau.config import load_params

    params = load_params(recipe=args.recipe)
    report = params.resolve(params.evaluate.report)
    if "evaluate" in result["stages"] and report.exists():
        print(f"report: {report}")


if __name__ == "__main__":
    main()
