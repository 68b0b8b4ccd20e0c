"""Data commands: ``srvau data synth``, ``srvau data import-vau-bench``, ``srvau data placeholders`` and the
ingest stage ``srvau ingest``.

``srvau ingest --annotations`` accepts, in any mix: several values after one flag (``--annotations a.csv
b.csv``), the flag repeated (``--annotations a.csv --annotations b.csv``) and comma-separated lists
(``--annotations a.csv,b.csv``). Click options take one value each, so the extra values arrive as
leftover positional arguments, which the command (it has no positional parameter) reads as more
annotation files; a leftover that looks like an option is an error, and so is a file that does not
exist. Unset options default to ``ingest.*`` / ``paths.ingest`` in params.yaml. stdout carries one JSON
object (the counts), logs and the progress bar go to stderr. Exit 0 on success, 1 when nothing valid
remains or ``--strict`` and something was quarantined, 2 on a bad argument or config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params, stage_tracking
from srvau.data.vau_bench import DATASETS, SPLITS, VauBenchFormatError, read_vau_bench

log = logging.getLogger(__name__)

data_app = typer.Typer(help="Datasets: the synthetic demo set and VAU-Bench imports.", no_args_is_help=True)

# Register ``ingest_cmd`` with these: they let ``--annotations`` take several values (see above).
INGEST_CONTEXT_SETTINGS = {"allow_extra_args": True, "allow_interspersed_args": True}


@data_app.command("synth")
def data_synth(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, help="output folder (default: paths.demo)"),
) -> None:
    """Write the synthetic demo set: H.264 mp4 videos + train/val/test CSVs in VAU-Bench format."""
    from srvau.data.synth import synthesize
    from srvau.tracking.runs import log_stage_metrics

    p = get_params(ctx)
    out = out or p.resolve(p.paths.demo)
    with stage_tracking(p, "synth"):
        counts = synthesize(out, p.synth, p.seed)
        log_stage_metrics("synth", {"videos": counts})
    typer.echo(json.dumps({"out": str(out), "videos": counts}))


@data_app.command("import-vau-bench")
def import_vau_bench(
    csv: Path = typer.Option(..., "--csv", help="a VAU-Bench annotation CSV", dir_okay=False),
    out: Path = typer.Option(..., "--out", help="output parquet (manifest annotation columns)"),
    dataset: str = typer.Option("auto", "--dataset", help=f"auto or one of {', '.join(DATASETS)}"),
    split: Optional[str] = typer.Option(None, "--split", help="train/val/test (default: from the file name)"),
    rejected: Optional[Path] = typer.Option(None, "--rejected", help="also write rejected records as JSONL"),
) -> None:
    """Normalise a VAU-Bench CSV; print the import summary as JSON on stdout.

    Each rejected record is logged on stderr with its line and reason. Exit 1 when no row is kept,
    2 when the file is not a VAU-Bench CSV or an argument is invalid.
    """
    from srvau.io import write_jsonl, write_parquet

    if dataset != "auto" and dataset not in DATASETS:
        raise typer.BadParameter(f"must be auto or one of {', '.join(DATASETS)}", param_hint="--dataset")
    if split is not None and split not in SPLITS:
        raise typer.BadParameter(f"must be one of {', '.join(SPLITS)}", param_hint="--split")
    try:
        result = read_vau_bench(csv, dataset=dataset, split=split)
    except (VauBenchFormatError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    for r in result.rejected:
        log.warning(
            "rejected %s line %d (%s): %s: %s", r["source"], r["line"], r["video_name"], r["reason"], r["detail"]
        )
    write_parquet(result.rows, out)
    if rejected is not None:
        write_jsonl(rejected, result.rejected)
    typer.echo(json.dumps(result.summary()))
    if result.rows.empty:
        raise fail(f"no valid row in {csv}", 1)


@data_app.command("placeholders")
def data_placeholders(
    csv: list[Path] = typer.Option(..., "--csv", help="a VAU-Bench annotation CSV (repeatable)", dir_okay=False),
    out: Path = typer.Option(..., "--out", help="the video root ingest reads (ingest.video_root)"),
    limit_per_csv: int = typer.Option(4, "--limit-per-csv", min=1, help="videos per CSV: its first N rows"),
) -> None:
    """Write small real mp4 placeholders for the first N videos of each CSV, where ingest looks them up
    (a rehearsal without the non-redistributable VAU-Bench videos); print the counts as JSON."""
    from srvau.data.placeholders import write_placeholders

    missing = [str(c) for c in csv if not c.is_file()]
    if missing:
        raise typer.BadParameter(f"annotation file(s) not found: {', '.join(missing)}", param_hint="--csv")
    try:
        counts = write_placeholders(csv, out, limit_per_csv)
    except VauBenchFormatError as e:
        raise fail(str(e)) from None
    typer.echo(json.dumps({"out": str(out), **counts}))


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
    from srvau.data.ingest import ingest
    from srvau.tracking.runs import log_stage_artifact, log_stage_metrics

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
    with stage_tracking(p, "ingest"):
        result = ingest(csvs, root, out_dir, p, strict=p.ingest.strict if strict is None else strict)
        log_stage_metrics("ingest", result.counts)
        log_stage_artifact(result.quarantine_path, artifact_path="ingest")
        typer.echo(json.dumps(result.counts))
        if result.failed:
            raise fail(f"{result.failure} (see {result.quarantine_path})", result.exit_code)
