"""Model registration, gated promotion and the registered model itself, in a real MLflow registry (sqlite).

A registry version points at the MLflow logged model of its checkpoint: the one the training stage's run
logged (found by the checkpoint's digest) with the evaluation metrics logged against it, or, when no
training run logged it, one the register stage logs itself. Promotion reads the gate metric from the
logged models, not from version tags.

The registered model is checked against the evaluation: loaded by alias, it must answer a demo video
with exactly the text the evaluate stage stored for that model, prompt and style; and (slow) it must do
so from a fresh virtualenv holding only its declared requirements, outside this checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest

from srvau.config import load_params
from srvau.io import read_jsonl
from srvau.tracking import runs
from srvau.tracking.model_metrics import (
    DATASET_FILE,
    dataset_record,
    evaluation_dataset,
    gate_dataset,
    log_evaluation_to_models,
    pipeline_dataset,
)
from srvau.tracking.models import TAG_DIGEST, checkpoint_digest, log_stage_model, model_id_of_version
from srvau.tracking.registry import promote, register
from srvau.tracking.runs import stage_run, tracking_uri
from srvau.tracking.summary import registry_decision


def _isolate(params, tmp: Path) -> None:
    """Create the run's experiment with its artifacts under ``tmp`` (not the project's mlruns/)."""
    mlflow.set_tracking_uri(tracking_uri(params))
    if mlflow.get_experiment_by_name(params.tracking.experiment) is None:
        mlflow.create_experiment(params.tracking.experiment, artifact_location=(tmp / "artifacts").as_uri())


@pytest.fixture()
def reg_params(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv(runs.ENV_PARENT, raising=False)
    p = load_params(overrides={"tracking.registered_model": "srvau-test"})
    _isolate(p, tmp_path)
    return p


def _metrics(tmp_path, name, acc):
    p = tmp_path / name
    p.write_text(json.dumps({
        "grpo": {
            "qa": {"reflect": {"n": 10, "accuracy": acc, "accuracy_ci95": [20.0, 70.0]}, "think": {"accuracy": 20.0}},
            "grounding": {"reflect": {"miou": 30.0, "r@0.3": 12.5}},
            "classification": {"reflect": {"multi_acc": 40.0, "binary_acc": 90.0}},
        },
        "base": {"qa": {"reflect": {"accuracy": 1.0}}},
    }))
    return p


# The grpo model's metrics a logged model carries: the main metric of each task and style, not the rest.
HEADLINE = {"evaluate.grpo.qa.reflect.accuracy", "evaluate.grpo.qa.think.accuracy",
            "evaluate.grpo.grounding.reflect.miou", "evaluate.grpo.classification.reflect.multi_acc"}


def _variant(tiny_model_dir: Path, tmp_path: Path, n: int) -> Path:
    """The tiny checkpoint with other bytes (so another digest), loadable the same way."""
    dest = tmp_path / f"checkpoint-{n}"
    shutil.copytree(tiny_model_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["srvau_test_variant"] = n
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def _model_metrics(model) -> dict[str, float]:
    return {m.key: m.value for m in model.metrics if m.key.startswith("evaluate.")}


def test_register_registers_the_logged_model_of_the_training_run(tmp_path, reg_params, tiny_model_dir, monkeypatch):
    """The lineage a pipeline run leaves: grpo's run logs the checkpoint as a model, evaluate logs the
    headline metrics against it (found by digest), register registers that very model (no second copy);
    the version carries no metric or path tags, and promotion reads the gate from the model's metrics."""
    ckpt = _variant(tiny_model_dir, tmp_path, 1)
    client = mlflow.MlflowClient()
    exp_id = mlflow.get_experiment_by_name(reg_params.tracking.experiment).experiment_id
    parent = client.create_run(exp_id, run_name="pipeline").info.run_id
    monkeypatch.setenv(runs.ENV_PARENT, parent)
    with stage_run(reg_params, "grpo") as grpo_run:
        runs.log_stage_metrics("grpo", {"reward": 0.5})
        model_id = log_stage_model(ckpt, reg_params, "grpo")
    assert model_id
    metrics_file = _metrics(tmp_path, "metrics.json", 50.0)
    with stage_run(reg_params, "evaluate") as eval_run:
        linked = log_evaluation_to_models({"grpo": str(ckpt), "base": "Qwen/Qwen2.5-VL-3B-Instruct"},
                                          json.loads(metrics_file.read_text()), reg_params, pipeline_dataset(reg_params))
    assert linked == {"grpo": model_id}
    with stage_run(reg_params, "register"):
        result = register(ckpt, metrics_file, reg_params, tmp_path / "registry.json")

    assert result["model_id"] == model_id and result["model_origin"] == f"logged by run {grpo_run.info.run_id}"
    version = client.get_model_version("srvau-test", result["version"])
    assert model_id_of_version(version) == model_id and version.source == f"models:/{model_id}"
    assert not [k for k in version.tags if k.startswith("metric.") or k == "source_checkpoint"]
    model = mlflow.get_logged_model(model_id)
    assert model.source_run_id == grpo_run.info.run_id and model.name == "grpo"
    assert model.tags[TAG_DIGEST] == checkpoint_digest(ckpt) == result["checkpoint_sha256"]
    assert model.params["grpo.max_steps"] == str(reg_params.grpo.max_steps)
    assert _model_metrics(model) == {
        "evaluate.grpo.qa.reflect.accuracy": 50.0, "evaluate.grpo.qa.think.accuracy": 20.0,
        "evaluate.grpo.grounding.reflect.miou": 30.0, "evaluate.grpo.classification.reflect.multi_acc": 40.0}
    assert {m.run_id for m in model.metrics if m.key in HEADLINE} == {eval_run.info.run_id}
    assert model.metrics and len(model.metrics) < 20
    assert len(mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list")) == 1  # no second copy
    assert result["promotion"] == {**result["promotion"], "promoted": True, "value": 50.0, "reason": "no @champion before"}
    assert json.loads((tmp_path / "registry.json").read_text()) == result
    client.set_terminated(parent)


def test_register_logs_the_checkpoint_when_no_training_run_did(tmp_path, reg_params, tiny_model_dir, caplog):
    """Training ran without tracking (or elsewhere): register logs the checkpoint itself, with the
    evaluation's metrics, and says so; a worse second model stays @challenger."""
    first_ckpt, second_ckpt = _variant(tiny_model_dir, tmp_path, 1), _variant(tiny_model_dir, tmp_path, 2)
    with caplog.at_level("WARNING"), stage_run(reg_params, "register") as run:
        first = register(first_ckpt, _metrics(tmp_path, "m1.json", 50.0), reg_params, tmp_path / "r1.json")
    assert "no MLflow logged model has the digest" in caplog.text
    assert first["version"] == "1" and first["promotion"]["version"] == "1"  # no champion yet: promoted
    assert first["model_origin"].startswith("logged by register")
    model = mlflow.get_logged_model(first["model_id"])
    assert model.source_run_id == run.info.run_id and _model_metrics(model).keys() == HEADLINE
    with stage_run(reg_params, "register"):
        second = register(second_ckpt, _metrics(tmp_path, "m2.json", 40.0), reg_params, tmp_path / "r2.json")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("srvau-test", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("srvau-test", "champion").version) == "1"  # worse: not promoted
    assert second["promotion"]["promoted"] is False and "worse" in second["promotion"]["reason"]
    decision = registry_decision(second)  # what the flow's Prefect artifact says
    assert "version **2**" in decision and "`@champion` did **not** move: version 2 qa.reflect.accuracy=40 is worse" in decision
    assert model_id_of_version(client.get_model_version("srvau-test", "2")) == second["model_id"] != first["model_id"]
    with pytest.raises(ValueError, match="worse"):
        promote(reg_params, version="2")
    forced = promote(reg_params, version="2", force=True)
    assert forced["previous"] == "1" and forced["reason"] == "forced"
    assert str(client.get_model_version_by_alias("srvau-test", "champion").version) == "2"


def _champion_and_pool(tmp_path, reg_params, tiny_model_dir):
    """A first model registered (and promoted) at 50 on test, a second checkpoint, and a val pool's
    manifest (another file than the project's)."""
    first_ckpt, second_ckpt = _variant(tiny_model_dir, tmp_path, 1), _variant(tiny_model_dir, tmp_path, 2)
    with stage_run(reg_params, "register"):
        first = register(first_ckpt, _metrics(tmp_path, "m1.json", 50.0), reg_params, tmp_path / "r1.json")
    assert first["promotion"]["promoted"]
    pool = tmp_path / "pool" / "manifest.parquet"
    pool.parent.mkdir()
    pool.write_bytes(b"another manifest")
    return first, first_ckpt, second_ckpt, pool


def test_the_gate_reads_the_test_split_not_the_last_evaluation(tmp_path, reg_params, tiny_model_dir):
    """A champion later evaluated on a val pool (another manifest, another split) keeps its test number
    for the gate: a challenger better on test is promoted, and the pool's number stays on the model,
    on its own dataset."""
    first, first_ckpt, second_ckpt, pool = _champion_and_pool(tmp_path, reg_params, tiny_model_dir)
    pool_metrics = json.loads(_metrics(tmp_path, "pool.json", 90.0).read_text())
    with stage_run(reg_params, "evaluate"):  # `srvau evaluate --manifest POOL --set evaluate.split=val`
        linked = log_evaluation_to_models({"grpo": str(first_ckpt)}, pool_metrics, reg_params, evaluation_dataset(pool, "val"))
    assert linked == {"grpo": first["model_id"]}
    gate = {m.dataset_name: m.value for m in mlflow.get_logged_model(first["model_id"]).metrics
            if m.key == "evaluate.grpo.qa.reflect.accuracy"}
    assert gate == {gate_dataset(reg_params): 50.0, f"{pool}:val": 90.0}
    assert gate_dataset(reg_params) == "data/ingest/manifest.parquet:test"

    with stage_run(reg_params, "register"):
        second = register(second_ckpt, _metrics(tmp_path, "m2.json", 70.0), reg_params, tmp_path / "r2.json")
    assert second["promotion"]["promoted"], second["promotion"]  # 70 on test beats 50 on test (not 90 on the pool)
    assert (second["promotion"]["value"], second["promotion"]["previous_value"]) == (70.0, 50.0)


def test_register_logs_a_metrics_file_on_the_data_it_was_measured_on(tmp_path, reg_params, tiny_model_dir, caplog):
    """`srvau register --metrics FILE` with the metrics of a val-pool evaluation (its dataset.json beside
    it, as the evaluate stage writes): the numbers go on the pool's dataset, not the gate's, so a
    challenger that is better only on the pool does not replace the champion."""
    first, _, second_ckpt, pool = _champion_and_pool(tmp_path, reg_params, tiny_model_dir)
    pool_eval = tmp_path / "pool-eval"
    pool_eval.mkdir()
    pool_metrics = _metrics(pool_eval, "metrics.json", 90.0)
    (pool_eval / DATASET_FILE).write_text(json.dumps(dataset_record(pool, "val")))

    with caplog.at_level("WARNING"), stage_run(reg_params, "register"):
        second = register(second_ckpt, pool_metrics, reg_params, tmp_path / "r2.json")
    gate = {m.dataset_name: (m.value, m.dataset_digest) for m in mlflow.get_logged_model(second["model_id"]).metrics
            if m.key == "evaluate.grpo.qa.reflect.accuracy"}
    assert gate == {f"{pool}:val": (90.0, dataset_record(pool, "val")["digest"])}
    assert f"the promotion gate reads {gate_dataset(reg_params)}" in caplog.text
    assert second["promotion"]["promoted"] is False and "has no qa.reflect.accuracy metric" in second["promotion"]["reason"]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("srvau-test", "champion").version) == first["version"]

    # A record that is not evaluate's stops register before anything is logged or registered.
    (pool_eval / DATASET_FILE).write_text(json.dumps({"name": "x"}))
    exp_ids = [mlflow.get_experiment_by_name(reg_params.tracking.experiment).experiment_id]
    logged = len(mlflow.search_logged_models(experiment_ids=exp_ids, output_format="list"))
    with stage_run(reg_params, "register"), pytest.raises(ValueError, match="lacks digest, manifest"):
        register(_variant(tiny_model_dir, tmp_path, 3), pool_metrics, reg_params, tmp_path / "r3.json")
    assert len(mlflow.search_logged_models(experiment_ids=exp_ids, output_format="list")) == logged
    assert len(client.search_model_versions("name='srvau-test'")) == 2


