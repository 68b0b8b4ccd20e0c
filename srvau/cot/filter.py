"""RoCoT quality filter (docs/contracts.md, "RoCoT samples").

A sample is kept when

* its completion is well formed for its style (:func:`srvau.contract.scoring.well_formed`: the rule the
  format reward and the evaluation use too);
* the row's ``first_answer``/``final_answer``/``first_correct`` are what the completion says
  (a teacher bug would otherwise train on one thing and score another);
* the final pass is right (:func:`srvau.contract.scoring.pass_correct`, the rule the rewards and the
  difficulty filter use): letter/class equal, grounding label agrees and IoU >= ``cot.min_iou``,
  description substantive and faithful (``cot.min_description_overlap``);
* the reflection does not merely copy an answer (:func:`reflection_copies_answer`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from srvau.config import CotConfig
from srvau.contract import scoring as S
from srvau.contract import trace as T
from srvau.contract.truth import Truth, truth_from_columns
from srvau.contract.vocab import is_missing

DROP_REASONS: tuple[str, ...] = ("malformed", "answer_mismatch", "final_wrong", "reflection_copies_answer")

# Words that restate a verdict without adding evidence ("the final answer is B").
_FILLER = S.STOPWORDS | {"answer", "final", "correct", "option", "therefore", "thus", "hence", "yes", "choice"}


def row_truth(row: Mapping[str, Any]) -> Truth | None:
    """A RoCoT row's ground truth (its ``task``/``answer``/``gt_*``/``interval_kind`` columns)."""
    return truth_from_columns(row.get("task"), row.get("answer"), row.get("gt_start"), row.get("gt_end"), row.get("interval_kind"))


def is_correct(truth: Truth, answer_block: str | None, glue_block: str | None, cfg: CotConfig) -> bool:
    """One pass right by the contract's rule, with the thresholds of ``cot``."""
    return S.pass_correct(truth, answer_block, glue_block, min_iou=cfg.min_iou, min_overlap=cfg.min_description_overlap)


# ----------------------------------------------------------------------------- reflection


def _norm(text: str | None) -> str:
    return " ".join(S.words(text))


def reflection_copies_answer(trace: T.Trace) -> bool:
    """True when the reflection adds nothing beyond the answers: it equals an answer or a think
    block, or fewer than two of its words are neither in the answers nor verdict filler."""
    r = _norm(trace.reflection)
    if not r:
        return True
    if r in {_norm(trace.first_answer), _norm(trace.final_answer), _norm(trace.final_think), _norm(trace.first_think)}:
        return True
    answered = set(S.words(trace.first_answer)) | set(S.words(trace.final_answer))
    new = [w for w in S.words(trace.reflection) if w not in answered and w not in _FILLER]
    return len(new) < 2


# ----------------------------------------------------------------------------- the filter


def _same(a: Any, b: Any) -> bool:
    if is_missing(a) and is_missing(b):
        return True
    return not is_missing(a) and not is_missing(b) and str(a) == str(b)


def drop_reason(row: Mapping[str, Any], cfg: CotConfig) -> str | None:
    """Why ``row`` must not be kept (one of ``DROP_REASONS``), or None to keep it."""
    task, style = str(row["task"]), str(row.get("style", "reflect"))
    trace = T.parse_trace(str(row.get("completion") or ""))
    if not S.well_formed(trace, style, task):
        return "malformed"
    truth = row_truth(row)
    if truth is None:
        return "final_wrong"
    first_answer, first_glue = S.pass_blocks(trace, style, "first")
    final_answer, final_glue = S.pass_blocks(trace, style, "final")
    first_ok = is_correct(truth, first_answer, first_glue, cfg)
    if not (
        _same(row.get("first_answer"), S.normalize_answer(task, first_answer))
        and _same(row.get("final_answer"), S.normalize_answer(task, final_answer))
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
