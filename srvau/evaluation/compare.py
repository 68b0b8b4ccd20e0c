"""Recipes side by side: one table of the headline metrics of several evaluation runs, with 95% intervals.

Input: the ``metrics.json`` of each run (``srvau evaluate``'s output, e.g. of the SRVAU-R1 and the VAU-R1
recipes run as DVC experiments by ``make compare``). Each recipe is read in its own *primary* prompt style
(the style it trains for: ``reflect`` for SRVAU-R1, ``think`` for VAU-R1), so each is scored the way it is
meant to answer. Output: ``compare.json`` (the same numbers, machine-readable) and ``report.html``.

The headline is the evaluation report's (:mod:`srvau.evaluation.headline`): one main metric per task
with its 95% interval and the reflection gain. Which recipe "wins" a metric is only stated where the
95% intervals do not overlap; otherwise the report says the difference is not resolved at this
sample size.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from srvau.evaluation import headline as H


def headline(metrics_by_run: dict[str, dict[str, Any]], model: str, styles: dict[str, str]) -> list[dict[str, Any]]:
    """One row per task of the headline: each run's main metric for ``model`` in the run's style (value, 95%
    interval, n, reflection gain), and the verdict."""
    cells = {
        run: {r["task"]: r for r in H.headline_rows({model: metrics.get(model, {})}, styles[run])}
        for run, metrics in metrics_by_run.items()
    }
    rows = []
    for task, (key, label) in H.MAIN_METRIC.items():
        if not any(task in c for c in cells.values()):
            continue
        row: dict[str, Any] = {"task": task, "metric": key, "label": label}
        for run in metrics_by_run:
            r = cells[run].get(task) or {}
            row[run] = {"value": r.get("value"), "ci95": list(r["ci95"]) if r.get("ci95") else None, "n": r.get("n"),
                        "reflection_gain": r.get("reflection_gain")}
        row["verdict"] = verdict(row, list(metrics_by_run))
        rows.append(row)
    return rows


def verdict(row: dict[str, Any], runs: list[str]) -> str:
    """Which run is ahead, only when the intervals separate it from every other run."""
    if any(row[r]["value"] is None or row[r]["ci95"] is None for r in runs):
        return "n/a"
    best = max(runs, key=lambda r: row[r]["value"])
    if all(H.separation(row[best], row[r]) == "ahead" for r in runs if r != best):
        return f"{best} ahead"
    return "not resolved (intervals overlap)"


def compare(runs: dict[str, tuple[Path, str]], out_dir: Path, models: tuple[str, ...] = ("grpo", "sft")) -> dict[str, Any]:
    """``runs``: label -> (its metrics.json, its primary prompt style). Writes ``out_dir/compare.json`` and
    ``out_dir/report.html``; returns the comparison."""
    metrics_by_run: dict[str, dict[str, Any]] = {}
    for run, (path, _) in runs.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no metrics file at {path} (did its evaluate stage run?)")
        metrics_by_run[run] = json.loads(path.read_text())
    styles = {run: style for run, (_, style) in runs.items()}
    result = {
        "runs": {run: {"metrics": str(path), "style": styles[run]} for run, (path, _) in runs.items()},
        "models": {model: headline(metrics_by_run, model, styles) for model in models},
        "prior": against_prior(metrics_by_run, models[0], styles),
        "reflection": {run: m.get(models[0], {}).get("reflection", {}) for run, m in metrics_by_run.items() if styles[run] == "reflect"},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "report.html").write_text(render(result))
    return result


def against_prior(metrics_by_run: dict[str, dict[str, Any]], model: str, styles: dict[str, str]) -> list[dict[str, Any]]:
    """Per task: the video-blind prior (srvau.evaluation.prior) of the first run that has one, and whether
    each run's ``model`` is ahead of it, behind it or not separated (95% intervals). Empty without a prior."""
    prior_run = next((r for r, m in metrics_by_run.items() if H.PRIOR in m), None)
    if prior_run is None:
        return []
    prior = {r["task"]: r for r in H.headline_rows({H.PRIOR: metrics_by_run[prior_run][H.PRIOR]}, styles[prior_run])}
    rows = []
    for task, (key, label) in H.MAIN_METRIC.items():
        p = prior.get(task)
        if p is None:
            continue
        row: dict[str, Any] = {"task": task, "metric": key, "label": label,
                               H.PRIOR: {"value": p["value"], "ci95": list(p["ci95"]) if p["ci95"] else None, "n": p["n"]}}
        for run, metrics in metrics_by_run.items():
            cell = {r["task"]: r for r in H.headline_rows({model: metrics.get(model, {})}, styles[run])}.get(task)
            row[run] = H.separation(cell, p) or "n/a"
        rows.append(row)
    return rows


