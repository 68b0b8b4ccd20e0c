"""The ``cot`` stage: manifest -> RoCoT dataset (docs/contracts.md, docs/trace-format.md).

    out/train.parquet, val.parquet, test.parquet   kept samples (``srvau.cot.dataset.COLUMNS``)
    out/README.md                                  dataset card (counts, format, provenance)
    out/stats.json                                 the counts logged to MLflow
    out/generated.jsonl                            every rendered sample, appended as it arrives
    out/quarantine.jsonl                           items the teacher failed on, with the reason

One sample per (video, task) that has a ground truth for the task: QA needs a question with a
correct letter, grounding an ``anomaly`` or ``normal`` interval (``unavailable`` rows are excluded),
classification a class, description a reference description (:func:`srvau.contract.truth.truth_of`). Splits are the
manifest's. Flawed first passes are planned by ``cot.flaws``: ``cues`` marks the items whose annotation
records a misleading cue (the first pass goes wrong for a reason visible in the video); ``random``
marks exactly ``round(flawed_share * n)`` items per (split, task), by a seeded permutation.

Samples are written to ``generated.jsonl`` as the teacher returns them and failures to
``quarantine.jsonl``, so a failed or interrupted run loses nothing it had paid for (the openai
teacher's reply cache makes the re-run free). The quality filter (``srvau.cot.filter``) runs last.
With ``cot.single_pass`` the completions are VAU-R1 single passes (``style = "think"``), the
baseline recipe's data.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from srvau.config import CotConfig, Params, project_relative
from srvau.contract import scoring as S
from srvau.contract import trace as T
from srvau.contract.prompts import OPTION_FIELDS, system_prompt, task_prompt
from srvau.contract.truth import grounding_interval, truth_of
from srvau.contract.vocab import LETTERS, canonical_class, optional_float, optional_text
from srvau.cot.dataset import COLUMNS, ROTATED, SPLITS, save_split
from srvau.cot.filter import DROP_REASONS, FilterResult, is_correct, quality_filter
from srvau.cot.teachers import Generated, TaskItem, clean, key_evidence, make_teacher, misleading_cue, text_or_none
from srvau.data.manifest import ManifestError  # noqa: F401  (re-exported: `srvau cot` exits 2 on it)
from srvau.data.manifest import read_manifest as read_manifest_file
from srvau.io import sha256_file
from srvau.progress import progress

log = logging.getLogger(__name__)

GENERATED = "generated.jsonl"
QUARANTINE = "quarantine.jsonl"
STATS = "stats.json"
CARD = "README.md"
MANIFEST_COLUMNS = ("video_id", "split", "anomaly_class", "start_s", "end_s", "interval_kind", "duration_s", "frames_path")
TASK_COLUMNS = {
    "qa": ("has_qa", "question", "option_a", "option_b", "option_c", "option_d", "correct_option"),
    "grounding": (),
    "classification": (),
    "description": ("description",),
}
EVIDENCE_COLUMNS = ("key_object", "reasoning", "description")


class CotError(RuntimeError):
    """The stage cannot produce a dataset (nothing generated or kept)."""


# ----------------------------------------------------------------------------- items


def read_manifest(path: Path, tasks: Iterable[str]) -> pd.DataFrame:
    need = list(MANIFEST_COLUMNS) + [c for t in tasks for c in TASK_COLUMNS[t]]
    return read_manifest_file(path, required=need)


def video_interval(row: dict[str, Any]) -> tuple[float, float]:
    """RoCoT's ``gt_start, gt_end``: the anomaly interval, (-1, -1) for a normal video, NaN if unavailable."""
    iv = grounding_interval(row.get("start_s"), row.get("end_s"), row.get("interval_kind"))
    return iv if iv is not None else (math.nan, math.nan)


def option_orders(row: dict[str, Any], n: int) -> list[tuple[str, dict[str, Any]]]:
    """``(suffix, row)`` for a train QA row in ``n`` option orders: the annotated one ("") and its
    rotations by one letter ("@1", "@2", "@3"), the correct letter moved with its option. Seeing a
    video's options in several orders teaches reading the options, not the letter an event came with."""
    out = [("", row)]
    for r in range(1, min(n, 4)):
        rotated = dict(row)
        for i, name in enumerate(OPTION_FIELDS):
            rotated[OPTION_FIELDS[(i + r) % 4]] = row.get(name)
        letter = (optional_text(row.get("correct_option")) or "").upper()
        if letter in LETTERS:
            rotated["correct_option"] = LETTERS[(LETTERS.index(letter) + r) % 4]
        out.append((f"{ROTATED}{r}", rotated))
    return out


