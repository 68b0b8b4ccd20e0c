"""The registry: the stage ``srvau register`` and ``srvau registry promote``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params, stage_tracking

registry_app = typer.Typer(help="The MLflow model registry: promotion between aliases.", no_args_is_help=True)


def register_cmd(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Option(None, help="merged safetensors checkpoint (default: <grpo.output_dir>/merged)"),
    metrics: Optional[Path] = typer.Option(None, help="evaluation metrics.json (default: <paths.reports>/eval/metrics.json)"),
    out: Optional[Path] = typer.Option(None, help="where to write the registration record (default: <paths.reports>/registry.json)"),
) -> None:
    """Register the trained model in the MLflow registry (@challenger; @champion if it is at least as good)."""
    from srvau.tracking.registry import register

    p = get_params(ctx)
    checkpoint = checkpoint or p.resolve(p.grpo.output_dir) / "merged"
    metrics = metrics or p.resolve(p.paths.reports) / "eval" / "metrics.json"
    out = out or p.resolve(p.paths.reports) / "registry.json"
    with stage_tracking(p, "register"):
        try:
            result = register(checkpoint, metrics, p, out)
        except (FileNotFoundError, ValueError) as e:  # no checkpoint, or a dataset.json that is not evaluate's
            raise fail(str(e)) from None
    typer.echo(json.dumps(result))


@registry_app.command("promote")
def registry_promote(
    ctx: typer.Context,
    version: Optional[str] = typer.Option(None, help="model version (default: the @challenger)"),
    alias: str = typer.Option("champion", help="alias to move"),
    metric: Optional[str] = typer.Option(None, help="gate metric (default: register.gate_metric)"),
    force: bool = typer.Option(False, "--force", help="promote even if the gate metric is worse"),
) -> None:
    """Move an alias (default @champion) to a model version, gated on a metric."""
    from srvau.tracking.registry import promote

    p = get_params(ctx)
    try:
        typer.echo(json.dumps(promote(p, version=version, alias=alias, metric=metric, force=force)))
    except ValueError as e:
        raise fail(str(e), 1) from None
