"""The SFT stage: TRL ``SFTTrainer`` on RoCoT traces with real video inputs from the frame cache.

TRL's SFTTrainer has no video path, so the trainer gets the raw RoCoT rows
(``remove_unused_columns=False``, ``dataset_kwargs={"skip_prepare_dataset": True}``) and
:class:`VideoSFTCollator` builds each batch: cached frames (``srvau.video.cache``) go into the
conversation, the processor's chat template renders and tokenises it, and the ``{% generation %}``
markers of the template give the assistant mask (``return_assistant_tokens_mask``): labels are -100
everywhere but the assistant turn (its text and closing ``<|im_end|>``). ``mm_token_type_ids`` stays
in the batch: without it Qwen2.5-VL silently skips its 3-D (M-RoPE) positions (STACK.md). A template
without generation markers (the Hub Qwen2.5-VL one) is swapped for TRL's training template.

Layout of ``out_dir``::

    checkpoints/checkpoint-N   resumable Trainer checkpoints (every ``save_steps``, ``save_total_limit`` kept)
    checkpoints/srvau_run.json fingerprint of the settings + data that produced them
    adapter/                   the LoRA adapter (PEFT, safetensors) + processor (LoRA runs only)
    merged/                    the merged model (safetensors) + processor: what later stages load

Resume: a run killed mid-way and started again continues from the newest checkpoint, *when* the
fingerprint (SFT settings, base model, training data) matches; otherwise the stale checkpoints are
removed and training starts over, so a changed ``params.yaml`` never resumes an unrelated run.

Choices: full fine-tuning is the default with the ViT frozen by option (``sft.freeze_vision``);
LoRA on the language model only is available (``sft.lora: true``; measured on the demo, 300 steps:
full FT at lr 3e-3 and LoRA r=16 + trained lm_head at lr 1e-2 both reach 100% well-formed traces,
full FT in ~2/3 of the time; LoRA at lr 2e-3 only 11% after 200 steps). Frames come from
our one sampling policy (``srvau.video.sampling``) shared with GRPO and evaluation, not from
qwen-vl-utils' defaults. Samples longer than ``max_length`` lose the tail of their answer, never video
tokens (a sample whose video alone exceeds it is an error).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from srvau.compat import ensure_torchvision

ensure_torchvision()

import torch  # noqa: E402

from srvau.config import Params  # noqa: E402
from srvau.modeling.inputs import even_frames, video_metadata  # noqa: E402
from srvau.training.common import (  # noqa: E402
    MlflowStepCallback,
    freeze_vision,
    last_checkpoint,
    load_video,
    lora_config,
    merge_and_save,
    trainable_parameters,
)

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "completion", "frames_path")
RUN_FILE = "srvau_run.json"
# Settings that do not change what the checkpoints contain: free to change between a kill and a resume.
_NOT_FINGERPRINTED = {"output_dir", "resume", "logging_steps", "save_steps", "save_total_limit", "dataloader_num_workers"}

VideoLoader = Callable[[str], tuple[Any, dict[str, Any]]]


# ----------------------------------------------------------------------------- collator


def _video_conversation(system: str | None, prompt: str, completion: str, frames) -> list[dict[str, Any]]:
    """One training conversation; the decoded frames ride inside the video content block."""
    msgs: list[dict[str, Any]] = []
    if system:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    msgs.append({"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": prompt}]})
    msgs.append({"role": "assistant", "content": [{"type": "text", "text": completion}]})
    return msgs


def training_chat_template(processor) -> str | None:
    """None when the processor's template already marks the assistant turn with ``{% generation %}``;
    otherwise TRL's training variant of it (TRL ships one for Qwen2.5-VL)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(processor.chat_template or ""):
        return None
    tmpl = get_training_chat_template(processor)
    if tmpl is None or not has_generation_markers(tmpl):
        raise ValueError(
            "the chat template has no {% generation %} markers and TRL has no training template for it: "
            "the prompt cannot be masked out of the SFT loss"
        )
    return tmpl


