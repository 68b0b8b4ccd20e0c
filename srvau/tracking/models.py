"""Checkpoints as MLflow logged models: logged once by the stage that trains them, found again by content.

``srvau sft`` and ``srvau grpo`` log their merged checkpoint as an MLflow logged model in the stage's
run (:func:`log_stage_model`): the pyfunc of ``pyfunc_model.py`` (models-from-code, the ``srvau``
package as code, only the runtime requirements, so it loads without this checkout), the stage's params,
and the tag ``srvau.checkpoint_sha256`` (:func:`checkpoint_digest`). Later stages find the model by that
digest, with no state file between stages: ``srvau evaluate`` logs each evaluated model's headline
metrics against it (srvau.tracking.model_metrics) and ``srvau register`` registers it. The model's
page then shows its training run (``source_run_id``), its params and the evaluation metrics, each with
the run that computed it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from srvau.config import Params
from srvau.tracking.runs import stage_params, track_call

log = logging.getLogger(__name__)

TAG_DIGEST = "srvau.checkpoint_sha256"
TAG_STAGE = "srvau.stage"  # the stage that logged the model

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")  # models-from-code: logged as source, never pickled
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # srvau/, shipped with the model as code_paths

# What the logged model imports when it loads and answers (srvau.modeling, srvau.video, srvau.contract,
# srvau.config): a loader installs these, not the whole training stack.
RUNTIME_PACKAGES = ("mlflow", "torch", "torchvision", "transformers", "accelerate", "tokenizers", "safetensors",
                    "numpy", "pandas", "av", "decord", "pillow", "pydantic", "pyyaml")


# ----------------------------------------------------------------------------- checkpoints


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def checkpoint_digest(path: str | Path) -> str:
    """sha256 over the checkpoint's weights and config (``*.safetensors`` + ``config.json``, by name):
    the same bytes give the same digest wherever the folder lives."""
    from srvau.io import sha256_file

    path = Path(path)
    h = hashlib.sha256()
    for f in sorted([path / "config.json", *path.glob("*.safetensors")]):
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- logging a checkpoint


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in RUNTIME_PACKAGES]


def model_config(params: Params) -> dict[str, Any]:
    """What the logged model needs to answer as it was evaluated (``context.model_config``)."""
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


def log_checkpoint(checkpoint: Path, params: Params, stage: str, digest: str | None = None) -> str:
    """Log ``checkpoint`` as a logged model named ``stage`` in the active run; returns its model id.
    Raises on any error (:func:`log_stage_model` is the never-raising form)."""
    import mlflow

    if not is_checkpoint(checkpoint):
        raise FileNotFoundError(f"{checkpoint} is not a safetensors checkpoint (config.json + *.safetensors)")
    digest = digest or checkpoint_digest(checkpoint)
    with tempfile.TemporaryDirectory(prefix="srvau-model-") as tmp:
        info = mlflow.pyfunc.log_model(
            name=stage,
            python_model=str(PYFUNC_FILE),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(_package_copy(Path(tmp)))],
            model_config=model_config(params),
            signature=signature(params),
            pip_requirements=_requirements(),  # explicit: inferring them costs ~5 s and records noise
            params=stage_params(params, stage),
            tags={TAG_DIGEST: digest, TAG_STAGE: stage},
        )
    return info.model_id


def log_stage_model(checkpoint: str | Path, params: Params, stage: str) -> str | None:
    """The training stage's checkpoint as a logged model of its run (the never-raising form of
    :func:`log_checkpoint`): the model id, or None without a run, a checkpoint or working tracking."""
    checkpoint = Path(checkpoint)
    if not is_checkpoint(checkpoint):
        log.warning("%s holds no safetensors checkpoint: no logged model for stage %s", checkpoint, stage)
        return None
    t0 = time.monotonic()
    model_id = track_call("model", lambda: log_checkpoint(checkpoint, params, stage),
                          checkpoint=str(checkpoint), stage=stage)
    if model_id:
        log.info("logged %s as MLflow model %s (%.1f s)", checkpoint, model_id, time.monotonic() - t0)
    return model_id


# ----------------------------------------------------------------------------- finding it again


def find_logged_model(digest: str, params: Params, stage: str | None = None) -> Any:
    """The newest logged model of the experiment tagged with ``digest`` (preferring one ``stage`` logged:
    a GRPO run that left the weights unchanged has SFT's digest), or None. Raises on tracking errors
    (callers decide whether that may stop them)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(params.tracking.experiment)
    if exp is None:
        return None
    found = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], filter_string=f"tags.`{TAG_DIGEST}` = '{digest}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], max_results=50, output_format="list")
    return next((m for m in found if m.tags.get(TAG_STAGE) == stage), found[0] if found else None)


def model_id_of_version(version: Any) -> str | None:
    """The logged model a registry version was made from (the sqlite registry keeps it only in
    ``source``: ``models:/<model_id>``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = str(getattr(version, "source", "") or "")
    rest = source[len("models:/"):] if source.startswith("models:/") else ""
    return rest if rest.startswith("m-") and "/" not in rest else None


def model_metric(model: Any, metric: str, dataset: str | None = None) -> float | None:
    """The latest value of ``metric`` on a logged model: the key itself or any key ending in
    ``.<metric>`` (evaluation metrics are keyed ``evaluate.<label>.<metric>``). With ``dataset``, only
    values measured on that dataset (srvau.tracking.model_metrics.dataset_name) count; values logged
    with no dataset (by versions before datasets were recorded) stand in when it has none."""
    hits = [m for m in (model.metrics or []) if m.key == metric or m.key.endswith("." + metric)]
    if dataset is not None:
        hits = [m for m in hits if m.dataset_name == dataset] or [m for m in hits if not m.dataset_name]
    return float(max(hits, key=lambda m: m.timestamp).value) if hits else None
