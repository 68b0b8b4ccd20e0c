"""Task metrics of the evaluation protocol (DESIGN 6), computed from model outputs and ground truth.

Parsing is :mod:`srvau.cot.format`'s (VAU-R1's rules); this module only scores and aggregates.
Every percentage is on a 0-100 scale, rounded as VAU-R1 rounds (to 4 decimals of the fraction,
then x100) and to 2 decimals; with no scored sample it is None.

* QA: correct iff the extracted letter equals the (normalised) ``Correct Option``.
* Grounding (``tag``): IoU of the extracted interval with an *anomaly* ground-truth interval (callers
  exclude ``0,0`` and ``-1,-1`` rows); mIoU and R@0.3/0.5/0.7 (% with IoU >= k).
* Classification (``cls``): binary accuracy (Normal vs any anomaly) and 20-way accuracy; no class
  found in the output is wrong for both.
* Reflection: for (first, final) answers of the same outputs, the share of wrong->right,
  right->wrong, right->right and wrong->wrong, and for grounding the change of IoU. A grounding
  answer is "right" when its IoU reaches ``iou_right`` (0.5 by default, the middle recall threshold;
  our choice, the papers do not define it).

``which="final"`` (the default) scores a reflection trace's final answer; on a VAU-R1 single pass
the first and final answer are the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from srvau.cot.format import extract_class, extract_interval, extract_letter, iou, pass_text
from srvau.data.classes import NORMAL, canonical_class, class_key

RECALL_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
TASKS: tuple[str, ...] = ("qa", "tag", "cls")


def pct(fraction: float | None) -> float | None:
    """VAU-R1's ``round(x, 4) * 100``, cleaned to 2 decimals."""
    if fraction is None:
        return None
    return round(round(fraction, 4) * 100, 2)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ----------------------------------------------------------------------------- per sample


def qa_correct(text: str | None, gt_letter: str, which: str = "final") -> bool:
    pred = extract_letter(text, which)
    return pred is not None and pred == str(gt_letter).strip().upper()


def tag_iou(text: str | None, gt: tuple[float, float], which: str = "final") -> float:
    return iou(extract_interval(text, which), (float(gt[0]), float(gt[1])))


def cls_correct(text: str | None, gt_class: str, which: str = "final") -> tuple[bool, bool]:
    """(binary correct, 20-way correct); the ground truth may use any spelling of the class."""
    pred = extract_class(text, which)
    if pred is None:
        return False, False
    gt = canonical_class(gt_class) or str(gt_class)
    gt_normal = class_key(gt) == class_key(NORMAL)
    binary = (pred == NORMAL) if gt_normal else (pred != NORMAL)
    return binary, class_key(pred) == class_key(gt)


# ----------------------------------------------------------------------------- aggregates


def accuracy(correct: Sequence[bool]) -> dict:
    return {"n": len(correct), "accuracy": pct(_mean([float(c) for c in correct]))}


def grounding(ious: Sequence[float]) -> dict:
    out: dict = {"n": len(ious), "miou": pct(_mean(list(ious)))}
    for k in RECALL_THRESHOLDS:
        out[f"r@{k}"] = pct(_mean([float(x >= k) for x in ious]))
    return out


def classification(results: Sequence[tuple[bool, bool]]) -> dict:
    return {
        "n": len(results),
        "binary_acc": pct(_mean([float(b) for b, _ in results])),
        "multi_acc": pct(_mean([float(m) for _, m in results])),
    }


def qa_metrics(texts: Sequence[str | None], gts: Sequence[str], which: str = "final") -> dict:
    """``{"n", "accuracy"}``; pass only rows that have a question."""
    _same_length(texts, gts)
    return accuracy([qa_correct(t, g, which) for t, g in zip(texts, gts)])


