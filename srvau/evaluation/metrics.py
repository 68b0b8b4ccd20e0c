"""Task metrics of the evaluation protocol (docs/evaluation.md), computed from model outputs and ground truth.

Correctness is the contract layer's lenient (VAU-R1) reading (:mod:`srvau.contract.scoring`); this module
only aggregates. Every percentage is on a 0-100 scale, rounded as VAU-R1 rounds (to 4 decimals of the
fraction, then x100) and to 2 decimals; with no scored sample it is None. Every proportion carries its
Wilson 95% interval as ``<metric>_ci95: [low, high]`` (also x100): with tens of test videos a point
estimate alone says little.

* QA: correct iff the extracted letter equals the (normalised) ``Correct Option``.
* Grounding (``tag``): IoU of the extracted interval with an *anomaly* ground-truth interval (callers
  exclude ``0,0`` and ``-1,-1`` rows); mIoU (with a normal-approximation 95% interval) and
  R@0.3/0.5/0.7 (% with IoU >= k).
* Classification (``cls``): binary accuracy (Normal vs any anomaly) and 20-way accuracy; no class
  found in the output is wrong for both.
* Reflection: over the outputs that are well-formed reflection traces only (a truncated or
  single-pass output has no first/final pair to compare), the share of wrong->right, right->wrong,
  right->right and wrong->wrong, the first- and final-answer accuracy, and the malformed share beside
  them. A grounding answer is "right" when its IoU reaches ``iou_right`` (0.5 by default, the middle
  recall threshold; our choice, the papers do not define it).

``which="final"`` (the default) scores a reflection trace's final answer; on a VAU-R1 single pass
the first and final answer are the same text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from srvau.contract.prompts import named_choice, option_key_word, qa_prompt_parts
from srvau.contract.scoring import lenient_cls_correct, lenient_iou, lenient_qa_correct, well_formed
from srvau.contract.trace import pass_text
from srvau.contract.vocab import METRIC_TASK

RECALL_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
TASKS: tuple[str, ...] = tuple(METRIC_TASK.values())  # VAU-R1's names: qa, tag, cls
Z95 = 1.959964


def pct(fraction: float | None) -> float | None:
    """VAU-R1's ``round(x, 4) * 100``, cleaned to 2 decimals."""
    if fraction is None:
        return None
    return round(round(fraction, 4) * 100, 2)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def wilson_ci(k: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval of a proportion k/n, as ``[low, high]`` percentages; None when n == 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(max(0.0, centre - half) * 100, 2), round(min(1.0, centre + half) * 100, 2)]


def mean_ci(xs: Sequence[float], z: float = Z95, lo: float = 0.0, hi: float = 1.0) -> list[float] | None:
    """Normal-approximation 95% interval of a mean in [lo, hi], as percentages; None for fewer than 2 values."""
    n = len(xs)
    if n < 2:
        return None
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return [round(max(lo, m - half) * 100, 2), round(min(hi, m + half) * 100, 2)]


def mean_metric(key: str, xs: Sequence[float]) -> dict:
    """``{key: pct of the mean, key_ci95: [low, high]}`` of values in [0, 1]."""
    xs = list(xs)
    return {key: pct(_mean(xs)), f"{key}_ci95": mean_ci(xs)}


def _rate(key: str, flags: Sequence[bool]) -> dict:
    """``{key: pct, key_ci95: [low, high]}`` of a list of booleans."""
    flags = [bool(f) for f in flags]
    return {key: pct(_mean([float(f) for f in flags])), f"{key}_ci95": wilson_ci(sum(flags), len(flags))}


# ----------------------------------------------------------------------------- per sample (VAU-R1's rules)

qa_correct = lenient_qa_correct
tag_iou = lenient_iou
cls_correct = lenient_cls_correct


# ----------------------------------------------------------------------------- aggregates


def accuracy(correct: Sequence[bool]) -> dict:
    return {"n": len(correct), **_rate("accuracy", correct)}


def grounding(ious: Sequence[float]) -> dict:
    out: dict = {"n": len(ious), **mean_metric("miou", ious)}
    for k in RECALL_THRESHOLDS:
        out.update(_rate(f"r@{k}", [x >= k for x in ious]))
    return out


def classification(results: Sequence[tuple[bool, bool]]) -> dict:
    return {"n": len(results), **_rate("binary_acc", [b for b, _ in results]), **_rate("multi_acc", [m for _, m in results])}


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


def qa_choice_metrics(prompts: Sequence[str], texts: Sequence[str | None], gts: Sequence[str], which: str = "final") -> dict:
    """A QA answer needs two things: seeing what happens and finding the option that says so. Traces
    that state their choice as the annotation teacher writes it ("...; Orange B fits.",
    :func:`srvau.contract.prompts.option_choice`) show both apart:

    * ``named_share``: outputs whose pass states a choice that way (of all);
    * ``seen_accuracy``: of those, the named key word is the correct option's (the video read right);
    * ``lookup_accuracy``: of those, the named letter's option carries the named key word (the letter
      found right, whatever was seen).
    """
    _same_length(texts, gts)
    _same_length(prompts, gts)
    named, seen, looked = [], [], []
    for prompt, text, gt in zip(prompts, texts, gts):
        parts = qa_prompt_parts(prompt)
        choice = named_choice(pass_text(text, which))
        named.append(parts is not None and choice is not None)
        if not named[-1]:
            continue
        keys = {letter: option_key_word(o).lower() for letter, o in zip("ABCD", parts[1])}
        word, letter = choice[0].lower(), choice[1]
        seen.append(word == keys.get(str(gt).strip().upper()))
        looked.append(word == keys[letter])
    return {**_rate("named_share", named), **_rate("seen_accuracy", seen), **_rate("lookup_accuracy", looked)}


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
        out: dict = {}
        for key in ("wrong_to_right", "right_to_wrong", "right_to_right", "wrong_to_wrong"):
            k = getattr(self, key)
            out[key] = pct(k / n) if n else None
            out[f"{key}_ci95"] = wilson_ci(k, n)
        return out