def task_items(manifest: pd.DataFrame, manifest_dir: Path, params: Params) -> list[TaskItem]:
    """Every (video, task) with a ground truth, ordered by split, video and task; train QA in
    ``cot.qa_option_orders`` option orders."""
    cot = params.cot
    order = {s: i for i, s in enumerate(SPLITS)}
    rows = sorted(manifest.to_dict("records"), key=lambda r: (order.get(str(r["split"]), 9), str(r["video_id"])))
    items: list[TaskItem] = []
    for row in rows:
        fp = text_or_none(row.get("frames_path"))
        frames = (Path(fp) if Path(fp).is_absolute() else Path(manifest_dir) / fp) if fp else None
        cls = canonical_class(optional_text(row.get("anomaly_class")) or "")
        evidence = key_evidence(row.get("reasoning"), row.get("description"), row.get("key_object"), cot.think_max_words)
        cue = misleading_cue(row.get("reasoning"))
        for task, suffix, variant in (
            (task, suffix, variant)
            for task in cot.tasks
            for suffix, variant in (option_orders(row, cot.qa_option_orders) if task == "qa" and row["split"] == "train"
                                    else [("", row)])
        ):
            truth = truth_of(task, variant)
            if truth is None:
                continue
            items.append(
                TaskItem(
                    sample_id=f"{row['video_id']}:{task}{suffix}",
                    video_id=str(row["video_id"]),
                    split=str(row["split"]),
                    task=task,
                    prompt=task_prompt(task, variant),
                    truth=truth,
                    anomaly_class=cls,
                    interval_kind=str(row.get("interval_kind")),
                    key_object=text_or_none(row.get("key_object")),
                    evidence=evidence,
                    reference=text_or_none(row.get("description")),
                    options={x: text_or_none(variant.get(f)) or "" for x, f in zip(LETTERS, OPTION_FIELDS)} if task == "qa" else {},
                    duration_s=optional_float(row.get("duration_s")) or 0.0,
                    video_interval=video_interval(row),
                    frames_path=frames,
                    cue=cue,
                )
            )
    return items


def plan_flaws(items: list[TaskItem], cfg: CotConfig, seed: int) -> list[TaskItem]:
    """Which items get a flawed first pass: ``cues``: those with a misleading cue; ``random``: exactly
    ``round(flawed_share * n)`` items of every (split, task) group (seeded)."""
    if cfg.flaws == "cues":
        return [replace(it, flawed=it.cue is not None) for it in items]
    share = cfg.flawed_share
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.split, it.task), []).append(i)
    flawed: set[int] = set()
    for (split, task), idx in sorted(groups.items()):
        idx = sorted(idx, key=lambda i: items[i].sample_id)
        k = int(math.floor(share * len(idx) + 0.5))
        rng = np.random.default_rng([seed, zlib.crc32(f"{split}:{task}".encode())])
        flawed.update(idx[j] for j in rng.permutation(len(idx))[:k])
    return [replace(it, flawed=i in flawed) for i, it in enumerate(items)]


# ----------------------------------------------------------------------------- rows


def render_row(gen: Generated, cfg: CotConfig) -> dict[str, Any]:
    """A RoCoT row from a teacher's parts: rendered, then read back with the shared parser."""
    item, parts = gen.item, gen.parts
    assert parts is not None
    grounding = item.task == "grounding"
    first, final = parts.first, parts.final
    style = "think" if cfg.single_pass else "reflect"
    if cfg.single_pass:
        completion = T.render_pass(clean(final.think), clean(final.answer), final.interval if grounding else None)
    else:
        completion = T.render_trace(
            clean(first.think), clean(first.answer), clean(parts.reflection), clean(final.think), clean(final.answer),
            first.interval if grounding else None, final.interval if grounding else None,
        )
    trace = T.parse_trace(completion)
    a1, g1 = S.pass_blocks(trace, style, "first")
    a2, _ = S.pass_blocks(trace, style, "final")
    gt = item.video_interval
    return {
        "sample_id": item.sample_id,
        "video_id": item.video_id,
        "split": item.split,
        "task": item.task,
        "style": style,
        "system": system_prompt(style, item.task),
        "prompt": item.prompt,
        "completion": completion,
        "first_answer": S.normalize_answer(item.task, a1),
        "final_answer": S.normalize_answer(item.task, a2),
        "first_correct": is_correct(item.truth, a1, g1, cfg),
        "answer": item.truth.answer,
        "gt_start": float(gt[0]),
        "gt_end": float(gt[1]),
        "interval_kind": item.interval_kind,
        "anomaly_class": item.anomaly_class,
        "teacher": gen.teacher,
        "frames_path": project_relative(item.frames_path) if item.frames_path else None,
    }