def test_a_model_not_above_the_video_blind_prior_is_not_promoted(tmp_path, reg_params, tiny_model_dir, caplog):
    """The first model of a registry would become @champion unopposed; at chance on the gate metric (the
    prior's 25.0) it stays @challenger. Above the prior, or with register.beat_prior off, it is promoted."""
    def with_prior(name, acc, prior):
        path = _metrics(tmp_path, name, acc)
        data = json.loads(path.read_text())
        path.write_text(json.dumps({"prior": {"qa": {"reflect": {"n": 10, "accuracy": prior}}}, **data}))
        return path

    with caplog.at_level("WARNING"), stage_run(reg_params, "register"):
        first = register(_variant(tiny_model_dir, tmp_path, 1), with_prior("m1.json", 25.0, 25.0), reg_params, tmp_path / "r1.json")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("srvau-test", "challenger").version) == first["version"] == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("srvau-test", "champion")
    assert first["promotion"]["promoted"] is False
    assert "grpo qa.reflect.accuracy=25 is not above the video-blind prior's 25" in first["promotion"]["reason"]
    assert "not above the video-blind prior" in caplog.text
    assert "`@champion` did **not** move: grpo qa.reflect.accuracy=25 is not above" in registry_decision(first)
    with stage_run(reg_params, "register"):
        second = register(_variant(tiny_model_dir, tmp_path, 2), with_prior("m2.json", 25.5, 25.0), reg_params, tmp_path / "r2.json")
    assert second["promotion"]["promoted"] is True
    off = reg_params.model_copy(update={"register_": reg_params.register_.model_copy(update={"beat_prior": False})})
    with stage_run(off, "register"):
        third = register(_variant(tiny_model_dir, tmp_path, 3), with_prior("m3.json", 30.0, 40.0), off, tmp_path / "r3.json")
    assert third["promotion"]["promoted"] is True  # the prior gate off: only the champion comparison


