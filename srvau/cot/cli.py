"""Typer command of the RoCoT stage, registered by :mod:`srvau.cli` as ``srvau cot``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)


def cot_cmd(
    ctx: typer.Context,
    manifest: Optional[Path] = typer.Option(None, help="manifest parquet (default: <paths.ingest>/manifest.parquet)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: paths.rocot)"),
    track: bool = typer.Option(True, "--track/--no-track", help="log counts and the dataset card to MLflow"),
) -> None:
    """Generate the RoCoT dataset (reflection traces) from the manifest; print a JSON summary.

    Exit 1 when nothing could be generated or kept, 2 on a missing or malformed manifest.
    """
    from srvau.cli import get_params
    from srvau.cot.builder import CotError, ManifestError, build_rocot

    p = get_params(ctx)
    manifest = manifest or p.resolve(p.paths.ingest) / "manifest.parquet"
    out = out or p.resolve(p.paths.rocot)
    if not Path(manifest).is_file():
        typer.echo(f"error: manifest {manifest} not found (run `srvau ingest` first)", err=True)
        raise typer.Exit(2)
    try:
        if track:
            from srvau.tracking.runs import log_stage_metrics, stage_run

            with stage_run(p, "cot"):
                import mlflow

                result = build_rocot(manifest, out, p)
                log_stage_metrics("cot", result.metrics())
                for path in result.paths.values():
                    if path.is_file():
                        mlflow.log_artifact(str(path), artifact_path="cot")
        else:
            result = build_rocot(manifest, out, p)
    except (CotError, ManifestError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2 if isinstance(e, ManifestError) else 1) from None
    typer.echo(json.dumps({"out": str(out), "teacher": result.teacher, "samples": result.split_counts,
                           "dropped": dict(result.filter.dropped), "quarantined": dict(result.quarantined)}))
