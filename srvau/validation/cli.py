"""Typer command of the data gate, registered by :mod:`srvau.cli` as ``srvau validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def validate_cmd(
    ctx: typer.Context,
    manifest: Optional[Path] = typer.Option(None, help="manifest parquet (default: <paths.ingest>/manifest.parquet)"),
    rocot: Optional[Path] = typer.Option(None, help="RoCoT folder (default: paths.rocot)"),
    reports: Optional[Path] = typer.Option(None, help="output folder (default: <paths.reports>/validation)"),
    track: bool = typer.Option(True, "--track/--no-track", help="log the verdict, gate.json and Data Docs to MLflow"),
) -> None:
    """Run the Great Expectations data gate on the manifest and RoCoT.

    Prints a JSON verdict on stdout and the readable summary on stderr. Exit 1 when a check breaks
    (the pipeline stops), 2 when an input is missing or unreadable.
    """
    from srvau.cli import get_params
    from srvau.validation.gate import GateInputError, run_gate

    p = get_params(ctx)
    manifest = manifest or p.resolve(p.paths.ingest) / "manifest.parquet"
    rocot = rocot or p.resolve(p.paths.rocot)
    reports = reports or p.resolve(p.paths.reports) / "validation"
    try:
        if track:
            from srvau.tracking.runs import log_stage_metrics, stage_run

            with stage_run(p, "validate"):
                import mlflow

                result = run_gate(manifest, rocot, reports, p)
                log_stage_metrics("validate", {"success": int(result.success), "failed_checks": len(result.failures),
                                               "checks": sum(result.evaluated.values())})
                mlflow.log_artifact(str(result.json_path), artifact_path="validation")
                if result.docs_index is not None and result.docs_dir.is_dir():
                    mlflow.log_artifacts(str(result.docs_dir), artifact_path="validation/data_docs")
        else:
            result = run_gate(manifest, rocot, reports, p)
    except GateInputError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"success": result.success, "failed": result.failed_checks, "json": str(result.json_path),
                           "data_docs": str(result.docs_index) if result.docs_index else None}))
    if not result.success:
        typer.echo(result.summary(), err=True)
        raise typer.Exit(1)
