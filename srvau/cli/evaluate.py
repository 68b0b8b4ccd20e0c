"""Evaluation: the stage ``srvau evaluate`` and the helper ``srvau eval predictions``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params, stage_tracking

log = logging.getLogger(__name__)

eval_app = typer.Typer(help="Evaluation helpers: score VAU-R1-style prediction files.", no_args_is_help=True)


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
    MLflow (each model's headline metrics also against its MLflow logged model, found by checkpoint
    digest) and prints the report path on stdout. Missing checkpoints are skipped with a warning.
    """
    from srvau.evaluation.inference import ManifestError
    from srvau.evaluation.judge import JudgeError
    from srvau.evaluation.stage import available_models, evaluate
    from srvau.tracking.model_metrics import evaluation_dataset, log_evaluation_to_models

    p = get_params(ctx)
    models = parse_models(model) if model else dict(p.evaluate.models)
    manifest = manifest or p.resolve(p.paths.ingest) / "manifest.parquet"
    out = out or p.resolve(p.evaluate.out_dir)
    report = report or p.resolve(p.evaluate.report)
    with stage_tracking(p, "evaluate"):
        try:
            result = evaluate(manifest, models, out, p, report=report)
        except (ManifestError, FileNotFoundError, JudgeError) as e:
            raise fail(str(e)) from None
        dataset = evaluation_dataset(manifest, p.evaluate.split, p.evaluate.limit)
        log_evaluation_to_models(available_models(models, p), result["models"], p, dataset)
    log.info("metrics: %s", result["metrics"])
    typer.echo(result["report"])


@eval_app.command("predictions")
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
    from srvau.data.vau_bench import VauBenchFormatError
    from srvau.evaluation.metrics import TASKS
    from srvau.evaluation.predictions import PredictionsError, evaluate_predictions

    if task not in TASKS:
        raise typer.BadParameter(f"must be one of {', '.join(TASKS)}", param_hint="--task")
    try:
        result, report = evaluate_predictions(task, annotations, predictions, column)
    except (PredictionsError, VauBenchFormatError) as e:
        raise fail(str(e)) from None
    report.log(task)
    typer.echo(json.dumps(result))
    if result["n"] == 0:
        raise fail("no prediction row matched an annotation row with valid ground truth", 1)


@eval_app.command("compare")
def eval_compare(
    run: list[str] = typer.Option(..., "--run", help="LABEL=METRICS_JSON:STYLE, repeatable (style: the run's primary prompt style)"),
    out: Path = typer.Option(Path("reports/compare"), "--out", help="folder for compare.json and report.html"),
) -> None:
    """Recipes side by side: the headline metrics of several evaluation runs with 95% intervals."""
    from srvau.evaluation.compare import compare

    runs: dict[str, tuple[Path, str]] = {}
    for spec in run:
        label, sep, rest = spec.partition("=")
        path, sep2, style = rest.rpartition(":")
        if not sep or not sep2 or style not in ("reflect", "think", "direct"):
            raise typer.BadParameter(f"expected LABEL=METRICS_JSON:STYLE, got {spec!r}", param_hint="--run")
        runs[label] = (Path(path), style)
    try:
        result = compare(runs, out)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    typer.echo(json.dumps({"report": str(Path(out) / "report.html"), "runs": list(result["runs"])}))


@eval_app.command("demo-check")
def eval_demo_check(
    ctx: typer.Context,
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="metrics.json (default: <evaluate.out_dir>/metrics.json)"),
    model: str = typer.Option("grpo", "--model", help="the trained model's label in metrics.json"),
    baseline: str = typer.Option("sft", "--baseline", help="the label it is compared with"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """The demo's claims on one run: the metrics.json of its evaluation and the MLflow reward history
    of the GRPO run that trained the evaluated model, found by the weights' digest in the inference.json
    beside it (without one: the recipe's newest GRPO run; tracking.uri, tracking.experiment). Exit 0 when
    every claim holds, 1 when one does not, 2 when an input is missing."""
    from srvau.evaluation.demo_check import demo_criteria, grpo_reward_history, markdown, trained_model_reward_history
    from srvau.tracking.runs import recipe_label, tracking_uri

    p = get_params(ctx)
    path = Path(metrics or p.resolve(p.evaluate.out_dir) / "metrics.json")
    if not path.is_file():
        raise fail(f"no metrics.json at {path}: run the evaluate stage first (make run)")
    data = json.loads(path.read_text())
    inference = path.parent / "inference.json"
    digest = (json.loads(inference.read_text()).get(model) or {}).get("checkpoint_sha256") if inference.is_file() else None
    try:
        if digest:
            rewards = trained_model_reward_history(p, digest)
        else:
            typer.echo(f"{inference} records no weights digest for {model!r}: the reward is read from the newest "
                       f"GRPO run of recipe {recipe_label(p)!r}, which may not have trained the evaluated model", err=True)
            rewards = grpo_reward_history(tracking_uri(p), p.tracking.experiment, recipe_label(p))
        rows = demo_criteria(data, rewards, n_classes=len(p.synth.classes) + 1, model=model, baseline=baseline,
                             style=p.evaluate.primary_style)
    except LookupError as e:
        raise fail(str(e)) from None
    except KeyError as e:
        raise fail(f"{path} has no {e} entry: evaluate {model!r} and {baseline!r} with qa, grounding and "
                   "classification in the reflect style") from None
    typer.echo(json.dumps(rows, indent=1) if as_json else markdown(rows))
    if not all(r["holds"] for r in rows):
        raise typer.Exit(1)
