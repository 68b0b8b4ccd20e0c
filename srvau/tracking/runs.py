"""MLflow runs: one parent run per pipeline run, one child run per stage, and tracking that cannot stop a stage.

The Prefect flow opens the parent run (``pipeline``) and passes its id to each ``dvc repro <stage>``
subprocess through ``SRVAU_PARENT_RUN_ID``; the stage opens a child run of it, named after the stage,
holding the params that stage reads (its ``params:`` in dvc.yaml), its metrics and its artifacts. A
stage run by hand (``srvau sft`` or plain ``dvc repro``) opens a top-level run of its own
(``stage-<name>``, every param). ``MLFLOW_RUN_ID``, when set, still attaches the stage to that run.
Every run carries :func:`lineage_tags`: the git commit, the digest of ``dvc.lock``, the recipe and the CPU
kernels in force.
The CLI opens :func:`stage_run` around every stage command (the one level where it is opened); stage
functions only log, through the ``log_stage_*`` helpers below. Stage metrics are prefixed with the stage.

Tracking is a side channel, so it must never stop a stage (docs/operations.md, docs/pitfalls.md):

* the MLflow HTTP client gets bounded retries and timeouts (``tracking.http_max_retries`` /
  ``tracking.http_timeout_s``; the ``MLFLOW_HTTP_REQUEST_*`` variables win when set), instead of
  MLflow's default of minutes per call against a dead server;
* the first tracking error turns tracking off for the rest of the stage: a warning says so, and from
  then on every ``log_stage_*`` call appends to a local JSONL file (``<paths.reports>/tracking/<stage>.jsonl``);
* only the main process of a multi-process launch (``RANK``/``LOCAL_RANK`` 0) tracks;
* a stage's run ends FAILED on an error and KILLED on SIGTERM/Ctrl-C. A stage killed without warning
  (SIGKILL, OOM, a lost node) leaves its run RUNNING: its pid/host/start-time tags let the next start of
  that stage on the same host see the process is gone and mark the run KILLED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from srvau.config import PROJECT_ROOT, Params

log = logging.getLogger(__name__)

# Leaf names that hold secrets. Whole-name matches for keys/tokens (``max_new_tokens`` and
# ``api_key_env``, the *name* of an env var, are fine to log); substrings for the unambiguous words.
_SECRET_LEAF = re.compile(r"^(api_key|key|token|access_token|auth_token|hf_token|access_key|secret_key)$|secret|password|credential", re.I)

# Tags on a run a stage opened itself: which process owns it, to find runs of killed stages.
TAG_STAGE, TAG_HOST, TAG_PID, TAG_PID_START = "srvau.stage", "srvau.host", "srvau.pid", "srvau.pid_start"
ENV_MAX_RETRIES, ENV_TIMEOUT = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"
ENV_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
# The pipeline's run id, handed to each stage subprocess: the stage's run becomes a child of it.
ENV_PARENT = "SRVAU_PARENT_RUN_ID"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
# On every run: what produced it.
TAG_GIT, TAG_DVC_LOCK, TAG_RECIPE = "srvau.git_commit", "srvau.dvc_lock_sha256", "srvau.recipe"
TAG_CPU_KERNELS = "srvau.cpu_kernels"  # srvau.numerics.cpu_kernels: which float kernels made the numbers
TAG_UP_TO_DATE = "srvau.up_to_date"  # a child the flow recorded for a stage DVC did not run


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative sqlite path resolves against the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///") :]
        uri = f"sqlite:///{(PROJECT_ROOT / rel).resolve()}"
    return uri


def apply_http_limits(params: Params) -> dict[str, str]:
    """Bound MLflow's HTTP client (read per request from the environment): the ``MLFLOW_HTTP_REQUEST_*``
    variables win when set, else ``tracking.http_max_retries`` / ``tracking.http_timeout_s``."""
    cfg = params.tracking
    os.environ.setdefault(ENV_MAX_RETRIES, str(cfg.http_max_retries))
    os.environ.setdefault(ENV_TIMEOUT, str(int(max(1, round(cfg.http_timeout_s)))))
    os.environ.setdefault(ENV_BACKOFF, "1")  # MLflow's 2 doubles every wait; the retries stay few either way
    return {k: os.environ[k] for k in (ENV_MAX_RETRIES, ENV_TIMEOUT, ENV_BACKOFF)}


def configure(params: Params) -> str:
    import mlflow

    apply_http_limits(params)
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(params.tracking.experiment) is None:
        # A local sqlite store keeps artifacts in the project (mlruns/); a server decides its own.
        artifacts = (PROJECT_ROOT / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(params.tracking.experiment, artifact_location=artifacts)
    mlflow.set_experiment(params.tracking.experiment)
    return uri


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def safe_params(params: Params) -> dict[str, str]:
    """Params as flat strings, with anything that looks like a credential left out."""
    return {k: str(v)[:500] for k, v in flatten(params.dump()).items() if not _SECRET_LEAF.search(k.rsplit(".", 1)[-1])}


def stage_param_keys(stage: str) -> list[str] | None:
    """The params a DVC stage reads (its ``params:`` in dvc.yaml, e.g. ``seed``, ``sft``, ``model.tiny``),
    or None when dvc.yaml does not declare the stage."""
    import yaml

    try:
        declared = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"][stage]
        declared = declared.get("do", declared)  # a `foreach` stage declares its params under `do`
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    keys: list[str] = []
    for entry in declared.get("params") or []:
        if isinstance(entry, dict):  # {params_file: [keys]}: only params.yaml's are the resolved values
            keys += [str(k) for k in entry.get("params.yaml") or []]
        else:
            keys.append(str(entry))
    return list(dict.fromkeys(k for k in keys if "${" not in k))  # a templated key is not a params.yaml key


def stage_params(params: Params, stage: str) -> dict[str, str]:
    """:func:`safe_params` narrowed to what ``stage`` reads; all of them when dvc.yaml does not say."""
    flat = safe_params(params)
    keys = stage_param_keys(stage)
    if keys is None:
        return flat
    return {k: v for k, v in flat.items() if any(k == key or k.startswith(key + ".") for key in keys)}


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit() -> str:
    """``git rev-parse HEAD`` of the project, ``-dirty`` when tracked files differ from it; "unknown"
    outside git or before the first commit. dvc.lock does not count: every stage rewrites it, and its
    digest is a tag of its own (``srvau.dvc_lock_sha256``)."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")
    return f"{head}-dirty" if dirty else head