def tag_metrics(texts: Sequence[str | None], gts: Sequence[tuple[float, float]], which: str = "final") -> dict:
    """``{"n", "miou", "r@0.3", "r@0.5", "r@0.7"}``; pass only anomaly ground-truth intervals."""
    _same_length(texts, gts)
    return grounding([tag_iou(t, g, which) for t, g in zip(texts, gts)])


def cls_metrics(texts: Sequence[str | None], gts: Sequence[str], which: str = "final") -> dict:
    """``{"n", "binary_acc", "multi_acc"}``."""
    _same_length(texts, gts)
    return classification([cls_correct(t, g, which) for t, g in zip(texts, gts)])


def task_metrics(task: str, texts: Sequence[str | None], gts: Sequence, which: str = "final") -> dict:
    fn = {"qa": qa_metrics, "tag": tag_metrics, "cls": cls_metrics}.get(task)
    if fn is None:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return {"task": task, **fn(texts, gts, which)}


# ----------------------------------------------------------------------------- reflection


@dataclass(frozen=True)
class Transitions:
    wrong_to_right: int
    right_to_wrong: int
    right_to_right: int
    wrong_to_wrong: int

    @property
    def n(self) -> int:
        return self.wrong_to_right + self.right_to_wrong + self.right_to_right + self.wrong_to_wrong

    def as_dict(self) -> dict:
        n = self.n
        rate = (lambda k: pct(k / n)) if n else (lambda k: None)
        return {
            "n": n,
            "wrong_to_right": rate(self.wrong_to_right),
            "right_to_wrong": rate(self.right_to_wrong),
            "right_to_right": rate(self.right_to_right),
            "wrong_to_wrong": rate(self.wrong_to_wrong),
        }


def transitions(first: Sequence[bool], final: Sequence[bool]) -> Transitions:
    _same_length(first, final)
    pairs = list(zip(map(bool, first), map(bool, final)))
    return Transitions(
        wrong_to_right=sum(1 for a, b in pairs if not a and b),
        right_to_wrong=sum(1 for a, b in pairs if a and not b),
        right_to_right=sum(1 for a, b in pairs if a and b),
        wrong_to_wrong=sum(1 for a, b in pairs if not a and not b),
    )


def has_reflection(text: str | None) -> bool:
    return isinstance(text, str) and pass_text(text, "first") != text


def reflection_metrics(task: str, texts: Sequence[str | None], gts: Sequence, iou_right: float = 0.5) -> dict:
    """Transition rates (% of all samples) between first and final answers of the same outputs.

    ``reflective`` counts outputs that contain a reflection at all (the others have first == final).
    Grounding adds ``miou_first``, ``miou_final``, ``iou_change`` (mean final - first IoU, x100) and
    the share of samples whose IoU went up / down.
    """
    _same_length(texts, gts)
    out: dict = {"task": task, "reflective": sum(has_reflection(t) for t in texts)}
    if task == "qa":
        first = [qa_correct(t, g, "first") for t, g in zip(texts, gts)]
        final = [qa_correct(t, g, "final") for t, g in zip(texts, gts)]
    elif task == "cls":
        first = [cls_correct(t, g, "first")[1] for t, g in zip(texts, gts)]
        final = [cls_correct(t, g, "final")[1] for t, g in zip(texts, gts)]
    elif task == "tag":
        iou_first = [tag_iou(t, g, "first") for t, g in zip(texts, gts)]
        iou_final = [tag_iou(t, g, "final") for t, g in zip(texts, gts)]
        first = [x >= iou_right for x in iou_first]
        final = [x >= iou_right for x in iou_final]
        deltas = [b - a for a, b in zip(iou_first, iou_final)]
        out.update(
            miou_first=pct(_mean(iou_first)),
            miou_final=pct(_mean(iou_final)),
            iou_change=pct(_mean(deltas)),
            iou_improved=pct(_mean([float(d > 0) for d in deltas])),
            iou_worsened=pct(_mean([float(d < 0) for d in deltas])),
        )
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    out.update(transitions(first, final).as_dict())
    return out


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} ground-truth values")
