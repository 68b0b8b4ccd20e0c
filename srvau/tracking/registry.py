"""Model registration and promotion in the MLflow registry (aliases, not the deprecated stages).

``register`` logs the final checkpoint (merged safetensors + processor) as an MLflow pyfunc model
(models-from-code: ``srvau/tracking/pyfunc_model.py``, with the ``srvau`` package as code and only its
runtime requirements, so it loads without this checkout) whose ``predict`` answers prompts about a video
file or a cached clip, decoding as the evaluation did. It registers a new version and gives it the
``challenger`` alias with its evaluation metrics as version tags. ``promote`` moves ``champion`` to a
version, but only when its gate metric is at least the current champion's (``--force`` overrides), so a
worse model never silently replaces a better one. Load with ``mlflow.pyfunc.load_model("models:/NAME@champion")``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from srvau.config import Params
from srvau.tracking.runs import configure, flatten

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")  # models-from-code: logged as source, never pickled
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # srvau/, shipped with the model as code_paths

# What the registered model imports when it loads and answers (srvau.modeling, srvau.video, srvau.contract,
# srvau.config): a loader installs these, not the whole training stack.
RUNTIME_PACKAGES = ("mlflow", "torch", "torchvision", "transformers", "accelerate", "tokenizers", "safetensors",
                    "numpy", "pandas", "av", "decord", "pillow", "pydantic", "pyyaml")


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in RUNTIME_PACKAGES]


def model_config(params: Params) -> dict[str, Any]:
    """What the registered model needs to answer as it was evaluated (``context.model_config``)."""
    ev = params.evaluate
    return {
        "model": params.model.model_dump(mode="json", include={"torch_dtype", "attn_implementation", "trust_remote_code"}),
        "video": params.video.model_dump(mode="json"),
        "generation": {"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature, "seed": params.seed},
        "batch_size": ev.batch_size,
    }


def signature(params: Params):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "prompt"),
        ColSpec("string", "video_path", required=False),
        ColSpec("string", "frames_path", required=False),
        ColSpec("string", "task", required=False),
        ColSpec("string", "system", required=False),
    ])
    params_schema = ParamSchema([
        ParamSpec("max_new_tokens", "long", params.evaluate.max_new_tokens),
        ParamSpec("style", "string", "reflect"),
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string")]), params=params_schema)


def _package_copy(dest: Path) -> Path:
    """A clean copy of the srvau package (no bytecode caches) to ship as code_paths."""
    out = dest / "srvau"
    shutil.copytree(PACKAGE_DIR, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def register(checkpoint: Path, metrics_file: Path | None, params: Params, out: Path) -> dict[str, Any]:
    """Log ``checkpoint`` as a pyfunc model in the active run, register it, alias it ``challenger``."""
    import mlflow

    if not (checkpoint / "config.json").exists() or not any(checkpoint.glob("*.safetensors")):
        raise FileNotFoundError(f"{checkpoint} is not a safetensors checkpoint (config.json + *.safetensors)")
    configure(params)
    name = params.tracking.registered_model
    all_metrics = json.loads(metrics_file.read_text()) if metrics_file and metrics_file.exists() else {}
    metrics = all_metrics.get(params.register_.model_label, {})
    with tempfile.TemporaryDirectory(prefix="srvau-register-") as tmp:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_FILE),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(_package_copy(Path(tmp)))],
            model_config=model_config(params),
            signature=signature(params),
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
