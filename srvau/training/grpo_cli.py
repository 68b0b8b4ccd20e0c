"""``srvau grpo``: the typer command of the GRPO stage (logic in :mod:`srvau.training.grpo`).

Register it on the root app::

    from srvau.training.grpo_cli import grpo_cmd
    app.command("grpo")(grpo_cmd)

Unset options default to params.yaml: ``--rocot`` to ``paths.rocot``, ``--init-model`` to the SFT
stage's merged model (``<sft.output_dir>/merged``), ``--out`` to ``grpo.output_dir``. stdout carries
one JSON object (the stage summary); logs and progress bars go to stderr. Exit 2 on a bad argument,
config or missing input. Multi-GPU: ``accelerate launch --config_file configs/accelerate/zero2.yaml -m srvau.cli grpo``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer


def grpo_cmd(
    ctx: typer.Context,
    rocot: Optional[Path] = typer.Option(None, "--rocot", help="RoCoT dataset folder (default: paths.rocot)"),
    init_model: Optional[str] = typer.Option(
        None, "--init-model", help="checkpoint to start from: folder or Hub id (default: <sft.output_dir>/merged)"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: grpo.output_dir)"),
) -> None:
    """Reflection-aware GRPO on video: rewards by name from grpo.reward_funcs; writes adapter/ and merged/."""
    from srvau.cli import get_params  # lazy: srvau.cli imports this module to register the command

    p = get_params(ctx)
    rocot_dir = rocot or p.resolve(p.paths.rocot)
    if not (rocot_dir / "train.parquet").is_file():
        raise typer.BadParameter(f"{rocot_dir} holds no train.parquet (run `srvau rocot` first)", param_hint="--rocot")
    model = init_model or str(p.resolve(p.sft.output_dir) / "merged")
    out_dir = out or p.resolve(p.grpo.output_dir)

    from srvau.training.grpo import grpo  # lazy: imports torch + TRL

    try:
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout is for the summary
            summary = grpo(rocot_dir, model, out_dir, p)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary))
