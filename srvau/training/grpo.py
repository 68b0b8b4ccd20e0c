"""GRPO with video: a thin subclass of TRL 1.16's ``GRPOTrainer`` and the ``srvau grpo`` stage.

Why a subclass. TRL's ``GRPOTrainer`` feeds images to the model but not videos: with a video in the
prompt it runs without error, yet the log-prob forwards of the policy, the old policy and the
reference model see only the text (wrong log-probs, wrong KL; measured, see docs/pitfalls.md). Video GRPO is an
open upstream request (trl#4144, trl#5373). :class:`VideoGRPOTrainer` overrides six methods, each
around a call to TRL's own, and copies none of TRL's logic:

``_tokenize_prompts``
    A dataset column ``video`` (a frame-cache reference, decoded lazily by ``video_loader``) is put
    in the prompt like TRL puts its ``image`` column; the prompt is rendered by the chat template
    and processed with its frames (``srvau.modeling.inputs.processor_inputs``: cached frames,
    their metadata, no re-sampling). Generation then receives ``pixel_values_videos``,
    ``video_grid_thw``, ``second_per_grid_ts`` and ``mm_token_type_ids`` through TRL's own
    multimodal-fields path, and the per-sample video tensors are kept for the forwards below.
``_get_per_token_logps_and_entropies``
    Runs TRL's own implementation chunk by chunk with the chunk's video tensors bound to the model
    call, and ``mm_token_type_ids`` rebuilt for prompt + completion from the token ids (without it
    Qwen2.5-VL silently falls back to 1-D positions: up to ~9 nats off, docs/pitfalls.md).
``_generate_and_score_completions`` / ``compute_loss``
    Wrap TRL's: the rollout's per-sample video tensors travel in the batch dict as per-sample lists,
    so TRL's shuffling and splitting of the generation batch keep them aligned with their rows. With
    ``paired_sampling`` the rollout draws from a seed of its own (:meth:`VideoGRPOTrainer.sampling_seed`).
``_calculate_rewards``
    Wraps TRL's to compute SRPO's online difficulty filter (optional).
``log``
    Adds a table of sampled completions with their rewards to MLflow every K steps.

Departures, and why:

* SRPO's difficulty filter drops prompt groups whose accuracy is outside ``[low, high]`` and refills
  the batch. Refilling does not fit TRL's fixed generation batch; filtered groups instead leave the
  loss (advantages and completion masks zeroed, the average taken over the kept rows only), so the
  kept groups keep their full gradient and the batch shape stays fixed. Grounding (dense IoU reward)
  is never filtered (docs/rewards.md).
* TRL 1.16 has no ``max_prompt_length``. Truncating a video prompt would cut video placeholder
  tokens and break the forward, so ``max_prompt_length`` is a guard: a longer prompt is an error
  that names the sample and the settings to change.
* vLLM generation (``use_vllm``) goes through TRL's ``VLLMGeneration``, which forwards images only;
  with a video prompt the trainer refuses to run rather than generate from text alone.
* Vision placeholder tokens are suppressed in generation (TRL suppresses only the image pad): an
  untrained policy samples ``<|video_pad|>`` and the next forward fails (docs/pitfalls.md).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from srvau.compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate.utils import gather_object  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.data_utils import prepare_multimodal_messages  # noqa: E402

from srvau.config import GrpoConfig, Params  # noqa: E402
from srvau.modeling.inputs import processor_inputs  # noqa: E402
from srvau.modeling.loading import vision_token_ids  # noqa: E402
from srvau.modeling.vision_cache import cache_vision_trunk, trunk_cache  # noqa: E402
from srvau.contract.trace import completion_text  # noqa: E402
from srvau.contract.vocab import is_missing  # noqa: E402
from srvau.training.rewards import difficulty_keep, final_correct, get_reward_funcs, truths  # noqa: E402

log = logging.getLogger(__name__)

VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
VIDEO_COLUMN = "video"
# Qwen2.5-VL's mm_token_type_ids values (processing_qwen2_5_vl): text 0, image 1, video 2.
MM_IMAGE, MM_VIDEO = 1, 2
# RoCoT columns that describe the *teacher's* trace; a reward must never read them as the policy's.
TEACHER_COLUMNS = ("completion", "first_answer", "final_answer", "first_correct", "teacher")

VideoLoader = Callable[[str], tuple[np.ndarray, dict[str, Any]]]
CorrectFn = Callable[[list[str], dict[str, list[Any]]], list[bool | None]]


# ----------------------------------------------------------------------------- small pure helpers


def with_video(messages: list[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    """Structured messages with one video part before the first user text, as TRL does for images
    (``prepare_multimodal_messages``) and as ``srvau.modeling.inputs.user_message`` lays it out."""
    out = prepare_multimodal_messages(messages)
    for i, m in enumerate(out):
        if m["role"] == "user":
            out[i] = {**m, "content": [{"type": "video", "video": ref}, *m["content"]]}
            return out
    raise ValueError("prompt has no user message to attach the video to")


def video_refs(messages: list[dict[str, Any]]) -> list[str]:
    return [
        part["video"]
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") == "video" and part.get("video") is not None
    ]


def mm_token_types(input_ids: torch.Tensor, image_id: int | None, video_id: int | None) -> torch.Tensor:
    """``mm_token_type_ids`` for any token sequence: generation never emits placeholders (they are
    suppressed), so the placeholder ids mark exactly the vision positions of prompt + completion."""
    mm = torch.zeros_like(input_ids)
    if image_id is not None:
        mm[input_ids == image_id] = MM_IMAGE
    if video_id is not None:
        mm[input_ids == video_id] = MM_VIDEO
    return mm


def split_video_batch(enc: Any, n: int) -> dict[str, list[torch.Tensor]]:
    """Per-sample video tensors from a batched processor output with one video per sample."""
    grids = enc["video_grid_thw"]
    if grids.shape[0] != n:
        raise ValueError(f"expected one video per prompt, got {grids.shape[0]} videos for {n} prompts")
    rows = grids.prod(-1).tolist()
    out = {
        "pixel_values_videos": list(torch.split(enc["pixel_values_videos"], rows, dim=0)),
        "video_grid_thw": [grids[i : i + 1] for i in range(n)],
    }
    if enc.get("second_per_grid_ts") is not None:  # Qwen2.5-VL: seconds per temporal patch
        seconds = torch.as_tensor(enc["second_per_grid_ts"], dtype=torch.float32)
        out["second_per_grid_ts"] = [seconds[i : i + 1] for i in range(n)]
    return out


def concat_video(video: dict[str, list[torch.Tensor]], start: int, end: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat(v[start:end], dim=0) for k, v in video.items()}


def user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return str(messages)
    for m in messages:
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text") or "" for p in content if p.get("type") == "text")
            return str(content)
    return ""


@dataclass(frozen=True)
class DifficultyFilter:
    """SRPO's online filter: keep prompt groups whose accuracy lies in ``[low, high]``."""

    correct: CorrectFn
    low: float = 0.1
    high: float = 0.9


