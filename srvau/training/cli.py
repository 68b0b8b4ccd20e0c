"""``srvau sft``: the typer command of the SFT stage (logic in :mod:`srvau.training.sft`).

Register it on the root app::

    from srvau.training.cli import sft_cmd
    app.command("sft")(sft_cmd)

Unset options default to params.yaml: ``--rocot`` to ``paths.rocot``, ``--base-model`` to ``model.base``
(a local folder relative to the project root, or a Hub id), ``--out`` to ``sft.output_dir``. stdout
carries one JSON object (the stage metrics); logs and progress bars go to stderr. ``--metrics FILE``
also writes them as JSON (for ``dvc metrics``). Exit 2 on a bad argument, config or missing input.
Multi-GPU: ``accelerate launch --config_file configs/accelerate/<cfg>.yaml -m srvau.cli sft``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def resolve_model(name_or_path: str, params) -> str:
    """A local folder (relative to the project root) when it exists there, else the name as given."""
    local = params.resolve(name_or_path)
    return str(local) if local.exists() else name_or_path


def sft_cmd(
    ctx: typer.Context,
    rocot: Optional[Path] = typer.Option(None, "--rocot", help="RoCoT dataset folder (default: paths.rocot)"),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="folder or Hub id (default: model.base)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: sft.output_dir)"),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="also write the metrics JSON here"),
) -> None:
    """Video SFT on RoCoT (TRL SFTTrainer): writes checkpoints/, adapter/ (LoRA) and merged/; resumes after a kill."""
    from srvau.cli import get_params  # lazy: srvau.cli imports this module to register the command

    p = get_params(ctx)
    rocot_dir = rocot or p.resolve(p.paths.rocot)
    if not (rocot_dir / "train.parquet").is_file():
        raise typer.BadParameter(f"{rocot_dir} holds no train.parquet (run `srvau cot` first)", param_hint="--rocot")
    model = resolve_model(base_model or p.model.base, p)
    out_dir = out or p.resolve(p.sft.output_dir)

    from srvau.training.sft import sft  # lazy: imports torch + TRL

    try:
        result = sft(rocot_dir, model, out_dir, p)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    text = json.dumps(result)
    if metrics:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(text + "\n")
    typer.echo(text)
