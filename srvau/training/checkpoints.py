"""Checkpoints of the training stages (SFT and GRPO): one home for resume, pruning and export.

Layout of a stage's ``out_dir``::

    checkpoints/checkpoint-N            resumable Trainer checkpoints (every ``save_steps`` and at the last step)
    checkpoints/srvau_run.json          the run fingerprint that produced them
    checkpoints/incomplete-checkpoint-N a checkpoint whose write was interrupted, moved aside
    adapter/                            the LoRA adapter (PEFT, safetensors) + processor (LoRA runs only)
    merged/                             the plain model (safetensors) + processor: what later stages load

Rules, each with its reason:

* A checkpoint is resumed only when the run fingerprint matches (stage settings, model settings, the
  base checkpoint's *content*, the training data, the video policy, the seed); otherwise all
  checkpoints are removed and training starts over, so a changed ``params.yaml`` never resumes an
  unrelated run.
* A checkpoint counts only when it is complete. A kill during a write leaves a ``checkpoint-N``
  folder that ``transformers.trainer_utils.get_last_checkpoint`` would still pick (it checks names
  only), and every later resume would fail on it. Incomplete folders are renamed
  ``incomplete-checkpoint-N`` (a name outside the Trainer's ``checkpoint-*`` rotation) and the newest
  complete one is used.
* The last step is always checkpointed (:class:`SaveLastStep`), so a finished run is recognisable
  and re-running the stage (``dvc repro`` after an unrelated change) exports it without training.
* Under ``accelerate launch`` every rank runs the stage: only the main process prunes, merges and
  writes ``merged/``; the others wait at the barriers. Weights are gathered by ``Trainer.save_model``
  (DeepSpeed ZeRO-3 / FSDP shards are consolidated there), then merged from the saved folder.
* ``merged/`` and ``adapter/`` are written beside their final place and renamed into it, so a kill
  during export never leaves a half-written model where the next stage looks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from srvau.compat import ensure_torchvision
from srvau.io import sha256_file, write_json

ensure_torchvision()  # before transformers (srvau.compat)

from transformers import TrainerCallback  # noqa: E402

log = logging.getLogger(__name__)

RUN_FILE = "srvau_run.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MOVED_ASIDE_PREFIX = "incomplete-"
TRAINER_STATE = "trainer_state.json"
# Folders DeepSpeed / FSDP write their (sharded) weights and optimizer state into.
ENGINE_STATE_RE = re.compile(r"^(global_step\d+|pytorch_model_fsdp_\d+|optimizer_\d+)$")
# Settings that do not change what the checkpoints contain: free to change between a kill and a resume.
BOOKKEEPING = {
    "sft": {"output_dir", "resume", "logging_steps", "save_steps", "save_total_limit", "dataloader_num_workers",
            "keep_samples_mb"},
    "grpo": {"output_dir", "resume", "save_steps", "save_total_limit", "log_completions_every"},
}


# ----------------------------------------------------------------------------- fingerprint


def checkpoint_digest(name_or_path: str | Path) -> str:
    """Content identity of a checkpoint folder (a Hub id stands for itself).

    A base model rebuilt in the same folder (new tokenizer, new weights) must not resume checkpoints
    trained from the old one. Small files are hashed whole; weight files over 64 MiB by size plus their
    first and last MiB, which keeps a 7 GB checkpoint cheap while any re-save changes the digest
    (safetensors headers carry offsets, tails carry weights).
    """
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


def data_digest(data: str | Path | list[dict[str, Any]]) -> str:
    """Identity of the training data: a file's bytes, or the rows a stage derived from it."""
    if isinstance(data, (str, Path)):
        return sha256_file(data)[:16]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_fingerprint(params, stage: str, base_model: str | Path, data: str) -> str:
    """What a stage's checkpoints depend on: its settings (bookkeeping left out), the model settings,
    the base checkpoint's content, the data digest, the video policy and the seed."""
    section = {k: v for k, v in getattr(params, stage).model_dump().items() if k not in BOOKKEEPING[stage]}
    blob = json.dumps(
        {
            stage: section,
            "model": params.model.model_dump(),
            "base": f"{base_model}@{checkpoint_digest(base_model)}",
            "data": data,
            "video": params.video.model_dump(),
            "seed": params.seed,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- completeness


def step_of(checkpoint: str | Path | None) -> int:
    """The global step of a ``checkpoint-N`` folder (0 for None)."""
    return int(CHECKPOINT_RE.match(Path(checkpoint).name).group(1)) if checkpoint else 0


def _unreadable_safetensors(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()  # the header parsed and the file covers every tensor it lists
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot be loaded
        return f"{path.name} unreadable ({e})"
    return None


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def incomplete_reason(checkpoint: str | Path) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed, or None when it is complete.

    The Trainer writes weights, then optimizer/scheduler/RNG state, then ``trainer_state.json``; each
    is checked, so a folder cut at any point of that sequence (or truncated by a full disk) is caught.
    """
    ckpt = Path(checkpoint)
    state_file = ckpt / TRAINER_STATE
    if not state_file.is_file():
        return f"no {TRAINER_STATE}"
    try:
        state = json.loads(state_file.read_text())
    except (ValueError, OSError) as e:
        return f"{TRAINER_STATE} unreadable ({e})"
    if int(state.get("global_step", -1)) != step_of(ckpt):
        return f"{TRAINER_STATE} is for step {state.get('global_step')}"

    engine_dirs = [d for d in ckpt.iterdir() if d.is_dir() and ENGINE_STATE_RE.match(d.name)]
    for d in engine_dirs:  # DeepSpeed / FSDP: sharded weights and optimizer state
        if not any(_non_empty(f) for f in d.rglob("*")):
            return f"{d.name}/ holds no data"

    index = ckpt / "model.safetensors.index.json"
    weights = [ckpt / n for n in ("model.safetensors", "adapter_model.safetensors") if (ckpt / n).exists()]
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError) as e:
            return f"{index.name} unreadable ({e})"
        weights += [ckpt / s for s in sorted(shards)]
    if not weights and not engine_dirs:
        return "no weights file"
    for w in weights:
        if not w.is_file():
            return f"{w.name} missing"
        if bad := _unreadable_safetensors(w):
            return bad

    if not engine_dirs:
        for name in ("optimizer.pt", "scheduler.pt"):
            if not _non_empty(ckpt / name):
                return f"{name} missing or empty"
    return None


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, newest first."""
    found = [d for d in ckpt_dir.iterdir() if d.is_dir() and CHECKPOINT_RE.match(d.name)] if ckpt_dir.is_dir() else []
    return sorted(found, key=step_of, reverse=True)


def last_complete(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (None when there is none); incomplete ones are skipped."""
    for ckpt in _checkpoints(Path(ckpt_dir)):
        if incomplete_reason(ckpt) is None:
            return ckpt
    return None


def move_aside_incomplete(ckpt_dir: str | Path) -> list[Path]:
    """Rename every incomplete ``checkpoint-N`` to ``incomplete-checkpoint-N`` (logged); returns the new paths."""
    moved = []
    for ckpt in _checkpoints(Path(ckpt_dir)):
        why = incomplete_reason(ckpt)
        if why is None:
            continue
        target = ckpt.with_name(MOVED_ASIDE_PREFIX + ckpt.name)
        n = 1
        while target.exists():
            n += 1
            target = ckpt.with_name(f"{MOVED_ASIDE_PREFIX}{ckpt.name}.{n}")
        ckpt.rename(target)
        log.warning("checkpoint %s is incomplete (%s): moved aside to %s", ckpt, why, target.name)
        moved.append(target)
    return moved


def _remove_checkpoints(ckpt_dir: Path) -> None:
    for d in [*ckpt_dir.glob("checkpoint-*"), *ckpt_dir.glob(MOVED_ASIDE_PREFIX + "checkpoint-*")]:
        shutil.rmtree(d, ignore_errors=True)


def prepare(ckpt_dir: str | Path, fingerprint: str, resume: bool) -> Path | None:
    """Get ``ckpt_dir`` ready for a run and return the checkpoint to resume from (or None).

    Single-process part (call it on the main process only, or use :func:`resume_point`): checkpoints
    of another fingerprint, or all of them when resume is off, are removed; incomplete ones are moved
    aside; the fingerprint is stamped."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp = ckpt_dir / RUN_FILE
    try:
        previous = json.loads(stamp.read_text()).get("fingerprint") if stamp.is_file() else None
    except ValueError:
        previous = None  # a stamp cut by a kill: treat as unknown
    if (not resume or previous != fingerprint) and any(ckpt_dir.glob("*checkpoint-*")):
        why = "resume is off" if not resume else "settings, base model or data changed"
        log.warning("removing checkpoints in %s (%s)", ckpt_dir, why)
        _remove_checkpoints(ckpt_dir)
    move_aside_incomplete(ckpt_dir)
    write_json(stamp, {"fingerprint": fingerprint}, indent=None)
    return last_complete(ckpt_dir) if resume else None


def resume_point(ckpt_dir: str | Path, fingerprint: str, resume: bool) -> Path | None:
    """:func:`prepare` under ``accelerate launch``: the main process prunes first, then every rank
    reads the same answer (the others only read, never rename or delete)."""
    state = distributed_state()
    with state.main_process_first():
        if state.is_main_process:
            return prepare(ckpt_dir, fingerprint, resume)
        return last_complete(ckpt_dir) if resume else None


def distributed_state():
    """accelerate's process state, on CPU when there is no GPU (as the stages' TrainingArguments ask)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


class SaveLastStep(TrainerCallback):
    """Checkpoint the final step too (the Trainer saves every ``save_steps`` only), so a finished run
    is recognisable from its checkpoints and exported without training again."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True
        return control


# ----------------------------------------------------------------------------- engine and precision


def sharded_engine(args=None) -> str | None:
    """"deepspeed" or "fsdp" when one of them holds (and resumes) the weights, else None; from the
    TrainingArguments and from what ``accelerate launch`` put in the environment."""
    env = lambda k: os.environ.get(k, "").lower() in ("1", "true", "yes")  # noqa: E731
    if (args is not None and getattr(args, "deepspeed", None)) or env("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if (args is not None and getattr(args, "fsdp", None)) or env("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def training_dtype(model_cfg, args=None):
    """(model config to load the trainable model with, whether to train under bf16 autocast).

    Pure bf16 parameters with AdamW drop small updates (at lr 2e-5 only about a quarter of a model's
    weights change; see docs/pitfalls.md). Without DeepSpeed/FSDP, which keep fp32 master weights
    themselves, a bf16 model is loaded in fp32 and trained under bf16 autocast; the export saves it
    back in the configured dtype."""
    if model_cfg.torch_dtype == "bfloat16" and sharded_engine(args) is None:
        return model_cfg.model_copy(update={"torch_dtype": "float32"}), True
    return model_cfg, model_cfg.torch_dtype == "bfloat16"


def restore_full_weights(model, checkpoint: str | Path, model_cfg) -> None:
    """Load a full (non-LoRA) checkpoint's weights into ``model`` before ``trainer.train(resume_...)``.

    Works around transformers 5.23: ``save_pretrained`` writes Qwen2.5-VL weights under the legacy
    key names (``model.layers.*``, ``visual.*``) while ``Trainer._load_from_checkpoint`` loads them
    into the renamed modules without conversion and non-strictly: nothing is restored and a resumed
    run silently restarts from the base weights. ``from_pretrained`` converts the names; we copy its
    weights in strictly, loaded in the trained model's own dtype. The Trainer's own load then matches no key and
    changes nothing, and it still restores the optimizer, scheduler and RNG state. LoRA checkpoints
    (adapter files) are restored correctly by the Trainer and are left alone; so are DeepSpeed and
    FSDP, which load their own checkpoints (:func:`resume`).
    """
    from srvau.modeling import load_model

    ckpt = Path(checkpoint)
    if (ckpt / "adapter_model.safetensors").exists() or not (ckpt / "config.json").exists():
        return
    dtype = str(next(model.parameters()).dtype).rsplit(".", 1)[-1]  # fp32 masters stay fp32
    loaded = load_model(ckpt, model_cfg.model_copy(update={"torch_dtype": dtype}))
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    log.info("restored full weights from %s", ckpt)


def train(trainer, resume_from: Path | None, model_cfg) -> float:
    """``trainer.train``, resumed from ``resume_from`` when given; returns the training loss."""
    if resume_from is not None and sharded_engine(trainer.args) is None:
        restore_full_weights(trainer.model, resume_from, model_cfg)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return float(result.training_loss)


# ----------------------------------------------------------------------------- export


def _merge_from(source: Path, base_model: str, model_cfg, processor, lora: bool, adapter_dir: Path, merged_dir: Path):
    """Main process only: ``source`` (a checkpoint or ``Trainer.save_model`` output) -> ``adapter/``
    (LoRA) and ``merged/``, in the configured dtype."""
    from srvau.modeling import load_model

    staged = {d: d.with_name(f".{d.name}.tmp") for d in (adapter_dir, merged_dir)}
    for d in staged.values():
        shutil.rmtree(d, ignore_errors=True)
    if lora:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(load_model(base_model, model_cfg), str(source))
        tuned.save_pretrained(staged[adapter_dir], safe_serialization=True)
        processor.save_pretrained(staged[adapter_dir])
        model = tuned.merge_and_unload()
    else:
        model = load_model(source, model_cfg)  # legacy key names converted, configured dtype
    model.save_pretrained(staged[merged_dir], safe_serialization=True)
    processor.save_pretrained(staged[merged_dir])
    if not any(staged[merged_dir].glob("*.safetensors")):
        raise RuntimeError(f"the export wrote no safetensors file under {staged[merged_dir]}")
    for final, tmp in staged.items():
        if tmp.exists():
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    log.info("merged model written to %s", merged_dir)


def export(trainer, out_dir: str | Path, base_model: str, model_cfg, lora: bool, finished: Path | None = None):
    """Write ``adapter/`` (LoRA) and ``merged/`` from the trained model, or from the ``finished``
    checkpoint of a run that already reached its last step. Every rank must call it (the weights
    gather of ``Trainer.save_model`` is collective); only the main process writes. Returns
    ``(adapter_dir or None, merged_dir)``."""
    acc = trainer.accelerator
    out_dir = Path(out_dir)
    adapter_dir, merged_dir, staging = out_dir / "adapter", out_dir / "merged", out_dir / ".trained"
    if acc.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        if not lora:
            shutil.rmtree(adapter_dir, ignore_errors=True)  # left by an earlier LoRA run
    acc.wait_for_everyone()
    source = finished
    if source is None:
        trainer.save_model(str(staging))  # gathers ZeRO-3 / FSDP shards; the main process writes
        source = staging
    acc.wait_for_everyone()
    if acc.is_main_process:
        _merge_from(source, base_model, model_cfg, trainer.processing_class, lora, adapter_dir, merged_dir)
        shutil.rmtree(staging, ignore_errors=True)
        for d in Path(trainer.args.output_dir).glob(MOVED_ASIDE_PREFIX + "checkpoint-*"):
            shutil.rmtree(d, ignore_errors=True)  # the run finished: interrupted writes are of no use now
    acc.wait_for_everyone()
    return (adapter_dir if lora else None), merged_dir


# ----------------------------------------------------------------------------- the shared stage flow


def run_stage(trainer, resume_from: Path | None, max_steps: int, out_dir, base_model: str, model_cfg, lora: bool):
    """Train (or resume) and export; a run whose checkpoint already reached ``max_steps`` is exported
    from that checkpoint without training. Returns (training loss or NaN, adapter_dir, merged_dir)."""
    finished = resume_from if resume_from is not None and step_of(resume_from) >= max_steps else None
    if finished is not None:
        log.info("checkpoint %s already reached max_steps=%d: exporting it", finished, max_steps)
        trainer.state.global_step = step_of(finished)
        trainer.state.log_history = json.loads((finished / TRAINER_STATE).read_text()).get("log_history", [])
        loss = float("nan")
    else:
        loss = train(trainer, resume_from, model_cfg)
    adapter_dir, merged_dir = export(trainer, out_dir, base_model, model_cfg, lora, finished)
    return loss, adapter_dir, merged_dir
