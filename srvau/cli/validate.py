"""``srvau validate``: the Great Expectations data gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params, stage_tracking


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
    from srvau.tracking.runs import log_stage_artifact, log_stage_artifacts, log_stage_metrics
    from srvau.validation.gate import GateInputError, run_gate

    p = get_params(ctx)
    manifest = manifest or p.resolve(p.paths.ingest) / "manifest.parquet"
    rocot = rocot or p.resolve(p.paths.rocot)
    reports = reports or p.resolve(p.paths.reports) / "validation"
    with stage_tracking(p, "validate", track):
        try:
            result = run_gate(manifest, rocot, reports, p)
        except GateInputError as e:
            raise fail(str(e)) from None
        log_stage_metrics("validate", {"success": int(result.success), "failed_checks": len(result.failures),
                                       "checks": sum(result.evaluated.values())})
        log_stage_artifact(result.json_path, artifact_path="validation")
        if result.docs_index is not None:
            log_stage_artifacts(result.docs_dir, artifact_path="validation/data_docs")
        typer.echo(json.dumps({"success": result.success, "failed": result.failed_checks, "json": str(result.json_path),
                               "data_docs": str(result.docs_index) if result.docs_index else None}))
        if not result.success:
            typer.echo(result.summary(), err=True)
            raise typer.Exit(1)
