"""RoCoT quality filter (DESIGN 4.4) and the correctness rules the builder shares with it.

A sample is kept when

* its completion is well formed (``srvau.cot.format.parse_trace``: the full reflection structure for
  ``style == "reflect"``, a VAU-R1 single pass for ``style == "think"``), and a grounding sample has
  a parseable ``<glue>[s, e]`` in every pass;
* the row's ``first_answer``/``final_answer``/``first_correct`` are what the completion says
  (a teacher bug would otherwise train on one thing and score another);
* the final answer equals the ground truth: the letter (QA) or class (classification), read with
  the evaluation's parsers; grounding: the Anomaly/Normal label agrees and the interval score (IoU,
  both normal = 1) reaches ``cot.min_iou``; description: see :func:`description_ok`;
* the reflection does not merely copy an answer (:func:`reflection_copies_answer`).

Correctness of letters, classes and intervals reuses ``srvau.training.rewards`` (``answer_correct``,
``gt_interval``, ``interval_score``), so the filter keeps exactly what the rewards call correct.

Departure: DESIGN 4.4 asks for "final answer equals ground truth" also for descriptions, where
equality is undefined for free text. We require the description to be substantive (at least three
content words) and faithful (at least ``cot.min_description_overlap`` of its content words occur
in the reference); completeness is judged later by the VAU-Eval LLM judge, not here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from srvau.config import CotConfig
from srvau.cot import format as fmt
from srvau.training.rewards import answer_correct, gt_interval, interval_score

DROP_REASONS: tuple[str, ...] = ("malformed", "answer_mismatch", "final_wrong", "reflection_copies_answer")

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a an the and or but of in on at to from by with for as is are was were be been being it its this that
    these those there their they them he she his her we our you your i my me so then than too very can could
    would should will may might must do does did not no nor into onto over under out up down off again also
    just only both each other some such any all while when where which who whom what why how about after
    before between during through s""".split()
)
# Words that restate a verdict without adding evidence ("the final answer is B").
_FILLER = STOPWORDS | {"answer", "final", "correct", "option", "therefore", "thus", "hence", "yes", "choice"}


def words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def content_words(text: str | None) -> list[str]:
    return [w for w in words(text) if len(w) > 2 and w not in STOPWORDS]


# ----------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class Truth:
    """What a sample's answers are judged against (the RoCoT ground-truth columns)."""

    task: str
    answer: str
    interval: tuple[float, float] | None = None  # grounding: (s, e); NORMAL_INTERVAL; None unavailable

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Truth":
        task = str(row["task"])
        iv = gt_interval(row.get("gt_start"), row.get("gt_end"), row.get("interval_kind")) if task == "grounding" else None
        return cls(task, str(row["answer"]), iv)


def grounding_label(block: str | None) -> str | None:
    """'Anomaly' or 'Normal' from a grounding answer block ("no anomaly" reads as Normal)."""
    if not block:
        return None
    text = block.lower()
    if re.search(r"\b(no|not an?|without)\s+(anomal|abnormal)", text):
        return "Normal"
    m = re.search(r"\b(anomal\w*|abnormal\w*|normal)\b", text)
    if not m:
        return None
    return "Normal" if m.group(1) == "normal" else "Anomaly"


def normalize_answer(task: str, block: str | None) -> str | None:
    """The comparable form of one answer block: letter, class, label or the description text."""
    if block is None:
        return None
    if task == "qa":
        return fmt.letter_of(block)
    if task == "classification":
        return fmt.extract_class(block)
    if task == "grounding":
        return grounding_label(block)
    if task == "description":
        text = " ".join(block.split())
        return text or None
    raise ValueError(f"unknown task {task!r}")


def description_ok(text: str | None, reference: str | None, min_overlap: float) -> bool:
    """Substantive (>= 3 content words) and faithful (share of them found in the reference)."""
    pred = content_words(text)
    ref = set(content_words(reference))
    if len(pred) < 3 or not ref:
        return False
    return sum(w in ref for w in pred) / len(pred) >= min_overlap


