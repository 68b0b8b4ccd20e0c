"""The Prefect flow: runs the pipeline's DVC stages in order, one task each, under one parent MLflow run.

The flow only wires: each task is ``dvc repro <stage>`` (DVC decides staleness and calls the
``srvau`` CLI, where the stage logic lives), run through DVC's Python API in the flow's process, as
is its ``dvc status``: one DVC import per flow run instead of two ``dvc`` processes per stage. The
stage commands still run as processes of their own. The flow opens the parent run ``pipeline`` (all params,
``dvc.lock``); its id travels to the stages through ``SRVAU_PARENT_RUN_ID`` and each stage opens a
child run of it (srvau.tracking.runs). A stage DVC did not run (up to date, or restored from the
remote) gets a child recorded by the flow, tagged ``srvau.up_to_date``, so every pipeline run shows
one child per stage. Retries cover transient failures (a flaky teacher endpoint, a pre-empted GPU
node); a failed stage fails the flow.

Each flow run publishes a Markdown artifact (key ``srvau-pipeline``, srvau.tracking.summary): the
headline table, the registry decision and where the report is; after a failed stage, which stage
failed and the tail of its error.

The DVC remote is a convenience, not a requirement: a stage that is up to date locally never
touches it; for a stale one the flow asks the remote once (one bounded request) and runs
``dvc repro --pull`` (restore instead of recompute) when it answers, plain ``dvc repro`` with a
warning when it does not, and plain ``dvc repro`` for a stage that lacks an uncached output (there is
nothing to pull for it; :func:`stage_state`). A failed ``dvc push`` at the end is a warning too (``push`` and
``warnings`` in the flow's result, the ``srvau.dvc_push`` tag in MLflow): the work is done and stays
in the local DVC cache for a later push.

With ``recipe`` the flow first composes params.yaml with it (``srvau config compose``: what
``dvc exp run -S recipe=NAME`` does), so DVC and every stage see the recipe's effective values. The
demo-only stages a composed config turns off (``demo_stages``: ``[]``) are not in DVC's DAG and are
not run (:func:`stages_off`).

    python -m flows.pipeline [--recipe paper-3b] [--stages synth build_tiny ...]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
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


def stages_off(params) -> dict[str, str]:
    """The demo-only stages the composed config leaves out of the DAG (``demo_stages.<stage>: []``),
    each with why: a recipe on real data neither synthesises demo videos nor builds a random model."""
    return {name: f"demo_stages.{name} is [] (recipe {params.recipe})"
            for name, items in params.demo_stages.model_dump().items() if not items}


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else (shutil.which("dvc") or "dvc")


def _stage_env(parent_run_id: str | None) -> dict[str, str]:
    from srvau.tracking.runs import ENV_PARENT

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `srvau` on PATH
    env.pop("MLFLOW_RUN_ID", None)  # the stage opens a child of the pipeline's run, not that run itself
    if parent_run_id:
        env[ENV_PARENT] = parent_run_id
    return env


def _run_dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_dvc(), *args], cwd=ROOT, env=_stage_env(None), text=True, capture_output=True)


def _tail(proc: subprocess.CompletedProcess, n: int) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def _dvc_error(proc: subprocess.CompletedProcess) -> str:
    """DVC's ``ERROR: ...`` line (its last line is a support link), else the last line of output."""
    lines = [x.strip() for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("ERROR")]
    return (errors or lines or [f"exit {proc.returncode}"])[-1][:300]