@dataclass
class VideoSFTCollator:
    """RoCoT rows -> a Qwen2.5-VL training batch (labels on the assistant turn only)."""

    processor: Any
    video_loader: VideoLoader
    max_length: int | None = None
    chat_template: str | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        convs, metas = [], []
        for ex in examples:
            frames, meta = self.video_loader(ex["frames_path"])
            frames, meta = even_frames(frames, meta)
            convs.append(_video_conversation(ex.get("system"), ex["prompt"], ex["completion"], frames))
            metas.append(video_metadata(meta, len(frames)))
        batch = self.processor.apply_chat_template(
            convs,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={
                "video_metadata": metas,
                "do_sample_frames": False,  # frames were sampled once, by the cache's policy
                "padding": True,
                "padding_side": "right",
            },
        )
        assistant = torch.as_tensor(batch.pop("assistant_masks")).bool()
        labels = batch["input_ids"].clone()
        labels[(batch["attention_mask"] == 0) | ~assistant] = -100
        empty = [ex.get("sample_id", i) for i, ex in enumerate(examples) if not assistant[i].any()]
        if empty:
            raise ValueError(f"no assistant tokens found for sample(s) {empty}: check the chat template")
        batch["labels"] = labels
        return self._truncate(dict(batch))

    def _truncate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = self.max_length
        if n is None or batch["input_ids"].shape[1] <= n:
            return batch
        mm = batch.get("mm_token_type_ids")
        if mm is not None and (mm[:, n:] != 0).any():
            raise ValueError(
                f"a sample's video tokens reach past max_length={n}: raise sft.max_length or lower the "
                "video pixel/frame budget (video.*)"
            )
        for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids"):
            if key in batch:
                batch[key] = batch[key][:, :n]
        return batch


# ----------------------------------------------------------------------------- data


def load_split(rocot_dir: Path, split: str = "train"):
    """A RoCoT split as a ``datasets.Dataset`` (``srvau.cot.dataset.load_rocot`` when present)."""
    try:
        from srvau.cot.dataset import load_rocot
    except ImportError:
        load_rocot = None
    if load_rocot is not None:
        ds = load_rocot(rocot_dir, split)
    else:
        from datasets import Dataset

        path = Path(rocot_dir) / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"RoCoT split {split!r} not found: {path} (run `srvau rocot` first)")
        ds = Dataset.from_parquet(str(path))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"RoCoT split {split!r} lacks column(s) {missing}")
    if len(ds) == 0:
        raise ValueError(f"RoCoT split {split!r} under {rocot_dir} is empty")
    return ds


