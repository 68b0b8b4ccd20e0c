"""Batched generation over the manifest's evaluation split: one prediction record per (video, task, style).

How it departs from VAU-R1's evaluation scripts, and why:

* VAU-R1 generates one video at a time. Here several prompts, each with its own video, share one
  ``generate()`` call with *left* padding (the processor pads the text; the vision tokens of every
  video are packed by the processor as usual). Under greedy decoding the tokens equal one-at-a-time
  generation (tested); ``bench/eval.py`` measures the speed-up.
* Prompts are sorted by their estimated length (vision tokens from the one sampling policy plus
  text tokens), longest first, so a batch holds prompts of similar length (little padding) and an
  out-of-memory batch shows up at once rather than at the end. Records come back in manifest order.
* Frames come from the frame cache (``srvau.video.cache.load_frames``): the model sees exactly
  the frames it was trained on. VAU-R1 evaluated with a different frame/pixel budget than it trained.
* Generation settings are explicit (greedy unless ``evaluate.temperature > 0``, no repetition
  penalty) rather than inherited from the checkpoint's ``generation_config.json``: Qwen2.5-VL's Hub
  config samples with ``repetition_penalty=1.05``, which would make the numbers depend on the file.
* Vision placeholder ids are suppressed: an untrained model emits them and the next forward fails.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from srvau.cot.format import extract_class, extract_interval, extract_letter, parse_trace, pass_text
from srvau.cot.prompts import system_prompt, task_prompt
from srvau.evaluation.metrics import cls_correct, qa_correct, tag_iou
from srvau.data.manifest import ManifestError, optional_float
from srvau.data.manifest import read_manifest as read_manifest_file

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("qa", "grounding", "classification", "description")
STYLES: tuple[str, ...] = ("reflect", "think", "direct")
METRIC_TASK = {"qa": "qa", "grounding": "tag", "classification": "cls"}  # metrics.py's task names


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


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() in ("", "-1")


def _opt_str(v: Any) -> str | None:
    return None if _missing(v) else str(v)


def ground_truth(task: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """The task's ground truth for a manifest row, or None when the row does not count for the task.

    Which rows count follows DESIGN 6: QA needs a question; grounding needs an *anomaly* interval
    (``0,0`` normal and ``-1,-1`` unavailable rows are excluded, as VAU-R1 excludes them);
    classification needs a class; description needs a reference description.
    """
    common = {"anomaly_class": _opt_str(row.get("anomaly_class")), "interval_kind": row.get("interval_kind")}
    if task == "qa":
        letter = _opt_str(row.get("correct_option"))
        if not bool(row.get("has_qa", True)) or letter is None or _missing(row.get("question")):
            return None
        return {**common, "answer": letter.strip().upper()}
    if task == "grounding":
        s, e = optional_float(row.get("start_s")), optional_float(row.get("end_s"))
        if row.get("interval_kind") != "anomaly" or s is None or e is None or e <= s:
            return None
        return {**common, "answer": "Anomaly", "start_s": s, "end_s": e}
    if task == "classification":
        if common["anomaly_class"] is None:
            return None
        return {**common, "answer": common["anomaly_class"]}
    if task == "description":
        desc = _opt_str(row.get("description"))
        if desc is None:
            return None
        return {
            **common,
            "answer": desc,
            "reasoning": _opt_str(row.get("reasoning")),
            "key_object": _opt_str(row.get("key_object")),
        }
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


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
        fp = _opt_str(row.get("frames_path"))
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


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    seed: int = 1234

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int


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


def chat_text(processor, sample: Sample) -> str:
    from srvau.modeling.inputs import user_message

    return processor.apply_chat_template(user_message(sample.prompt, sample.system), add_generation_prompt=True, tokenize=False)


def generation_kwargs(model, tokenizer, settings: GenerationSettings) -> dict[str, Any]:
    """Explicit decoding settings (see the module docstring), vision placeholders suppressed."""
    from transformers import GenerationConfig

    from srvau.modeling import vision_token_ids

    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    sampling = {} if settings.greedy else {"temperature": settings.temperature, "top_p": 1.0, "top_k": 0}
    cfg = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=not settings.greedy,
        eos_token_id=eos,
        pad_token_id=pad,
        suppress_tokens=vision_token_ids(tokenizer),
        **sampling,
    )
    return {"generation_config": cfg}


def _eos_ids(gen_kwargs: dict[str, Any]) -> set[int]:
    eos = gen_kwargs["generation_config"].eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def _trim(ids: list[int], eos: set[int]) -> list[int]:
    """Tokens up to and including the first end-of-sequence (a batch pads finished rows after it)."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def generate_batch(model, processor, texts: Sequence[str], clips: Sequence[tuple[np.ndarray, dict]], gen_kwargs: dict) -> list[Generation]:
    """One left-padded ``generate()`` over several (prompt, video) pairs."""
    import torch

    from srvau.modeling.inputs import processor_inputs

    inputs = processor_inputs(processor, texts, [c[0] for c in clips], [c[1] for c in clips], padding_side="left")
    inputs = inputs.to(model.device)
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    width = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        out = model.generate(**inputs, **gen_kwargs)
    eos = _eos_ids(gen_kwargs)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    gens = []
    for row, n_prompt in zip(out[:, width:].tolist(), lengths):
        ids = _trim(row, eos)
        text = processor.tokenizer.decode(ids, skip_special_tokens=True)
        gens.append(Generation(text=text, token_ids=ids, prompt_tokens=int(n_prompt)))
    return gens