def stage_state(stage: str) -> tuple[bool, bool]:
    """(up to date, restorable). *Up to date* is what ``dvc status <stage>`` says, against the
    workspace and local cache only, asked through DVC's Python API: the flow imports DVC once instead
    of starting a ``dvc`` process per stage (~1.5 s each). *Restorable*: no output the stage lacks is
    ``cache: false``, so ``dvc repro --pull`` can bring back everything it would skip.

    ``repro --pull`` skips a stage whose deps match its lock once it has pulled the outputs, but
    there is nothing to pull for an uncached output: with a lock committed from an earlier run, a
    fresh clone skipped ``validate`` (its report is uncached) and ``sft`` failed on the missing
    report. A stage that is not restorable is run. An error counts as stale and not restorable, as a
    failed ``dvc status`` did."""
    from dvc.repo import Repo

    try:
        with Repo(str(ROOT)) as repo:  # a fresh Repo: the previous stage rewrote dvc.lock
            if not repo.status(targets=[stage]):
                return True, True
            lost = [str(o) for s in repo.stage.collect(stage) for o in s.outs if not o.use_cache and not o.exists]
    except Exception as e:
        get_run_logger().warning("dvc status %s failed, counting it stale: %s", stage, e)
        return False, False
    if lost:
        get_run_logger().info("%s: not restorable from the remote (%s not cached): it runs", stage, ", ".join(lost))
    return False, not lost


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


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _stage_process_io(parent_run_id: str | None) -> Iterator[list[str]]:
    """While DVC runs a stage in this process: the stage's environment (:func:`_stage_env`), and DVC's
    messages and its command's stdout and stderr (DVC starts it on this process's file descriptors)
    caught in one temporary file, as ``capture_output`` caught them from a ``dvc repro`` process.
    Yields a list that holds the caught text afterwards."""
    env = _stage_env(parent_run_id)
    changes = {k: env.get(k) for k in {*env, *os.environ} if env.get(k) != os.environ.get(k)}
    saved_env = {k: os.environ.get(k) for k in changes}
    dvc_log = logging.getLogger("dvc")  # DVC gives it its own handlers on import: the command's output
    caught: list[str] = []
    with tempfile.TemporaryFile() as out:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fds = [os.dup(1), os.dup(2)]
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            _set_env(changes)
            dvc_log.propagate = False  # once, as `dvc repro` prints it, not again through Prefect's handler
            yield caught
        finally:
            dvc_log.propagate = True
            _set_env(saved_env)
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            out.seek(0)
            caught.append(out.read().decode(errors="replace"))


@task(retries=1, retry_delay_seconds=5, task_run_name="dvc repro {stage}")
def run_stage(stage: str, parent_run_id: str | None, pull: bool) -> str:
    """``dvc repro [--pull] <stage>``, through DVC's Python API in this process (the stage's command
    still runs as a process of its own); a failed stage raises.

    ``--pull`` lets a fresh worker restore outputs already in the remote (or its run-cache) instead of
    recomputing them, even when its dvc.lock is older than the remote's state. It fails when the
    remote is unreachable, even for an up-to-date stage, so the flow asks for it only for a stale
    stage and a remote that answers.
    """
    from dvc.repo import Repo

    logger = get_run_logger()
    logger.info("running dvc %s", " ".join(["repro", "--pull", stage] if pull else ["repro", stage]))
    error = None
    with _stage_process_io(parent_run_id) as caught:
        try:
            with Repo(str(ROOT)) as repo:
                repo.reproduce(targets=[stage], pull=pull)
        except Exception as e:  # DVC's error, e.g. the command's non-zero exit
            error = f"{type(e).__name__}: {e}"
    output = caught[0]
    if error:
        raise RuntimeError(f"stage {stage} failed ({error[:500]}):\n{output[-4000:]}")
    logger.info(output[-1500:])
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


def record_stage(params, parent_run_id: str, stage: str, was_up_to_date: bool) -> str:
    """The stage's status in this pipeline run; a stage whose command did not run (no child run of
    its own) gets one recorded here, so the parent shows one child per stage."""
    from srvau.tracking.runs import record_stage_without_run, stage_children

    if stage_children(parent_run_id).get(stage):
        return "ran"
    why = ("up to date" if was_up_to_date else
           "no run of its own (DVC restored its outputs, or its tracking failed: see reports/tracking/)")
    record_stage_without_run(params, parent_run_id, stage, why)
    return why


