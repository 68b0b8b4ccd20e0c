"""The SFT stage: TRL ``SFTTrainer`` on RoCoT traces with real video inputs from the frame cache.

TRL's SFTTrainer has no video path, so the trainer gets the raw RoCoT rows
(``remove_unused_columns=False``, ``dataset_kwargs={"skip_prepare_dataset": True}``) and
:class:`VideoSFTCollator` builds each batch: cached frames (``srvau.video.cache``) go into the
conversation, the processor's chat template renders and tokenises it, and the ``{% generation %}``
markers of the template give the assistant mask (``return_assistant_tokens_mask``): labels are -100
everywhere but the assistant turn (its text and closing ``<|im_end|>``). ``mm_token_type_ids`` stays
in the batch: without it Qwen2.5-VL silently skips its 3-D (M-RoPE) positions (docs/pitfalls.md). A template
without generation markers (the Hub Qwen2.5-VL one) is swapped for TRL's training template.

Layout of ``out_dir`` (``checkpoints/``, ``adapter/`` for LoRA, ``merged/``), resume after a kill,
the export of a finished run and the multi-rank rules: :mod:`srvau.training.checkpoints`, shared with
GRPO.

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
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from srvau.compat import ensure_torchvision

ensure_torchvision()

import torch  # noqa: E402

from srvau.config import Params  # noqa: E402
from srvau.io import write_json  # noqa: E402
from srvau.modeling.inputs import even_frames, video_metadata  # noqa: E402
from srvau.modeling.vision_cache import cache_vision_trunk, trunk_cache  # noqa: E402
from srvau.training import checkpoints  # noqa: E402
from srvau.training.common import (  # noqa: E402
    MlflowStepCallback,
    freeze_vision,
    load_video,
    log_summary,
    lora_config,
    trainable_parameters,
)
from srvau.tracking.runs import log_stage_params  # noqa: E402

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "completion", "frames_path")

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


# Per-token tensors of a processed row and the value that pads them. The per-video ones are listed apart:
# a row holds one video, whose patches are the prod(video_grid_thw) rows of pixel_values_videos.
TOKEN_PADDING = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0, "token_type_ids": 0, "labels": -100}
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def split_batch(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A right-padded Qwen2.5-VL batch of one-video rows -> one unpadded batch of one per row (copies)."""
    unknown = set(batch) - set(TOKEN_PADDING) - set(VIDEO_KEYS)
    if unknown:
        raise ValueError(f"the processor returned {sorted(unknown)}: unknown how to split them by row")
    lengths = batch["attention_mask"].sum(1).tolist()
    ends = batch["video_grid_thw"].prod(-1).cumsum(0).tolist()
    rows = []
    for i, n in enumerate(lengths):
        row = {k: v[i : i + 1, :n].clone() for k, v in batch.items() if k in TOKEN_PADDING}
        row["pixel_values_videos"] = batch["pixel_values_videos"][(ends[i - 1] if i else 0) : ends[i]].clone()
        row |= {k: batch[k][i : i + 1].clone() for k in VIDEO_KEYS[1:] if k in batch}
        rows.append(row)
    return rows


