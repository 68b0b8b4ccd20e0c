"""Ground truth of a manifest row for one task: the one rule every stage judges answers against
(docs/contracts.md).

Two sources carry it: a manifest/annotation row (the importer's columns: ``correct_option``,
``has_qa``, ``interval_kind``, ``start_s``, ``end_s``, ``anomaly_class``, ``description``, ...) and a
RoCoT row, whose ``answer``/``gt_start``/``gt_end``/``interval_kind`` columns the rewards receive from TRL.
Both end up as one :class:`Truth`.

Which rows count: QA needs a question and a letter; grounding needs an anomaly interval or a normal
video (an unavailable ``-1,-1`` interval never counts); classification needs one of the 20 classes;
description needs a reference description. The evaluation protocol scores grounding on anomaly
intervals only (:attr:`Truth.in_grounding_protocol`), as VAU-R1 does; training also learns "Normal".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from srvau.contract.vocab import (
    LETTERS,
    NORMAL,
    NORMAL_INTERVAL,
    TASKS,
    canonical_class,
    is_missing,
    optional_float,
    optional_text,
)

Interval = tuple[float, float]


@dataclass(frozen=True)
class Truth:
    """What one (video, task) is judged against.

    ``answer``: the letter (qa), ``"Anomaly"``/``"Normal"`` (grounding), the canonical class
    (classification) or the reference text (description). ``interval``: grounding only, the anomaly
    interval or :data:`NORMAL_INTERVAL`.
    """

    task: str
    answer: str
    interval: Interval | None = None
    anomaly_class: str | None = None
    reasoning: str | None = None
    key_object: str | None = None

    @property
    def is_normal(self) -> bool:
        return self.interval == NORMAL_INTERVAL

    @property
    def in_grounding_protocol(self) -> bool:
        """Scored by the evaluation protocol: every task but grounding on a normal video."""
        return self.task != "grounding" or not self.is_normal

    def as_record(self) -> dict[str, Any]:
        """JSON form stored with each prediction (``start_s``/``end_s`` for grounding)."""
        out: dict[str, Any] = {"answer": self.answer, "anomaly_class": self.anomaly_class}
        if self.interval is not None:
            out["start_s"], out["end_s"] = self.interval
        if self.task == "description":
            out.update(reasoning=self.reasoning, key_object=self.key_object)
        return out


def grounding_interval(start: Any, end: Any, interval_kind: Any = None) -> Interval | None:
    """The grounding target: the anomaly interval, :data:`NORMAL_INTERVAL` for a normal video, None when
    unavailable. Without ``interval_kind`` the numbers decide (``0,0`` and ``-1,-1`` are normal)."""
    kind = None if is_missing(interval_kind) else str(interval_kind).lower()
    if kind == "unavailable":
        return None
    if kind == "normal":
        return NORMAL_INTERVAL
    s, e = optional_float(start), optional_float(end)
    if s is None or e is None:
        return None
    if (s < 0 and e < 0) or (kind is None and s == 0 and e == 0):
        return NORMAL_INTERVAL
    return (s, e) if e > s else None


def truth_of(task: str, row: Mapping[str, Any]) -> Truth | None:
    """Ground truth of a manifest (or imported annotation) row for ``task``; None when the row does not
    count for that task."""
    cls = optional_text(row.get("anomaly_class"))
    cls = canonical_class(cls) if cls else None
    if task == "qa":
        letter = (optional_text(row.get("correct_option")) or "").upper()
        has_qa = row.get("has_qa", True)
        if is_missing(has_qa) or not bool(has_qa) or letter not in LETTERS or is_missing(row.get("question")):
            return None
        return Truth("qa", letter, anomaly_class=cls)
    if task == "grounding":
        iv = grounding_interval(row.get("start_s"), row.get("end_s"), row.get("interval_kind"))
        if iv is None:
            return None
        return Truth("grounding", NORMAL if iv == NORMAL_INTERVAL else "Anomaly", iv, anomaly_class=cls)
    if task == "classification":
        return Truth("classification", cls, anomaly_class=cls) if cls else None
    if task == "description":
        desc = optional_text(row.get("description"))
        if desc is None:
            return None
        return Truth(
            "description",
            desc,
            anomaly_class=cls,
            reasoning=optional_text(row.get("reasoning")),
            key_object=optional_text(row.get("key_object")),
        )
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def truth_from_columns(task: Any, answer: Any, gt_start: Any = None, gt_end: Any = None, interval_kind: Any = None) -> Truth | None:
    """Ground truth from a RoCoT row's columns (what GRPO passes its reward functions)."""
    task = optional_text(task)
    if task == "grounding":
        iv = grounding_interval(gt_start, gt_end, interval_kind)
        return None if iv is None else Truth("grounding", NORMAL if iv == NORMAL_INTERVAL else "Anomaly", iv)
    text = optional_text(answer)
    if task not in TASKS or text is None:
        return None
    if task == "qa":
        return Truth("qa", text.upper()[:1])
    if task == "classification":
        cls = canonical_class(text)
        return Truth("classification", cls, anomaly_class=cls) if cls else None
    return Truth(task, text)
