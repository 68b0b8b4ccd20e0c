"""Evaluation metrics on the logged models: each evaluated model's headline numbers, logged against the
MLflow logged model of its checkpoint (srvau.tracking.models), so the model's page (and the registry
version made from it) shows how it scored, with the evaluate run that computed them.

A model carries the main metric of each task (:data:`srvau.evaluation.headline.MAIN_METRIC`) in every
evaluated prompt style, plus the promotion gate (``register.gate_metric``): about a dozen numbers, not
the ~100 the evaluate run holds. They are keyed as in that run (``evaluate.<label>.<task>.<style>.<metric>``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from srvau.config import Params
from srvau.evaluation.headline import MAIN_METRIC
from srvau.tracking.models import checkpoint_digest, find_logged_model, is_checkpoint
from srvau.tracking.runs import flatten, track_call

log = logging.getLogger(__name__)


def headline_metrics(label_metrics: dict[str, Any], prefix: str, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """The main metric of each task and style of one model's ``metrics.json`` entry (plus the dotted
    keys in ``extra``), keyed ``<prefix>.<task>.<style>.<metric>``."""
    wanted = {f"{task}.{style}.{key}" for task, (key, _) in MAIN_METRIC.items()
              for style in (label_metrics.get(task) or {})}
    wanted |= set(extra)
    return {f"{prefix}.{k}": float(v) for k, v in flatten(label_metrics).items()
            if k in wanted and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def log_model_metrics(model_id: str, label: str, label_metrics: dict[str, Any], params: Params) -> dict[str, float]:
    """Log one evaluated model's headline metrics (and the promotion gate) against its logged model, in
    the active run. Raises on tracking errors."""
    import mlflow

    values = headline_metrics(label_metrics, f"evaluate.{label}", extra=(params.register_.gate_metric,))
    if values:
        mlflow.log_metrics(values, model_id=model_id)
    return values


def log_evaluation_to_models(checkpoints: dict[str, str], metrics: dict[str, Any], params: Params) -> dict[str, str]:
    """For each evaluated local checkpoint with a logged model (found by digest), its headline metrics
    against that model, in the evaluate stage's run. Returns label -> model id; never raises."""
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
            log_model_metrics(model.model_id, label, metrics[label], params)
            return model.model_id

        model_id = track_call("model_metrics", link, label=label, checkpoint=ckpt)
        if model_id:
            linked[label] = model_id
            log.info("model %s: headline metrics logged against MLflow logged model %s", label, model_id)
        else:
            log.info("model %s (%s): no MLflow logged model with its digest; its metrics stay on the run", label, ckpt)
    return linked
