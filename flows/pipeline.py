"""The Prefect flow: runs the pipeline's DVC stages in order, one task each, under one MLflow run.

The flow only wires: each task is ``dvc repro <stage>`` (DVC decides staleness and calls the
``srvau`` CLI, where the stage logic lives). The MLflow run id travels to the stages through
``MLFLOW_RUN_ID``, so a whole pipeline run is one MLflow run. Retries cover transient failures
(a flaky teacher endpoint, a pre-empted GPU node); a failed stage fails the flow.

The DVC remote is a convenience, not a requirement: a stage that is up to date locally never
touches it; for a stale one the flow asks the remote once (one bounded request) and runs
``dvc repro --pull`` (restore instead of recompute) when it answers, plain ``dvc repro`` with a
warning when it does not. A failed ``dvc push`` at the end is a warning too (``push`` and
``warnings`` in the flow's result, the ``srvau.dvc_push`` tag in MLflow): the work is done and stays
in the local DVC cache for a later push.

Under a recipe the demo-only stages run only when the recipe uses what they make
(:func:`demo_only_skips`): ``synth`` when its annotations live under ``paths.demo``, ``build_tiny``
when its base model is the tiny model's folder.

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
# Without PREFECT_API_URL the first flow call starts a temporary server and waits 20 s for it by
# default: a loaded 2-core machine misses that (see docs/pitfalls.md). Waiting longer costs nothing
# when it is quick.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

from prefect import flow, get_run_logger, task  # noqa: E402

# Order of the pipeline; each name is a stage in dvc.yaml.
STAGES = ["synth", "build_tiny", "ingest", "cot", "validate", "sft", "grpo", "evaluate", "register"]


def available_stages() -> list[str]:
    import yaml

    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [s for s in STAGES if s in declared]


def _stage_outs(stage: str) -> list[str]:
    import yaml

    outs = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage].get("outs", [])
    return [next(iter(o)) if isinstance(o, dict) else o for o in outs]


def demo_only_skips(params) -> dict[str, str]:
    """The demo-only stages a recipe does not use, each with why: ``synth`` unless some
    ``ingest.annotations`` file lies under ``paths.demo``; ``build_tiny`` unless ``model.base`` is the
    folder that stage writes (its out in dvc.yaml). A paper-scale recipe then neither synthesises
    demo videos nor builds a random model it never loads."""
    demo = params.resolve(params.paths.demo).resolve()
    skips = {}
    if not any(params.resolve(a).resolve().is_relative_to(demo) for a in params.ingest.annotations):
        skips["synth"] = f"ingest.annotations lie outside paths.demo ({params.paths.demo})"
    tiny = [(ROOT / o).resolve() for o in _stage_outs("build_tiny")]
    if params.resolve(params.model.base).resolve() not in tiny:
        skips["build_tiny"] = f"model.base is {params.model.base}, not the tiny model ({', '.join(_stage_outs('build_tiny'))})"
    return skips


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else (shutil.which("dvc") or "dvc")


def _stage_env(run_id: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `srvau` on PATH
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    return env


def _run_dvc(*args: str, run_id: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_dvc(), *args], cwd=ROOT, env=_stage_env(run_id), text=True, capture_output=True)


def _tail(proc: subprocess.CompletedProcess, n: int) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def _dvc_error(proc: subprocess.CompletedProcess) -> str:
    """DVC's ``ERROR: ...`` line (its last line is a support link), else the last line of output."""
    lines = [x.strip() for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("ERROR")]
    return (errors or lines or [f"exit {proc.returncode}"])[-1][:300]


def stage_is_up_to_date(stage: str) -> bool:
    """``dvc status <stage>`` (it and its upstream stages) against the workspace and local cache only."""
    proc = _run_dvc("status", "--json", stage)
    return proc.returncode == 0 and proc.stdout.strip() in ("{}", "")


# One request to the default remote. DVC's own commands retry a dead S3 endpoint per object (s3fs
# x botocore retries): measured 14 s for `repro --pull`, 60 s for `status --cloud`, 4 min for `push`
# of a handful of files, so the flow asks this once and skips the remote when it does not answer.
_REMOTE_PROBE = """
import sys
from dvc.repo import Repo
try:
    remote = Repo(".").cloud.get_remote()
    remote.fs.exists(remote.path)
except Exception as e:
    print(f"{type(e).__name__}: {str(e).strip()}".splitlines()[0][:300])
    sys.exit(1)
"""
REMOTE_PROBE_TIMEOUT_S = 120