def length_order(samples: Sequence[Sample], text_lengths: Sequence[int]) -> list[int]:
    """Indices of ``samples``, longest estimated prompt first; ties keep videos together."""
    return sorted(range(len(samples)), key=lambda i: (-(samples[i].est_vision_tokens + text_lengths[i]), samples[i].frames_path, i))


def batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), batch_size):
        yield list(order[i : i + batch_size])


# ----------------------------------------------------------------------------- records


def parse_answers(task: str, output: str) -> tuple[Any, Any]:
    """(first, final) parsed answers by the evaluation parsers (srvau.cot.format)."""
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
    """Per-sample correctness of the first and final answers (metrics.py's rules)."""
    if task == "qa":
        return {"first_correct": qa_correct(output, truth["answer"], "first"), "final_correct": qa_correct(output, truth["answer"], "final")}
    if task == "grounding":
        gt = (truth["start_s"], truth["end_s"])
        a, b = tag_iou(output, gt, "first"), tag_iou(output, gt, "final")
        return {"iou_first": a, "iou_final": b}
    if task == "classification":
        (fb, fm), (lb, lm) = cls_correct(output, truth["answer"], "first"), cls_correct(output, truth["answer"], "final")
        return {"first_correct": fm, "final_correct": lm, "first_binary_correct": fb, "final_binary_correct": lb}
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
        "reflective": tr.reflective,
        "single_pass": tr.single_pass,
        "truth": sample.truth,
        "prompt_tokens": gen.prompt_tokens,
        "new_tokens": len(gen.token_ids),
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
) -> tuple[list[dict[str, Any]], InferenceStats]:
    """Generate for every sample; records in the order of ``samples``.

    With ``out_jsonl`` every finished batch is appended to ``<out_jsonl>.partial`` at once (a crash
    keeps what was generated), and the file is renamed to ``out_jsonl``, in sample order, at the end.
    """
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    gen_kwargs = generation_kwargs(model, processor.tokenizer, settings)
    if not settings.greedy:
        torch.manual_seed(settings.seed)
    texts = [chat_text(processor, s) for s in samples]
    lengths = [len(processor.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts] if sort_by_length else [0] * len(texts)
    order = length_order(samples, lengths) if sort_by_length else list(range(len(samples)))
    store = FrameStore(capacity=max(4 * batch_size, 16))
    records: list[dict[str, Any] | None] = [None] * len(samples)
    stats = InferenceStats(samples=len(samples), videos=len({s.video_id for s in samples}))
    partial = out_jsonl.with_name(out_jsonl.name + ".partial") if out_jsonl else None
    if partial:
        partial.parent.mkdir(parents=True, exist_ok=True)
    sink = open(partial, "w") if partial else None
    padded = total = 0
    t0 = time.perf_counter()
    try:
        bar = tqdm(total=len(samples), desc=f"evaluate {model_label}", unit="prompt", file=sys.stderr, disable=not progress)
        for idx in batches(order, batch_size):
            clips = [store.get(samples[i].frames_path) for i in idx]
            gens = generate_batch(model, processor, [texts[i] for i in idx], clips, gen_kwargs)
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
    stats.seconds = time.perf_counter() - t0
    stats.padding_share = padded / total if total else 0.0
    done = [r for r in records if r is not None]
    if out_jsonl:
        write_jsonl(out_jsonl, done)
        partial.unlink(missing_ok=True)
    return done, stats


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Atomic JSONL write (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON: {e}") from None
    return out