def test_a_registered_model_loads_by_alias_and_answers(tmp_path, reg_params, tiny_model_dir, ingest_dir):
    with stage_run(reg_params, "register"):
        register(tiny_model_dir, _metrics(tmp_path, "m1.json", 50.0), reg_params, tmp_path / "r1.json")
    manifest = pd.read_parquet(ingest_dir / "manifest.parquet")
    frames = str(ingest_dir / manifest.iloc[0]["frames_path"])
    model = mlflow.pyfunc.load_model("models:/srvau-test@champion")
    out = model.predict(pd.DataFrame([{"frames_path": frames, "prompt": "What happens?"}]), params={"max_new_tokens": 5})
    assert len(out) == 1 and isinstance(out[0], str)


def test_register_rejects_a_non_checkpoint(tmp_path, reg_params):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a safetensors checkpoint"):
        register(tmp_path / "empty", None, reg_params, tmp_path / "r.json")


# ----------------------------------------------------------------------------- the registered model


@pytest.fixture(scope="module")
def champion(tmp_path_factory, ingest_dir, tiny_model_dir):
    """A small evaluation of the tiny model (the evaluate stage), then that model registered as @champion."""
    from srvau.evaluation.stage import evaluate

    tmp = tmp_path_factory.mktemp("champion")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv(runs.ENV_PARENT, raising=False)
        p = load_params(overrides={
            "tracking.registered_model": "srvau-champ", "tracking.experiment": "registry-champion",
            "evaluate.limit": 2, "evaluate.tasks": ["qa", "grounding"], "evaluate.styles": ["reflect", "think"],
            "evaluate.max_new_tokens": 12, "evaluate.batch_size": 4, "register.model_label": "grpo",
            "register.beat_prior": False,  # the untrained tiny model is not above the prior: promote it anyway
        })
        _isolate(p, tmp)
        evaluate(ingest_dir / "manifest.parquet", {"grpo": str(tiny_model_dir)}, tmp / "eval", p)
        with stage_run(p, "register"):
            result = register(tiny_model_dir, tmp / "eval" / "metrics.json", p, tmp / "registry.json")
        assert str(mlflow.MlflowClient().get_model_version_by_alias("srvau-champ", "champion").version) == result["version"]
        records = read_jsonl(tmp / "eval" / "predictions" / "grpo.jsonl")
        m = pd.read_parquet(ingest_dir / "manifest.parquet")
        rows = {r["video_id"]: r for r in m.to_dict("records")}
        videos = {v: str(Path(r["source_csv"]).parent / "videos" / r["video_name"]) for v, r in rows.items()}
        frames = {v: str(ingest_dir / r["frames_path"]) for v, r in rows.items()}
        yield SimpleNamespace(params=p, tmp=tmp, uri=tracking_uri(p), records=records, videos=videos, frames=frames,
                              model=mlflow.pyfunc.load_model("models:/srvau-champ@champion"))