def transitions(first: Sequence[bool], final: Sequence[bool]) -> Transitions:
    _same_length(first, final)
    pairs = list(zip(map(bool, first), map(bool, final)))
    return Transitions(
        wrong_to_right=sum(1 for a, b in pairs if not a and b),
        right_to_wrong=sum(1 for a, b in pairs if a and not b),
        right_to_right=sum(1 for a, b in pairs if a and b),
        wrong_to_wrong=sum(1 for a, b in pairs if not a and not b),
    )


_TASK_NAME = {v: k for k, v in METRIC_TASK.items()}  # tag -> grounding, ...


def reflection_metrics(task: str, texts: Sequence[str | None], gts: Sequence, iou_right: float = 0.5) -> dict:
    """First -> final transitions over the well-formed reflection traces among ``texts``.

    ``n``: all outputs; ``reflective``: well-formed reflection traces (the transitions' denominator);
    ``malformed_share``: the rest (truncated, single-pass or broken), in %. ``first_accuracy`` and
    ``final_accuracy`` are over the reflective outputs, so their difference is what reflection changed.
    Grounding adds ``miou_first``, ``miou_final``, ``iou_change`` (mean final - first IoU, x100) and the
    share of reflective samples whose IoU went up / down.
    """
    _same_length(texts, gts)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    keep = [well_formed(t, "reflect", _TASK_NAME[task]) for t in texts]
    texts = [t for t, k in zip(texts, keep) if k]
    gts = [g for g, k in zip(gts, keep) if k]
    n_all = len(keep)
    out: dict = {"task": task, "n": n_all, "reflective": len(texts), "malformed_share": pct((n_all - len(texts)) / n_all) if n_all else None}
    if task == "qa":
        first = [qa_correct(t, g, "first") for t, g in zip(texts, gts)]
        final = [qa_correct(t, g, "final") for t, g in zip(texts, gts)]
    elif task == "cls":
        first = [cls_correct(t, g, "first")[1] for t, g in zip(texts, gts)]
        final = [cls_correct(t, g, "final")[1] for t, g in zip(texts, gts)]
    else:
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
    out.update(_rate("first_accuracy", first))
    out.update(_rate("final_accuracy", final))
    out.update(transitions(first, final).as_dict())
    return out


# ----------------------------------------------------------------------------- two models on the same prompts


def paired_difference(this: Sequence[bool], other: Sequence[bool], z: float = Z95) -> dict:
    """This model's accuracy minus the other's, both scored on the same prompts, in points (x100).

    Two independent Wilson intervals that overlap say little when both models answer the same prompts:
    most answers agree, and only the discordant ones (``this_only`` right, ``other_only`` right) carry
    the difference. Its 95% interval is Newcombe's score interval for paired proportions (method 10 of
    Newcombe 1998, Statistics in Medicine 17:2635), and ``mcnemar_p`` is the exact two-sided McNemar
    test of no difference (a binomial test on the discordant pairs).
    """
    _same_length(this, other)
    pairs = list(zip(map(bool, this), map(bool, other)))
    n = len(pairs)
    if not n:
        return {"n": 0, "this_only": 0, "other_only": 0, "difference": None, "difference_ci95": None, "mcnemar_p": None}
    both = sum(1 for a, b in pairs if a and b)
    this_only = sum(1 for a, b in pairs if a and not b)
    other_only = sum(1 for a, b in pairs if b and not a)
    neither = n - both - this_only - other_only
    p1, p2 = (both + this_only) / n, (both + other_only) / n
    (l1, u1), (l2, u2) = ([x / 100 for x in wilson_ci(k, n, z)] for k in (both + this_only, both + other_only))
    den = math.sqrt((both + this_only) * (other_only + neither) * (both + other_only) * (this_only + neither))
    cross = both * neither - this_only * other_only
    # Newcombe's continuity-corrected phi: without it, identical answers would give a zero-width interval.
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / den if den else 0.0
    lower = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return {
        "n": n,
        "this_only": this_only,
        "other_only": other_only,
        "difference": pct(diff),
        "difference_ci95": [round(max(-1.0, diff - lower) * 100, 2), round(min(1.0, diff + upper) * 100, 2)],
        "mcnemar_p": float(f"{mcnemar_exact_p(this_only, other_only):.3g}"),
    }


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: scipy's binomial test of ``b`` of ``b + c`` discordant pairs at 1/2."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def paired_mean_difference(this: Sequence[float], other: Sequence[float]) -> dict:
    """Mean of this - other over the same prompts (values in [0, 1], e.g. IoU), x100, with the
    normal-approximation 95% interval of the mean paired difference."""
    _same_length(this, other)
    deltas = [a - b for a, b in zip(this, other)]
    return {"n": len(deltas), "difference": pct(_mean(deltas)), "difference_ci95": mean_ci(deltas, lo=-1.0, hi=1.0)}


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} ground-truth values")