def is_correct(truth: Truth, answer_block: str | None, glue_block: str | None, cfg: CotConfig) -> bool:
    """Is one pass (its answer block and, for grounding, its glue block) right?"""
    if answer_block is None or not answer_block.strip():
        return False
    if truth.task in ("qa", "classification"):
        return answer_correct(truth.task, answer_block, truth.answer)
    if truth.task == "grounding":
        if truth.interval is None or grounding_label(answer_block) != truth.answer:
            return False
        pred = fmt.parse_interval_strict(glue_block)
        return pred is not None and interval_score(pred, truth.interval) >= cfg.min_iou
    if truth.task == "description":
        return description_ok(answer_block, truth.answer, cfg.min_description_overlap)
    raise ValueError(f"unknown task {truth.task!r}")


# ----------------------------------------------------------------------------- reflection


def _norm(text: str | None) -> str:
    return " ".join(words(text))


def reflection_copies_answer(trace: fmt.Trace) -> bool:
    """True when the reflection adds nothing beyond the answers: it equals an answer or a think
    block, or fewer than two of its words are neither in the answers nor verdict filler."""
    r = _norm(trace.reflection)
    if not r:
        return True
    if r in {_norm(trace.first_answer), _norm(trace.final_answer), _norm(trace.final_think), _norm(trace.first_think)}:
        return True
    answered = set(words(trace.first_answer)) | set(words(trace.final_answer))
    new = [w for w in words(trace.reflection) if w not in answered and w not in _FILLER]
    return len(new) < 2


# ----------------------------------------------------------------------------- the filter


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _same(a: Any, b: Any) -> bool:
    if _missing(a) and _missing(b):
        return True
    return not _missing(a) and not _missing(b) and str(a) == str(b)


def pass_blocks(trace: fmt.Trace, style: str, which: str) -> tuple[str | None, str | None]:
    """(answer, glue) of the first or final pass; a single pass is both."""
    if style == "think" or which == "final":
        return trace.final_answer, trace.final_glue
    return trace.first_answer, trace.first_glue


def well_formed(trace: fmt.Trace, style: str, task: str) -> bool:
    """The structure of ``style`` (reflect: three parts; think: one pass), every block non-empty;
    grounding: a parseable ``<glue>[s, e]`` in every pass. The gate's well-formed share uses this too."""
    if not (trace.reflective if style == "reflect" else trace.single_pass):
        return False
    if task == "grounding":
        glues = [c for n, c in trace.blocks if n == "glue"]
        return len(glues) == (2 if style == "reflect" else 1) and all(fmt.parse_interval_strict(g) is not None for g in glues)
    return True


def drop_reason(row: Mapping[str, Any], cfg: CotConfig) -> str | None:
    """Why ``row`` must not be kept (one of ``DROP_REASONS``), or None to keep it."""
    task, style = str(row["task"]), str(row.get("style", "reflect"))
    trace = fmt.parse_trace(str(row.get("completion") or ""))
    if not well_formed(trace, style, task):
        return "malformed"
    truth = Truth.from_row(row)
    first_answer, first_glue = pass_blocks(trace, style, "first")
    final_answer, final_glue = pass_blocks(trace, style, "final")
    first_ok = is_correct(truth, first_answer, first_glue, cfg)
    if not (
        _same(row.get("first_answer"), normalize_answer(task, first_answer))
        and _same(row.get("final_answer"), normalize_answer(task, final_answer))
        and bool(row.get("first_correct")) == first_ok
    ):
        return "answer_mismatch"
    if not is_correct(truth, final_answer, final_glue, cfg):
        return "final_wrong"
    if style == "reflect" and reflection_copies_answer(trace):
        return "reflection_copies_answer"
    return None


@dataclass
class FilterResult:
    kept: list[dict[str, Any]]
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one sample_id

    @property
    def total(self) -> int:
        return len(self.kept) + sum(self.dropped.values())

    def counts(self) -> dict[str, int]:
        return {"generated": self.total, "kept": len(self.kept), **{f"dropped_{r}": self.dropped.get(r, 0) for r in DROP_REASONS}}


def quality_filter(rows: Iterable[Mapping[str, Any]], cfg: CotConfig) -> FilterResult:
    """Keep the rows that pass every rule; count the others by reason."""
    res = FilterResult(kept=[])
    for row in rows:
        reason = drop_reason(row, cfg)
        if reason is None:
            res.kept.append(dict(row))
        else:
            res.dropped[reason] += 1
            res.examples.setdefault(reason, str(row.get("sample_id")))
    return res
