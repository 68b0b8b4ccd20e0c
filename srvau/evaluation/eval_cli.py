"""The ``srvau evaluate`` command (the stage); ``srvau eval predictions`` lives in srvau/evaluation/cli.py.

Register in srvau/cli.py with one line::

    app.command("evaluate")(evaluate_cmd)   # from srvau.evaluation.eval_cli import evaluate_cmd
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)


def parse_models(specs: list[str]) -> dict[str, str]:
    """``["base=models/tiny-base", "grpo=models/grpo"]`` -> ``{"base": ..., "grpo": ...}``."""
    out: dict[str, str] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label.strip() or not path.strip():
            raise typer.BadParameter(f"expected LABEL=CHECKPOINT, got {spec!r}", param_hint="--model")
        if label.strip() in out:
            raise typer.BadParameter(f"label {label.strip()!r} given twice", param_hint="--model")
        out[label.strip()] = path.strip()
    return out


def evaluate_cmd(
    ctx: typer.Context,
    manifest: Optional[Path] = typer.Option(None, help="manifest parquet (default: <paths.ingest>/manifest.parquet)"),
    model: list[str] = typer.Option([], "--model", help="LABEL=CHECKPOINT, repeatable (default: evaluate.models)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: evaluate.out_dir)"),
    report: Optional[Path] = typer.Option(None, help="HTML report path (default: evaluate.report)"),
) -> None:
    """Evaluate base/SFT/GRPO on the test split (batched generation, all tasks and prompt styles).

    Writes metrics.json (DVC metrics), predictions, plot data and the HTML report, logs them to
    MLflow and prints the report path on stdout. Missing checkpoints are skipped with a warning.
    """
    from srvau.cli import get_params
    from srvau.evaluation.inference import ManifestError
    from srvau.evaluation.judge import JudgeError
    from srvau.evaluation.stage import evaluate

    p = get_params(ctx)
    models = parse_models(model) if model else dict(p.evaluate.models)
    manifest = manifest or p.resolve(p.paths.ingest) / "manifest.parquet"
    out = out or p.resolve(p.evaluate.out_dir)
    report = report or p.resolve(p.evaluate.report)
    try:
        result = evaluate(manifest, models, out, p, report=report)
    except (ManifestError, FileNotFoundError, JudgeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    log.info("metrics: %s", result["metrics"])
    typer.echo(result["report"])
