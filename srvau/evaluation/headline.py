"""The headline of an evaluation: one main metric per task, per model, with its 95% interval and what
reflection changed.

One home for "which number answers the question", shared by the HTML report, the recipe comparison, and
whatever publishes a summary (Prefect artifacts, MLflow, README). Pure: it reads a parsed
``metrics.json`` (model -> task -> style -> metrics, plus ``reflection.<task>``; see
:mod:`srvau.evaluation.stage`) and returns plain rows; nothing is computed here that metrics.json does
not already hold, except the reflection gain (a difference of two of its numbers).

Main metric per task (VAU-R1's headline numbers): QA accuracy, grounding mIoU, classification 20-way
accuracy (``multi_acc``), description keyword recall. They are read in the primary prompt style
(``evaluate.primary_style``, ``reflect`` by default). The reflection gain is final minus first-answer
accuracy over the well-formed reflection traces (grounding: an answer is right at IoU >= the stage's
``iou_right``), in percentage points; None where there is no reflection (descriptions, single-pass
styles, no well-formed trace).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# task -> (metric key in metrics.json, its name for a reader)
MAIN_METRIC: dict[str, tuple[str, str]] = {
    "qa": ("accuracy", "QA accuracy"),
    "grounding": ("miou", "grounding mIoU"),
    "classification": ("multi_acc", "20-way classification"),
    "description": ("keyword_recall", "description keyword recall"),
}
PRIMARY_STYLE = "reflect"
PRIOR = "prior"  # the video-blind reference's label in metrics.json (srvau.evaluation.prior)
NOTE = (
    "Values in % on the evaluation split, in brackets the 95% interval (Wilson for accuracies, normal "
    "approximation for means); reflection gain: final minus first-answer accuracy over well-formed "
    "reflection traces, in points (grounding: right at IoU >= evaluate.iou_right, 0.5 by default)."
)


def models_of(metrics: dict[str, Any]) -> list[str]:
    """The model labels of a metrics.json, in its order (entries that are not a model's metrics skipped)."""
    return [m for m, v in metrics.items() if isinstance(v, dict) and any(t in v for t in MAIN_METRIC)]


def reflection_gain(model_metrics: dict[str, Any], task: str) -> float | None:
    """Final minus first-answer accuracy (points) over the reflective outputs of ``task``, or None."""
    refl = (model_metrics.get("reflection") or {}).get(task) or {}
    first, final = refl.get("first_accuracy"), refl.get("final_accuracy")
    if first is None or final is None:
        return None
    return round(final - first, 2)


def headline_rows(metrics: dict[str, Any], style: str = PRIMARY_STYLE) -> list[dict[str, Any]]:
    """One row per (model, task) that has a result in ``style``.

    Keys: ``model``, ``task``, ``metric`` (the metrics.json key), ``label`` (its reader's name),
    ``style``, ``value`` (%, or None), ``ci95`` (``(low, high)`` or None), ``n`` (scored samples),
    ``reflection_gain`` (points, or None) and ``reflective`` (the traces behind the gain, or None).
    """
    rows = []
    for model in models_of(metrics):
        mm = metrics[model]
        for task, (key, label) in MAIN_METRIC.items():
            cell = (mm.get(task) or {}).get(style)
            if cell is None:
                continue
            ci = cell.get(f"{key}_ci95")
            gain = reflection_gain(mm, task) if style == "reflect" else None
            rows.append({
                "model": model,
                "task": task,
                "metric": key,
                "label": label,
                "style": style,
                "value": cell.get(key),
                "ci95": (ci[0], ci[1]) if ci else None,
                "n": cell.get("n"),
                "reflection_gain": gain,
                "reflective": ((mm.get("reflection") or {}).get(task) or {}).get("reflective") if gain is not None else None,
            })
    return rows


def one_decimal(x: float) -> Decimal:
    """Half up, as a reader rounds (6.25 -> 6.3; float formatting would print 6.2)."""
    return Decimal(str(x)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def fmt_value(value: float | None, ci95: tuple[float, float] | None) -> str:
    """``29.2 [18.2, 43.2]``; an en dash for a missing value."""
    if value is None:
        return "\u2013"
    return f"{one_decimal(value)}" + (f" [{one_decimal(ci95[0])}, {one_decimal(ci95[1])}]" if ci95 else "")


def fmt_gain(gain: float | None) -> str:
    """``+6.3``, ``-2.1``, ``0.0``; an en dash when there is no reflection."""
    if gain is None:
        return "\u2013"
    g = one_decimal(gain)
    return f"{g:+}" if g else "0.0"


def pivot(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    """(models, tasks, (model, task) -> row): the rows as a model x task grid, in their order."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    tasks = [t for t in MAIN_METRIC if any(r["task"] == t for r in rows)]
    return models, tasks, {(r["model"], r["task"]): r for r in rows}


def headline_markdown(metrics: dict[str, Any], style: str = PRIMARY_STYLE) -> str:
    """A Markdown table, models x tasks: each cell the main metric, its 95% interval and the reflection gain."""
    models, tasks, grid = pivot(headline_rows(metrics, style))
    if not models:
        return "_No evaluation results._\n"
    head = "| model | " + " | ".join(MAIN_METRIC[t][1] for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 1) + "|"]
    for m in models:
        cells = []
        for t in tasks:
            r = grid.get((m, t))
            if r is None:
                cells.append("\u2013")
                continue
            s = fmt_value(r["value"], r["ci95"])
            if r["reflection_gain"] is not None:
                s += f" (reflection {fmt_gain(r['reflection_gain'])})"
            cells.append(s)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{style} prompts. {NOTE}\n"


# ----------------------------------------------------------------------------- the answer in one sentence


def separation(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    """``"ahead"`` when a's 95% interval lies wholly above b's, ``"behind"`` when wholly below,
    ``"not separated"`` when they overlap; None when either has no value or no interval."""
    if not a or not b or a.get("value") is None or b.get("value") is None or not a.get("ci95") or not b.get("ci95"):
        return None
    if a["ci95"][0] > b["ci95"][1]:
        return "ahead"
    if a["ci95"][1] < b["ci95"][0]:
        return "behind"
    return "not separated"


def join_words(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _against(subject: str, other: str, tasks: list[str], grid: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    by: dict[str, list[str]] = {}
    for t in tasks:
        s = separation(grid.get((subject, t)), grid.get((other, t)))
        if s is not None:
            by.setdefault(s, []).append(MAIN_METRIC[t][1])
    n = sum(map(len, by.values()))
    if not n:
        return None
    if len(by) == 1:
        (s, names), = by.items()
        every = "all " + str(n) + " tasks" if n > 1 else names[0]
        if s == "not separated":
            return f"not separated from {other} on {'any task' if n > 1 else names[0]}"
        return f"{s} of {other} on {every}"
    parts = [f"{'ahead of' if s == 'ahead' else 'behind'} {other} on {join_words(by[s])}" for s in ("ahead", "behind") if s in by]
    if "not separated" in by:
        parts.append(f"not separated on {join_words(by['not separated'])}")
    return ", ".join(parts)


def answer(metrics: dict[str, Any], style: str = PRIMARY_STYLE, split: str | None = None, videos: int | None = None) -> str:
    """One sentence: the last model of metrics.json (the pipeline's final one) against each earlier one, task by
    task, called ahead or behind only where the 95% intervals do not overlap."""
    models, tasks, grid = pivot(headline_rows(metrics, style))
    if not models:
        return "No model was evaluated."
    scope = " on the " + (f"{split} split" if split else "evaluation split") + (f", n={videos} videos" if videos else "")
    prefix = f"{' vs '.join(reversed(models))}{scope} ({style} prompts): "
    subject = models[-1]
    if len(models) == 1:
        return prefix + "; ".join(f"{MAIN_METRIC[t][1]} {fmt_value(grid[(subject, t)]['value'], grid[(subject, t)]['ci95'])}"
                                  for t in tasks if (subject, t) in grid) + "."
    parts = [p for o in models[:-1] if (p := _against(subject, o, tasks, grid))]
    if not parts:
        return prefix + "no intervals to compare."
    return prefix + f"{subject} is " + "; ".join(parts) + " (ahead or behind only where the 95% intervals do not overlap)." + paired_clause(metrics, subject)


def paired_verdict(ci: Any) -> str:
    """Ahead or behind only when the paired 95% interval excludes zero."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return "n/a"
    return "ahead" if ci[0] > 0 else "behind" if ci[1] < 0 else "not resolved"


def paired_clause(metrics: dict[str, Any], subject: str) -> str:
    """`` Paired with sft on the same prompts, QA + classification: +18.8 points [9.1, 27.9], ahead.`` (the sharper
    test of one training step; empty without paired results)."""
    out = ""
    for other, tasks in (metrics.get(subject, {}).get("paired") or {}).items():
        d = tasks.get("pooled")
        if not d or d.get("difference") is None or not d.get("difference_ci95"):
            continue
        low, high = d["difference_ci95"]
        out += (f" Paired with {other} on the same prompts, QA + classification: {d['difference']:+.1f} points "
                f"[{low:.1f}, {high:.1f}], {paired_verdict(d['difference_ci95'])}.")
    return out