def lineage_tags(params: Params) -> dict[str, str]:
    """What produced a run: the code (git commit), the pipeline state (sha256 of dvc.lock, "none" when
    there is none yet), the recipe ("demo" without one) and the CPU kernels (another kernel set gives
    other weights from the same seed)."""
    from srvau.io import sha256_file
    from srvau.numerics import cpu_kernels

    lock = PROJECT_ROOT / "dvc.lock"
    try:
        lock_digest = sha256_file(lock)
    except OSError:
        lock_digest = "none"
    return {TAG_GIT: git_commit(), TAG_DVC_LOCK: lock_digest, TAG_RECIPE: recipe_label(params),
            TAG_CPU_KERNELS: cpu_kernels()}


def recipe_label(params: Params) -> str:
    """What a run's ``srvau.recipe`` tag says: the recipe's name, ``demo`` for the defaults."""
    return params.recipe or "demo"


# ----------------------------------------------------------------------------- processes


def is_main_process() -> bool:
    """False on a non-main rank of an accelerate/torchrun launch (global ``RANK``, else ``LOCAL_RANK``)."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    try:
        return int(rank) == 0
    except ValueError:
        return True


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields[0] == "Z" else fields[19]  # a zombie has exited already


def process_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if Path("/proc").is_dir():
        now = _proc_start(pid)
        if now is None or (start and now != start):
            return False
    return True


def owner_tags(stage: str) -> dict[str, str]:
    pid = os.getpid()
    return {TAG_STAGE: stage, TAG_HOST: socket.gethostname(), TAG_PID: str(pid), TAG_PID_START: _proc_start(pid) or ""}


def reap_stale_runs(stage: str, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``stage`` opened on this host by a process that is gone."""
    from mlflow import MlflowClient

    client = MlflowClient()
    host = socket.gethostname()
    stale = []
    for run in client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{stage}' and attributes.status = 'RUNNING'"
    ):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue  # another machine's process: nothing here can tell whether it still runs
        if process_alive(int(tags[TAG_PID]), tags.get(TAG_PID_START) or None):
            continue
        client.set_tag(run.info.run_id, "srvau.ended_by", "next start of the stage: its process was gone")
        client.set_terminated(run.info.run_id, "KILLED")
        stale.append(run.info.run_id)
    if stale:
        log.warning("marked %d run(s) of stage %s KILLED: their process is gone (%s)", len(stale), stage, ", ".join(stale))
    return stale


