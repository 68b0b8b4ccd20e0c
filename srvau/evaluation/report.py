"""The evaluation report: one self-contained HTML page comparing the models side by side.

It leads with the answer: one sentence (the final model against each other one, called ahead or behind
only where the 95% intervals separate them), the headline table (model x task: the main metric, its
95% interval and the reflection gain; :mod:`srvau.evaluation.headline`) and its figure (per-task bars
with 95% interval whiskers). Paths are shown relative to the project root, never absolute. Then the
details: the metric table (every task x prompt style, best value per row in bold), the reflection
table (transition rates and IoU change of reflection traces), the VAU-Eval judge table when the judge
ran, and four figures drawn with matplotlib (Agg backend, no display needed): the grounding IoU
histogram, the class confusion matrix, the reflection transition matrix (first answer right/wrong x
final answer right/wrong) and per-class accuracy. Figures are written as PNG files next to the
report (``figures/``, for MLflow and browsing) and embedded in the HTML as base64, so the page can be
mailed or opened from an artifact store without its folder.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from srvau.contract.vocab import CLASSES
from srvau.evaluation import headline as H
from srvau.io import write_text

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "qa": ("accuracy",),
    "grounding": ("miou", "r@0.3", "r@0.5", "r@0.7"),
    "classification": ("binary_acc", "multi_acc"),
    "description": ("keyword_recall",),
}
REFLECTION_METRICS = (
    "malformed_share", "first_accuracy", "final_accuracy", "wrong_to_right", "right_to_wrong", "right_to_right",
    "wrong_to_wrong", "miou_first", "miou_final", "iou_change",
)
NO_CLASS = "(none)"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _select(records: list[dict[str, Any]], task: str, style: str) -> list[dict[str, Any]]:
    return [r for r in records if r["task"] == task and r["style"] == style]


# ----------------------------------------------------------------------------- figures


def fig_headline(rows: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Per-task bars of the main metric, one per model, with 95% interval whiskers and the value on top."""
    import numpy as np

    models, tasks, grid = H.pivot(rows)
    if not models:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    width = 0.8 / len(models)
    x = np.arange(len(tasks))
    contenders = [name for name in models if name != H.PRIOR]
    for i, m in enumerate(models):
        cells = [grid.get((m, t)) or {} for t in tasks]
        vals = [c.get("value") for c in cells]
        heights = [v or 0.0 for v in vals]
        # whiskers from the interval; a missing interval draws none
        lo = [max(h - c["ci95"][0], 0.0) if c.get("ci95") else 0.0 for h, c in zip(heights, cells)]
        hi = [max(c["ci95"][1] - h, 0.0) if c.get("ci95") else 0.0 for h, c in zip(heights, cells)]
        xs = x - 0.4 + width * (i + 0.5)
        # the prior is a reference, not a contender: grey and hatched, the models keep the colour cycle
        style = ({"color": "lightgrey", "hatch": "//", "edgecolor": "grey"} if m == H.PRIOR
                 else {"color": f"C{contenders.index(m)}"})
        ax.bar(xs, heights, width=width * 0.92, label=m, yerr=[lo, hi], capsize=4, error_kw={"elinewidth": 1.2}, zorder=2, **style)
        for xi, v, h, up in zip(xs, vals, heights, hi):
            ax.text(xi, h + up + 1.5, "n/a" if v is None else f"{H.one_decimal(v)}", ha="center", va="bottom", fontsize=8)
    if "qa" in tasks:  # four options: a reader needs to see where guessing lands
        q = tasks.index("qa")
        ax.hlines(25, q - 0.45, q + 0.45, colors="grey", linestyles="dashed", linewidth=1, zorder=3)
        ax.text(q - 0.45, 26, "chance 25%", ha="left", va="bottom", fontsize=7, color="grey")
    ax.set_xticks(x, [H.MAIN_METRIC[t][1].replace(" ", "\n", 1) for t in tasks])
    ax.set_ylim(0, 105)
    ax.set_ylabel("% (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(title="model", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def fig_iou_histogram(records_by_model: dict[str, list[dict]], style: str, path: Path) -> Path | None:
    import numpy as np

    data = {m: [r["iou_final"] for r in _select(recs, "grounding", style)] for m, recs in records_by_model.items()}
    if not any(data.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    edges = np.linspace(0, 1, 11)
    width = 0.1 / (len(data) + 1)
    for i, (m, ious) in enumerate(data.items()):
        counts, _ = np.histogram(np.clip(ious, 0, 1), bins=edges)
        share = counts / max(len(ious), 1) * 100
        ax.bar(edges[:-1] + width * (i + 0.5), share, width=width, align="edge", label=f"{m} (n={len(ious)}, mIoU {np.mean(ious) * 100 if ious else 0:.1f})")
    ax.set_xticks(edges)
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU of the final interval with the ground truth")
    ax.set_ylabel("% of grounding samples")
    ax.set_title(f"Temporal grounding IoU ({style} prompts)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _class_axis(pairs: list[tuple[str, str]]) -> list[str]:
    seen = {a for a, _ in pairs} | {p for _, p in pairs}
    axis = [c for c in CLASSES if c in seen] + sorted(seen - set(CLASSES) - {NO_CLASS})
    return axis + ([NO_CLASS] if NO_CLASS in seen else [])


def fig_confusion(records_by_model: dict[str, list[dict]], style: str, path: Path) -> Path | None:
    import numpy as np

    pairs = {
        m: [(r["truth"]["answer"], r["final_answer"] or NO_CLASS) for r in _select(recs, "classification", style)]
        for m, recs in records_by_model.items()
    }
    if not any(pairs.values()):
        return None
    axis = _class_axis([p for ps in pairs.values() for p in ps])
    rows = [c for c in axis if c != NO_CLASS and any(a == c for ps in pairs.values() for a, _ in ps)]
    n = len(pairs)
    plt = _plt()
    size = 1.2 + 0.42 * len(axis)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 1.5, 0.42 * len(rows) + 2.6), squeeze=False, sharey=True)
    for k, (ax, (m, ps)) in enumerate(zip(axes[0], pairs.items())):
        mat = np.zeros((len(rows), len(axis)), dtype=int)
        for a, p in ps:
            mat[rows.index(a), axis.index(p)] += 1
        ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(mat.max(), 1), aspect="auto")
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if mat[i, j]:
                    ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=8, color="white" if mat[i, j] > mat.max() / 2 else "black")
        ax.set_xticks(range(len(axis)), [c.replace("_", " ") for c in axis], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [c.replace("_", " ") for c in rows], fontsize=8)
        acc = sum(a == p for a, p in ps) / len(ps) * 100 if ps else 0
        ax.set_title(f"{m}: 20-way acc {acc:.1f}%", fontsize=10)
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("ground truth")
    fig.suptitle(f"Classification confusion ({style} prompts)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _transition_matrix(recs: list[dict], task: str, iou_right: float) -> list[list[int]]:
    if task == "grounding":
        pairs = [(r["iou_first"] >= iou_right, r["iou_final"] >= iou_right) for r in recs]
    else:
        pairs = [(bool(r["first_correct"]), bool(r["final_correct"])) for r in recs]
    c = Counter(pairs)
    return [[c.get((True, True), 0), c.get((True, False), 0)], [c.get((False, True), 0), c.get((False, False), 0)]]


def fig_reflection(records_by_model: dict[str, list[dict]], iou_right: float, path: Path) -> Path | None:
    import numpy as np

    tasks = [t for t in ("qa", "grounding", "classification") if any(_select(r, t, "reflect") for r in records_by_model.values())]
    if not tasks:
        return None
    models = list(records_by_model)
    plt = _plt()
    fig, axes = plt.subplots(len(tasks), len(models), figsize=(2.9 * len(models) + 0.6, 2.6 * len(tasks) + 0.4), squeeze=False)
    for i, task in enumerate(tasks):
        for j, m in enumerate(models):
            ax = axes[i][j]
            recs = _select(records_by_model[m], task, "reflect")
            mat = np.array(_transition_matrix(recs, task, iou_right))
            total = max(mat.sum(), 1)
            ax.imshow(mat, cmap="Greens", vmin=0, vmax=max(mat.max(), 1))
            for a in range(2):
                for b in range(2):
                    ax.text(b, a, f"{mat[a, b]}\n{mat[a, b] / total * 100:.0f}%", ha="center", va="center", fontsize=9,
                            color="white" if mat[a, b] > mat.max() / 2 and mat.max() else "black")
            ax.set_xticks([0, 1], ["right", "wrong"])
            ax.set_yticks([0, 1], ["right", "wrong"])
            if i == len(tasks) - 1:
                ax.set_xlabel("final answer")
            if j == 0:
                label = f"IoU>={iou_right:g}" if task == "grounding" else "correct"
                ax.set_ylabel(f"{task}\nfirst answer ({label})")
            if i == 0:
                ax.set_title(m)
    fig.suptitle("Reflection transitions (reflect prompts): first x final answer", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def fig_per_class(records_by_model: dict[str, list[dict]], style: str, path: Path) -> Path | None:
    import numpy as np

    per: dict[str, dict[str, list[bool]]] = {}
    for m, recs in records_by_model.items():
        for r in _select(recs, "classification", style):
            per.setdefault(m, {}).setdefault(r["truth"]["answer"], []).append(bool(r["final_correct"]))
    if not per:
        return None
    classes = [c for c in CLASSES if any(c in d for d in per.values())]
    classes += sorted({c for d in per.values() for c in d} - set(classes))
    models = list(records_by_model)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(classes) * max(1, len(models) / 2) + 1.5))
    height = 0.8 / len(models)
    y = np.arange(len(classes))
    for i, m in enumerate(models):
        d = per.get(m, {})
        acc = [sum(d[c]) / len(d[c]) * 100 if d.get(c) else None for c in classes]
        bars = ax.barh(y + i * height, [a or 0 for a in acc], height=height, label=m)
        for bar, a in zip(bars, acc):  # a value label, so a 0% bar is still visible
            ax.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2, "n/a" if a is None else f"{a:.0f}%",
                    va="center", fontsize=7)
    n = {c: max(len(d.get(c, [])) for d in per.values()) for c in classes}
    ax.set_yticks(y + height * (len(models) - 1) / 2, [f"{c.replace('_', ' ')} (n={n[c]})" for c in classes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("20-way accuracy (%)")
    ax.set_title(f"Per-class classification accuracy ({style} prompts)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- HTML


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.2f}"
    return html.escape(str(v))


def _ci(ci: Any) -> str:
    return f' <span class="ci">[{ci[0]:.1f}, {ci[1]:.1f}]</span>' if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def _row(label_cells: list[str], values: list[Any], lower_better: bool = False, compare: bool = True,
         cis: list[Any] | None = None) -> str:
    """One table row; ``cis`` (a 95% interval per value) are shown after the values."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    best = (min(nums) if lower_better else max(nums)) if compare and len(nums) > 1 and len(set(nums)) > 1 else None
    cells = "".join(f"<td>{html.escape(c)}</td>" for c in label_cells)
    for v, ci in zip(values, cis or [None] * len(values)):
        s = _fmt(v)
        cells += f'<td class="num">{"<b>" + s + "</b>" if best is not None and v == best else s}{_ci(ci)}</td>'
    return f"<tr>{cells}</tr>"


def metric_table(results: dict[str, Any]) -> str:
    models = list(results)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    out = [f'<table class="metrics"><thead><tr><th>task</th><th>style</th><th>metric</th>{head}</tr></thead><tbody>']
    styles_seen = []
    for m in models:
        for task in TASK_METRICS:
            for s in results[m].get(task, {}):
                if s not in styles_seen:
                    styles_seen.append(s)
    for task, keys in TASK_METRICS.items():
        for style in styles_seen:
            cells = [results[m].get(task, {}).get(style) for m in models]
            if not any(cells):
                continue
            for key in (*keys, "well_formed", "truncated", "n"):
                out.append(_row([task, style, key], [(c or {}).get(key) for c in cells], compare=key != "n", lower_better=key == "truncated",
                                cis=[(c or {}).get(f"{key}_ci95") for c in cells]))
    out.append("</tbody></table>")
    return "\n".join(out)


def reflection_table(results: dict[str, Any]) -> str:
    models = list(results)
    if not any(results[m].get("reflection") for m in models):
        return "<p>No reflection-style outputs were evaluated.</p>"
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    out = [f'<table class="metrics"><thead><tr><th>task</th><th>metric (% of samples)</th>{head}</tr></thead><tbody>']
    for task in ("qa", "grounding", "classification"):
        cells = [results[m].get("reflection", {}).get(task) for m in models]
        if not any(cells):
            continue
        for key in ("reflective", *REFLECTION_METRICS):
            vals = [(c or {}).get(key) for c in cells]
            if all(v is None for v in vals):
                continue
            # No "best" marking: a model right at its first answer cannot go wrong -> right.
            out.append(_row([task, "reflective (count)" if key == "reflective" else key], vals, compare=False,
                            cis=[(c or {}).get(f"{key}_ci95") for c in cells]))
    out.append("</tbody></table>")
    return "\n".join(out)


def judge_table(results: dict[str, Any]) -> str:
    models = [m for m in results if results[m].get("vau_eval")]
    if not models:
        return "<p>The VAU-Eval judge was not run (<code>evaluate.judge.enabled: false</code>).</p>"
    from srvau.evaluation.judge import DIMENSIONS

    first = results[models[0]]["vau_eval"]
    note = f"<p>Judge model <code>{html.escape(str(first.get('judge_model')))}</code>, temperature {first.get('judge_temperature')}; scores 0-10 (total 0-50).</p>"
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    out = [note, f'<table class="metrics"><thead><tr><th>style</th><th>dimension</th>{head}</tr></thead><tbody>']
    styles = sorted({s for m in models for s in results[m]["vau_eval"].get("styles", {})})
    for s in styles:
        for key in (*DIMENSIONS, "total", "n", "n_invalid"):
            vals = [results[m]["vau_eval"].get("styles", {}).get(s, {}).get(key) for m in models]
            out.append(_row([s, key], vals, lower_better=key == "n_invalid", compare=key != "n"))
    out.append("</tbody></table>")
    return "\n".join(out)


def headline_table(rows: list[dict[str, Any]]) -> str:
    """Models x tasks: each task's main metric with its 95% interval, and the reflection gain beside it."""
    models, tasks, grid = H.pivot(rows)
    if not models:
        return "<p>No model was evaluated.</p>"
    ns = {t: {grid[(m, t)].get("n") for m in models if (m, t) in grid} for t in tasks}
    same_n = {t: next(iter(n)) for t, n in ns.items() if len(n) == 1}  # one n per task: said once, in its header
    top = "".join(f'<th colspan="2">{html.escape(H.MAIN_METRIC[t][1])}'
                  + (f' <span class="ci">n={same_n[t]}</span>' if t in same_n else "") + "</th>" for t in tasks)
    sub = '<th>value [95% CI]</th><th title="final minus first-answer accuracy over reflection traces, points">reflection gain</th>' * len(tasks)
    out = [f'<table class="metrics headline"><thead><tr><th rowspan="2">model</th>{top}</tr><tr>{sub}</tr></thead><tbody>']
    for m in models:
        cells = ""
        for t in tasks:
            r = grid.get((m, t)) or {}
            value = html.escape(H.fmt_value(r.get("value"), r.get("ci95")))
            if t not in same_n and r.get("n") is not None:
                value += f' <span class="ci">n={r["n"]}</span>'
            cells += f'<td class="num">{value}</td><td class="num">{html.escape(H.fmt_gain(r.get("reflection_gain")))}</td>'
        out.append(f"<tr><th>{html.escape(m)}</th>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


PAIRED_ROWS = (("pooled", "QA + classification, pooled"), ("qa", "QA accuracy"), ("classification", "classification 20-way"),
               ("grounding", "grounding mean IoU"))


def paired_table(results: dict[str, Any]) -> str:
    """Each model against the one before it, on the same prompts: difference, paired 95% interval, the
    discordant answers and McNemar's p (srvau.evaluation.stage.paired_metrics)."""
    out = []
    for model, m in results.items():
        for other, tasks in (m.get("paired") or {}).items():
            for task, label in PAIRED_ROWS:
                d = tasks.get(task)
                if not d or d.get("difference") is None:
                    continue
                discordant = (f'{d["this_only"]} / {d["other_only"]}' if "this_only" in d else "&ndash;")
                p = f'{d["mcnemar_p"]:.2g}' if d.get("mcnemar_p") is not None else None
                out.append(f"<tr><th>{html.escape(model)} &minus; {html.escape(other)}</th><td>{html.escape(label)}</td>"
                           f'<td class="num">{d["difference"]:+.1f}{_ci(d.get("difference_ci95"))}</td><td class="num">{d["n"]}</td>'
                           f'<td class="num">{discordant}</td><td class="num">{_fmt(p)}</td>'
                           f"<td>{H.paired_verdict(d.get('difference_ci95'))}</td></tr>")
    if not out:
        return "<p>Fewer than two models were evaluated: nothing to pair.</p>"
    head = ("<tr><th>models</th><th>metric</th><th>difference, points [95% CI]</th><th>n</th>"
            "<th>right only in the first / only in the second</th><th>McNemar p</th><th>verdict</th></tr>")
    return f'<table class="metrics"><thead>{head}</thead><tbody>' + "\n".join(out) + "</tbody></table>"


def display_path(value: Any, root: Path) -> Any:
    """A path as the reader should see it: relative to the project ``root``; outside it, relative to the
    nearest folder it shares with ``root`` (never absolute, so a report reads the same on every machine).
    Anything that is not an absolute path (a Hub id, a number) is returned as it is."""
    if not isinstance(value, (str, Path)) or not Path(value).is_absolute():
        return value
    p, root = Path(value), Path(root)
    try:
        return p.relative_to(root).as_posix() or "."
    except ValueError:
        common = Path(os.path.commonpath([p, root]))
        rel = p.relative_to(common).as_posix()
        return rel if common != Path(common.anchor) else f".../{p.name}"


def _relative(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative(v, root) for v in value]
    return display_path(value, root)


def _info_cell(v: Any) -> str:
    if isinstance(v, dict):
        return "<br>".join(f"{html.escape(str(k))}: <code>{_fmt(x)}</code>" for k, x in v.items()) or "&ndash;"
    return _fmt(v)


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return f"<p><i>{html.escape(alt)}: no data.</i></p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)} (<code>figures/{Path(path).name}</code>)</figcaption></figure>'


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table.metrics{border-collapse:collapse;margin:1em 0;font-size:14px}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:3px 8px}
table.metrics th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
span.ci{color:#777;font-size:12px}
figure{margin:1.5em 0} img{max-width:100%} figcaption{font-size:13px;color:#555}
code{background:#f4f4f4;padding:0 3px}
p.answer{font-size:17px;background:#f6f8fa;border-left:4px solid #2c7be5;padding:.6em 1em}
table.headline td,table.headline th{padding:4px 8px} table.headline td{white-space:nowrap} table.headline tbody th{text-align:left}
"""


def write_report(
    results: dict[str, Any],
    records_by_model: dict[str, list[dict]],
    path: Path,
    info: dict[str, Any],
    style: str = "reflect",
    iou_right: float = 0.5,
    root: Path | None = None,
) -> Path:
    """Write figures/*.png next to ``path`` and the HTML report itself; returns ``path``.

    ``info``: what was run (split, videos, models -> checkpoint, ...), shown under the answer with every
    absolute path made relative to ``root`` (the project root by default)."""
    from srvau.config import PROJECT_ROOT

    path = Path(path)
    figs = path.parent / "figures"
    info = _relative(info, Path(root) if root else PROJECT_ROOT)
    rows = H.headline_rows(results, style)
    split, videos = info.get("split"), info.get("videos")
    scope = f"{split} split" if split else "evaluation split"
    if videos:
        scope += f", n={videos} videos"
    headline_fig = fig_headline(rows, f"Main metric per task, {style} prompts, {scope}: bars with 95% intervals", figs / "headline.png")
    images = [
        (fig_iou_histogram(records_by_model, style, figs / "iou_histogram.png"), "Grounding IoU histogram"),
        (fig_confusion(records_by_model, style, figs / "confusion.png"), "Class confusion matrix"),
        (fig_reflection(records_by_model, iou_right, figs / "reflection_transitions.png"), "Reflection transition matrix"),
        (fig_per_class(records_by_model, style, figs / "per_class_accuracy.png"), "Per-class accuracy"),
    ]
    info_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_info_cell(v)}</td></tr>" for k, v in info.items())
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>srvau evaluation: {html.escape(' vs '.join(results))}</title>
<style>{CSS}</style></head><body>
<h1>Evaluation report: {html.escape(' / '.join(results))}</h1>
<p class="answer">{html.escape(H.answer(results, style, split, videos))}</p>
<h2>Headline</h2>
{headline_table(rows)}
<p>{html.escape(H.NOTE)} Main metric per task: QA accuracy, grounding mIoU, classification 20-way accuracy,
description keyword recall; <code>n</code>: scored samples. <code>prior</code>, where shown, never looks at the
video: it gives every question the training split's most common answer (QA letter, class) and every
grounding question its best fixed interval (as fractions of the video's duration). A model that does not
beat it has not shown that it uses the video for that task.</p>
{_img(headline_fig, "Main metric per task with 95% intervals")}
<h2>Paired: each model against the one before it</h2>
<p>Both models answered the same prompts ({html.escape(style)} style, final answers), so most of their answers
agree and only the answers one model gets right and the other wrong carry the difference. The interval is
Newcombe's score interval for a paired difference of proportions (grounding: normal approximation of the
mean IoU difference); McNemar's exact test asks whether the discordant answers split evenly. A model is
called ahead or behind only when the interval excludes zero. This is a sharper test than two overlapping
intervals in the headline, and it is the one to read before saying that training step helped.</p>
{paired_table(results)}
<h2>Run</h2>
<table class="metrics">{info_rows}</table>
<h2>Metrics</h2>
<p>Percentages (0-100) by VAU-R1's protocol: QA accuracy; grounding mIoU and R@k on anomaly intervals;
classification binary and 20-way accuracy. Styles: <code>reflect</code> (reflection trace, final answer scored),
<code>think</code> and <code>direct</code> (VAU-R1's think / no-think prompts). <code>well_formed</code>: share of
outputs in the style's format; <code>truncated</code>: share cut by the generation budget
(<code>evaluate.max_new_tokens</code>) before they ended, scored as wrong; <code>keyword_recall</code>: share of the reference description's content
words the answer mentions. Grey brackets: 95% intervals (Wilson for proportions, normal approximation for
means). Best value per row in bold.</p>
{metric_table(results)}
<h2>Reflection</h2>
<p>Over the well-formed reflection traces only (<code>malformed_share</code>: the rest, truncated or broken):
first- and final-answer accuracy, and the share whose first answer was right/wrong and final answer
right/wrong (grounding: right = IoU &ge; {iou_right:g}); <code>iou_change</code> = mean final minus first IoU (x100).</p>
{reflection_table(results)}
<h2>VAU-Eval (LLM judge)</h2>
{judge_table(results)}
<h2>Figures</h2>
{''.join(_img(p, alt) for p, alt in images)}
</body></html>
"""
    return write_text(path, body)