def difficulty_correctness(texts: list[str], cols: dict[str, list[Any]]) -> list[bool | None]:
    """Per completion, is its final answer right (the contract's rule), for the difficulty filter.
    Grounding's reward is dense (IoU): a group all below the IoU threshold still ranks its completions,
    so grounding is never judged (None = no evidence against the group, which keeps it)."""
    return [
        None if truth is not None and truth.task == "grounding" else final_correct(t, truth)
        for t, truth in zip(texts, truths(cols, len(texts)))
    ]


# ----------------------------------------------------------------------------- the trainer


class VideoGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose prompts may carry one video each (dataset column ``video``).

    Extra arguments: ``video_loader(ref) -> (frames uint8 (T,H,W,3), metadata)``; ``max_prompt_length``
    (guard, see module docstring); ``difficulty`` (SRPO filter); ``table_every`` (log a table of
    sampled completions to the active MLflow run every this many steps; 0 = never).
    """

    def __init__(
        self,
        *args,
        video_loader: VideoLoader | None = None,
        max_prompt_length: int | None = None,
        difficulty: DifficultyFilter | None = None,
        table_every: int = 0,
        paired_sampling: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if paired_sampling and self.use_vllm:
            raise ValueError("grpo.paired_sampling seeds transformers' sampling; vLLM samples on its own (use_vllm: false)")
        self.paired_sampling = paired_sampling
        self.video_loader = video_loader
        self.max_prompt_length = max_prompt_length
        self.difficulty = difficulty
        self.table_every = table_every
        self._video_batch: dict[str, list[torch.Tensor]] | None = None
        self._difficulty_keep: torch.Tensor | None = None
        self.tables_logged: list[int] = []
        if self._is_vlm and not self.use_vllm:
            suppress = sorted(set(self.generation_kwargs.get("suppress_tokens") or []) | set(vision_token_ids(self._tokenizer)))
            self.generation_kwargs["suppress_tokens"] = suppress
            self.generation_config.suppress_tokens = suppress

    # -- rollout ----------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        if inputs and VIDEO_COLUMN in inputs[0]:
            inputs = [self._attach_video(x) for x in inputs]
            if "sample_id" in inputs[0]:  # shown in the completions table (TRL's log_extra channel)
                self._log_completion_extra("sample_id", [str(x["sample_id"]) for x in inputs])
            if "task" in inputs[0]:
                self._log_completion_extra("task", [str(x["task"]) for x in inputs])
        try:
            seed = self.sampling_seed()
            if seed is None:
                output = super()._generate_and_score_completions(inputs)
            else:
                cuda = [self.accelerator.device.index or 0] if self.accelerator.device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):  # the run's own random stream goes on untouched
                    torch.manual_seed(seed)
                    output = super()._generate_and_score_completions(inputs)
            if self._video_batch is not None:
                output.update(self._video_batch)
            if self._difficulty_keep is not None:
                self._apply_difficulty(output, len(inputs))
        finally:
            self._video_batch = None
            self._difficulty_keep = None
        return output

    def sampling_seed(self) -> int | None:
        """The seed of this step's rollout under ``paired_sampling``, else None (the run's own stream).
        Step ``k`` and step ``max_steps - 1 - k`` share it: with mirrored prompts (:func:`mirror`) they
        hold the same prompts in the same rows, so the two draw their completions from the same random
        numbers (common random numbers). A policy that has not changed then samples the same completions
        and earns the same reward, and the logged reward's first and last quarter differ by what the
        policy learnt, not by luck. Each step's completions are still an exact draw from its policy."""
        if not self.paired_sampling:
            return None
        step = self.state.global_step
        pair = min(step, self.args.max_steps - 1 - step)
        rank = self.accelerator.process_index
        return int(np.random.SeedSequence([self.args.seed, pair, rank]).generate_state(1)[0])

    def _attach_video(self, x: dict[str, Any]) -> dict[str, Any]:
        ref = x[VIDEO_COLUMN]
        if is_missing(ref):
            return x
        return {**x, "prompt": with_video(x["prompt"], str(ref))}

    def _tokenize_prompts(self, prompts: list):
        refs = [video_refs(p) if isinstance(p, list) else [] for p in prompts]
        if not any(refs):
            return super()._tokenize_prompts(prompts)
        if not all(len(r) == 1 for r in refs):
            raise ValueError("every prompt of a video batch must carry exactly one video")
        if self.use_vllm:
            raise NotImplementedError(
                "vLLM generation with video prompts is not supported: TRL 1.16's VLLMGeneration forwards "
                "images only (trl#4144, trl#5373). Set grpo.use_vllm=false."
            )
        if self.video_loader is None:
            raise ValueError("VideoGRPOTrainer needs a video_loader to decode the 'video' column")
        texts = [
            self.processing_class.apply_chat_template(p, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs)
            for p in prompts
        ]
        # A generation batch repeats each prompt num_generations times: decode and process each once.
        keys = [(t, r[0]) for t, r in zip(texts, refs)]
        slot = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        clips = [self.video_loader(ref) for _, ref in slot]
        enc = processor_inputs(
            self.processing_class, [t for t, _ in slot], [c[0] for c in clips], [c[1] for c in clips], padding_side="left"
        )
        per_unique = split_video_batch(enc, len(slot))
        ids_unique = [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
        index = [slot[k] for k in keys]
        prompt_ids = [ids_unique[i] for i in index]
        self._check_prompt_lengths(prompt_ids, [ref for _, ref in keys])
        device = self.accelerator.device
        # Repeated prompts share their unique video's tensors (moved to the device once).
        moved = {k: [t.to(device) for t in v] for k, v in per_unique.items()}
        self._video_batch = {k: [v[i] for i in index] for k, v in moved.items()}
        fields = concat_video(self._video_batch, 0, len(prompts))
        fields["mm_token_type_ids"] = [
            mm_token_types(torch.tensor(ids), self._image_pad_token_id, self._video_pad_token_id).tolist() for ids in prompt_ids
        ]
        return prompt_ids, None, fields

    def _check_prompt_lengths(self, prompt_ids: list[list[int]], refs: list[str]) -> None:
        if self.max_prompt_length is None:
            return
        for ids, ref in zip(prompt_ids, refs):
            if len(ids) > self.max_prompt_length:
                raise ValueError(
                    f"prompt for video {ref} has {len(ids)} tokens (video included), over max_prompt_length="
                    f"{self.max_prompt_length}; video prompts cannot be truncated. Raise grpo.max_prompt_length "
                    "or lower video.total_pixels / video.max_frames."
                )

    # -- log-probs ----------------------------------------------------------------------------------

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        video = self._video_batch
        if video is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs,
            )
        if kwargs.get("pixel_values") is not None:
            raise ValueError("prompts mixing images and videos are not supported")
        n = input_ids.size(0)
        step = batch_size or n
        mm = mm_token_types(input_ids, self._image_pad_token_id, self._video_pad_token_id)
        logps, entropies, aux = [], [], []
        for start in range(0, n, step):
            end = min(start + step, n)
            # TRL's own chunk: labels, fused LM head, autocast; the video rides along in the model call.
            chunk_model = functools.partial(model, **concat_video(video, start, end))
            lp, ent, ax = super()._get_per_token_logps_and_entropies(
                chunk_model, input_ids[start:end], attention_mask[start:end], logits_to_keep,
                batch_size=end - start, compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss,
                mm_token_type_ids=mm[start:end],
            )
            logps.append(lp)
            entropies.append(ent)
            aux.append(ax)
        return (
            torch.cat(logps, dim=0),
            torch.cat(entropies, dim=0) if compute_entropy else None,
            torch.stack(aux).mean() if compute_aux_loss else None,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        video = {k: inputs[k] for k in VIDEO_KEYS if k in inputs}
        if not video:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        rest = {k: v for k, v in inputs.items() if k not in VIDEO_KEYS}
        self._video_batch = video
        try:
            return super().compute_loss(model, rest, return_outputs, num_items_in_batch)
        finally:
            self._video_batch = None

    # -- SRPO difficulty filter ---------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.difficulty is not None:
            columns = {k: [x.get(k) for x in inputs] for k in inputs[0] if k != "prompt"}
            correct = gather_object(self.difficulty.correct([completion_text(c) for c in completions], columns))
            mode = "train" if self.model.training else "eval"
            g = self.num_generations if mode == "train" else self.num_generations_eval
            groups = difficulty_keep(correct, g, self.difficulty.low, self.difficulty.high)
            self._difficulty_keep = torch.tensor([k for k in groups for _ in range(g)], dtype=torch.float32)
            self._metrics[mode]["difficulty/kept_groups"].append(sum(groups) / max(len(groups), 1))
        return rewards

    def _apply_difficulty(self, output: dict[str, Any], n_local: int) -> None:
        """Filtered groups leave the loss entirely: their advantages *and* completion masks are zeroed
        (so neither their policy term nor their KL term counts), and ``difficulty_keep`` travels with the
        batch so :meth:`_compute_loss` averages over the kept rows only. Zeroing advantages alone (as a
        first version did) kept the filtered rows in the denominator: the kept groups' gradient shrank by
        a varying factor while the KL term's relative weight grew."""
        start = self.accelerator.process_index * n_local
        keep = self._difficulty_keep[start : start + n_local].to(output["advantages"].device)
        adv = output["advantages"]
        output["advantages"] = adv * (keep if adv.dim() == 1 else keep.unsqueeze(1))
        mask = output["completion_mask"]
        if "num_items_in_batch" in output:  # token-normalised losses (dapo): count kept tokens only
            tokens = torch.stack([mask.sum(), (mask * keep.unsqueeze(1).to(mask.dtype)).sum()]).float()
            total, kept = self.accelerator.gather(tokens.unsqueeze(0)).sum(0)
            output["num_items_in_batch"] = output["num_items_in_batch"] * (kept / total.clamp(min=1.0))
        output["completion_mask"] = mask * keep.unsqueeze(1).to(mask.dtype)
        output["difficulty_keep"] = keep

    def _compute_loss(self, model, inputs):
        keep = inputs.pop("difficulty_keep", None)
        loss = super()._compute_loss(model, inputs)
        if keep is not None and self.loss_type in ("grpo", "sapo", "luspo", "dr_grpo"):
            # these average over the rows of the batch: filtered rows (masked out, exactly 0) must not count
            loss = loss * (keep.numel() / keep.sum().clamp(min=1.0))
        return loss

    # -- completions table --------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        step = self.state.global_step
        if (
            self.table_every
            and self.model.training
            and step > 0
            and step % self.table_every == 0
            and step not in self.tables_logged
            and self.accelerator.is_main_process
            and self._logs["completion"]
        ):
            self._log_completions_table(step)
        super().log(logs, start_time)

    def completions_frame(self, step: int):
        import pandas as pd

        n = len(self._logs["completion"])
        table: dict[str, Any] = {
            "step": [step] * n,
            "prompt": [user_text(p) for p in self._logs["prompt"]],
            "completion": [completion_text(c) for c in self._logs["completion"]],
        }
        for col, values in self._logs["extra"].items():
            if len(values) == n:
                table[col] = list(values)
        for name, values in self._logs["rewards"].items():
            table[f"reward/{name}"] = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        table["advantage"] = list(self._logs["advantages"])
        return pd.DataFrame(table)

    def _log_completions_table(self, step: int) -> None:
        import mlflow

        from srvau.tracking.runs import log_stage_table

        if mlflow.active_run() is None:
            return
        log_stage_table(self.completions_frame(step), artifact_file=f"grpo/completions/step_{step:06d}.json")
        self.tables_logged.append(step)


# ----------------------------------------------------------------------------- the stage


def grpo_rows(rows: Sequence[dict[str, Any]], cfg: GrpoConfig, params: Params) -> list[dict[str, Any]]:
    """GRPO prompts from RoCoT rows: tasks with verifiable rewards only, one row per sample, the
    conversational prompt (system + task prompt, no completion), the video reference, and the ground
    truth columns the rewards read. The teacher's trace columns are dropped (``TEACHER_COLUMNS``)."""
    from srvau.contract.prompts import system_prompt
    from srvau.cot.dataset import is_rotated
    from srvau.training.common import resolve_frames_path

    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("task") not in cfg.tasks or r.get("split", "train") != "train":
            continue
        sid = r.get("sample_id") or f"{r.get('video_id')}:{r['task']}"
        # each question once, in its annotated order: the rotations are SFT's reading practice, and
        # four copies would make QA two thirds of GRPO's prompts (docs/demo-results.md)
        if sid in out or is_rotated(sid):
            continue
        if is_missing(r.get("frames_path")):
            raise ValueError(f"RoCoT sample {sid} has no frames_path: its video was not ingested")
        system = system_prompt(cfg.prompt_style, r["task"]) if cfg.prompt_style else r.get("system")
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": r["prompt"]}]
        row = {k: v for k, v in r.items() if k not in TEACHER_COLUMNS and k not in ("prompt", "system", "frames_path")}
        row.update(sample_id=sid, prompt=prompt, video=str(resolve_frames_path(r["frames_path"], params)))
        out[sid] = row
    if not out:
        raise ValueError(f"no RoCoT train rows for tasks {list(cfg.tasks)}")
    return list(out.values())


def answer_stratum(row: dict[str, Any]) -> str:
    """What a prompt's correct answer is, for spreading prompts by it: the letter for QA, the video's class
    otherwise (a classification prompt's answer; a grounding prompt's video, Normal included)."""
    return str(row["answer"] if row["task"] == "qa" else row.get("anomaly_class"))


def _merge_in_proportion(groups: dict[Any, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The groups' rows in one list where every run of consecutive rows carries the groups in their overall
    proportions: row ``i`` of a group of ``n`` gets the position ``(i + 0.5) / n``, and the groups are
    merged by position (ties in the groups' sorted order)."""
    keyed = []
    for rank, name in enumerate(sorted(groups)):
        group = groups[name]
        keyed += [((i + 0.5) / len(group), rank, r) for i, r in enumerate(group)]
    return [r for *_, r in sorted(keyed, key=lambda k: k[:2])]


def interleave_tasks(rows: Sequence[dict[str, Any]], seed: int, by_answer: bool = False) -> list[dict[str, Any]]:
    """The prompts in an order where every run of consecutive prompts carries the tasks in their overall
    proportions: each task's rows are shuffled (seeded) and the tasks merged by position
    (``_merge_in_proportion``). With a random order, one quarter of a short run can hold twice as many
    grounding prompts as another, and grounding pays less than QA, so the mean reward's trend measures the
    task mix as well as learning (docs/rewards.md). (``datasets``' ``interleave_datasets`` alternates one
    row per task and stops when the smallest runs out, or draws tasks at random: neither keeps every row
    with tasks of unequal size in proportion.)

    ``by_answer`` (``grpo.task_order: stratified``) spreads each task's rows by ``answer_stratum`` the
    same way before the tasks are merged, so a short run also sees the letters and the classes in
    proportion: with a plain shuffle, a 50-step run's ~33 classification prompts can hold one clip of a
    class and nine of another, and GRPO then moves the class prior (docs/demo-results.md)."""
    import random

    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    rng = random.Random(seed)
    for task in sorted(by_task):
        if by_answer:
            strata: dict[str, list[dict[str, Any]]] = {}
            for r in by_task[task]:
                strata.setdefault(answer_stratum(r), []).append(r)
            for name in sorted(strata):
                rng.shuffle(strata[name])
            by_task[task] = _merge_in_proportion(strata)
        else:
            rng.shuffle(by_task[task])
    return _merge_in_proportion(by_task)


def grpo_config(
    cfg: GrpoConfig, params: Params, checkpoints: Path, reward_weights: list[float], bf16: bool | None = None
) -> GRPOConfig:
    """TRL's config from ours. Generation options (vLLM, temperature, lengths) pass straight through.
    bf16 autocast follows the model dtype unless ``bf16`` says otherwise: TRL turns it on by default,
    even on CPU, and the reference model would then run under autocast while the policy does not."""
    bf16 = params.model.torch_dtype == "bfloat16" if bf16 is None else bf16
    return GRPOConfig(
        output_dir=str(checkpoints),
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        reward_weights=reward_weights,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=1,
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        # "interleaved": the dataset is already in its training order (interleave_tasks)
        shuffle_dataset=cfg.task_order == "shuffled",
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )


def build_trainer(
    model, processor, dataset, cfg: GrpoConfig, params: Params, checkpoints: Path, callbacks=(), bf16: bool | None = None
):
    """The configured :class:`VideoGRPOTrainer` (rewards by name, LoRA or full, vision freezing)."""
    from srvau.training import common

    funcs, weights = get_reward_funcs(cfg.reward_funcs, cfg.reward_options or None)
    args = grpo_config(cfg, params, checkpoints, weights, bf16)
    peft_config = None
    if cfg.lora:
        peft_config = common.lora_config(
            model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, train_lm_head=cfg.train_lm_head
        )
    elif cfg.freeze_vision:
        common.freeze_vision(model)
    # A step's rows repeat each video num_generations times, encoded by the rollout, reference and policy passes.
    cache_vision_trunk(model, params.model.vision_trunk_cache_mb)
    difficulty = None
    if cfg.difficulty_filter:

        difficulty = DifficultyFilter(difficulty_correctness, cfg.difficulty_low, cfg.difficulty_high)
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=list(callbacks),
        video_loader=functools.partial(common.load_video, params=params),
        max_prompt_length=cfg.max_prompt_length,
        difficulty=difficulty,
        table_every=cfg.log_completions_every,
        paired_sampling=cfg.paired_sampling,
    )
    if trainer.ref_model is not None and not args.sync_ref_model:
        # A separate reference model (full fine-tuning) never trains, so its trunk output per video can
        # be kept too: its pass encodes every row's video, num_generations rows per video.
        trainer.ref_model.requires_grad_(False)
        cache_vision_trunk(trainer.ref_model, params.model.vision_trunk_cache_mb)
    return trainer


def prompts_per_run(cfg: GrpoConfig, world_size: int) -> int:
    """How many prompts a run's ``max_steps`` take: TRL generates once per optimizer step (its
    ``steps_per_generation`` defaults to the accumulation steps), for ``per_device_train_batch_size x
    gradient_accumulation_steps x world_size`` completions, ``num_generations`` per prompt."""
    completions = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
    return cfg.max_steps * (completions // cfg.num_generations)


def mirror(rows: Sequence[dict[str, Any]], steps: int, per_step: int, keep_step_order: bool = False) -> list[dict[str, Any]]:
    """The prompts of ``steps`` steps of ``per_step`` each, from the first ``ceil(steps / 2)`` steps'
    rows, forwards and then back: the last ``k`` steps hold the first ``k`` steps' prompts in reverse,
    row by row, or, with ``keep_step_order``, step by step with each step's prompts in their own order
    (a prompt then returns to the same rank and rows of the rollout, which ``grpo.paired_sampling``
    needs). A run's first and last quarter then hold the same prompts, so its logged reward compares the
    policy before and after on the same questions, where two different draws of ~25 prompts differ by
    more than 50 steps of GRPO gain (docs/demo-results.md)."""
    half = -(-steps // 2) * per_step
    if len(rows) < half:
        raise ValueError(
            f"grpo.mirror_prompts needs {half} distinct prompts for a run of {steps * per_step} "
            f"(max_steps x prompts per step) and RoCoT's train split has {len(rows)}: "
            "lower grpo.max_steps or set grpo.mirror_prompts: false"
        )
    there = [list(rows[i:i + per_step]) for i in range(0, half, per_step)]
    back = [block if keep_step_order else block[::-1] for block in there[::-1][steps % 2:]]
    return [row for block in there + back for row in block]


def training_rows(rocot_dir: Path, params: Params, world_size: int | None = None) -> list[dict[str, Any]]:
    """The stage's prompts from RoCoT's train split, in the order its steps take them (``grpo.task_order``;
    ``shuffled`` leaves the shuffle to TRL; ``grpo.mirror_prompts`` then takes them there and back).
    ``world_size`` defaults to the launcher's ``WORLD_SIZE``."""
    from srvau.training.sft import load_split

    cfg = params.grpo
    rows = grpo_rows(load_split(Path(rocot_dir), "train").to_list(), cfg, params)
    if cfg.task_order != "shuffled":
        rows = interleave_tasks(rows, params.seed, by_answer=cfg.task_order == "stratified")
    if cfg.mirror_prompts:
        world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
        per_step = prompts_per_run(cfg, world_size) // cfg.max_steps
        rows = mirror(rows, cfg.max_steps, per_step, keep_step_order=cfg.paired_sampling)
    return rows


def grpo(rocot_dir: Path, init_model: str, out_dir: Path, params: Params) -> dict[str, Any]:
    """The ``grpo`` stage: RL fine-tuning of ``init_model`` (usually the SFT model) on RoCoT's train
    split. Writes ``out_dir/checkpoints`` (resumed automatically when settings and data are unchanged),
    ``out_dir/adapter`` (LoRA only), ``out_dir/merged`` (safetensors + processor: what evaluation
    loads) and ``out_dir/summary.json``; returns the summary (on every rank under ``accelerate
    launch``; only the main process writes files and logs to the active MLflow run, opened by the CLI).
    Checkpoints, resume, a finished run's export: :mod:`srvau.training.checkpoints`."""
    from datasets import Dataset

    from srvau.modeling import load_model, load_processor
    from srvau.tracking.runs import log_stage_params
    from srvau.training import checkpoints as ckpts
    from srvau.training import common

    cfg = params.grpo
    out_dir = Path(out_dir)
    rows = training_rows(rocot_dir, params)
    log.info("GRPO on %d prompts (%s) from %s", len(rows), ", ".join(cfg.tasks), rocot_dir)
    fingerprint = ckpts.run_fingerprint(params, "grpo", init_model, ckpts.data_digest(rows))
    resume = ckpts.resume_point(out_dir / "checkpoints", fingerprint, cfg.resume)
    start_step = ckpts.step_of(resume)
    if resume:
        log.info("resuming GRPO from %s (step %d of %d)", resume, start_step, cfg.max_steps)

    load_cfg, autocast = ckpts.training_dtype(params.model)
    model = load_model(init_model, load_cfg)
    processor = load_processor(init_model, params.model)
    t0 = time.perf_counter()
    trainer = build_trainer(
        model, processor, Dataset.from_list(rows), cfg, params, out_dir / "checkpoints",
        [common.MlflowStepCallback("grpo"), ckpts.SaveLastStep()], bf16=autocast,
    )
    sizes = common.trainable_parameters(trainer.model)
    loss, adapter_dir, merged = ckpts.run_stage(trainer, resume, cfg.max_steps, out_dir, init_model, params.model, cfg.lora)
    summary = {
        "init_model": str(init_model),
        "prompts": len(rows),
        "global_step": int(trainer.state.global_step),
        "resumed_from": str(resume) if resume else None,
        "resumed_from_step": start_step,
        "steps_this_run": int(trainer.state.global_step) - start_step,
        "train_loss": loss,
        "train_wall_s": round(time.perf_counter() - t0, 2),
        "adapter": str(adapter_dir) if adapter_dir else None,
        "merged": str(merged),
        "tables_logged": list(trainer.tables_logged),
        **sizes,
    }
    for role, m in (("policy", trainer.model), ("reference", trainer.ref_model)):
        if m is not None and (cache := trunk_cache(m)) is not None:
            log.info("GRPO vision trunk cache (%s): %s", role, cache.stats())
    main = trainer.accelerator.is_main_process
    common.log_summary("grpo", summary, main)
    # how the run was launched: an MLflow param (a setting, not a result), and in summary.json
    summary["world_size"] = int(trainer.accelerator.num_processes)
    if main:
        log_stage_params({"grpo.world_size": summary["world_size"]})
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("GRPO done: %s", summary)
    return summary