# ----------------------------------------------------------------------------- the stage's tracking state


class StageTerminated(BaseException):
    """Raised in the stage by SIGTERM, so its run ends KILLED (a BaseException: ``except Exception`` in
    stage code does not swallow it)."""


@dataclass
class StageTracking:
    """Where one stage's tracking goes: MLflow while it works, the local JSONL after the first error."""

    stage: str
    local_log: Path
    owns_run: bool = True  # False when attached to the pipeline's run (the flow ends that one)
    failure: str | None = None

    @property
    def active(self) -> bool:
        return self.failure is None

    def record(self, kind: str, **payload: Any) -> None:
        try:
            self.local_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.local_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": time.time(), "stage": self.stage, "kind": kind, **payload}, default=str) + "\n")
        except OSError as e:  # the local log is the last resort: it must not stop the stage either
            log.warning("could not write the local tracking log %s: %s", self.local_log, e)

    def fail(self, error: BaseException | str) -> None:
        """Turn MLflow off for the rest of the stage; leave the run stack clean without waiting on the server."""
        if self.failure is not None:
            return
        self.failure = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        self.failure = self.failure[:500]
        log.warning("MLflow tracking failed (%s); stage %s goes on and logs locally to %s",
                    self.failure, self.stage, self.local_log)
        self.record("tracking_failed", error=self.failure)
        _drop_active_run(self.failure, end=self.owns_run)


_current: StageTracking | None = None
_lock = threading.RLock()


def _active_run_or_none() -> Any:
    import mlflow

    return mlflow.active_run()


def _detach(run_id: str) -> None:
    """Leave a run without ending it (MLflow has no public call for that)."""
    from mlflow.tracking.fluent import _active_run_stack

    stack = _active_run_stack.get()
    while stack and stack[-1].info.run_id == run_id:
        stack.pop()


def _drop_active_run(reason: str, end: bool) -> None:
    """Leave the active run with one short try at the server (0 retries, 1 s): ended FAILED (its record
    is incomplete) when the stage owns it, else only detached. Ending pops the run before calling the
    server, so even a dead one leaves no active run behind (nor MLflow's exit hook waiting on it)."""
    import mlflow

    saved = {k: os.environ.get(k) for k in (ENV_MAX_RETRIES, ENV_TIMEOUT)}
    os.environ[ENV_MAX_RETRIES], os.environ[ENV_TIMEOUT] = "0", "1"
    try:
        run = mlflow.active_run()
        if run is None:
            return
        with contextlib.suppress(Exception):  # on record, if the server still answers
            mlflow.MlflowClient().set_tag(run.info.run_id, "srvau.tracking_failed", reason[:250])
        if end:
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")
        _detach(run.info.run_id)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _track(kind: str, call: Callable[[], Any], **payload: Any) -> Any:
    """Run one MLflow logging call for the current stage and return its result; never raise (None
    instead). Without an active run (a non-main rank, a function called outside any stage run) it does
    nothing."""
    with _lock:
        tracking = _current
        if tracking is not None and not tracking.active:
            tracking.record(kind, **payload)
            return None
        import mlflow

        if mlflow.active_run() is None:
            return None
        try:
            return call()
        except Exception as e:
            if tracking is None:
                log.warning("MLflow %s not logged: %s", kind, e)
                return None
            tracking.fail(e)
            tracking.record(kind, **payload)
            return None


