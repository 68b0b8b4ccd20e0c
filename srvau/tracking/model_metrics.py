"""Evaluation metrics on the logged models: each evaluated model's headline numbers, logged against the
MLflow logged model of its checkpoint (srvau.tracking.models), so the model's page (and the registry
version made from it) shows how it scored, with the evaluate run that computed them.

A model carries the main metric of each task (:data:`srvau.evaluation.headline.MAIN_METRIC`) in every
evaluated prompt style, plus the promotion gate (``register.gate_metric``): about a dozen numbers, not
the ~100 the evaluate run holds. They are keyed as in that run (``evaluate.<label>.<task>.<style>.<metric>``).

Each value is logged on the MLflow dataset it was measured on (:func:`evaluation_dataset`: the manifest,
project-relative, and the split). The same model evaluated on a val pool or another manifest then keeps
those numbers apart from its test numbers, and the registry's gate reads only the gate dataset's
(:func:`gate_dataset`), never whichever evaluation ran last. The evaluate stage writes the dataset beside
its metrics.json (:data:`DATASET_FILE`), so ``srvau register --metrics FILE`` logs a file's numbers on the
data they were measured on, not on the gate's.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from srvau.config import PROJECT_ROOT, Params, project_relative
from srvau.evaluation.headline import MAIN_METRIC
from srvau.io import sha256_file
from srvau.tracking.models import checkpoint_digest, find_logged_model, is_checkpoint
from srvau.tracking.runs import flatten, track_call

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"  # beside metrics.json: the data its numbers were measured on (dataset_record)


def headline_metrics(label_metrics: dict[str, Any], prefix: str, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """The main metric of each task and style of one model's ``metrics.json`` entry (plus the dotted
    keys in ``extra``), keyed ``<prefix>.<task>.<style>.<metric>``."""
    wanted = {f"{task}.{style}.{key}" for task, (key, _) in MAIN_METRIC.items()
              for style in (label_metrics.get(task) or {})}
    wanted |= set(extra)
    return {f"{prefix}.{k}": float(v) for k, v in flatten(label_metrics).items()
            if k in wanted and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def dataset_name(manifest: str | Path, split: str, limit: int | None = None) -> str:
    """``<manifest>:<split>`` (``[:N]`` when only the first N videos were evaluated), the manifest named
    project-relative so the name is the same in every checkout."""
    return f"{project_relative(manifest)}:{split}" + (f"[:{limit}]" if limit else "")


def gate_dataset(params: Params) -> str:
    """The dataset whose metrics the registry's gate compares: the project's manifest and
    ``evaluate.split``, what the pipeline's evaluate stage measures."""
    return pipeline_dataset(params).name


def pipeline_dataset(params: Params):
    """:func:`evaluation_dataset` of the pipeline's own evaluation (project manifest, ``evaluate.split``)."""
    cfg = params.evaluate
    return evaluation_dataset(params.resolve(params.paths.ingest) / "manifest.parquet", cfg.split, cfg.limit)


def dataset_record(manifest: str | Path, split: str, limit: int | None = None) -> dict[str, Any]:
    """What an evaluation was measured on: :func:`dataset_name`, the manifest (project-relative), the
    split, the video limit, and the manifest's sha256 (first 16 hex digits; "missing" when the file is
    not there). Written as :data:`DATASET_FILE` beside metrics.json."""
    path = Path(manifest)
    return {"name": dataset_name(manifest, split, limit), "manifest": project_relative(manifest), "split": split,
            "limit": limit, "digest": sha256_file(path)[:16] if path.is_file() else "missing"}


def evaluation_dataset(manifest: str | Path, split: str, limit: int | None = None):
    """The MLflow dataset for metrics measured on ``split`` of ``manifest`` (:func:`dataset_record`)."""
    return mlflow_dataset(dataset_record(manifest, split, limit))


def mlflow_dataset(record: dict[str, Any]):
    """The MLflow dataset of a :func:`dataset_record`: its name and digest, the manifest as its source."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # mlflow registers its local-file source twice and says so
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str((PROJECT_ROOT / record["manifest"]).resolve()))
    return MetaDataset(source=source, name=record["name"], digest=record["digest"])


def recorded_dataset(metrics_file: str | Path):
    """The MLflow dataset recorded beside an evaluation's metrics.json (:data:`DATASET_FILE`); None when
    there is no record (a file from before the record existed, or not written by the evaluate stage)."""
    record_file = Path(metrics_file).parent / DATASET_FILE
    if not record_file.is_file():
        return None
    record = json.loads(record_file.read_text())
    missing = {"name", "manifest", "digest"} - record.keys()
    if missing:
        raise ValueError(f"{record_file} lacks {', '.join(sorted(missing))}: not a dataset record of srvau evaluate")
    return mlflow_dataset(record)


def log_model_metrics(model_id: str, label: str, label_metrics: dict[str, Any], params: Params, dataset) -> dict[str, float]:
    """Log one evaluated model's headline metrics (and the promotion gate) against its logged model, on
    ``dataset`` (:func:`evaluation_dataset`), in the active run. Raises on tracking errors."""
    import mlflow

    values = headline_metrics(label_metrics, f"evaluate.{label}", extra=(params.register_.gate_metric,))
    if values:
        mlflow.log_metrics(values, model_id=model_id, dataset=dataset)
    return values


def log_evaluation_to_models(checkpoints: dict[str, str], metrics: dict[str, Any], params: Params, dataset) -> dict[str, str]:
    """For each evaluated local checkpoint with a logged model (found by digest), its headline metrics
    against that model, on ``dataset``, in the evaluate stage's run. Returns label -> model id; never raises."""
    import mlflow

    linked: dict[str, str] = {}
    if mlflow.active_run() is None:
        return linked  # not tracking (another rank, or tracking off): nothing to link, no digest to compute
    for label, ckpt in checkpoints.items():
        if label not in metrics or not is_checkpoint(ckpt):
            continue  # a Hub id or a folder without weights: nothing was logged for it
        digest = checkpoint_digest(ckpt)

        def link(label=label, digest=digest):
            model = find_logged_model(digest, params, stage=label)  # labels name the stages (sft, grpo)
            if model is None:
                return None
            log_model_metrics(model.model_id, label, metrics[label], params, dataset)
            return model.model_id

        model_id = track_call("model_metrics", link, label=label, checkpoint=ckpt)
        if model_id:
            linked[label] = model_id
            log.info("model %s: headline metrics on %s logged against MLflow logged model %s", label, dataset.name, model_id)
        else:
            log.info("model %s (%s): no MLflow logged model with its digest; its metrics stay on the run", label, ckpt)
    return linked
