"""What every command shares: the resolved params (validated before any model loads), logging, and
the one helper that runs a stage inside its tracking run."""

from __future__ import annotations

import contextlib
import logging
import sys
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
    ``track=False`` (``--no-track``) yields None and logs nothing."""
    if not track:
        yield None
        return
    from srvau.tracking.runs import stage_run

    with stage_run(p, stage) as run:
        yield run
