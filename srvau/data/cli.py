"""Typer commands of the data stage, registered by :mod:`srvau.cli` (``srvau data ...``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from srvau.data.vau_bench import DATASETS, SPLITS, VauBenchFormatError, read_vau_bench

log = logging.getLogger(__name__)


def write_parquet(df, out: Path) -> None:
    """Write atomically: a crash never leaves a half-written file where DVC expects an output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(out)


def write_jsonl(records: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)


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
    if dataset != "auto" and dataset not in DATASETS:
        raise typer.BadParameter(f"must be auto or one of {', '.join(DATASETS)}", param_hint="--dataset")
    if split is not None and split not in SPLITS:
        raise typer.BadParameter(f"must be one of {', '.join(SPLITS)}", param_hint="--split")
    try:
        result = read_vau_bench(csv, dataset=dataset, split=split)
    except (VauBenchFormatError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for r in result.rejected:
        log.warning(
            "rejected %s line %d (%s): %s: %s", r["source"], r["line"], r["video_name"], r["reason"], r["detail"]
        )
    write_parquet(result.rows, out)
    if rejected is not None:
        write_jsonl(result.rejected, rejected)
    typer.echo(json.dumps(result.summary()))
    if result.rows.empty:
        typer.echo(f"error: no valid row in {csv}", err=True)
        raise typer.Exit(1)