# ----------------------------------------------------------------------------- the stage


@dataclass
class CotResult:
    out_dir: Path
    teacher: str
    split_counts: dict[str, int]
    task_counts: dict[str, int]
    filter: FilterResult
    quarantined: Counter
    first_wrong_share: float  # among kept reflect samples
    teacher_stats: dict[str, int] = field(default_factory=dict)

    @property
    def paths(self) -> dict[str, Path]:
        return {"card": self.out_dir / CARD, "stats": self.out_dir / STATS, "quarantine": self.out_dir / QUARANTINE}

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {k: float(v) for k, v in self.filter.counts().items()}
        m["quarantined"] = float(sum(self.quarantined.values()))
        m["first_wrong_share"] = float(self.first_wrong_share)
        m.update({f"samples_{s}": float(n) for s, n in self.split_counts.items()})
        m.update({f"task_{t}": float(n) for t, n in self.task_counts.items()})
        m.update({f"teacher_{k}": float(v) for k, v in self.teacher_stats.items()})
        return m


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def build_rocot(manifest: Path, out_dir: Path, params: Params, teacher=None) -> CotResult:
    """Run the ``cot`` stage (see the module docstring). ``teacher`` defaults to ``params.cot.teacher``."""
    cot = params.cot
    manifest, out_dir = Path(manifest), Path(out_dir)
    df = read_manifest(manifest, cot.tasks)
    leaked = df.groupby("video_id")["split"].nunique()
    if (leaked > 1).any():
        log.warning("%d video(s) appear in more than one split (the validate gate will fail): %s",
                    int((leaked > 1).sum()), ", ".join(leaked[leaked > 1].index[:5]))
    items = task_items(df, manifest.parent, params)
    if not items:
        raise CotError(f"no (video, task) in {manifest} has a ground truth for tasks {cot.tasks}")
    if not cot.single_pass:
        items = plan_flaws(items, cot, params.seed)
    teacher = teacher or make_teacher(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("cot: %d samples from %d videos, teacher %s", len(items), df["video_id"].nunique(), teacher.name)

    rows: list[dict[str, Any]] = []
    quarantined: Counter = Counter()
    with open(out_dir / GENERATED, "w", encoding="utf-8") as gen_f, open(out_dir / QUARANTINE, "w", encoding="utf-8") as q_f:
        for g in progress(teacher.generate(items), total=len(items), desc=f"cot ({teacher.name})", unit="sample"):
            if g.parts is None:
                quarantined[g.why or "unknown"] += 1
                rec = {"sample_id": g.item.sample_id, "video_id": g.item.video_id, "split": g.item.split,
                       "task": g.item.task, "teacher": g.teacher, "why": g.why, "detail": g.detail, "attempts": g.attempts}
                q_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                q_f.flush()
                continue
            row = render_row(g, cot)
            rows.append(row)
            gen_f.write(json.dumps(_jsonable(row), ensure_ascii=False) + "\n")
            gen_f.flush()
    for why, n in quarantined.items():
        log.warning("quarantined %d sample(s): %s", n, why)

    rows.sort(key=lambda r: r["sample_id"])
    res = quality_filter(rows, cot)
    for reason in DROP_REASONS:
        if res.dropped.get(reason):
            log.warning("filter dropped %d sample(s) as %s, e.g. %s", res.dropped[reason], reason, res.examples[reason])
    if not res.kept:
        raise CotError(f"no sample kept: {len(rows)} generated, {sum(quarantined.values())} quarantined, dropped {dict(res.dropped)}")
    kept = pd.DataFrame(res.kept, columns=list(COLUMNS))
    split_counts = {}
    for split in SPLITS:
        part = kept[kept["split"] == split].reset_index(drop=True)
        save_split(part, out_dir, split)
        split_counts[split] = len(part)
    others = sorted(set(kept["split"]) - set(SPLITS))
    if others:
        log.warning("samples of unknown split(s) %s are not saved", others)
    reflect = kept[kept["style"] == "reflect"]
    result = CotResult(
        out_dir=out_dir,
        teacher=teacher.name,
        split_counts=split_counts,
        task_counts={t: int((kept["task"] == t).sum()) for t in cot.tasks},
        filter=res,
        quarantined=quarantined,
        first_wrong_share=float((~reflect["first_correct"].astype(bool)).mean()) if len(reflect) else 0.0,
        teacher_stats=dict(getattr(teacher, "stats", None) or {}),
    )
    stats = {"metrics": result.metrics(), "dropped": dict(res.dropped), "quarantined": dict(quarantined),
             "manifest": project_relative(manifest), "manifest_sha256": sha256_file(manifest)}
    (out_dir / STATS).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    write_card(out_dir, result, kept, params, manifest, stats["manifest_sha256"])
    log.info("cot: kept %d of %d (%s), quarantined %d", len(kept), res.total, split_counts, sum(quarantined.values()))
    return result


# ----------------------------------------------------------------------------- dataset card


def write_card(out_dir: Path, result: CotResult, kept: pd.DataFrame, params: Params, manifest: Path, manifest_sha: str) -> Path:
    cot = params.cot
    style = "think" if cot.single_pass else "reflect"
    table = kept.pivot_table(index="task", columns="split", values="sample_id", aggfunc="count", fill_value=0)
    table = table.reindex(columns=[s for s in SPLITS if s in table.columns])
    lines = ["| task | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
    lines += [f"| {t} | " + " | ".join(str(int(v)) for v in table.loc[t]) + " |" for t in table.index]
    example = kept.iloc[0]["completion"] if len(kept) else ""
    dropped = ", ".join(f"{r}: {result.filter.dropped.get(r, 0)}" for r in DROP_REASONS)
    quarantined = ", ".join(f"{k}: {v}" for k, v in sorted(result.quarantined.items())) or "none"
    card = f"""---
pretty_name: RoCoT (srvau)
language: [en]
task_categories: [video-text-to-text]
tags: [video-anomaly-understanding, chain-of-thought, reflection]
configs:
- config_name: default
  data_files:
{chr(10).join(f"  - split: {s}{chr(10)}    path: {s}.parquet" for s in SPLITS)}
---

# RoCoT: reflection-oriented chain-of-thought for video anomaly understanding

Generated by `srvau cot` from the manifest `{project_relative(manifest)}`
(sha256 `{manifest_sha}`) with teacher **{result.teacher}**, seed {params.seed}, style **{style}**.
One sample per (video, task); splits are the manifest's.

## Samples kept

{chr(10).join(lines)}

First pass wrong (corrected by the reflection): {result.first_wrong_share:.1%} of kept reflect samples
(flawed first passes planned by `cot.flaws` = {cot.flaws}{f", share {cot.flawed_share}" if cot.flaws == "random" else ": where the annotation records a misleading cue"}).

Quality filter: generated {result.filter.total}, kept {len(result.filter.kept)}; dropped {dropped}.
Teacher failures (quarantine.jsonl): {quarantined}.

## Format

```
<think>initial reasoning</think><answer>first answer</answer>[<glue>[s, e]</glue>]
<reflection>critique of the first pass</reflection>
<think>revised reasoning</think><answer>final answer</answer>[<glue>[s, e]</glue>]
```

`<glue>` only for temporal grounding (seconds; a normal video is `[-1.0, -1.0]`). Parse completions
with `srvau.contract.trace.parse_trace`, the parser the rewards and the evaluation use. Example:

```
{example}
```

## Columns

`{"`, `".join(COLUMNS)}`. `answer` is the ground truth (letter for qa, canonical class for
classification, Anomaly/Normal for grounding, reference text for description); `gt_start`/`gt_end`
are seconds (-1, -1 for a normal video, NaN when unavailable); `frames_path` is the frame-cache entry
(relative to the project root unless absolute). Load a split with
`srvau.cot.dataset.load_rocot(root, split)`.

## Limitations

The `annotation` teacher writes template traces from the ground-truth fields: short and regular by
design (a small model must learn the structure), not the varied prose of an LLM teacher. Description
correctness is checked for faithfulness to the reference, not completeness.
"""
    path = out_dir / CARD
    path.write_text(card)
    return path