def _data_digest(rocot_dir: Path, split: str) -> str:
    path = Path(rocot_dir) / f"{split}.parquet"
    if not path.is_file():
        return "unknown"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(params: Params, base_model: str, data_digest: str) -> str:
    """What the checkpoints depend on: SFT settings, model settings, base model, data, seed."""
    sft = {k: v for k, v in params.sft.model_dump().items() if k not in _NOT_FINGERPRINTED}
    blob = json.dumps(
        {"sft": sft, "model": params.model.model_dump(), "base": str(base_model), "data": data_digest,
         "seed": params.seed, "video": params.video.model_dump()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_checkpoint_dir(ckpt_dir: Path, fingerprint: str, resume: bool) -> str | None:
    """The checkpoint to resume from, or None; removes checkpoints made with other settings."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_file = ckpt_dir / RUN_FILE
    previous = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
    last = last_checkpoint(ckpt_dir)
    if last and (not resume or previous != fingerprint):
        why = "resume is off" if not resume else "settings or data changed"
        log.warning("removing checkpoints in %s (%s)", ckpt_dir, why)
        for d in ckpt_dir.glob("checkpoint-*"):
            shutil.rmtree(d, ignore_errors=True)
        last = None
    run_file.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return last


def _step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0


# ----------------------------------------------------------------------------- trainer


def sft_args(params: Params, ckpt_dir: Path):
    from trl import SFTConfig

    s = params.sft
    warmup = s.warmup_steps if s.warmup_steps < 1 else int(s.warmup_steps)
    return SFTConfig(
        output_dir=str(ckpt_dir),
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler_type,
        warmup_steps=warmup,
        weight_decay=s.weight_decay,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        activation_checkpointing=s.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        bf16=s.bf16,
        logging_steps=s.logging_steps,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=s.save_total_limit,
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",  # MLflow through MlflowStepCallback, into the stage's run
        remove_unused_columns=False,  # the collator needs frames_path & co.
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,  # truncation happens in the collator, after the video tokens
        dataloader_num_workers=s.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        assistant_only_loss=False,  # the collator masks the prompt itself
    )


def build_trainer(
    dataset,
    base_model: str | Path,
    ckpt_dir: Path,
    params: Params,
    video_loader: VideoLoader | None = None,
):
    """An ``SFTTrainer`` for ``dataset`` (RoCoT rows) on ``base_model``: LoRA or full FT per ``params.sft``."""
    from trl import SFTTrainer

    from srvau.modeling import load_model, load_processor

    s = params.sft
    processor = load_processor(base_model, params.model)
    model = load_model(base_model, params.model)
    if s.freeze_vision:
        n = freeze_vision(model)
        log.info("froze %.2f M vision parameters", n / 1e6)
    peft_config = (
        lora_config(model, r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout, train_lm_head=s.lora_lm_head)
        if s.lora
        else None
    )
    collator = VideoSFTCollator(
        processor=processor,
        video_loader=video_loader or functools.partial(load_video, params=params),
        max_length=s.max_length,
        chat_template=training_chat_template(processor),
    )
    trainer = SFTTrainer(
        model=model,
        args=sft_args(params, ckpt_dir),
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[MlflowStepCallback("sft")],
    )
    log.info("SFT: %s", trainable_parameters(trainer.model))
    return trainer


# ----------------------------------------------------------------------------- stage


def sft(
    rocot_dir: Path,
    base_model: str,
    out_dir: Path,
    params: Params,
    split: str = "train",
    video_loader: VideoLoader | None = None,
) -> dict[str, float]:
    """Run the SFT stage inside its MLflow run (``stage_run``); returns its metrics.

    Writes ``out_dir/{checkpoints,adapter,merged}`` (module docstring). Resumes automatically from the
    newest matching checkpoint when ``params.sft.resume`` is on. Per-step loss and learning rate go to
    MLflow as ``sft.loss`` / ``sft.learning_rate``; the final metrics as ``sft.<name>``.
    """
    from srvau.tracking.runs import log_stage_metrics, stage_run

    out_dir = Path(out_dir)
    dataset = load_split(Path(rocot_dir), split)
    ckpt_dir = out_dir / "checkpoints"
    from srvau.training.common import checkpoint_digest, restore_full_weights

    base_id = f"{base_model}@{checkpoint_digest(base_model)}"
    fingerprint = run_fingerprint(params, base_id, _data_digest(Path(rocot_dir), split))
    resume_from = prepare_checkpoint_dir(ckpt_dir, fingerprint, params.sft.resume)
    start_step = _step_of(resume_from)
    if resume_from:
        log.info("resuming SFT from %s (step %d of %d)", resume_from, start_step, params.sft.max_steps)

    with stage_run(params, "sft"):
        trainer = build_trainer(dataset, base_model, ckpt_dir, params, video_loader)
        if resume_from:
            restore_full_weights(trainer.model, resume_from, params.model)
        t0 = time.perf_counter()
        if resume_from and start_step >= params.sft.max_steps:
            # A finished run (e.g. `dvc repro` after an unrelated dep changed): export, do not train on.
            log.info("checkpoint %s already reached max_steps=%d: exporting it", resume_from, params.sft.max_steps)
            trainer.state.global_step = start_step
            training_loss = float("nan")
        else:
            training_loss = float(trainer.train(resume_from_checkpoint=resume_from).training_loss)
        wall = time.perf_counter() - t0

        processor = trainer.processing_class
        adapter_dir, merged_dir = out_dir / "adapter", out_dir / "merged"
        for d in (adapter_dir, merged_dir):
            shutil.rmtree(d, ignore_errors=True)
        model = trainer.model
        counts = trainable_parameters(model)
        if params.sft.lora:
            model.save_pretrained(adapter_dir)
            processor.save_pretrained(adapter_dir)
        merge_and_save(model, processor, merged_dir)

        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics = {
            "train_loss": training_loss,
            "final_loss": float(losses[-1]) if losses else float("nan"),
            "global_step": int(trainer.state.global_step),
            "resumed_from_step": start_step,
            "steps_this_run": int(trainer.state.global_step) - start_step,
            "train_wall_s": wall,
            "samples": len(dataset),
            **counts,
        }
        log_stage_metrics("sft", {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))})
    log.info("SFT done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics
