"""Batched generation over the manifest's evaluation split: one prediction record per (video, task, style).

How it departs from VAU-R1's evaluation scripts, and why:

* VAU-R1 generates one video at a time. Here several prompts, each with its own video, share one
  ``generate()`` call with *left* padding (the processor pads the text; the vision tokens of every
  video are packed by the processor as usual). Under greedy decoding the tokens equal one-at-a-time
  generation (tested); ``bench/eval.py`` measures the speed-up.
* Prompts are sorted by their estimated length (vision tokens from the one sampling policy plus
  text tokens), longest first, video by video and, within a video, one system prompt together: an
  out-of-memory batch shows up at once rather than at the end, and the prompts of one video sit in the
  same batches, where the video is processed and encoded once (kept for the next batches by a
  ``VideoCache``) and the prompts of one video and system prompt share the prefill of that prefix
  (``srvau.modeling.generation``). Records come back in manifest order.
* Frames come from the frame cache (``srvau.video.cache.load_frames``): the model sees exactly
  the frames it was trained on. VAU-R1 evaluated with a different frame/pixel budget than it trained.
* Generation is ``srvau.modeling.generation`` (shared with the policy teacher and the registered
  model): explicit settings (greedy unless ``evaluate.temperature > 0``, no repetition penalty), never
  the checkpoint's ``generation_config.json`` (Qwen2.5-VL's Hub file samples with
  ``repetition_penalty=1.05``), and vision placeholder ids suppressed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from srvau.contract import scoring as S
from srvau.contract.prompts import system_prompt, task_prompt
from srvau.contract.trace import extract_class, extract_interval, extract_letter, parse_trace, pass_text
from srvau.contract.truth import truth_of
from srvau.contract.vocab import STYLES, TASKS, optional_text
from srvau.data.manifest import ManifestError
from srvau.io import write_jsonl
from srvau.progress import progress as progress_of
from srvau.data.manifest import read_manifest as read_manifest_file
from srvau.modeling.generation import (  # the one generation path; re-exported for the evaluate stage
    Generation,
    GenerationSettings,
    chat_text,
    VideoCache,
    generate_batch,
    generation_kwargs,
    seed_sampling,
)

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One prompt to answer: a video, a task and a prompt style, with its ground truth."""

    video_id: str
    task: str
    style: str
    system: str
    prompt: str
    frames_path: str  # absolute path of the frame-cache entry
    truth: dict[str, Any]
    est_vision_tokens: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.video_id, self.task, self.style)


REQUIRED_COLUMNS = ("video_id", "split", "frames_path", "anomaly_class", "start_s", "end_s", "interval_kind")
_TASK_COLUMNS = {
    "qa": ("has_qa", "question", "option_a", "option_b", "option_c", "option_d", "correct_option"),
    "grounding": (),
    "classification": (),
    "description": ("description",),
}


def ground_truth(task: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """The task's ground truth for a manifest row as stored with each prediction, or None when the row is
    not scored for the task: :func:`srvau.contract.truth.truth_of`, and grounding on anomaly intervals
    only (normal and unavailable rows are excluded, as VAU-R1 excludes them)."""
    truth = truth_of(task, row)
    if truth is None or not truth.in_grounding_protocol:
        return None
    return {**truth.as_record(), "interval_kind": optional_text(row.get("interval_kind"))}


def _vision_tokens(row: dict[str, Any], video_cfg) -> int:
    """Estimated vision tokens of a row's clip (for length sorting only): from the manifest's sampled
    frame count and size when present, else from the sampling policy."""
    from srvau.video.sampling import MIN_FRAME_PIXELS, num_sampled_frames, resize_target

    try:
        n, h, w = int(row["sampled_frames"]), int(row["frame_height"]), int(row["frame_width"])
    except (KeyError, TypeError, ValueError):
        if video_cfg is None:
            return 0
        try:
            n = num_sampled_frames(float(row["duration_s"]), video_cfg)
            h, w = resize_target(int(row["height"]), int(row["width"]), n, video_cfg)
        except (KeyError, TypeError, ValueError):
            return 0
    # Qwen2.5-VL: one token per 2 frames x 28 x 28 pixels (patch 14, temporal patch 2, merge 2x2).
    return (n + n % 2) // 2 * (h * w) // MIN_FRAME_PIXELS


def read_manifest(manifest: Path, split: str, limit: int | None = None) -> pd.DataFrame:
    """Rows of one split, in manifest order; ``limit`` keeps the first N videos."""
    rows = read_manifest_file(manifest, required=REQUIRED_COLUMNS, split=split)
    return rows.head(limit).reset_index(drop=True) if limit is not None else rows


def build_samples(
    rows: pd.DataFrame,
    manifest_dir: Path,
    tasks: Sequence[str],
    styles: Sequence[str],
    video_cfg=None,
) -> list[Sample]:
    """Every (video, task, style) of ``rows`` that has a ground truth for the task.

    ``frames_path`` is relative to the manifest's folder (the ingest dir) unless absolute.
    Rows without a cached clip (``frames_path`` empty) are reported and skipped: nothing to show the model.
    """
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected one of {TASKS}")
        absent = [c for c in _TASK_COLUMNS[t] if c not in rows.columns]
        if absent:
            raise ManifestError(f"task {t}: manifest lacks column(s) {absent}")
    for s in styles:
        if s not in STYLES:
            raise ValueError(f"unknown prompt style {s!r}; expected one of {STYLES}")
    samples: list[Sample] = []
    no_frames: list[str] = []
    for row in rows.to_dict("records"):
        fp = optional_text(row.get("frames_path"))
        if fp is None:
            no_frames.append(str(row["video_id"]))
            continue
        frames_path = Path(fp) if Path(fp).is_absolute() else Path(manifest_dir) / fp
        vt = _vision_tokens(row, video_cfg)
        for task in tasks:
            truth = ground_truth(task, row)
            if truth is None:
                continue
            prompt = task_prompt(task, row)
            for style in styles:
                samples.append(
                    Sample(str(row["video_id"]), task, style, system_prompt(style, task), prompt, str(frames_path), truth, vt)
                )
    if no_frames:
        log.warning("%d video(s) have no cached frames and are not evaluated: %s", len(no_frames), ", ".join(no_frames[:10]))
    return samples


# ----------------------------------------------------------------------------- generation


class FrameStore:
    """Frame-cache entries kept in memory while neighbouring batches still need them (LRU)."""

    def __init__(self, capacity: int = 32, loader: Callable[[str], tuple[np.ndarray, dict]] | None = None):
        self.capacity = max(1, capacity)
        self._loader = loader
        self._items: OrderedDict[str, tuple[np.ndarray, dict]] = OrderedDict()

    def get(self, path: str) -> tuple[np.ndarray, dict]:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        if self._loader is None:
            from srvau.video.cache import load_frames

            self._loader = load_frames
        if not Path(path).is_file():
            raise FileNotFoundError(f"frame cache entry {path} not found (re-run `srvau ingest`)")
        item = self._loader(path)
        self._items[path] = item
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return item


def length_order(samples: Sequence[Sample], text_lengths: Sequence[int]) -> list[int]:
    """Indices of ``samples``: videos by their longest estimated prompt, longest first, and each video's
    prompts together, so a batch holds few distinct videos and each goes through the vision encoder once
    (``srvau.modeling.generation``); within a video, the prompts of one system prompt together (they share
    the prefill of system prompt and video) and longest first; ties by path, then sample order."""
    total = [s.est_vision_tokens + n for s, n in zip(samples, text_lengths)]
    longest: dict[str, int] = {}
    longest_system: dict[tuple[str, str], int] = {}
    for s, t in zip(samples, total):
        longest[s.frames_path] = max(longest.get(s.frames_path, 0), t)
        key = (s.frames_path, s.system)
        longest_system[key] = max(longest_system.get(key, 0), t)

    def rank(i: int):
        s = samples[i]
        return (-longest[s.frames_path], s.frames_path, -longest_system[(s.frames_path, s.system)], s.system, -total[i], i)

    return sorted(range(len(samples)), key=rank)


def batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), batch_size):
        yield list(order[i : i + batch_size])


# ----------------------------------------------------------------------------- records


def parse_answers(task: str, output: str) -> tuple[Any, Any]:
    """(first, final) parsed answers by the evaluation's (VAU-R1's) parsers."""
    if task == "qa":
        return extract_letter(output, "first"), extract_letter(output, "final")
    if task == "grounding":
        return list(extract_interval(output, "first")), list(extract_interval(output, "final"))
    if task == "classification":
        return extract_class(output, "first"), extract_class(output, "final")
    if task == "description":
        tr = parse_trace(output)
        first = tr.first_answer or pass_text(output, "first").strip()
        final = tr.final_answer or pass_text(output, "final").strip()
        return first, final
    raise ValueError(f"unknown task {task!r}")


def score_answers(task: str, output: str, truth: dict[str, Any]) -> dict[str, Any]:
    """Per-sample correctness of the first and final answers (the contract's lenient, VAU-R1 rules)."""
    if task == "qa":
        return {
            "first_correct": S.lenient_qa_correct(output, truth["answer"], "first"),
            "final_correct": S.lenient_qa_correct(output, truth["answer"], "final"),
        }
    if task == "grounding":
        gt = (truth["start_s"], truth["end_s"])
        return {"iou_first": S.lenient_iou(output, gt, "first"), "iou_final": S.lenient_iou(output, gt, "final")}
    if task == "classification":
        (fb, fm), (lb, lm) = S.lenient_cls_correct(output, truth["answer"], "first"), S.lenient_cls_correct(output, truth["answer"], "final")
        return {"first_correct": fm, "final_correct": lm, "first_binary_correct": fb, "final_binary_correct": lb}
    if task == "description":
        return {"keyword_recall": S.keyword_recall(parse_answers(task, output)[1], truth["answer"])}
    return {}


def make_record(sample: Sample, gen: Generation, model_label: str) -> dict[str, Any]:
    first, final = parse_answers(sample.task, gen.text)
    tr = parse_trace(gen.text)
    return {
        "model": model_label,
        "video_id": sample.video_id,
        "task": sample.task,
        "style": sample.style,
        "system": sample.system,
        "prompt": sample.prompt,
        "output": gen.text,
        "first_answer": first,
        "final_answer": final,
        **score_answers(sample.task, gen.text, sample.truth),
        "well_formed": S.well_formed(tr, sample.style, sample.task),
        "reflective": tr.reflective,
        "single_pass": tr.single_pass,
        "truth": sample.truth,
        "prompt_tokens": gen.prompt_tokens,
        "new_tokens": len(gen.token_ids),
        "truncated": not gen.finished,  # cut by evaluate.max_new_tokens
    }


@dataclass
class InferenceStats:
    samples: int = 0
    videos: int = 0
    batches: int = 0
    seconds: float = 0.0
    new_tokens: int = 0
    padding_share: float = 0.0  # padded share of prompt positions
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        d["samples_per_s"] = self.samples / self.seconds if self.seconds else None
        return d


def process_group() -> tuple[int, int]:
    """(rank, world size) of a multi-process launch (``accelerate launch``, torchrun), else (0, 1).

    Several processes join accelerate's process group (gloo on CPU, NCCL on GPUs) once; a plain
    single process never initialises one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def _gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def run_inference(
    model,
    processor,
    samples: Sequence[Sample],
    settings: GenerationSettings,
    batch_size: int,
    model_label: str = "model",
    out_jsonl: Path | None = None,
    progress: bool = True,
    sort_by_length: bool = True,
    video_cache: int = 32,
) -> tuple[list[dict[str, Any]], InferenceStats]:
    """Generate for every sample; records in the order of ``samples``.

    With ``out_jsonl`` every finished batch is appended to ``<out_jsonl>.partial`` at once (a crash
    keeps what was generated), and the file is renamed to ``out_jsonl``, in sample order, at the end.

    Under a multi-process launch (:func:`process_group`) the batches are dealt to the ranks (batch i to
    rank i mod N) and every rank gets all the records back. The batches are those of a one-process run,
    so greedy outputs equal it; each rank keeps its own ``.partial`` file and only rank 0 writes
    ``out_jsonl``.

    ``video_cache`` videos keep their processed frames and vision features between batches (a video's
    prompts, every task and style, can span batches); 0 processes a video again in every batch, which
    with ``batch_size=1`` and no length sorting is VAU-R1's loop (``bench/eval.py``'s reference).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rank, world = process_group()
    gen_kwargs = generation_kwargs(model, processor.tokenizer, settings)
    seed_sampling(settings)
    texts = [chat_text(processor, s.prompt, s.system) for s in samples]
    lengths = [len(processor.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts] if sort_by_length else [0] * len(texts)
    order = length_order(samples, lengths) if sort_by_length else list(range(len(samples)))
    mine = list(batches(order, batch_size))[rank::world]
    store = FrameStore(capacity=max(4 * batch_size, 16))
    videos = VideoCache(video_cache)
    records: list[dict[str, Any] | None] = [None] * len(samples)
    stats = InferenceStats(samples=len(samples), videos=len({s.video_id for s in samples}))
    suffix = ".partial" if world == 1 else f".rank{rank}.partial"
    partial = out_jsonl.with_name(out_jsonl.name + suffix) if out_jsonl else None
    if partial:
        partial.parent.mkdir(parents=True, exist_ok=True)
    sink = open(partial, "w") if partial else None
    padded = total = 0
    t0 = time.perf_counter()
    try:
        bar = progress_of(total=sum(map(len, mine)), desc=f"evaluate {model_label}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
                          unit="prompt", enabled=progress and rank == 0)
        for idx in mine:
            clips = [store.get(samples[i].frames_path) for i in idx]
            gens = generate_batch(model, processor, [texts[i] for i in idx], clips, gen_kwargs, videos)
            width = max(g.prompt_tokens for g in gens)
            padded += sum(width - g.prompt_tokens for g in gens)
            total += width * len(gens)
            for i, g in zip(idx, gens):
                records[i] = make_record(samples[i], g, model_label)
                stats.new_tokens += len(g.token_ids)
                if sink:
                    sink.write(json.dumps(records[i]) + "\n")
            if sink:
                sink.flush()
            stats.batches += 1
            bar.update(len(idx))
        bar.close()
    finally:
        if sink:
            sink.close()
    seconds = time.perf_counter() - t0
    if world > 1:
        # everything back to every rank: the records by sample index, the counters summed
        parts = _gather(([(i, r) for i, r in enumerate(records) if r is not None],
                         (seconds, stats.batches, stats.new_tokens, padded, total)), world)
        for pairs, _ in parts:
            for i, r in pairs:
                records[i] = r
        seconds = max(c[0] for _, c in parts)  # wall time of the slowest rank
        stats.batches, stats.new_tokens, padded, total = (sum(c[k] for _, c in parts) for k in range(1, 5))
        stats.extra["processes"] = world
        stats.extra["batches_per_process"] = [c[1] for _, c in parts]
    stats.seconds = seconds
    stats.padding_share = padded / total if total else 0.0
    done = [r for r in records if r is not None]
    if out_jsonl:
        if rank == 0:
            write_jsonl(out_jsonl, done)
        partial.unlink(missing_ok=True)
    return done, stats


