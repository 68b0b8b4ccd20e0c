"""``srvau model build-tiny``: the offline tiny base model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params, stage_tracking

model_app = typer.Typer(help="Base models.", no_args_is_help=True)


@model_app.command("build-tiny")
def model_build_tiny(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, help="output folder (default: model.base)"),
    corpus: list[Path] = typer.Option([], help="CSV(s) whose texts train the tokenizer (default: ingest.annotations)"),
) -> None:
    """Build the tiny Qwen2.5-VL offline (tokenizer, processor, random weights) and save it."""
    p = get_params(ctx)
    out = out or p.resolve(p.model.base)
    csvs = corpus or [p.resolve(c) for c in p.ingest.annotations]
    missing = [str(c) for c in csvs if not Path(c).exists()]
    if missing:
        raise fail(f"corpus CSV not found: {', '.join(missing)} (run `srvau data synth` first)")
    from srvau.modeling.tiny import build_tiny  # lazy: imports torch + transformers

    with stage_tracking(p, "build_tiny"):
        build_tiny(out, p, csvs)
    typer.echo(str(out))
