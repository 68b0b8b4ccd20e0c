"""The ``evaluate`` stage: every available model on the evaluation split, all tasks and prompt styles.

Outputs under ``out_dir`` (``reports/eval`` by default)::

    metrics.json                 DVC metrics: model -> task -> style -> metrics (+ reflection, vau_eval,
                                 paired: against the model evaluated before it);
                                 first the video-blind ``prior`` (srvau.evaluation.prior)
    dataset.json                 what the numbers were measured on: manifest, split, limit, the
                                 manifest's digest (srvau.tracking.model_metrics.dataset_record)
    inference.json               the checkpoint and its weights' sha256, throughput, padding and
                                 ``processes`` (the world size) per model (kept
                                 out of metrics.json: machine-dependent noise for ``dvc metrics diff``)
    predictions/<model>.jsonl    one record per (video, task, style): prompt, output, parsed answers, truth
    judge/<model>.jsonl          every VAU-Eval verdict (when the judge is on)
    plots/...                    DVC plot data (see :func:`write_plot_data`)
    figures/*.png, report.html   the side-by-side report (srvau.evaluation.report)

Metrics follow docs/evaluation.md through :mod:`srvau.evaluation.metrics` (VAU-R1's parsers and
rounding): QA accuracy, grounding mIoU and R@0.3/0.5/0.7 on anomaly intervals only, classification
binary and 20-way accuracy, per prompt style (``reflect``: our trace, scored on its final answer;
``think`` and ``direct``: VAU-R1's think / no-think prompts), each proportion with its Wilson 95%
interval (``<metric>_ci95``). Additions of ours: ``well_formed`` (share of outputs in the style's
format, :func:`srvau.contract.scoring.well_formed`) for every task; for the ``reflect`` style the
reflection transitions over well-formed traces (``reflection.<task>``); and for descriptions an
offline ``keyword_recall`` against the reference, so every task has a number without a judge.
"""

from __future__ import annotations

import gc
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from srvau.config import EvaluateConfig, Params
from srvau.contract.vocab import CLASSES, METRIC_TASK, STYLES, TASKS
from srvau.evaluation import metrics as M
from srvau.io import write_json
from srvau.evaluation.headline import PRIOR
from srvau.evaluation.prior import fit_prior, prior_metrics
from srvau.evaluation.inference import (
    GenerationSettings,
    ManifestError,
    Sample,
    build_samples,
    process_group,
    read_manifest,
    run_inference,
)

log = logging.getLogger(__name__)

STAGE = "evaluate"
IOU_BINS = [round(i / 10, 1) for i in range(11)]  # 0.0, 0.1, ... 1.0
NO_CLASS = "(none)"
_NOT_METRICS = {"judge_temperature"}  # a setting (an MLflow tag), not a result
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------- models


def resolve_checkpoint(spec: str | None, params: Params) -> str | None:
    """A loadable checkpoint for ``spec``, or None when it does not exist (yet).

    A local folder holding ``config.json`` (or a ``merged/`` sub-folder that does, where training
    keeps the merged LoRA model). ``owner/name`` whose first folder does not exist locally is taken
    as a Hub id (the paper-scale base model); inside an existing local folder it is a missing checkpoint.
    An empty ``spec`` (``evaluate.models.<label>: null``) means ``model.base``.
    """
    spec = spec or params.model.base
    p = params.resolve(spec)
    for cand in (p, p / "merged"):
        if (cand / "config.json").is_file():
            return str(cand)
    if not p.exists() and _HUB_ID.match(spec) and not params.resolve(spec.split("/")[0]).exists():
        return spec
    return None


def available_models(models: dict[str, str | None], params: Params) -> dict[str, str]:
    out: dict[str, str] = {}
    for label, spec in models.items():
        ckpt = resolve_checkpoint(spec, params)
        if ckpt is None:
            log.warning("model %s: no checkpoint at %s; skipped", label, params.resolve(spec or params.model.base))
        else:
            out[label] = ckpt
    return out


