"""The ``srvau`` command line: one command per pipeline stage (``dvc.yaml`` calls these).

Global options pick the configuration: ``--params`` (default: the project's params.yaml), ``--recipe``
(an overlay from configs/, also ``SRVAU_RECIPE``) and ``--set key=value`` for one-off overrides.
Logs go to stderr; stdout carries only what a command is asked to print (JSON summaries, paths).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from srvau.config import ConfigError, Params, load_params, parse_override

app = typer.Typer(help=__doc__.splitlines()[0], no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: the synthetic demo set and VAU-Bench imports.", no_args_is_help=True)
model_app = typer.Typer(help="Base models.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
eval_app = typer.Typer(help="Evaluation helpers: score VAU-R1-style prediction files.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

log = logging.getLogger("srvau")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("urllib3", "filelock", "httpx", "alembic", "matplotlib", "great_expectations", "mlflow.store.db"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def main(
    ctx: typer.Context,
    params: Optional[Path] = typer.Option(None, "--params", help="params file (default: project params.yaml)"),
    recipe: Optional[str] = typer.Option(None, "--recipe", envvar="SRVAU_RECIPE", help="recipe overlay, e.g. configs/paper-3b.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override one key, e.g. --set sft.max_steps=5 (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    _setup_logging(verbose)
    ctx.obj = {"params": params, "recipe": recipe, "set": set_}


def get_params(ctx: typer.Context) -> Params:
    """The resolved config for this invocation; a bad file exits 2 with the offending keys named."""
    obj = ctx.find_root().obj or {}
    try:
        overrides = dict(parse_override(s) for s in obj.get("set", []))
        return load_params(obj.get("params"), obj.get("recipe"), overrides)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML")) -> None:
    """Print the resolved configuration (params.yaml + recipe + overrides)."""
    import yaml

    p = get_params(ctx)
    typer.echo(json.dumps(p.dump(), indent=2) if as_json else yaml.safe_dump(p.dump(), sort_keys=False))


@data_app.command("synth")
def data_synth(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, help="output folder (default: paths.demo)"),
) -> None:
    """Write the synthetic demo set: H.264 mp4 videos + train/val/test CSVs in VAU-Bench format."""
    from srvau.data.synth import synthesize

    p = get_params(ctx)
    out = out or p.resolve(p.paths.demo)
    counts = synthesize(out, p.synth, p.seed)
    typer.echo(json.dumps({"out": str(out), "videos": counts}))


@model_app.command("build-tiny")
def model_build_tiny(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, help="output folder (default: model.base)"),
    corpus: list[Path] = typer.Option([], help="CSV(s) whose texts train the tokenizer (default: ingest.annotations)"),
) -> None:
    """Build the tiny Qwen2.5-VL offline (tokenizer, processor, random weights) and save it."""
    from srvau.modeling.tiny import build_tiny

    p = get_params(ctx)
    out = out or p.resolve(p.model.base)
    csvs = corpus or [p.resolve(c) for c in p.ingest.annotations]
    missing = [str(c) for c in csvs if not Path(c).exists()]
    if missing:
        typer.echo(f"error: corpus CSV not found: {', '.join(missing)} (run `srvau data synth` first)", err=True)
        raise typer.Exit(2)
    build_tiny(out, p, csvs)
    typer.echo(str(out))


registry_app = typer.Typer(help="The MLflow model registry: promotion between aliases.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@app.command("register")
def register_cmd(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Option(None, help="merged safetensors checkpoint (default: <grpo.output_dir>/merged)"),
    metrics: Optional[Path] = typer.Option(None, help="evaluation metrics.json (default: <paths.reports>/eval/metrics.json)"),
    out: Optional[Path] = typer.Option(None, help="where to write the registration record (default: <paths.reports>/registry.json)"),
) -> None:
    """Register the trained model in the MLflow registry (@challenger; @champion if it is at least as good)."""
    from srvau.tracking.registry import register
    from srvau.tracking.runs import stage_run

    p = get_params(ctx)
    checkpoint = checkpoint or p.resolve(p.grpo.output_dir) / "merged"
    metrics = metrics or p.resolve(p.paths.reports) / "eval" / "metrics.json"
    out = out or p.resolve(p.paths.reports) / "registry.json"
    with stage_run(p, "register"):
        try:
            result = register(checkpoint, metrics, p, out)
        except FileNotFoundError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    typer.echo(json.dumps(result))


@registry_app.command("promote")
def registry_promote(
    ctx: typer.Context,
    version: Optional[str] = typer.Option(None, help="model version (default: the @challenger)"),
    alias: str = typer.Option("champion", help="alias to move"),
    metric: Optional[str] = typer.Option(None, help="gate metric (default: register.gate_metric)"),
    force: bool = typer.Option(False, "--force", help="promote even if the gate metric is worse"),
) -> None:
    """Move an alias (default @champion) to a model version, gated on a metric."""
    from srvau.tracking.registry import promote

    p = get_params(ctx)
    try:
        typer.echo(json.dumps(promote(p, version=version, alias=alias, metric=metric, force=force)))
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def _register_stage_commands() -> None:
    """Commands defined next to their stage code (each module keeps heavy imports inside functions)."""
    from srvau.cot.cli import cot_cmd
    from srvau.data.cli import import_vau_bench
    from srvau.data.ingest_cli import ingest_cmd
    from srvau.evaluation.cli import eval_predictions
    from srvau.evaluation.eval_cli import evaluate_cmd
    from srvau.training.cli import sft_cmd
    from srvau.training.grpo_cli import grpo_cmd
    from srvau.validation.cli import validate_cmd

    data_app.command("import-vau-bench")(import_vau_bench)
    eval_app.command("predictions")(eval_predictions)
    # `--annotations a.csv b.csv`: the extra values arrive as context args
    app.command("ingest", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(ingest_cmd)
    app.command("cot")(cot_cmd)
    app.command("validate")(validate_cmd)
    app.command("sft")(sft_cmd)
    app.command("grpo")(grpo_cmd)
    app.command("evaluate")(evaluate_cmd)


_register_stage_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