def _cell(c: dict[str, Any]) -> str:
    if c["value"] is None:
        return "&ndash;"
    gain = f"; reflection {H.fmt_gain(c['reflection_gain'])}" if c.get("reflection_gain") is not None else ""
    return f"{html.escape(H.fmt_value(c['value'], c.get('ci95')))} <span class=\"ci\">n={c.get('n')}{html.escape(gain)}</span>"


def summary(result: dict[str, Any]) -> str:
    """One sentence per model: which recipe is ahead on which task, and what is not resolved."""
    out = []
    for model, rows in result["models"].items():
        ahead: dict[str, list[str]] = {}
        for r in rows:
            if r["verdict"].endswith(" ahead"):
                ahead.setdefault(r["verdict"].removesuffix(" ahead"), []).append(r["label"])
        open_ = [r["label"] for r in rows if r["verdict"].startswith("not resolved")]
        parts = [f"{run} ahead on {H.join_words(labels)}" for run, labels in ahead.items()]
        if open_:
            parts.append(f"not resolved on {H.join_words(open_)}")
        out.append(f"{model}: " + ("; ".join(parts) if parts else "nothing to compare") + ".")
    for run in result["runs"]:
        by: dict[str, list[str]] = {}
        for r in result.get("prior", []):
            by.setdefault(r[run], []).append(r["label"])
        words = [f"{verdict} on {H.join_words(by[verdict])}" for verdict in ("ahead", "behind", "not separated") if verdict in by]
        if words:
            out.append(f"Against the video-blind prior, {run} is " + ", ".join(words) + ".")
    return " ".join(out)


def render(result: dict[str, Any]) -> str:
    runs = list(result["runs"])
    head = "".join(f"<th>{html.escape(r)} ({html.escape(result['runs'][r]['style'])})</th>" for r in runs)
    sections = []
    for model, rows in result["models"].items():
        body = "".join(
            f"<tr><td>{html.escape(r['task'])}</td><td>{html.escape(r['label'])}</td>"
            + "".join(f'<td class="num">{_cell(r[run])}</td>' for run in runs)
            + f"<td>{html.escape(r['verdict'])}</td></tr>"
            for r in rows
        )
        sections.append(
            f"<h2>{html.escape(model)}</h2><table><thead><tr><th>task</th><th>metric</th>{head}<th>verdict</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )
    if result.get("prior"):
        body = "".join(
            f"<tr><td>{html.escape(r['task'])}</td><td>{html.escape(r['label'])}</td>"
            f'<td class="num">{html.escape(H.fmt_value(r[H.PRIOR]["value"], r[H.PRIOR]["ci95"]))}</td>'
            + "".join(f"<td>{html.escape(r[run])}</td>" for run in runs) + "</tr>"
            for r in result["prior"]
        )
        first = html.escape(next(iter(result["models"]), ""))
        sections.append(
            f"<h2>Against the prior</h2><p>The prior never looks at the video: the training split's most common answer, "
            f"and for grounding its best fixed interval. Each cell says whether the run's {first} model is ahead of it, "
            f"behind it or not separated (95% intervals).</p><table><thead><tr><th>task</th><th>metric</th><th>prior</th>"
            + "".join(f"<th>{html.escape(r)}</th>" for r in runs) + f"</tr></thead><tbody>{body}</tbody></table>"
        )
    refl = []
    for run, tasks in result["reflection"].items():
        for task, m in tasks.items():
            refl.append(
                f"<tr><td>{html.escape(run)}</td><td>{html.escape(task)}</td>"
                + "".join(f'<td class="num">{m.get(k) if m.get(k) is not None else "&ndash;"}</td>'
                          for k in ("first_accuracy", "final_accuracy", "wrong_to_right", "right_to_wrong", "malformed_share"))
                + "</tr>"
            )
    refl_html = (
        "<h2>Reflection (first model)</h2><table><thead><tr><th>run</th><th>task</th><th>first acc</th><th>final acc</th>"
        "<th>wrong&rarr;right</th><th>right&rarr;wrong</th><th>malformed %</th></tr></thead><tbody>"
        + "".join(refl) + "</tbody></table>"
        if refl else "<p>No reflection-style outputs (single-pass recipes have none).</p>"
    )
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>srvau: recipes compared</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:3px 8px}} th{{background:#f0f0f0}} td.num{{text-align:right}} span.ci{{color:#777;font-size:12px}}
p.answer{{font-size:17px;background:#f6f8fa;border-left:4px solid #2c7be5;padding:.6em 1em}}</style>
</head><body><h1>Recipes compared: {html.escape(' vs '.join(runs))}</h1>
<p class="answer">{html.escape(summary(result))}</p>
<p>Each recipe in its own primary prompt style (in brackets), demo test split; the evaluation report's headline:
one main metric per task. Values in %, with 95% intervals (Wilson for proportions, normal approximation for
means), the number of scored samples and, for reflection traces, the reflection gain (final minus
first-answer accuracy, points). A recipe is called ahead only where its interval lies above every other's.</p>
{''.join(sections)}
{refl_html}
</body></html>
"""