def track_call(kind: str, call: Callable[[], Any], **payload: Any) -> Any:
    """A stage's own tracking call (e.g. logging a model) under the same rules as the ``log_stage_*``
    helpers: its result, or None when there is no run or tracking failed (then ``payload`` goes to the
    local JSONL)."""
    return _track(kind, call, **payload)


def _default_local_log(params: Params, stage: str) -> Path:
    return params.resolve(params.paths.reports) / "tracking" / f"{stage}.jsonl"


@dataclass
class _SignalGuard:
    defer: bool = False  # while the run starts or ends, a SIGTERM waits (the run id is not known yet)
    pending: bool = False

    def raise_pending(self) -> None:
        self.defer = False
        if self.pending:
            raise StageTerminated("SIGTERM while the run was starting")


@contextlib.contextmanager
def _sigterm_ends_run() -> Iterator[_SignalGuard]:
    """SIGTERM raises :class:`StageTerminated` in this process (main thread only; a forked child, e.g. a
    DataLoader worker, keeps dying the default way)."""
    guard = _SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if guard.defer:
            guard.pending = True
            return
        raise StageTerminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stage_run(params: Params, stage: str, local_log: Path | None = None) -> Iterator[Any]:
    """The stage's MLflow run, or None when this process does not track (a non-main rank) or tracking
    could not start; the stage runs the same either way.

    With ``SRVAU_PARENT_RUN_ID`` (the flow's run) the run is a child of it, named ``stage``, with the
    stage's params; without it a top-level ``stage-<stage>`` run with every param. Either ends
    FINISHED, FAILED (an error, a non-zero exit) or KILLED (SIGTERM, Ctrl-C; the process then exits
    143). With ``MLFLOW_RUN_ID`` the stage logs into that run and leaves it RUNNING after a success.
    """
    global _current
    if not is_main_process():
        yield None
        return
    if _current is not None:  # already inside a stage's run in this process: that run it is
        yield _active_run_or_none() if _current.active else None
        return
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    parent_id = None if run_id else (os.environ.get(ENV_PARENT) or None)
    tracking = StageTracking(stage, Path(local_log) if local_log else _default_local_log(params, stage), owns_run=not run_id)
    run = None
    status = "FINISHED"
    previous = _current
    with _sigterm_ends_run() as signals:  # from before the run exists: a SIGTERM at any point ends it KILLED
        try:
            signals.defer = True
            try:
                configure(params)
                if run_id:
                    run = mlflow.start_run(run_id=run_id)
                else:
                    try:
                        reap_stale_runs(stage, mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id)
                    except Exception as e:  # housekeeping: the stage's own run matters more
                        log.warning("could not look for runs of killed %s stages: %s", stage, e)
                    run = mlflow.start_run(run_name=stage if parent_id else f"stage-{stage}", parent_run_id=parent_id,
                                           tags={**owner_tags(stage), **lineage_tags(params)})
                    mlflow.log_params(stage_params(params, stage) if parent_id else safe_params(params))
            except Exception as e:
                tracking.fail(e)
                run = None
            signals.raise_pending()
            _current = tracking
            yield run if tracking.active else None
        except (StageTerminated, KeyboardInterrupt) as e:
            status = "KILLED"
            if isinstance(e, StageTerminated):
                raise SystemExit(128 + signal.SIGTERM) from None
            raise
        except SystemExit as e:
            status = "FINISHED" if e.code in (None, 0) else "FAILED"
            raise
        except BaseException as e:
            status = "FINISHED" if getattr(e, "exit_code", 1) == 0 else "FAILED"  # typer.Exit(0) is a success
            raise
        finally:
            signals.defer = True  # a second SIGTERM does not cut the ending short
            _current = previous
            if run is not None and tracking.active:
                _end(run.info.run_id, status, owned=not run_id, tracking=tracking)
            elif not tracking.active:
                tracking.record("run_end", status=status)


