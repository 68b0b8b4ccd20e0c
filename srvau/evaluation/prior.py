"""The prior: what a "model" scores that never looks at the video.

It answers every question of the evaluation split with what was most common on the training split: the
most frequent correct QA letter, the most frequent class, and for grounding the one fixed interval (as
fractions of the video's duration) with the highest mean IoU over the training anomalies. The QA chance
line (25 %) assumes balanced letters; this is the floor that holds for the data at hand. A demo whose
events are long against its clips (2-4 s in 8 s) hands a fixed interval a high mIoU: a model's grounding
shows it localises only when it beats this row.

The prior's answers are written as well-formed ``direct`` outputs and scored by the same functions as
every model (:func:`srvau.evaluation.metrics.task_metrics`), on the same (video, task) pairs, and stored
in metrics.json beside them under ``headline.PRIOR``. It is fitted on ``evaluate.prior_split`` (the
training split), never on the split it is scored on. Descriptions have no prior (there is no "most
common description" worth scoring).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from srvau.contract.vocab import METRIC_TASK
from srvau.evaluation import metrics as M
from srvau.evaluation.inference import Sample, ground_truth

PRIOR_TASKS = ("qa", "grounding", "classification")
GRID = 100  # the fixed interval is searched on a 1/GRID grid of the duration


def _most_common(values: Iterable[str]) -> str | None:
    counts = Counter(values)
    if not counts:
        return None
    return min(counts, key=lambda v: (-counts[v], v))  # ties: alphabetical, so the fit is deterministic


def best_fixed_interval(fractions: Sequence[tuple[float, float]], grid: int = GRID) -> tuple[float, float] | None:
    """``(a, b)`` with ``0 <= a < b <= 1`` on the grid, maximising the mean IoU against ``fractions``
    (intervals as fractions of their video's duration; IoU does not change with the scale)."""
    iv = np.asarray([f for f in fractions if f[1] > f[0]], np.float64)
    if not len(iv):
        return None
    pts = np.arange(grid + 1) / grid
    a, b = np.meshgrid(pts, pts, indexing="ij")
    ok = b > a
    a, b = a[ok], b[ok]
    s, e = iv[:, 0][None, :], iv[:, 1][None, :]
    inter = np.clip(np.minimum(b[:, None], e) - np.maximum(a[:, None], s), 0, None)
    union = np.maximum(b[:, None], e) - np.minimum(a[:, None], s)
    score = (inter / union).mean(axis=1)
    k = int(np.argmax(score))  # the first best: deterministic
    return float(a[k]), float(b[k])


def fit_prior(train_rows: pd.DataFrame) -> dict[str, Any]:
    """The prior's answers from the training split's ground truths (a task without any is left out)."""
    truths: dict[str, list[Any]] = {t: [] for t in PRIOR_TASKS}
    for row in train_rows.to_dict("records"):
        for task in PRIOR_TASKS:
            truth = ground_truth(task, row)
            if truth is None:
                continue
            if task == "grounding":
                duration = float(row.get("duration_s") or 0)
                if duration > 0:
                    truths[task].append((truth["start_s"] / duration, truth["end_s"] / duration))
            else:
                truths[task].append(str(truth["answer"]))
    fit: dict[str, Any] = {"n": {t: len(v) for t, v in truths.items()}}
    if truths["qa"]:
        fit["qa"] = _most_common(truths["qa"])
    if truths["classification"]:
        fit["classification"] = _most_common(truths["classification"])
    interval = best_fixed_interval(truths["grounding"])
    if interval is not None:
        fit["grounding"] = list(interval)
    return fit


def prior_output(task: str, fit: dict[str, Any], duration_s: float) -> str:
    """The prior's answer to one prompt, as a well-formed single-pass output."""
    if task == "grounding":
        a, b = fit["grounding"]
        return f"<answer>Anomaly</answer><glue>[{a * duration_s:.1f}, {b * duration_s:.1f}]</glue>"
    return f"<answer>{fit[task]}</answer>"


def prior_metrics(samples: Sequence[Sample], durations: dict[str, float], fit: dict[str, Any],
                  styles: Sequence[str]) -> dict[str, Any]:
    """``{task: {style: metrics}}`` of the prior on the evaluated (video, task) pairs, the same numbers
    under every style (the prior has none), plus ``fit``: the answers it gave."""
    out: dict[str, Any] = {}
    for task in PRIOR_TASKS:
        if task not in fit:
            continue
        pairs = {(s.video_id, task): s.truth for s in samples if s.task == task}
        if not pairs or (task == "grounding" and any(durations.get(vid, 0) <= 0 for vid, _ in pairs)):
            continue  # a fixed fraction of an unknown duration is no interval
        texts = [prior_output(task, fit, durations.get(vid, 0.0)) for vid, _ in pairs]
        gts = [(t["start_s"], t["end_s"]) if task == "grounding" else t["answer"] for t in pairs.values()]
        m = M.task_metrics(METRIC_TASK[task], texts, gts)
        m.pop("task", None)
        out[task] = {style: m for style in styles}
    if out:
        out["fit"] = fit
    return out
