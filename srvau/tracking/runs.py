"""MLflow runs: one run per pipeline run, every stage logging into it.

The Prefect flow opens the run and passes its id to each ``dvc repro <stage>`` subprocess through
``MLFLOW_RUN_ID`` (honoured by ``mlflow.start_run``). A stage run by hand (``srvau sft`` or plain
``dvc repro``) opens a run of its own. Stage metrics are prefixed with the stage name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator

from srvau.config import PROJECT_ROOT, Params

log = logging.getLogger(__name__)

# Leaf names that hold secrets. Whole-name matches for keys/tokens (``max_new_tokens`` and
# ``api_key_env``, the *name* of an env var, are fine to log); substrings for the unambiguous words.
_SECRET_LEAF = re.compile(r"^(api_key|key|token|access_token|auth_token|hf_token|access_key|secret_key)$|secret|password|credential", re.I)


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative sqlite path resolves against the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///") :]
        uri = f"sqlite:///{(PROJECT_ROOT / rel).resolve()}"
    return uri


def configure(params: Params) -> str:
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(params.tracking.experiment) is None:
        # A local sqlite store keeps artifacts in the project (mlruns/); a server decides its own.
        artifacts = (PROJECT_ROOT / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(params.tracking.experiment, artifact_location=artifacts)
    mlflow.set_experiment(params.tracking.experiment)
    return uri


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def safe_params(params: Params) -> dict[str, str]:
    """Params as flat strings, with anything that looks like a credential left out."""
    return {k: str(v)[:500] for k, v in flatten(params.dump()).items() if not _SECRET_LEAF.search(k.rsplit(".", 1)[-1])}


@contextlib.contextmanager
def stage_run(params: Params, stage: str) -> Iterator[Any]:
    """The active MLflow run for a stage: the pipeline's run when ``MLFLOW_RUN_ID`` is set."""
    import mlflow

    configure(params)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"stage-{stage}") as run:
        if not run_id:
            mlflow.set_tag("srvau.stage", stage)
            mlflow.log_params(safe_params(params))
        yield run


def log_stage_metrics(stage: str, metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    flat = {f"{stage}.{k}": float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
    if flat:
        mlflow.log_metrics(flat, step=step)