def _questions(champion, style: str, source: str = "video_path") -> tuple[pd.DataFrame, list[str]]:
    recs = [r for r in champion.records if r["style"] == style]
    paths = champion.videos if source == "video_path" else champion.frames
    df = pd.DataFrame([{"prompt": r["prompt"], "task": r["task"], source: paths[r["video_id"]]} for r in recs])
    return df, [r["output"] for r in recs]


def test_champion_answers_like_the_evaluation(champion):
    """Loaded by alias, given the mp4 (sampled like ingest) or the cached clip, with only the style as a
    param (no system column): exactly the evaluation's stored text, for every prompt and style."""
    assert {r["style"] for r in champion.records} == {"reflect", "think"} and len(champion.records) >= 4
    for style in ("reflect", "think"):
        videos, expected = _questions(champion, style)
        # reflect is the default style, and the evaluation's max_new_tokens the default budget
        assert champion.model.predict(videos, params=None if style == "reflect" else {"style": style}) == expected
        frames, _ = _questions(champion, style, "frames_path")
        assert champion.model.predict(frames, params={"style": style, "max_new_tokens": 12}) == expected


def test_registered_model_is_code_not_pickle_with_its_requirements(champion):
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts("models:/srvau-champ@champion", dst_path=str(champion.tmp / "dl")))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
    assert "code/srvau/modeling/generation.py" in files and not [f for f in files if "__pycache__" in f]
    reqs = (local / "requirements.txt").read_text()
    for pkg in ("torch==", "transformers==", "decord==", "av==", "pydantic==", "mlflow=="):
        assert pkg in reqs
    for heavy in ("prefect", "dvc", "trl", "great-expectations"):  # the training stack stays behind
        assert heavy not in reqs
    sig = Model.load(local).signature
    assert {p.name: p.default for p in sig.params.params} == {"max_new_tokens": 12, "style": "reflect"}


