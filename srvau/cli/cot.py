"""``srvau cot``: the RoCoT stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params, stage_tracking


def cot_cmd(
    ctx: typer.Context,
    manifest: Optional[Path] = typer.Option(None, help="manifest parquet (default: <paths.ingest>/manifest.parquet)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: paths.rocot)"),
    track: bool = typer.Option(True, "--track/--no-track", help="log counts and the dataset card to MLflow"),
) -> None:
    """Generate the RoCoT dataset (reflection traces) from the manifest; print a JSON summary.

    Exit 1 when nothing could be generated or kept, 2 on a missing or malformed manifest.
    """
    from srvau.cot.builder import CotError, ManifestError, build_rocot
    from srvau.tracking.runs import log_stage_artifact, log_stage_metrics

    p = get_params(ctx)
    manifest = manifest or p.resolve(p.paths.ingest) / "manifest.parquet"
    out = out or p.resolve(p.paths.rocot)
    if not Path(manifest).is_file():
        raise fail(f"manifest {manifest} not found (run `srvau ingest` first)")
    with stage_tracking(p, "cot", track):
        try:
            result = build_rocot(manifest, out, p)
        except (CotError, ManifestError) as e:
            raise fail(str(e), 2 if isinstance(e, ManifestError) else 1) from None
        log_stage_metrics("cot", result.metrics())
        for path in result.paths.values():
            log_stage_artifact(path, artifact_path="cot")
    typer.echo(json.dumps({"out": str(out), "teacher": result.teacher, "samples": result.split_counts,
                           "dropped": dict(result.filter.dropped), "quarantined": dict(result.quarantined)}))