def publish(markdown: str, description: str) -> None:
    """The flow run's Markdown artifact; a Prefect error is a warning, never the run's failure."""
    from prefect.artifacts import create_markdown_artifact

    from srvau.tracking.summary import ARTIFACT_KEY

    try:
        create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=description)
    except Exception as e:  # the summary is a courtesy: the pipeline's outcome stands without it
        get_run_logger().warning("could not publish the %s artifact: %s", ARTIFACT_KEY, e)


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
    """Run the pipeline stages (default: all stages declared in dvc.yaml) under one parent MLflow run,
    then publish the run's Markdown summary as a Prefect artifact.

    Returns the MLflow run id, the stages and their status, ``push`` (done, failed or skipped),
    ``warnings`` and the Prefect flow run id.
    """
    import mlflow
    from prefect.runtime import flow_run

    from srvau.config import load_params, write_composed
    from srvau.tracking.runs import configure, lineage_tags, safe_params, tracking_uri
    from srvau.tracking.summary import failure_markdown, mlflow_run_line, pipeline_markdown

    _Preparation.wait()
    if recipe:  # params.yaml is what DVC and every stage read: compose it with the recipe first
        write_composed(ROOT / "params.yaml", recipe)
    params = load_params()
    configure(params)
    todo = stages or available_stages()
    skipped = stages_off(params)
    for stage in [s for s in todo if s in skipped]:
        get_run_logger().info("not running %s: %s", stage, skipped[stage])
    todo = [s for s in todo if s not in skipped]
    warnings: list[str] = []
    remote = _Remote()
    push_status = "skipped"
    statuses: dict[str, str] = {}
    with mlflow.start_run(run_name="pipeline", tags=lineage_tags(params)) as run:
        run_line = mlflow_run_line(tracking_uri(params), run.info.experiment_id, run.info.run_id)
        mlflow.set_tags({"srvau.stages": ",".join(todo)})
        mlflow.log_params(safe_params(params))
        for stage in todo:
            up_to_date, restorable = stage_state(stage)
            # An up-to-date stage needs nothing from the remote: never ask it.
            pull = not up_to_date and restorable and remote.usable(warnings)
            try:
                run_stage(stage, run.info.run_id, pull)
            except Exception as e:
                publish(failure_markdown(stage=stage, error=str(e), run_line=run_line, statuses=statuses),
                        f"srvau pipeline failed at stage {stage}")
                raise
            statuses[stage] = record_stage(params, run.info.run_id, stage, up_to_date)
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
    publish(pipeline_markdown(params, run_line=run_line, statuses=statuses, warnings=warnings, push=push_status),
            "srvau pipeline: headline, registry decision, report")
    return {"run_id": run.info.run_id, "stages": todo, "statuses": statuses, "push": push_status,
            "warnings": warnings, "flow_run_id": str(flow_run.id)}


class _Preparation:
    """What the flow needs before its first stage, done while Prefect's temporary server starts (the
    flow call waits 3-10 s for it, with a core to spare): import MLflow and DVC, and open the tracking
    store (a new sqlite store runs MLflow's migrations, ~5 s). The flow then finds them ready; it
    still configures tracking itself, so a failure here only loses the head start."""

    thread: threading.Thread | None = None

    @classmethod
    def start(cls, recipe: str | None) -> None:
        cls.thread = threading.Thread(target=cls._prepare, args=(recipe,), name="srvau-prepare", daemon=True)
        cls.thread.start()

    @staticmethod
    def _prepare(recipe: str | None) -> None:
        try:
            import dvc.repo  # noqa: F401

            from srvau.config import load_params
            from srvau.tracking.runs import configure

            configure(load_params(None, recipe))  # what the flow composes into params.yaml
        except Exception:  # the flow's own set-up reports it
            pass

    @classmethod
    def wait(cls) -> None:
        if cls.thread is not None:
            cls.thread.join()
            cls.thread = None


def main(argv: list[str] | None = None) -> None:
    # The interpreter's last garbage collections would walk every object Prefect, MLflow and DVC made
    # (~1 s) to free memory the OS frees anyway: freeze them once the other exit handlers ran (this
    # one, registered first, runs last).
    atexit.register(gc.freeze)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--stages", nargs="*", default=None)
    ap.add_argument("--no-push", action="store_true")
    args = ap.parse_args(argv)
    _Preparation.start(args.recipe)
    result = pipeline(recipe=args.recipe, stages=args.stages, push=not args.no_push)
    print(f"pipeline finished: MLflow run {result['run_id']}; stages {', '.join(result['stages'])}; "
          f"dvc push {result['push']}; Prefect flow run {result['flow_run_id']}")
    for warning in result["warnings"]:
        print(f"WARNING: {warning}")
    from srvau.config import load_params

    params = load_params()  # params.yaml, as the flow composed it
    report = params.resolve(params.evaluate.report)
    if "evaluate" in result["stages"] and report.exists():
        print(f"report: {report}")


if __name__ == "__main__":
    main()
