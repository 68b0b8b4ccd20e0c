"""Model registration and promotion in the MLflow registry (aliases, not the deprecated stages).

``register`` registers the GRPO checkpoint's MLflow logged model: the one ``srvau grpo`` logged in its run
(found by the checkpoint's content digest, srvau.tracking.models), so the version points at that logged
model and its page shows the lineage: the training run, the params and the evaluation metrics that
``srvau evaluate`` logged against it. When no logged model matches (training ran with tracking off, or
elsewhere), register logs the checkpoint itself first, with the evaluation metrics, and says so. The
new version gets the ``challenger`` alias. A model whose gate metric is not above the video-blind prior's
in metrics.json (``register.beat_prior``) is not promoted automatically. ``promote`` moves ``champion`` to a version, but only when its
gate metric (read from its logged model's metrics) is at least the current champion's (``--force``
overrides), so a worse model never silently replaces a better one. Load with
``mlflow.pyfunc.load_model("models:/NAME@champion")``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from srvau.config import Params
from srvau.evaluation.headline import PRIOR
from srvau.tracking.model_metrics import (
    DATASET_FILE,
    gate_dataset,
    log_model_metrics,
    pipeline_dataset,
    recorded_dataset,
)
from srvau.tracking.models import (
    checkpoint_digest,
    find_logged_model,
    is_checkpoint,
    log_checkpoint,
    model_id_of_version,
    model_metric,
)
from srvau.tracking.runs import configure, set_stage_tags

log = logging.getLogger(__name__)


def register(checkpoint: Path, metrics_file: Path | None, params: Params, out: Path) -> dict[str, Any]:
    """Register the logged model of ``checkpoint`` (logging it in the active run when none is found),
    alias it ``challenger``, promote it if ``register.auto_promote``; the record goes to ``out``."""
    import mlflow

    if not is_checkpoint(checkpoint):
        raise FileNotFoundError(f"{checkpoint} is not a safetensors checkpoint (config.json + *.safetensors)")
    configure(params)
    name, label, gate = params.tracking.registered_model, params.register_.model_label, params.register_.gate_metric
    all_metrics = json.loads(metrics_file.read_text()) if metrics_file and metrics_file.exists() else {}
    metrics = all_metrics.get(label, {})
    measured_on = recorded_dataset(metrics_file) if metrics else None  # read (and checked) before anything is logged
    digest = checkpoint_digest(checkpoint)
    model = find_logged_model(digest, params, stage=label)
    if model is None:
        log.warning("no MLflow logged model has the digest of %s (its training ran without tracking, or "
                    "elsewhere): logging it now, in the register run", checkpoint)
        model = mlflow.get_logged_model(log_checkpoint(checkpoint, params, label, digest))
        origin = "logged by register (no logged model of the training run matched)"
    else:
        origin = f"logged by run {model.source_run_id}"
    if metrics:  # evaluate ran without tracking: bring its numbers, on the data they were measured on
        bring_metrics(model, label, metrics, metrics_file, measured_on, params)
    version = str(mlflow.register_model(f"models:/{model.model_id}", name).version)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, params.register_.alias, version)
    set_stage_tags({"srvau.registered_version": f"{name}/{version}", "srvau.registered_model_id": model.model_id})
    result = {"name": name, "version": version, "alias": params.register_.alias, "model_uri": f"models:/{name}/{version}",
              "model_id": model.model_id, "model_origin": origin, "checkpoint_sha256": digest}
    log.info("registered %s version %s (logged model %s, %s) as @%s", name, version, model.model_id, origin,
             params.register_.alias)
    below_prior = not_above_prior(all_metrics, label, gate) if params.register_.beat_prior else None
    if params.register_.auto_promote and below_prior:
        result["promotion"] = {"promoted": False, "reason": below_prior}
        log.warning("%s", below_prior)
    elif params.register_.auto_promote:
        try:
            result["promotion"] = promote(params, version=version)
        except ValueError as e:  # a worse challenger stays a challenger; that is not a failure
            result["promotion"] = {"promoted": False, "reason": str(e)}
            log.warning("%s", e)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def bring_metrics(model, label: str, metrics: dict[str, Any], metrics_file: Path, dataset, params: Params) -> None:
    """Log ``metrics`` (one model's entry of ``metrics_file``) against ``model`` on ``dataset``, the one
    recorded beside the file (:func:`recorded_dataset`; None: the pipeline's, with a warning), unless the
    model already has the gate metric there."""
    gate = params.register_.gate_metric
    if dataset is None:
        dataset = pipeline_dataset(params)
        log.warning("%s has no %s beside it: its numbers are taken to be on %s", metrics_file, DATASET_FILE, dataset.name)
    if model_metric(model, gate, dataset.name) is not None:
        return
    log_model_metrics(model.model_id, label, metrics, params, dataset)
    if dataset.name != gate_dataset(params):
        log.warning("%s holds metrics on %s; the promotion gate reads %s, so it will not compare them",
                    metrics_file, dataset.name, gate_dataset(params))


def not_above_prior(metrics: dict[str, Any], label: str, gate: str) -> str | None:
    """Why ``label`` must not be promoted automatically: its gate metric (``task.style.metric`` in
    metrics.json) is not above the video-blind prior's (srvau.evaluation.prior). None when it is above,
    or when either number is missing."""
    def value(entry: str) -> float | None:
        node: Any = metrics.get(entry)
        for key in gate.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        return float(node) if isinstance(node, (int, float)) else None

    ours, prior = value(label), value(PRIOR)
    if ours is None or prior is None or ours > prior:
        return None
    return (f"{label} {gate}={ours:.4g} is not above the video-blind prior's {prior:.4g} (the training split's "
            f"most common answer): not promoted automatically (`srvau registry promote` can, by hand)")


def gate_value(client, name: str, version: str, metric: str, dataset: str) -> float | None:
    """``metric`` of a registry version on ``dataset``, read from the metrics of the logged model it
    points at."""
    model_id = model_id_of_version(client.get_model_version(name, version))
    return model_metric(client.get_logged_model(model_id), metric, dataset) if model_id else None


def promote(params: Params, version: str | None = None, alias: str = "champion", metric: str | None = None, force: bool = False) -> dict[str, Any]:
    """Point ``alias`` at ``version`` (default: the challenger) if it is at least as good on ``metric``."""
    import mlflow

    configure(params)
    client = mlflow.MlflowClient()
    name = params.tracking.registered_model
    if version is None:
        version = str(client.get_model_version_by_alias(name, params.register_.alias).version)
    metric = metric or params.register_.gate_metric
    try:
        current = str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        current = None
    dataset = gate_dataset(params)  # e.g. data/ingest/manifest.parquet:test, never a val pool's numbers
    new_value = gate_value(client, name, version, metric, dataset)
    old_value = gate_value(client, name, current, metric, dataset) if current else None
    if not force and current and current != version:
        if new_value is None:
            raise ValueError(f"version {version} has no {metric} metric on its logged model; use --force to promote anyway")
        if old_value is not None and new_value < old_value:
            raise ValueError(
                f"version {version} {metric}={new_value:.4g} is worse than @{alias} (version {current}, "
                f"{old_value:.4g}); not promoted (use --force to override)"
            )
    client.set_registered_model_alias(name, alias, version)
    log.info("@%s -> %s version %s (%s: %s, was version %s: %s)", alias, name, version, metric, new_value, current, old_value)
    if force:
        reason = "forced"
    elif not current or current == version:
        reason = f"no @{alias} before" if not current else f"already @{alias}"
    elif old_value is None:
        reason = f"@{alias} (version {current}) has no {metric} to compare with"
    else:
        reason = f"{metric} {_fmt(new_value)} >= {_fmt(old_value)} of version {current}"
    return {"name": name, "alias": alias, "version": version, "previous": current, "metric": metric, "value": new_value,
            "previous_value": old_value, "promoted": True, "reason": reason}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
