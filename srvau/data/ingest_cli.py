"""``srvau ingest``: the typer command of the ingest stage (logic in :mod:`srvau.data.ingest`).

Register it on the root app with its context settings (they let ``--annotations`` take several
values, see below)::

    from srvau.data.ingest_cli import INGEST_CONTEXT_SETTINGS, ingest_cmd
    app.command("ingest", context_settings=INGEST_CONTEXT_SETTINGS)(ingest_cmd)

``--annotations`` accepts, in any mix: several values after one flag (``--annotations a.csv b.csv``),
the flag repeated (``--annotations a.csv --annotations b.csv``) and comma-separated lists
(``--annotations a.csv,b.csv``). Click options take one value each, so the extra values arrive as
leftover positional arguments, which this command (it has no positional parameter) reads as more
annotation files; a leftover that looks like an option is an error, and so is a file that does not
exist. Unset options default to ``ingest.*`` / ``paths.ingest`` in
params.yaml. stdout carries one JSON object (the counts, for MLflow), logs and the progress bar go to
stderr. Exit 0 on success, 1 when nothing valid remains or ``--strict`` and something was
quarantined, 2 on a bad argument or config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

INGEST_CONTEXT_SETTINGS = {"allow_extra_args": True, "allow_interspersed_args": True}


def split_annotation_args(values: list[str]) -> list[Path]:
    """Flatten ``--annotations`` values: comma-separated lists allowed, blanks dropped."""
    return [Path(p.strip()) for v in values for p in str(v).split(",") if p.strip()]


def ingest_cmd(
    ctx: typer.Context,
    annotations: list[str] = typer.Option(
        [], "--annotations", help="VAU-Bench CSV(s): --annotations a.csv b.csv (default: ingest.annotations)"
    ),
    video_root: Optional[Path] = typer.Option(None, "--video-root", help="folder holding the videos (default: ingest.video_root)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: paths.ingest)"),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="fail when any input is quarantined (default: ingest.strict)"),
) -> None:
    """Ingest videos: probe, sample frames once, cache them; write manifest.parquet + quarantine.jsonl."""
    from srvau.cli import get_params  # lazy: srvau.cli imports this module to register the command
    from srvau.data.ingest import ingest

    stray = [a for a in ctx.args if a.startswith("-")]
    if stray:
        raise typer.BadParameter(f"unknown option(s) {stray}")
    p = get_params(ctx)
    csvs = split_annotation_args([*annotations, *ctx.args]) or [p.resolve(a) for a in p.ingest.annotations]
    missing = [str(c) for c in csvs if not c.is_file()]
    if missing:
        raise typer.BadParameter(f"annotation file(s) not found: {', '.join(missing)}", param_hint="--annotations")
    root = video_root or p.resolve(p.ingest.video_root)
    out_dir = out or p.resolve(p.paths.ingest)
    from srvau.tracking.runs import log_stage_metrics, stage_run

    with stage_run(p, "ingest"):
        import mlflow

        result = ingest(csvs, root, out_dir, p, strict=p.ingest.strict if strict is None else strict)
        log_stage_metrics("ingest", result.counts)
        if result.quarantine_path.exists():
            mlflow.log_artifact(str(result.quarantine_path), artifact_path="ingest")
    typer.echo(json.dumps(result.counts))
    if result.failed:
        typer.echo(f"error: {result.failure} (see {result.quarantine_path})", err=True)
        raise typer.Exit(result.exit_code)