@task(task_run_name="dvc remote check")
def check_remote() -> str | None:
    """None when the default DVC remote answers, else why not (bounded by REMOTE_PROBE_TIMEOUT_S)."""
    env = _stage_env(None)
    env.setdefault("AWS_MAX_ATTEMPTS", "2")  # botocore's own retries of this one request (default 5)
    try:
        proc = subprocess.run([sys.executable, "-c", _REMOTE_PROBE], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=REMOTE_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"no answer within {REMOTE_PROBE_TIMEOUT_S} s"
    return None if proc.returncode == 0 else _dvc_error(proc)


@task(retries=1, retry_delay_seconds=5, task_run_name="dvc repro {stage}")
def run_stage(stage: str, run_id: str | None, pull: bool) -> str:
    """``dvc repro [--pull] <stage>``; a failed stage raises.

    ``--pull`` lets a fresh worker restore outputs already in the remote (or its run-cache) instead of
    recomputing them, even when its dvc.lock is older than the remote's state. It fails when the
    remote is unreachable, even for an up-to-date stage, so the flow asks for it only for a stale
    stage and a remote that answers.
    """
    logger = get_run_logger()
    cmd = ["repro", "--pull", stage] if pull else ["repro", stage]
    logger.info("running dvc %s", " ".join(cmd))
    proc = _run_dvc(*cmd, run_id=run_id)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}):\n{_tail(proc, 4000)}")
    logger.info(_tail(proc, 1500))
    return stage


@task(task_run_name="dvc push")
def push_data() -> str | None:
    """Version what the run produced in the default DVC remote (local folder or S3).

    Returns None on success, else a warning: the outputs are committed to the local DVC cache
    already, so a later ``dvc push --run-cache`` uploads them; failing the finished run would not.
    """
    proc = _run_dvc("push", "--run-cache")
    if proc.returncode == 0:
        return None
    get_run_logger().warning(_tail(proc, 3000))
    return _dvc_error(proc)


class _Remote:
    """The default DVC remote as this flow run sees it: asked at most once, only when needed."""

    def __init__(self) -> None:
        self.checked = False
        self.problem: str | None = None

    def usable(self, warnings: list[str]) -> bool:
        if not self.checked:
            self.checked, self.problem = True, check_remote()
            if self.problem:
                warning = f"DVC remote unreachable ({self.problem}): this run neither pulls from it nor pushes to it"
                get_run_logger().warning(warning)
                warnings.append(warning)
        return self.problem is None


@flow(name="srvau-pipeline", log_prints=True)
def pipeline(recipe: str | None = None, stages: list[str] | None = None, push: bool = True) -> dict:
    """Run the pipeline stages (default: all stages declared in dvc.yaml) under one MLflow run.

    Returns the MLflow run id, the stages, ``push`` (done, failed or skipped) and ``warnings``.
    """
    import mlflow

    from srvau.config import load_params
    from srvau.tracking.runs import configure, safe_params

    if recipe:
        os.environ["SRVAU_RECIPE"] = recipe
    params = load_params(recipe=recipe)
    configure(params)
    todo = stages or available_stages()
    if recipe:
        skipped = demo_only_skips(params)
        for stage in [s for s in todo if s in skipped]:
            get_run_logger().info("skipping %s under recipe %s: %s", stage, recipe, skipped[stage])
        todo = [s for s in todo if s not in skipped]
    warnings: list[str] = []
    remote = _Remote()
    push_status = "skipped"
    with mlflow.start_run(run_name="pipeline") as run:
        mlflow.set_tags({"srvau.stages": ",".join(todo), "srvau.recipe": params.recipe or "demo"})
        mlflow.log_params(safe_params(params))
        for stage in todo:
            # An up-to-date stage needs nothing from the remote: never ask it.
            pull = not stage_is_up_to_date(stage) and remote.usable(warnings)
            run_stage(stage, run.info.run_id, pull)
        lock = ROOT / "dvc.lock"
        if lock.exists():
            mlflow.log_artifact(str(lock))
        if push:
            problem = push_data() if remote.usable(warnings) else remote.problem
            push_status = "failed" if problem else "done"
            if problem:
                warnings.append(f"dvc push failed, the outputs are only in the local DVC cache "
                                f"(`dvc push --run-cache` uploads them later): {problem}")
                get_run_logger().warning(warnings[-1])
        mlflow.set_tag("srvau.dvc_push", push_status)
    return {"run_id": run.info.run_id, "stages": todo, "push": push_status, "warnings": warnings}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--stages", nargs="*", default=None)
    ap.add_argument("--no-push", action="store_true")
    args = ap.parse_args(argv)
    result = pipeline(recipe=args.recipe, stages=args.stages, push=not args.no_push)
    print(f"pipeline finished: MLflow run {result['run_id']}; stages {', '.join(result['stages'])}; "
          f"dvc push {result['push']}")
    for warning in result["warnings"]:
        print(f"WARNING: {warning}")
    from srvau.config import load_params

    params = load_params(recipe=args.recipe)
    report = params.resolve(params.evaluate.report)
    if "evaluate" in result["stages"] and report.exists():
        print(f"report: {report}")


if __name__ == "__main__":
    main()
