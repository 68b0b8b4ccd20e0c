"""Model registration and promotion in the MLflow registry (aliases, not the deprecated stages).

``register`` logs the final checkpoint (merged safetensors + processor) as an MLflow pyfunc model whose
``predict`` answers prompts about cached videos, registers a new version and gives it the
``challenger`` alias with its evaluation metrics as version tags. ``promote`` moves ``champion`` to a
version, but only when its gate metric is at least the current champion's (``--force`` overrides), so a
worse model never silently replaces a better one. Load with ``mlflow.pyfunc.load_model("models:/NAME@champion")``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from srvau.config import Params
from srvau.tracking.runs import configure, flatten

log = logging.getLogger(__name__)

try:  # the pyfunc base class; mlflow is a hard dependency, the guard only keeps import errors readable
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


class VideoAnomalyModel(PythonModel):
    """pyfunc wrapper: input rows ``{"frames_path", "prompt"[, "system"]}`` -> generated text."""

    def load_context(self, context) -> None:
        from srvau.modeling import load_model, load_processor

        ckpt = context.artifacts["checkpoint"]
        self.model = load_model(ckpt)
        self.processor = load_processor(ckpt)
        self.model.eval()

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import torch

        from srvau.modeling import vision_token_ids
        from srvau.modeling.inputs import processor_inputs, user_message
        from srvau.video.cache import load_frames

        params = params or {}
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        outputs = []
        for row in rows:
            frames, meta = load_frames(row["frames_path"])
            text = self.processor.apply_chat_template(
                user_message(row["prompt"], row.get("system")), add_generation_prompt=True, tokenize=False
            )
            inputs = processor_inputs(self.processor, [text], [frames], [meta])
            with torch.no_grad():
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=int(params.get("max_new_tokens", 128)),
                    do_sample=False,
                    suppress_tokens=vision_token_ids(self.processor.tokenizer),
                )
            outputs.append(self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0])
        return outputs


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "accelerate", "decord", "mlflow")]


def register(checkpoint: Path, metrics_file: Path | None, params: Params, out: Path) -> dict[str, Any]:
    """Log ``checkpoint`` as a pyfunc model in the active run, register it, alias it ``challenger``."""
    import mlflow

    if not (checkpoint / "config.json").exists() or not any(checkpoint.glob("*.safetensors")):
        raise FileNotFoundError(f"{checkpoint} is not a safetensors checkpoint (config.json + *.safetensors)")
    configure(params)
    name = params.tracking.registered_model
    all_metrics = json.loads(metrics_file.read_text()) if metrics_file and metrics_file.exists() else {}
    metrics = all_metrics.get(params.register_.model_label, {})
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=VideoAnomalyModel(),
        artifacts={"checkpoint": str(checkpoint)},
        pip_requirements=_requirements(),  # explicit: inferring them costs ~5 s and records noise
        registered_model_name=name,
    )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, params.register_.alias, version)
    for key, value in flatten(metrics).items():
        if isinstance(value, (int, float)):
            client.set_model_version_tag(name, version, metric_tag(key), str(value))
    client.set_model_version_tag(name, version, "source_checkpoint", str(checkpoint))
    result = {"name": name, "version": version, "alias": params.register_.alias, "model_uri": f"models:/{name}/{version}"}
    log.info("registered %s version %s as @%s", name, version, params.register_.alias)
    if params.register_.auto_promote:
        try:
            result["promotion"] = promote(params, version=version)
        except ValueError as e:  # a worse challenger stays a challenger; that is not a failure
            result["promotion"] = {"promoted": False, "reason": str(e)}
            log.warning("%s", e)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def metric_tag(metric: str) -> str:
    """MLflow tag names allow letters, digits, ``_ . - /`` and spaces: ``r@0.3`` -> ``r_at_0.3``."""
    return "metric." + re.sub(r"[^\w.\- /]", "_", metric.replace("@", "_at_"))


def _gate_value(client, name: str, version: str, metric: str) -> float | None:
    tags = client.get_model_version(name, version).tags
    raw = tags.get(metric_tag(metric))
    return float(raw) if raw is not None else None


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
    new_value = _gate_value(client, name, version, metric)
    old_value = _gate_value(client, name, current, metric) if current else None
    if not force and current and current != version:
        if new_value is None:
            raise ValueError(f"version {version} has no metric.{metric} tag; use --force to promote anyway")
        if old_value is not None and new_value < old_value:
            raise ValueError(
                f"version {version} {metric}={new_value:.4g} is worse than @{alias} (version {current}, "
                f"{old_value:.4g}); not promoted (use --force to override)"
            )
    client.set_registered_model_alias(name, alias, version)
    log.info("@%s -> %s version %s (%s: %s, was version %s: %s)", alias, name, version, metric, new_value, current, old_value)
    return {"name": name, "alias": alias, "version": version, "previous": current, "metric": metric, "value": new_value, "previous_value": old_value}
