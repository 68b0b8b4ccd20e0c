"""Training utilities shared by the SFT and GRPO stages: MLflow logging, LoRA, freezing, and video
loading from the frame cache. Checkpoints, resume and export live in :mod:`srvau.training.checkpoints`.

Departures / decisions:

* LoRA targets only the *language model*'s attention and MLP projections. Qwen2.5-VL's vision blocks
  have ``gate_proj``/``up_proj``/``down_proj`` too, so a plain name list (PEFT's usual
  ``["q_proj", ..., "down_proj"]``) would also adapt the vision tower; we list the exact module paths.
* ``modules_to_save=["lm_head"]`` is an option for the randomly initialised tiny model: LoRA on a
  random network gives almost no learning signal (docs/pitfalls.md) and TRL refuses LoRA *on* ``lm_head``.
  Paper scale (a pretrained 3B/7B) leaves it off.
* Freezing the vision tower freezes the ViT (patch embedding + blocks) but keeps the patch merger
  (the vision->language projector) trainable, as Qwen2.5-VL's own fine-tuning scripts do by default
  (``tune_mm_vision=False, tune_mm_mlp=True``).
* Transformers' built-in MLflow integration is not used (``report_to="none"``): it opens runs of its
  own and logs every TrainingArguments field; :class:`MlflowStepCallback` and :func:`log_summary` log
  into the *active* run (the CLI opens the stage's run, ``srvau.tracking.runs.stage_run``) with the
  stage prefix instead, from the main process only: under ``accelerate launch`` the other ranks have
  no run and must not start one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from srvau.compat import ensure_torchvision
from srvau.contract.vocab import is_missing

ensure_torchvision()  # before transformers: trainer imports pull torchvision (srvau.compat)

from transformers import TrainerCallback  # noqa: E402

log = logging.getLogger(__name__)

LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_PREFIXES = ("visual", "vision_tower", "vision_model")
# Trainer log keys forwarded to MLflow (prefix match): loss, lr, gradient norm, TRL's GRPO metrics.
LOGGED_PREFIXES = (
    "loss",
    "learning_rate",
    "grad_norm",
    "reward",
    "rewards/",
    "kl",
    "completions/",
    "difficulty/",
    "completion_length",
    "entropy",
    "mean_token_accuracy",
    "num_tokens",
    "frac_reward_zero_std",
    "clip_ratio",
    "train_loss",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
)


# ----------------------------------------------------------------------------- MLflow


def _forwarded(key: str) -> bool:
    return key.startswith(LOGGED_PREFIXES)


class MlflowStepCallback(TrainerCallback):
    """Per-step trainer logs (loss, lr, rewards, KL, completion lengths) into the *active* MLflow run,
    as ``<stage>.<key>`` at the trainer's global step. Does nothing when no run is active."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        from srvau.tracking.runs import log_stage_metrics

        metrics = {
            k: float(v)
            for k, v in logs.items()
            if _forwarded(k) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        if metrics:  # through the tracking helper: a dead tracking server must not stop training
            log_stage_metrics(self.stage, metrics, step=int(state.global_step))


def log_summary(stage: str, metrics: dict[str, Any], is_main_process: bool) -> bool:
    """A stage's final numbers into the active MLflow run as ``<stage>.<key>`` (main process only;
    NaN and non-numbers left out). Returns whether anything was logged: without an active run this
    does nothing rather than let ``mlflow.log_metrics`` start a run of its own."""
    import mlflow

    if not is_main_process or mlflow.active_run() is None:
        return False
    from srvau.tracking.runs import log_stage_metrics

    numbers = {
        k: v for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    log_stage_metrics(stage, numbers)
    return True


# ----------------------------------------------------------------------------- LoRA and freezing


def _is_vision(name: str) -> bool:
    parts = name.split(".")
    return any(p in VISION_PREFIXES for p in parts)


def language_lora_targets(model, suffixes: Sequence[str] = LM_TARGETS) -> list[str]:
    """Exact module paths of the language model's Linear projections named in ``suffixes``."""
    import torch

    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in suffixes and not _is_vision(name)
        and name.rsplit(".", 1)[-1] != "lm_head"
    ]
    if not names:
        raise ValueError(f"no language-model Linear modules named {list(suffixes)} found in {type(model).__name__}")
    return names


def lora_config(
    model,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    targets: Sequence[str] = LM_TARGETS,
    train_lm_head: bool = False,
):
    """PEFT LoRA settings for a causal LM restricted to the language model (module docstring)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=language_lora_targets(model, targets),
        modules_to_save=["lm_head"] if train_lm_head else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def vision_parameters(model) -> Iterable[tuple[str, Any]]:
    """The vision tower's parameters except the patch merger (the projector into the language model)."""
    for name, p in model.named_parameters():
        if _is_vision(name) and ".merger." not in f".{name}":
            yield name, p


def freeze_vision(model) -> int:
    """Stop gradients into the ViT; returns how many parameters were frozen."""
    n = 0
    for _, p in vision_parameters(model):
        p.requires_grad_(False)
        n += p.numel()
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no vision tower parameters to freeze")
    return n


def trainable_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}


# ----------------------------------------------------------------------------- video


def resolve_frames_path(frames_path: str | Path, params) -> Path:
    """RoCoT's ``frames_path`` is absolute or relative to the project root (``Params.resolve``)."""
    if is_missing(frames_path):
        raise ValueError("sample has no frames_path: the video was not ingested into the frame cache")
    return params.resolve(frames_path)


def load_video(frames_path: str | Path, params):
    """Sampled frames (uint8 ``(T, H, W, 3)``) and their metadata from the frame cache
    (``srvau.video.cache.load_frames``)."""
    path = resolve_frames_path(frames_path, params)
    try:
        from srvau.video.cache import load_frames
    except ImportError as e:
        raise RuntimeError(
            "srvau.video.cache (the frame cache) is not available, so cached frames cannot be read; "
            f"run `srvau ingest` with a version that builds the cache ({e})"
        ) from e
    if not path.exists():
        raise FileNotFoundError(f"frame cache entry {path} does not exist; re-run `srvau ingest`")
    return load_frames(path)