def _release_accelerator_memory() -> None:
    """Free the previous model's GPU memory before the next one loads (a full gc costs ~1 s: GPU only)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def _device_map() -> str | None:
    """This process's GPU: under a multi-process launch each rank takes its own (LOCAL_RANK)."""
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- metrics


def _gts(task: str, recs: list[dict[str, Any]]) -> list[Any]:
    if task == "grounding":
        return [(r["truth"]["start_s"], r["truth"]["end_s"]) for r in recs]
    return [r["truth"]["answer"] for r in recs]


def _rank(order: tuple[str, ...], x: str) -> tuple[int, str]:
    return (order.index(x) if x in order else len(order), x)


def compute_metrics(records: list[dict[str, Any]], iou_right: float = 0.5) -> dict[str, Any]:
    """model metrics: ``{task: {style: {...}}, "reflection": {task: {...}}}`` from prediction records."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["style"]), []).append(r)
    out: dict[str, Any] = {}
    reflection: dict[str, Any] = {}
    for (task, style), recs in sorted(groups.items(), key=lambda kv: (_rank(TASKS, kv[0][0]), _rank(STYLES, kv[0][1]))):
        texts = [r["output"] for r in recs]
        if task in METRIC_TASK:
            m = M.task_metrics(METRIC_TASK[task], texts, _gts(task, recs))
            m.pop("task", None)
            if task == "qa":
                m.update(M.qa_choice_metrics([r["prompt"] for r in recs], texts, _gts(task, recs)))
        else:
            recall = [r["keyword_recall"] for r in recs if r.get("keyword_recall") is not None]
            m = {"n": len(recs), **M.mean_metric("keyword_recall", recall)}
        m["well_formed"] = M.pct(sum(bool(r["well_formed"]) for r in recs) / len(recs))
        m["truncated"] = M.pct(sum(bool(r.get("truncated")) for r in recs) / len(recs))
        out.setdefault(task, {})[style] = m
        if style == "reflect" and task in METRIC_TASK:
            rm = M.reflection_metrics(METRIC_TASK[task], texts, _gts(task, recs), iou_right=iou_right)
            rm.pop("task", None)
            reflection[task] = rm
    if reflection:
        out["reflection"] = reflection
    return out


# ----------------------------------------------------------------------------- plot data


def _select(records: list[dict[str, Any]], task: str, style: str) -> list[dict[str, Any]]:
    return [r for r in records if r["task"] == task and r["style"] == style]


def iou_histogram(records: list[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    """Counts of final-answer IoU in bins of 0.1 (the last bin holds IoU == 1.0)."""
    counts = Counter()
    for r in _select(records, "grounding", style):
        counts[min(int(r["iou_final"] * 10), 9)] += 1
    return [{"bin": f"{IOU_BINS[i]:.1f}-{IOU_BINS[i + 1]:.1f}", "count": counts.get(i, 0)} for i in range(10)]


def confusion_pairs(records: list[dict[str, Any]], style: str) -> list[dict[str, str]]:
    """(actual, predicted) class per classification sample; no class found -> ``(none)``."""
    return [
        {"actual": r["truth"]["answer"], "predicted": r["final_answer"] or NO_CLASS}
        for r in _select(records, "classification", style)
    ]


def per_class_accuracy(records: list[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    """20-way accuracy per ground-truth class (classes in VAU-Bench order)."""
    by: dict[str, list[bool]] = {}
    for r in _select(records, "classification", style):
        by.setdefault(r["truth"]["answer"], []).append(bool(r["final_correct"]))
    order = [c for c in CLASSES if c in by] + sorted(set(by) - set(CLASSES))
    return [{"class": c, "accuracy": M.pct(sum(by[c]) / len(by[c])), "n": len(by[c])} for c in order]


def transition_counts(records: list[dict[str, Any]], iou_right: float) -> list[dict[str, Any]]:
    """First x final correctness counts of reflection traces, per task (the transition matrix)."""
    rows = []
    for task in ("qa", "grounding", "classification"):
        recs = _select(records, task, "reflect")
        if not recs:
            continue
        if task == "grounding":
            pairs = [(r["iou_first"] >= iou_right, r["iou_final"] >= iou_right) for r in recs]
        else:
            pairs = [(bool(r["first_correct"]), bool(r["final_correct"])) for r in recs]
        c = Counter(pairs)
        for first in (True, False):
            for final in (True, False):
                rows.append(
                    {
                        "task": task,
                        "first": "right" if first else "wrong",
                        "final": "right" if final else "wrong",
                        "count": c.get((first, final), 0),
                    }
                )
    return rows


POOLED_TASKS = ("qa", "classification")  # pooled: the answers of both, as one accuracy


def paired_metrics(this: list[dict[str, Any]], other: list[dict[str, Any]], style: str) -> dict[str, Any]:
    """``this`` model against ``other`` on the prompts both answered in ``style``: per task the paired
    difference of final-answer accuracy (QA, 20-way classification; :func:`metrics.paired_difference`)
    or of final IoU (grounding), and QA + classification pooled."""
    out: dict[str, Any] = {}
    pooled: tuple[list[bool], list[bool]] = ([], [])
    for task in ("qa", "grounding", "classification"):
        theirs = {(r["video_id"], r["prompt"]): r for r in _select(other, task, style)}
        pairs = [(r, theirs[(r["video_id"], r["prompt"])]) for r in _select(this, task, style) if (r["video_id"], r["prompt"]) in theirs]
        if not pairs:
            continue
        if task == "grounding":
            out[task] = M.paired_mean_difference([a["iou_final"] for a, _ in pairs], [b["iou_final"] for _, b in pairs])
            continue
        right = ([bool(a["final_correct"]) for a, _ in pairs], [bool(b["final_correct"]) for _, b in pairs])
        out[task] = M.paired_difference(*right)
        pooled[0].extend(right[0])
        pooled[1].extend(right[1])
    if all(t in out for t in POOLED_TASKS):
        out["pooled"] = M.paired_difference(*pooled)
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def write_plot_data(records_by_model: dict[str, list[dict[str, Any]]], plots_dir: Path, style: str, iou_right: float) -> list[Path]:
    """DVC plot files, one per model in each folder so ``dvc plots`` overlays the models::

    plots/iou_hist/<model>.csv     bin,count           (grounding, final IoU)
    plots/confusion/<model>.csv    actual,predicted    (classification; DVC's confusion template)
    plots/per_class/<model>.csv    class,accuracy,n
    plots/reflection/<model>.csv   task,first,final,count
    """
    written = []
    for label, recs in records_by_model.items():
        written.append(_write_csv(plots_dir / "iou_hist" / f"{label}.csv", iou_histogram(recs, style), ["bin", "count"]))
        written.append(_write_csv(plots_dir / "confusion" / f"{label}.csv", confusion_pairs(recs, style), ["actual", "predicted"]))
        written.append(_write_csv(plots_dir / "per_class" / f"{label}.csv", per_class_accuracy(recs, style), ["class", "accuracy", "n"]))
        written.append(
            _write_csv(plots_dir / "reflection" / f"{label}.csv", transition_counts(recs, iou_right), ["task", "first", "final", "count"])
        )
    return written


# ----------------------------------------------------------------------------- the stage


def evaluate(
    manifest: Path,
    models: dict[str, str],
    out_dir: Path,
    params: Params,
    report: Path | None = None,
    judge_client=None,
) -> dict[str, Any]:
    """Evaluate every model of ``models`` (label -> checkpoint; missing ones skipped with a warning).

    Returns ``{"metrics": path, "report": path, "predictions": {label: path}, "models": metrics}``.
    Logs the metrics (prefixed ``evaluate.``), metrics.json and the report to the stage's run, which the
    caller opens (``srvau evaluate`` does: srvau.cli.context.stage_tracking); without one nothing is logged.

    Under a multi-process launch (``accelerate launch ... -m srvau.cli evaluate``) the prompts are
    sharded across the processes (:func:`run_inference`); every process gets all the records back, and
    only the main one judges, writes the outputs and logs, so the result equals a one-process run.
    """
    from srvau.evaluation.judge import judge_records
    from srvau.evaluation.report import write_report
    from srvau.modeling import load_model, load_processor
    from srvau.tracking.model_metrics import DATASET_FILE, dataset_record
    from srvau.tracking.models import checkpoint_digest, is_checkpoint
    from srvau.tracking.runs import (
        log_stage_artifact,
        log_stage_artifacts,
        log_stage_metrics,
        log_stage_params,
        set_stage_tags,
    )

    cfg = params.evaluate
    manifest, out_dir = Path(manifest), Path(out_dir)
    report = Path(report) if report else out_dir / "report.html"
    rows = read_manifest(manifest, cfg.split, cfg.limit)
    samples = build_samples(rows, manifest.parent, cfg.tasks, cfg.styles, params.video)
    if not samples:
        raise ManifestError(f"no (video, task) in split {cfg.split!r} of {manifest} has a ground truth for tasks {cfg.tasks}")
    ckpts = available_models(models, params)
    if not ckpts:
        raise FileNotFoundError(f"none of the models {models} has a checkpoint (train them first)")
    settings = GenerationSettings(cfg.max_new_tokens, cfg.temperature, params.seed)
    rank, world = process_group()
    main = rank == 0
    log.info("evaluating %s on %d prompts (%d videos, split %s)", list(ckpts), len(samples), rows.shape[0], cfg.split)

    results: dict[str, Any] = {}
    prior = the_prior(manifest, rows, samples, cfg)
    if prior:  # first, so the report's one-sentence answer also weighs the final model against it
        results[PRIOR] = prior
        if main:
            log_stage_metrics(STAGE, {PRIOR: _numeric(prior)})
    records_by_model: dict[str, list[dict[str, Any]]] = {}
    predictions: dict[str, str] = {}
    inference: dict[str, Any] = {}
    for label, ckpt in ckpts.items():
        model = load_model(ckpt, params.model, device_map=_device_map()).eval()
        processor = load_processor(ckpt, params.model)
        pred_path = out_dir / "predictions" / f"{label}.jsonl"
        records, stats = run_inference(model, processor, samples, settings, cfg.batch_size, label, pred_path)
        del model
        _release_accelerator_memory()
        m = compute_metrics(records, cfg.iou_right)
        warn_truncated(m, label, cfg.max_new_tokens)
        if cfg.judge.enabled and main:
            m["vau_eval"] = judge_records(records, cfg.judge, out_dir / "judge" / f"{label}.jsonl", client=judge_client)
        results[label] = m
        records_by_model[label] = records
        predictions[label] = str(pred_path)
        # the weights' digest: which training run made the model is looked up by it (srvau eval demo-check)
        digest = checkpoint_digest(ckpt) if main and is_checkpoint(ckpt) else None
        inference[label] = {"checkpoint": ckpt, "checkpoint_sha256": digest, "processes": world, **stats.as_dict()}  # world size, also at 1
        if main:
            log_stage_metrics(STAGE, {label: _numeric(m)})

    # Each model against the one evaluated before it (base -> sft -> grpo): same prompts, paired intervals.
    labels = list(records_by_model)
    for before, label in zip(labels, labels[1:]):
        results[label]["paired"] = {before: paired_metrics(records_by_model[label], records_by_model[before], cfg.primary_style)}
        if main:
            log_stage_metrics(STAGE, {label: {"paired": _numeric(results[label]["paired"])}})

    metrics_path = out_dir / "metrics.json"
    if not main:  # the main process writes and logs the same results
        return {"metrics": str(metrics_path), "report": str(report), "predictions": predictions, "models": results}
    write_json(metrics_path, results)
    write_json(out_dir / DATASET_FILE, dataset_record(manifest, cfg.split, cfg.limit))  # so `srvau register` knows
    # Always written, so the judge folder is a stable DVC output and its settings are on record.
    write_json(out_dir / "judge" / "settings.json", {"enabled": cfg.judge.enabled, **cfg.judge.model_dump(exclude={"enabled", "api_key_env"})})
    write_json(out_dir / "inference.json", inference)
    write_plot_data(records_by_model, out_dir / "plots", cfg.primary_style, cfg.iou_right)
    info = {
        "split": cfg.split,
        "videos": int(rows.shape[0]),
        "prompts": len(samples),
        "models": {k: inference[k]["checkpoint"] for k in inference},
        "decoding": "greedy" if settings.greedy else f"sampling, temperature {settings.temperature}",
        "max_new_tokens": cfg.max_new_tokens,
        "primary_style": cfg.primary_style,
        "judge": {"model": cfg.judge.model, "temperature": cfg.judge.temperature} if cfg.judge.enabled else None,
    }
    report_path = write_report(results, records_by_model, report, info, cfg.primary_style, cfg.iou_right)

    set_stage_tags({"evaluate.split": cfg.split, "evaluate.models": ",".join(ckpts)})
    log_stage_params({"evaluate.world_size": world})  # how it was launched (srvau.launch)
    if cfg.judge.enabled:
        set_stage_tags({"evaluate.judge.model": cfg.judge.model, "evaluate.judge.temperature": str(cfg.judge.temperature)})
    for path in (metrics_path, out_dir / DATASET_FILE, out_dir / "inference.json", report_path):
        log_stage_artifact(path, artifact_path="evaluate")
    log_stage_artifacts(report_path.parent / "figures", artifact_path="evaluate/figures")
    return {"metrics": str(metrics_path), "report": str(report_path), "predictions": predictions, "models": results}


def the_prior(manifest: Path, rows: pd.DataFrame, samples: list[Sample], cfg: EvaluateConfig) -> dict[str, Any] | None:
    """The prior's metrics (:mod:`srvau.evaluation.prior`), fitted on ``evaluate.prior_split``; None when
    that is off, is the evaluated split itself, or has no rows."""
    if not cfg.prior_split:
        return None
    if cfg.prior_split == cfg.split:
        log.warning("evaluate.prior_split is the evaluated split %r: no prior (it would be fitted on the answers it is scored on)", cfg.split)
        return None
    try:
        train = read_manifest(manifest, cfg.prior_split)
    except ManifestError as e:
        log.warning("no prior: %s", e)
        return None
    durations = {str(r["video_id"]): float(r.get("duration_s") or 0) for r in rows.to_dict("records")}
    fit = fit_prior(train)
    log.info("prior fitted on %d %s videos: %s", train.shape[0], cfg.prior_split, {k: v for k, v in fit.items() if k != "n"})
    return prior_metrics(samples, durations, fit, cfg.styles) or None


def warn_truncated(metrics: dict[str, Any], label: str, budget: int) -> list[str]:
    """A warning per (task, style) whose answers ran out of budget: a cut trace has no final answer and
    scores as wrong, so the metric measures the budget, not the model."""
    warnings = []
    for task, styles in metrics.items():
        for style, m in styles.items() if task in TASKS else ():
            if m.get("truncated"):
                warnings.append(f"{label}: {m['truncated']}% of {task}/{style} answers hit evaluate.max_new_tokens="
                                f"{budget} before ending; raise it (their scores count them wrong)")
                log.warning(warnings[-1])
    return warnings


def _numeric(d: dict[str, Any]) -> dict[str, Any]:
    """The numeric leaves of a metrics dict (None dropped), keys safe for MLflow (@ -> _at_)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = str(k).replace("@", "_at_")
        if isinstance(v, dict):
            sub = _numeric(v)
            if sub:
                out[key] = sub
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_METRICS:
            out[key] = v
    return out