def _end(run_id: str, status: str, owned: bool, tracking: StageTracking) -> None:
    """End the stage's run; a run attached by ``MLFLOW_RUN_ID`` is only detached after a success."""
    import mlflow

    try:
        if owned or status != "FINISHED":
            mlflow.end_run(status)
        else:
            _detach(run_id)
    except Exception as e:
        tracking.fail(e)
        tracking.record("run_end", status=status)


# ----------------------------------------------------------------------------- the pipeline's children


def stage_children(parent_id: str) -> dict[str, list[Any]]:
    """The child runs of a pipeline run, by stage (``srvau.stage`` tag)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = client.get_run(parent_id)
    out: dict[str, list[Any]] = {}
    for run in client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}'"):
        out.setdefault(run.data.tags.get(TAG_STAGE, run.info.run_name), []).append(run)
    return out


def record_stage_without_run(params: Params, parent_id: str, stage: str, why: str) -> str:
    """A finished child run for a stage whose command did not run (DVC found it up to date, or restored
    its outputs), so every pipeline run shows one child per stage. Returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient()
    parent = client.get_run(parent_id)
    tags = {TAG_PARENT: parent_id, TAG_STAGE: stage, TAG_UP_TO_DATE: "true", "srvau.skipped": why,
            **lineage_tags(params)}
    run = client.create_run(parent.info.experiment_id, run_name=stage, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in stage_params(params, stage).items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# ----------------------------------------------------------------------------- logging helpers
# Every tracking call of a stage goes through these: never raising, local JSONL after a failure.


def log_stage_metrics(stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
    """Numeric leaves of ``metrics`` as ``<stage>.<dotted key>`` (non-finite values and bools dropped)."""
    import math

    flat = {
        f"{stage}.{k}": float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    if not flat:
        return
    import mlflow

    _track("metrics", lambda: mlflow.log_metrics(flat, step=step), metrics=flat, step=step)


def log_stage_params(values: dict[str, Any]) -> None:
    import mlflow

    flat = {k: str(v)[:500] for k, v in flatten(values).items()}
    _track("params", lambda: mlflow.log_params(flat), params=flat)


def set_stage_tags(tags: dict[str, Any]) -> None:
    import mlflow

    flat = {k: str(v) for k, v in tags.items()}
    _track("tags", lambda: mlflow.set_tags(flat), tags=flat)


def log_stage_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """One file (skipped with a debug line when it does not exist)."""
    import mlflow

    if not Path(path).is_file():
        log.debug("artifact %s not logged: no such file", path)
        return
    _track("artifact", lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path),
           path=str(path), artifact_path=artifact_path)


def log_stage_artifacts(folder: str | os.PathLike, artifact_path: str | None = None) -> None:
    """A folder's files (skipped when it does not exist)."""
    import mlflow

    if not Path(folder).is_dir():
        log.debug("artifacts %s not logged: no such folder", folder)
        return
    _track("artifacts", lambda: mlflow.log_artifacts(str(folder), artifact_path=artifact_path),
           path=str(folder), artifact_path=artifact_path)


def log_stage_table(data: Any, artifact_file: str) -> None:
    """A table (a DataFrame or a dict of columns) as a JSON artifact; locally only its size is kept."""
    import mlflow

    rows = len(data) if hasattr(data, "__len__") else None
    _track("table", lambda: mlflow.log_table(data=data, artifact_file=artifact_file), artifact_file=artifact_file, rows=rows)
