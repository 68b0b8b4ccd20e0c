"""What every command shares: the resolved params (validated before any model loads), logging, and
the one helper that runs a stage inside its tracking run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from srvau.config import ConfigError, Params, load_params, parse_override

NOISY_LOGGERS = ("urllib3", "filelock", "httpx", "alembic", "matplotlib", "great_expectations", "mlflow.store.db")


@dataclass
class CliOptions:
    """The global options of one invocation (``ctx.obj`` of the root app)."""

    params: Optional[Path] = None
    recipe: Optional[str] = None
    overrides: list[str] = field(default_factory=list)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr; the caller raises what this returns."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# ----------------------------------------------------------------------------- params


def reward_errors(p: Params) -> list[str]:
    """``grpo.reward_funcs`` / ``grpo.reward_options`` against the reward registry, by the check GRPO
    itself runs (srvau.training.rewards, cheap to import), so the rule has one home."""
    from srvau.training.rewards import check_reward_config

    try:
        check_reward_config(p.grpo.reward_funcs, p.grpo.reward_options or None)
    except ValueError as e:
        return [str(e)]  # the message names the key
    return []


def scheduler_errors(p: Params) -> list[str]:
    """``sft.lr_scheduler_type`` / ``grpo.lr_scheduler_type`` against transformers' ``SchedulerType``
    (imports transformers, ~5 s: only the training commands pay it, before their model loads)."""
    from srvau.compat import ensure_torchvision

    ensure_torchvision()  # before transformers (srvau.compat)
    from transformers.trainer_utils import SchedulerType

    known = [s.value for s in SchedulerType]
    return [
        f"{section}.lr_scheduler_type: unknown scheduler {value!r} (transformers knows: {', '.join(known)})"
        for section, value in (("sft", p.sft.lr_scheduler_type), ("grpo", p.grpo.lr_scheduler_type))
        if value not in known
    ]


def get_params(ctx: typer.Context, *, training: bool = False) -> Params:
    """The resolved config for this invocation, every value checked: a bad file or value exits 2 with
    the offending keys named. ``training`` adds the checks that need transformers (schedulers)."""
    opts = ctx.find_root().obj or CliOptions()
    try:
        overrides = dict(parse_override(s) for s in opts.overrides)
        p = load_params(opts.params, opts.recipe, overrides)
    except ConfigError as e:
        raise fail(str(e)) from None
    errors = reward_errors(p) + (scheduler_errors(p) if training else [])
    if errors:
        raise fail("invalid setting(s):\n  " + "\n  ".join(errors))
    return p


# ----------------------------------------------------------------------------- the stage's tracking run


@contextlib.contextmanager
def stage_tracking(p: Params, stage: str, track: bool = True) -> Iterator[Any]:
    """Run a stage command's body inside the stage's MLflow run (the one place a run is opened; see
    srvau.tracking.runs for what happens on a non-main rank, a tracking failure or a kill).
    ``track=False`` (``--no-track``) yields None and logs nothing. Either way the body is timed
    (:func:`stage_timing`)."""
    if not track:
        with stage_timing(p, stage):
            yield None
        return
    from srvau.tracking.runs import stage_run

    with stage_run(p, stage) as run, stage_timing(p, stage):
        yield run


TIMINGS_FILE = "tracking/timings.jsonl"  # under paths.reports; bench/pipeline.py reads it
# A file that takes the records instead, for every stage process that inherits it: the test suite's
# session folder, so tests that run stages from the checkout never write into its reports/.
TIMINGS_ENV = "SRVAU_TIMINGS_FILE"


def _process_age_s() -> float | None:
    """Seconds since this process started (interpreter start, imports, params, opening the run)."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # no psutil, or a platform without process start times: the record just lacks it
        return None


@contextlib.contextmanager
def stage_timing(p: Params, stage: str) -> Iterator[None]:
    """Append the stage's compute seconds (the body of its command, inside its tracking run) to
    ``<paths.reports>/tracking/timings.jsonl`` (or the file ``SRVAU_TIMINGS_FILE`` names), with how old
    the process was when the body began, so the pipeline's wall time splits into stage compute and
    orchestration (bench/pipeline.py). Only the main rank writes; a write failure is a warning, never
    a failed stage."""
    age = _process_age_s()
    t0 = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        record = {"stage": stage, "compute_s": round(time.perf_counter() - t0, 3),
                  "process_age_at_start_s": None if age is None else round(age, 3), "ok": ok,
                  "pid": os.getpid(), "finished_at": time.time()}
        if int(os.environ.get("RANK", "0")) == 0:
            redirect = os.environ.get(TIMINGS_ENV)
            path = Path(redirect) if redirect else p.resolve(p.paths.reports) / TIMINGS_FILE
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                logging.getLogger(__name__).warning("could not record the stage timing in %s: %s", path, e)
