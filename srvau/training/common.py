"""Training utilities shared by the SFT and GRPO stages: resume, MLflow logging, LoRA, freezing, merge,
and video loading from the frame cache.

Departures / decisions:

* LoRA targets only the *language model*'s attention and MLP projections. Qwen2.5-VL's vision blocks
  have ``gate_proj``/``up_proj``/``down_proj`` too, so a plain name list (PEFT's usual
  ``["q_proj", ..., "down_proj"]``) would also adapt the vision tower; we list the exact module paths.
* ``modules_to_save=["lm_head"]`` is an option for the randomly initialised tiny model: LoRA on a
  random network gives almost no learning signal (STACK.md) and TRL refuses LoRA *on* ``lm_head``.
  Paper scale (a pretrained 3B/7B) leaves it off.
* Freezing the vision tower freezes the ViT (patch embedding + blocks) but keeps the patch merger
  (the vision->language projector) trainable, as Qwen2.5-VL's own fine-tuning scripts do by default
  (``tune_mm_vision=False, tune_mm_mlp=True``).
* Transformers' built-in MLflow integration is not used (``report_to="none"``): it opens runs of its
  own and logs every TrainingArguments field; :class:`MlflowStepCallback` logs into the stage's run
  (``srvau.tracking.runs.stage_run``) with the stage prefix instead.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from srvau.compat import ensure_torchvision

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


# ----------------------------------------------------------------------------- resume


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder under ``output_dir`` (None when there is none yet)."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(output_dir)
    if not out.is_dir():
        return None
    ckpt = get_last_checkpoint(str(out))
    if ckpt:
        log.info("resuming from %s", ckpt)
    return ckpt


def resume_arg(output_dir: str | Path, resume: bool = True) -> str | None:
    """``resume_from_checkpoint`` for ``trainer.train``: the last checkpoint when auto-resume is on."""
    return last_checkpoint(output_dir) if resume else None


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
        metrics = {
            f"{self.stage}.{k}": float(v)
            for k, v in logs.items()
            if _forwarded(k) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        if metrics:
            mlflow.log_metrics(metrics, step=int(state.global_step))


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


# ----------------------------------------------------------------------------- saving


def merge_and_save(model, processor, out_dir: str | Path) -> Path:
    """Fold a PEFT adapter into the base weights (``merge_and_unload``) and save the plain model as
    safetensors with its processor, loadable by ``srvau.modeling.load_model``. A model without an
    adapter is saved as is."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(out)
    if not any(out.glob("*.safetensors")):
        raise RuntimeError(f"merge_and_save wrote no safetensors file under {out}")
    return out


# ----------------------------------------------------------------------------- video


def resolve_frames_path(frames_path: str | Path, params) -> Path:
    """RoCoT's ``frames_path`` is absolute or relative to the project root (``Params.resolve``)."""
    if frames_path is None or (isinstance(frames_path, float) and math.isnan(frames_path)) or str(frames_path) == "":
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


def checkpoint_digest(name_or_path: str | Path) -> str:
    """Content identity of a checkpoint folder (a Hub id stands for itself).

    Part of the resume fingerprints: a base model rebuilt in the same folder (new tokenizer, new
    weights) must not resume checkpoints trained from the old one. Small files are hashed whole;
    weight files over 64 MiB by size plus their first and last MiB, which keeps a 7 GB checkpoint cheap
    while any re-save changes the digest (safetensors headers carry offsets, tails carry weights).
    """
    import hashlib

    p = Path(name_or_path)
    if not p.is_dir():
        return str(name_or_path)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and "checkpoint-" not in str(x)):
        h.update(str(f.relative_to(p)).encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            if size <= 64 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:16]


def restore_full_weights(model, checkpoint: str | Path, model_cfg=None) -> None:
    """Load a full (non-LoRA) checkpoint's weights into ``model`` before ``trainer.train(resume_...)``.

    Works around transformers 5.23: ``save_pretrained`` writes Qwen2.5-VL weights under the legacy
    key names (``model.layers.*``, ``visual.*``) while ``Trainer._load_from_checkpoint`` loads them
    into the renamed modules without conversion and non-strictly: nothing is restored and a resumed
    run silently restarts from the base weights. ``from_pretrained`` converts the names; we copy its
    weights in strictly. The Trainer's own load then matches no key and changes nothing, and it still
    restores the optimizer, scheduler and RNG state. LoRA checkpoints (adapter files) are restored
    correctly by the Trainer and are left alone.
    """
    from srvau.modeling import load_model

    ckpt = Path(checkpoint)
    if (ckpt / "adapter_model.safetensors").exists() or not (ckpt / "config.json").exists():
        return
    loaded = load_model(ckpt, model_cfg)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    log.info("restored full weights from %s", ckpt)
