"""Typer commands of the evaluation stage, registered by :mod:`srvau.cli` (``srvau eval ...``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from srvau.data.vau_bench import VauBenchFormatError
from srvau.evaluation.metrics import TASKS
from srvau.evaluation.predictions import PredictionsError, evaluate_predictions


def eval_predictions(
    task: str = typer.Option(..., "--task", help="qa, tag (temporal grounding) or cls"),
    annotations: Path = typer.Option(
        ..., "--annotations", help="VAU-Bench annotation CSV (or imported .parquet)", dir_okay=False
    ),
    predictions: Path = typer.Option(
        ..., "--predictions", help="prediction CSV with 'Video Name' and an answer column", dir_okay=False
    ),
    column: Optional[str] = typer.Option(
        None, "--column", help="answer column (default: QA answer / Temporal Grounding / CLS answer)"
    ),
) -> None:
    """Score a VAU-R1-style prediction CSV; print one JSON object on stdout.

    Percentages are 0-100, rounded to 2 decimals; ``n`` is the number of prediction rows scored.
    Rows not scored (unmatched, duplicate, no ground truth) are reported on stderr. Exit 1 when no
    row could be scored, 2 on unreadable input.
    """
    if task not in TASKS:
        raise typer.BadParameter(f"must be one of {', '.join(TASKS)}", param_hint="--task")
    try:
        result, report = evaluate_predictions(task, annotations, predictions, column)
    except (PredictionsError, VauBenchFormatError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    report.log(task)
    typer.echo(json.dumps(result))
    if result["n"] == 0:
        typer.echo("error: no prediction row matched an annotation row with valid ground truth", err=True)
        raise typer.Exit(1)
