"""Training stages: ``srvau sft`` (logic in srvau.training.sft) and ``srvau grpo`` (srvau.training.grpo).

Unset options default to params.yaml: ``--rocot`` to ``paths.rocot``; sft's ``--base-model`` to
``model.base`` (a local folder relative to the project root, or a Hub id) and ``--out`` to
``sft.output_dir``; grpo's ``--init-model`` to the SFT stage's merged model (``<sft.output_dir>/merged``)
and ``--out`` to ``grpo.output_dir``. stdout carries one JSON object (the stage's metrics / summary);
logs and progress bars go to stderr. The merged model becomes an MLflow logged model of the stage's run
(srvau.tracking.models), where evaluate and register find it by its content. Exit 2 on a bad argument,
config or missing input; every params value is checked before the model loads. Multi-process (every rank
runs the command; only the main process tracks): ``accelerate launch --config_file configs/accelerate/<cfg>.yaml -m srvau.cli sft``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params, stage_tracking


def resolve_model(name_or_path: str, params) -> str:
    """A local folder (relative to the project root) when it exists there, else the name as given."""
    local = params.resolve(name_or_path)
    return str(local) if local.exists() else name_or_path


def _rocot_dir(rocot: Optional[Path], p) -> Path:
    rocot_dir = rocot or p.resolve(p.paths.rocot)
    if not (rocot_dir / "train.parquet").is_file():
        raise typer.BadParameter(f"{rocot_dir} holds no train.parquet (run `srvau cot` first)", param_hint="--rocot")
    return rocot_dir


def sft_cmd(
    ctx: typer.Context,
    rocot: Optional[Path] = typer.Option(None, "--rocot", help="RoCoT dataset folder (default: paths.rocot)"),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="folder or Hub id (default: model.base)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: sft.output_dir)"),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="also write the metrics JSON here"),
) -> None:
    """Video SFT on RoCoT (TRL SFTTrainer): writes checkpoints/, adapter/ (LoRA) and merged/; resumes after a kill."""
    p = get_params(ctx, training=True)
    rocot_dir = _rocot_dir(rocot, p)
    model = resolve_model(base_model or p.model.base, p)
    out_dir = out or p.resolve(p.sft.output_dir)

    from srvau.tracking.models import log_stage_model
    from srvau.training.sft import sft  # lazy: imports torch + TRL

    with stage_tracking(p, "sft"):
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout is for the summary
                result = sft(rocot_dir, model, out_dir, p)
                log_stage_model(out_dir / "merged", p, "sft")
        except (FileNotFoundError, ValueError) as e:
            raise fail(str(e)) from None
    text = json.dumps(result)
    if metrics:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(text + "\n")
    typer.echo(text)


def grpo_cmd(
    ctx: typer.Context,
    rocot: Optional[Path] = typer.Option(None, "--rocot", help="RoCoT dataset folder (default: paths.rocot)"),
    init_model: Optional[str] = typer.Option(
        None, "--init-model", help="checkpoint to start from: folder or Hub id (default: <sft.output_dir>/merged)"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: grpo.output_dir)"),
) -> None:
    """Reflection-aware GRPO on video: rewards by name from grpo.reward_funcs; writes adapter/ and merged/."""
    p = get_params(ctx, training=True)
    rocot_dir = _rocot_dir(rocot, p)
    model = init_model or str(p.resolve(p.sft.output_dir) / "merged")
    out_dir = out or p.resolve(p.grpo.output_dir)

    from srvau.tracking.models import log_stage_model
    from srvau.training.grpo import grpo  # lazy: imports torch + TRL

    with stage_tracking(p, "grpo"):
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout is for the summary
                summary = grpo(rocot_dir, model, out_dir, p)
                log_stage_model(out_dir / "merged", p, "grpo")
        except FileNotFoundError as e:
            raise fail(str(e)) from None
    typer.echo(json.dumps(summary))