def collate_samples(samples: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One-row batches -> one right-padded batch: the tensors the processor returns for the rows at once
    (``tests/model/test_sft.py`` checks it)."""
    from trl.trainer.utils import pad

    batch = {}
    for key in samples[0]:
        parts = [s[key] for s in samples]
        if key in TOKEN_PADDING:
            fill = pad_token_id if TOKEN_PADDING[key] is None else TOKEN_PADDING[key]
            batch[key] = pad([t[0] for t in parts], padding_value=fill, padding_side="right")
        else:
            batch[key] = torch.cat(parts)
    return batch


def _row_key(ex: dict[str, Any]) -> tuple:
    return ex["frames_path"], ex.get("system"), ex["prompt"], ex["completion"]


@dataclass
class VideoSFTCollator:
    """RoCoT rows -> a Qwen2.5-VL training batch (labels on the assistant turn only).

    With ``keep_mb`` > 0 processed rows are kept in memory up to that many MiB (a video's patches once,
    however many rows ask about it), so epochs after the first skip the frame reads and the chat
    template, about a quarter of a demo SFT step (``bench/sft.py``). Rows past the budget are processed
    every time. The rows live in the process that collates: DataLoader workers, which are not kept
    alive between epochs, would lose them, so the budget pays with ``dataloader_num_workers: 0``.
    """

    processor: Any
    video_loader: VideoLoader
    max_length: int | None = None
    chat_template: str | None = None
    keep_mb: float = 0.0

    def __post_init__(self) -> None:
        self._rows: dict[tuple, dict[str, torch.Tensor]] = {}
        self._videos: dict[str, dict[str, torch.Tensor]] = {}
        self.kept_bytes = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.keep_mb <= 0:  # nothing to keep: no copies (at paper scale a batch's patches are ~0.3 GB)
            return self._truncate(self._process(examples))
        todo = [ex for ex in examples if _row_key(ex) not in self._rows]
        made = {_row_key(ex): row for ex, row in zip(todo, split_batch(self._process(todo)))} if todo else {}
        samples = []
        for ex in examples:
            key = _row_key(ex)
            if key in made:
                samples.append(made[key])
                self._keep(key, ex["frames_path"], made[key])
            else:
                samples.append({**self._rows[key], **self._videos[ex["frames_path"]]})
        return self._truncate(collate_samples(samples, self.processor.tokenizer.pad_token_id))

    def _keep(self, key: tuple, frames_path: str, row: dict[str, torch.Tensor]) -> None:
        tokens = {k: v for k, v in row.items() if k in TOKEN_PADDING}
        video = {k: v for k, v in row.items() if k not in TOKEN_PADDING}
        cost = _nbytes(tokens) + (0 if frames_path in self._videos else _nbytes(video))
        if key not in self._rows and self.kept_bytes + cost <= self.keep_mb * 2**20:
            self._rows[key] = tokens
            self._videos.setdefault(frames_path, video)
            self.kept_bytes += cost

    def _process(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
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
        return dict(batch)

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


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors.values())


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
            raise FileNotFoundError(f"RoCoT split {split!r} not found: {path} (run `srvau cot` first)")
        ds = Dataset.from_parquet(str(path))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"RoCoT split {split!r} lacks column(s) {missing}")
    if len(ds) == 0:
        raise ValueError(f"RoCoT split {split!r} under {rocot_dir} is empty")
    return ds


# ----------------------------------------------------------------------------- trainer


def sft_args(params: Params, ckpt_dir: Path, bf16: bool = False):
    """TRL's config from ours; ``bf16`` turns on bf16 autocast (``sft.bf16`` does too)."""
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
        bf16=s.bf16 or bf16,
        use_cpu=not torch.cuda.is_available(),  # as checkpoints.distributed_state: one process state
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


class DrillReplay:
    """Reading drills (``srvau.modeling.drills``) made from the training QA prompts, one batch
    per call: the questions and options the model is trained on, in a random order, a pass of random
    words from the training traces naming one option by its key word, and its letter. Text only; the
    loss is on the letters, and nothing in it says which option is correct.

    SFT updates every language-model weight for a thousand steps, and the option look-up the tiny base
    was drilled in is one token in each QA trace: at some seeds it did not survive (docs/demo-results.md).
    Replaying the drills beside the video batches is rehearsal, as mixing pre-training data into
    fine-tuning is."""

    def __init__(self, tokenizer, prompts: list[str], completions: list[str], per_step: int, seed: int):
        """``prompts``: the training rows' user texts; only QA prompts (:func:`qa_prompt_parts`) are read."""
        import numpy as np

        from srvau.contract.prompts import qa_prompt_parts
        from srvau.modeling.drills import DrillTokens, drill_words, drillable

        self.tokenizer, self.per_step = tokenizer, per_step
        self.lists = [parts for parts in map(qa_prompt_parts, prompts) if parts]
        self.words = drill_words(completions)
        self.rng = np.random.default_rng(seed)
        self.usable = drillable(tokenizer, self.lists, self.words, seed)
        self.tokens = DrillTokens(tokenizer)

    def __call__(self) -> dict[str, torch.Tensor]:
        from srvau.modeling.drills import drill_batch

        return drill_batch(self.tokenizer, self.lists, self.words, self.rng, self.per_step, self.tokens)


def _replaying_trainer(base: type):
    """``base`` (TRL's SFTTrainer) whose training loss adds the loss of one :class:`DrillReplay` batch."""

    class ReplayingSFTTrainer(base):
        def __init__(self, *args, drill_replay: DrillReplay, **kwargs):
            super().__init__(*args, **kwargs)
            self.drill_replay = drill_replay

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not model.training:
                return result
            drills = {k: v.to(self.args.device) for k, v in self.drill_replay().items()}
            # A drill letter weighs what a trace token weighs: the drills' mean loss times their share of
            # the batch's target tokens (a mean over two letters per drill would outweigh the traces'
            # tokens ~15 times and undo what SFT learns from the video: val cls 66.7 -> 20.8, mIoU 30 -> 0).
            # The video loss is divided across accumulation steps already; the drills' is not.
            letters = (drills["labels"] != -100).sum()
            tokens = (inputs["labels"][..., 1:] != -100).sum().clamp(min=1)
            # through the bare model: DDP allows one forward of its wrapper per backward; the drills' gradient
            # joins the video batch's in that one backward and is averaged across ranks with it
            bare = self.accelerator.unwrap_model(model)
            extra = bare(**drills).loss * letters / tokens / self.args.gradient_accumulation_steps
            if return_outputs:
                return result[0] + extra, result[1]
            return result + extra

    return ReplayingSFTTrainer


def build_trainer(
    dataset,
    base_model: str | Path,
    ckpt_dir: Path,
    params: Params,
    video_loader: VideoLoader | None = None,
):
    """An ``SFTTrainer`` for ``dataset`` (RoCoT rows) on ``base_model``: LoRA or full FT per ``params.sft``.
    A bf16 model is trained with fp32 master weights unless DeepSpeed/FSDP keeps them
    (``checkpoints.training_dtype``)."""
    from trl import SFTTrainer

    from srvau.modeling import load_model, load_processor

    s = params.sft
    load_cfg, autocast = checkpoints.training_dtype(params.model)
    args = sft_args(params, ckpt_dir, bf16=autocast)
    processor = load_processor(base_model, params.model)
    model = load_model(base_model, load_cfg)
    if s.freeze_vision:
        n = freeze_vision(model)
        log.info("froze %.2f M vision parameters", n / 1e6)
    cache_vision_trunk(model, params.model.vision_trunk_cache_mb)
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
        keep_mb=s.keep_samples_mb,
    )
    replay = None
    if s.drill_replay:
        rank = checkpoints.distributed_state().process_index  # each rank its own drills, as its own video rows
        replay = DrillReplay(processor.tokenizer, dataset["prompt"], dataset["completion"], s.drill_replay, params.seed + rank)
        if not replay.usable:
            log.warning("sft.drill_replay: no training QA prompt yields a drill (four distinct key words); none replayed")
            replay = None
    extra = {"drill_replay": replay} if replay else {}
    trainer = (_replaying_trainer(SFTTrainer) if replay else SFTTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[MlflowStepCallback("sft"), checkpoints.SaveLastStep()],
        **extra,
    )
    if replay:
        log.info("SFT replays %d reading drills per step from %d training QA prompts", s.drill_replay, len(replay.lists))
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
    """Run the SFT stage; returns its metrics (on every rank under ``accelerate launch``).

    Writes ``out_dir/{checkpoints,adapter,merged}`` (:mod:`srvau.training.checkpoints`) and
    ``out_dir/summary.json`` (these metrics and the run's ``world_size``, main process only). Resumes
    automatically from the newest complete matching checkpoint when ``params.sft.resume`` is on; a run
    that already reached ``max_steps`` is exported, not trained again. Per-step loss and learning rate
    go to the active MLflow run (opened by the CLI) as ``sft.loss`` / ``sft.learning_rate``, the final
    metrics as ``sft.<name>``, from the main process only.
    """
    out_dir = Path(out_dir)
    dataset = load_split(Path(rocot_dir), split)
    ckpt_dir = out_dir / "checkpoints"
    split_file = Path(rocot_dir) / f"{split}.parquet"
    data = checkpoints.data_digest(split_file if split_file.is_file() else dataset.to_list())
    fingerprint = checkpoints.run_fingerprint(params, "sft", base_model, data)
    resume_from = checkpoints.resume_point(ckpt_dir, fingerprint, params.sft.resume)
    start_step = checkpoints.step_of(resume_from)
    if resume_from:
        log.info("resuming SFT from %s (step %d of %d)", resume_from, start_step, params.sft.max_steps)

    trainer = build_trainer(dataset, base_model, ckpt_dir, params, video_loader)
    counts = trainable_parameters(trainer.model)
    t0 = time.perf_counter()
    training_loss, _, _ = checkpoints.run_stage(
        trainer, resume_from, params.sft.max_steps, out_dir, base_model, params.model, params.sft.lora
    )
    wall = time.perf_counter() - t0
    if (cache := trunk_cache(trainer.model)) is not None:
        log.info("SFT vision trunk cache: %s", cache.stats())

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
    main = trainer.accelerator.is_main_process
    log_summary("sft", metrics, main)
    # how the run was launched: an MLflow param (a setting, not a result), and in summary.json
    metrics["world_size"] = int(trainer.accelerator.num_processes)
    if main:
        log_stage_params({"sft.world_size": metrics["world_size"]})
        write_json(out_dir / "summary.json", metrics)
    log.info("SFT done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics
