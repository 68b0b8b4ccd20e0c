"""The ``srvau`` command line: one command per pipeline stage (``dvc.yaml`` calls these).

Global options pick the configuration: ``--params`` (default: the project's params.yaml, composed from
configs/), ``--recipe NAME`` (compose configs/recipe/NAME.yaml in process instead, also ``SRVAU_RECIPE``)
and ``--set key=value`` for one-off overrides.
Logs go to stderr; stdout carries only what a command is asked to print (JSON summaries, paths).
"""

from __future__ import annotations

import atexit
import gc
from pathlib import Path
from typing import Optional

import typer

from srvau.cli import config, cot, data, evaluate, model, registry, train, validate
from srvau.cli.context import CliOptions, setup_logging
from srvau.cli.launch import launch_app

app = typer.Typer(help=__doc__.splitlines()[0], no_args_is_help=True, add_completion=False)

# A command's process ends right after its body: the interpreter's last garbage collections would walk
# every object its libraries made (measured ~1 s with MLflow, ~5 s with torch and TRL on a busy 2-core
# machine) to free memory the OS frees anyway. Freezing them skips that walk; the exit handlers
# registered after this one (MLflow ending the run, logging's flush) still run first.
atexit.register(gc.freeze)


@app.callback()
def main(
    ctx: typer.Context,
    params: Optional[Path] = typer.Option(None, "--params", help="params file (default: project params.yaml)"),
    recipe: Optional[str] = typer.Option(None, "--recipe", envvar="SRVAU_RECIPE", help="compose this recipe (configs/recipe/NAME.yaml) instead of reading params.yaml, e.g. paper-3b"),
    set_: list[str] = typer.Option([], "--set", help="override one key, e.g. --set sft.max_steps=5 (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    setup_logging(verbose)
    ctx.obj = CliOptions(params=params, recipe=recipe, overrides=list(set_))


# Groups
app.add_typer(config.config_app, name="config")
app.add_typer(data.data_app, name="data")
app.add_typer(model.model_app, name="model")
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(registry.registry_app, name="registry")

# Stages, in pipeline order (``srvau data synth`` and ``srvau model build-tiny`` are the first two)
app.command("ingest", context_settings=data.INGEST_CONTEXT_SETTINGS)(data.ingest_cmd)
app.command("cot")(cot.cot_cmd)
app.command("validate")(validate.validate_cmd)
app.command("sft")(train.sft_cmd)
app.command("grpo")(train.grpo_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.command("register")(registry.register_cmd)
# sft, grpo and evaluate started as params' `launch` section says (in-process or accelerate ranks; dvc.yaml uses these)
app.add_typer(launch_app, name="launch")