def test_registered_model_params_and_bad_inputs(champion, demo_dir):
    model = champion.model
    vid = next(iter(champion.videos.values()))
    q = pd.DataFrame([{"prompt": "What happens in the video?", "video_path": vid}])
    short, = model.predict(q, params={"max_new_tokens": 3})
    long, = model.predict(q, params={"max_new_tokens": 12})
    assert short and long != short and long.startswith(short)  # greedy: the short answer is a prefix

    with pytest.raises(ValueError, match="unknown style 'poem'"):
        model.predict(q, params={"style": "poem"})
    with pytest.raises(FileNotFoundError, match="video_path .*missing.mp4 not found"):
        model.predict(pd.DataFrame([{"prompt": "x", "video_path": str(demo_dir / "missing.mp4")}]))
    with pytest.raises(ValueError, match="is not a frame-cache entry"):
        model.predict(pd.DataFrame([{"prompt": "x", "frames_path": vid}]))  # an mp4 where frames are expected
    with pytest.raises(ValueError, match="exactly one of 'video_path'"):
        model.predict(pd.DataFrame([{"prompt": "x", "video_path": vid, "frames_path": champion.frames[next(iter(champion.frames))]}]))
    with pytest.raises(ValueError, match="unknown task 'poem'"):
        model.predict(pd.DataFrame([{"prompt": "x", "video_path": vid, "task": "poem"}]))
    not_video = champion.tmp / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(ValueError, match="not a usable video"):
        model.predict(pd.DataFrame([{"prompt": "x", "video_path": str(not_video)}]))


@pytest.mark.slow
def test_champion_travels_to_a_fresh_virtualenv(champion, tmp_path):
    """A new virtualenv (no system site-packages) with only the model's declared requirements loads
    models:/NAME@champion from another folder, without srvau installed or on the path, and answers
    exactly as the evaluation did."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    reqs = mlflow.pyfunc.get_model_dependencies("models:/srvau-champ@champion")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", reqs], check=True, timeout=1500)

    videos, expected = _questions(champion, "reflect")
    videos.to_json(tmp_path / "questions.json", orient="records")
    (tmp_path / "load.py").write_text(textwrap.dedent("""
        import importlib.util, json, sys
        import mlflow, pandas as pd
        assert importlib.util.find_spec("srvau") is None, "srvau must not be installed here"
        model = mlflow.pyfunc.load_model("models:/srvau-champ@champion")
        import srvau
        out = model.predict(pd.read_json("questions.json", orient="records"), params={"style": "reflect"})
        print("RESULT " + json.dumps({"outputs": out, "srvau": srvau.__file__, "path": sys.path}))
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["MLFLOW_TRACKING_URI"] = champion.uri
    proc = subprocess.run([str(py), "load.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))
    checkout = str(Path(__file__).resolve().parents[2])
    assert not result["srvau"].startswith(checkout) and "/code/srvau/" in result["srvau"]
    assert not any(p.startswith(checkout) for p in result["path"])
    assert result["outputs"] == expected
