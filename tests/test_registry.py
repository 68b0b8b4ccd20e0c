"""Model registration and gated promotion in a real MLflow registry (sqlite store)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from srvau.config import load_params
from srvau.tracking.registry import promote, register
from srvau.tracking.runs import stage_run


@pytest.fixture()
def reg_params(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return load_params(overrides={"tracking.registered_model": "srvau-test"})


def _metrics(tmp_path, name, acc):
    p = tmp_path / name
    p.write_text(json.dumps({
        "grpo": {"qa": {"reflect": {"accuracy": acc}}, "grounding": {"reflect": {"r@0.3": 12.5}}},
        "base": {"qa": {"reflect": {"accuracy": 1.0}}},
    }))
    return p


def test_register_promote_and_load_by_alias(tmp_path, reg_params, tiny_model_dir, ingest_dir):
    with stage_run(reg_params, "register"):
        first = register(tiny_model_dir, _metrics(tmp_path, "m1.json", 50.0), reg_params, tmp_path / "r1.json")
    assert first["version"] == "1" and first["promotion"]["version"] == "1"  # no champion yet: promoted
    with stage_run(reg_params, "register"):
        second = register(tiny_model_dir, _metrics(tmp_path, "m2.json", 40.0), reg_params, tmp_path / "r2.json")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("srvau-test", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("srvau-test", "champion").version) == "1"  # worse: not promoted
    assert "worse" in second["promotion"]["reason"]
    # metrics of the registered model (not the base model's) are version tags
    tags = client.get_model_version("srvau-test", "2").tags
    assert tags["metric.qa.reflect.accuracy"] == "40.0"
    assert tags["metric.grounding.reflect.r_at_0.3"] == "12.5"  # '@' is not allowed in tag names
    with pytest.raises(ValueError, match="worse"):
        promote(reg_params, version="2")
    assert promote(reg_params, version="2", force=True)["previous"] == "1"
    assert str(client.get_model_version_by_alias("srvau-test", "champion").version) == "2"

    manifest = pd.read_parquet(ingest_dir / "manifest.parquet")
    frames = str(ingest_dir / manifest.iloc[0]["frames_path"])
    model = mlflow.pyfunc.load_model("models:/srvau-test@champion")
    out = model.predict(pd.DataFrame([{"frames_path": frames, "prompt": "What happens?"}]), params={"max_new_tokens": 5})
    assert len(out) == 1 and isinstance(out[0], str)


def test_register_rejects_a_non_checkpoint(tmp_path, reg_params):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a safetensors checkpoint"):
        register(tmp_path / "empty", None, reg_params, tmp_path / "r.json")
