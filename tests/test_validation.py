"""The Great Expectations data gate on a real manifest (demo set through the ingest stage) and real RoCoT.

Each planted defect must fail the gate with that defect, and only that defect, named; the clean data
passes. One GX context serves the module (importing GX and building a context costs seconds).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from srvau.cot.builder import build_rocot
from srvau.cot.dataset import load_all
from srvau.validation.gate import Gate, make_context


@pytest.fixture(scope="module")
def context():
    return make_context()


@pytest.fixture(scope="module")
def gate(context, params, tmp_path_factory):
    return Gate(params, tmp_path_factory.mktemp("reports") / "validation", context)


@pytest.fixture(scope="module")
def rocot_dir(tmp_path_factory, params, ingest_dir):
    out = tmp_path_factory.mktemp("rocot")
    build_rocot(ingest_dir / "manifest.parquet", out, params)
    return out


@pytest.fixture(scope="module")
def rocot(rocot_dir) -> pd.DataFrame:
    return load_all(rocot_dir)


def test_clean_data_passes_and_writes_data_docs_and_json(gate, manifest, rocot, ingest_dir):
    result = gate.run(manifest, rocot, ingest_dir)
    assert result.success, result.summary()
    assert result.failures == [] and result.evaluated["manifest"] > 30 and result.evaluated["rocot"] > 30
    verdict = json.loads(result.json_path.read_text())
    assert verdict["success"] is True and verdict["failures"] == []
    assert set(verdict["results"]) == {"manifest", "rocot"}
    assert result.docs_index.is_file()
    pages = sorted(p.relative_to(result.docs_dir).parts[1] for p in (result.docs_dir / "validations").rglob("*.html"))
    assert pages == ["srvau_manifest", "srvau_rocot"]
    assert "srvau_manifest" in result.docs_index.read_text()


def _anomaly_row(df: pd.DataFrame) -> int:
    return int(df.index[df["interval_kind"] == "anomaly"][0])


def _same_split_pair(df: pd.DataFrame) -> tuple[int, int]:
    train = df.index[df["split"] == "train"]
    return int(train[0]), int(train[1])


def _null_id(df):
    df.loc[df.index[0], "video_id"] = None
    return df, None


def _duplicate_id(df):
    a, b = _same_split_pair(df)
    df.loc[b, "video_id"] = df.loc[a, "video_id"]
    return df, df.loc[a, "video_id"]


def _fps(df):
    df.loc[df.index[3], "fps"] = 0.0
    df.loc[df.index[4], "fps"] = -8.0
    return df, df.loc[df.index[3], "video_id"]


def _start_ge_end(df):
    i = _anomaly_row(df)
    df.loc[i, "end_s"] = df.loc[i, "start_s"]
    return df, df.loc[i, "video_id"]


def _past_duration(df):
    i = _anomaly_row(df)
    df.loc[i, "end_s"] = df.loc[i, "duration_s"] + 5.0
    return df, df.loc[i, "video_id"]


def _unknown_class(df):
    df.loc[df.index[2], "anomaly_class"] = "Alien invasion"
    return df, df.loc[df.index[2], "video_id"]


def _bad_letter(df):
    i = int(df.index[df["has_qa"]][0])
    df.loc[i, "correct_option"] = "E"
    return df, df.loc[i, "video_id"]


def _two_splits(df):
    row = df[df["split"] == "test"].iloc[[0]].copy()
    row["split"] = "train"
    return pd.concat([df, row], ignore_index=True), row["video_id"].iloc[0]


def _escaping_path(df):
    df.loc[df.index[1], "path"] = "../../etc/passwd.mp4"
    return df, df.loc[df.index[1], "video_id"]


def _missing_cache(df):
    df.loc[df.index[5], "frames_path"] = "frames/gone.npz"
    return df, df.loc[df.index[5], "video_id"]


MANIFEST_DEFECTS = {
    "null video_id": _null_id,
    "duplicate video_id within a split": _duplicate_id,
    "fps <= 0": _fps,
    "start >= end in an anomaly interval": _start_ge_end,
    "anomaly interval past the video's duration": _past_duration,
    "unknown class": _unknown_class,
    "bad answer letter": _bad_letter,
    "video in more than one split": _two_splits,
    "video path escapes the video root": _escaping_path,
    "frame cache entry missing": _missing_cache,
}


@pytest.mark.parametrize("check", list(MANIFEST_DEFECTS))
def test_each_planted_manifest_defect_fails_with_its_name(gate, manifest, ingest_dir, check):
    bad, culprit = MANIFEST_DEFECTS[check](manifest.copy())
    result = gate.run(bad, None, ingest_dir, docs=False)
    assert not result.success
    assert result.failed_checks == [f"manifest: {check}"], result.summary()
    summary = result.summary()
    assert summary.startswith("data gate FAILED: 1 of") and check in summary
    if culprit is not None:
        assert str(culprit) in summary  # the summary names an offending row
    verdict = json.loads(result.json_path.read_text())
    assert verdict["success"] is False and [f["check"] for f in verdict["failures"]] == [check]


def test_missing_column_is_named_once(gate, manifest, ingest_dir):
    result = gate.run(manifest.drop(columns=["fps"]), None, ingest_dir, docs=False)
    assert result.failed_checks == ["manifest: missing column fps"]
    assert result.hidden and all(f.column == "fps" for f in result.hidden)
    assert "could not run on the missing column" in result.summary()


def test_rocot_well_formed_share_below_threshold_fails(gate, manifest, rocot, ingest_dir, params):
    bad = rocot.copy()
    n = int(np.ceil(len(bad) * (1 - params.validate_.min_well_formed_share))) + 1
    bad.loc[bad.index[:n], "completion"] = bad.loc[bad.index[:n], "completion"].str.replace("</reflection>", "", regex=False)
    result = gate.run(manifest, bad, ingest_dir, docs=False)
    expected = f"rocot: well-formed trace share below {params.validate_.min_well_formed_share:g}"
    assert result.failed_checks == [expected], result.summary()
    share = 1 - n / len(bad)
    assert f"observed {share:.3g}" in result.summary()
    # at the threshold it passes again
    ok = rocot.copy()
    k = int(np.floor(len(ok) * (1 - params.validate_.min_well_formed_share)))
    ok.loc[ok.index[:k], "completion"] = ok.loc[ok.index[:k], "completion"].str.replace("</reflection>", "", regex=False)
    assert gate.run(manifest, ok, ingest_dir, docs=False).success


@pytest.mark.parametrize(
    "check,plant",
    [
        ("bad answer letter", lambda df: df.assign(answer=np.where(df["task"] == "qa", "Z", df["answer"]))),
        ("video in more than one split", lambda df: pd.concat([df, df[df["split"] == "val"].head(1).assign(split="test")])),
    ],
)
def test_rocot_defects_are_named(gate, manifest, rocot, ingest_dir, check, plant):
    result = gate.run(manifest, plant(rocot.copy()), ingest_dir, docs=False)
    assert f"rocot: {check}" in result.failed_checks, result.summary()


def _app():
    from srvau import cli
    from srvau.validation.cli import validate_cmd

    app = typer.Typer()
    app.callback()(cli.main)
    app.command("validate")(validate_cmd)
    return app


def test_cli_exit_codes_and_mlflow(tmp_path, manifest, ingest_dir, rocot_dir):
    import mlflow

    from srvau.config import load_params
    from srvau.tracking.runs import tracking_uri

    runner = CliRunner()
    reports = tmp_path / "validation"
    args = ["--set", "tracking.experiment=test-validate", "validate", "--rocot", str(rocot_dir), "--reports", str(reports)]
    r = runner.invoke(_app(), args + ["--manifest", str(ingest_dir / "manifest.parquet")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["success"] is True
    assert (reports / "gate.json").is_file() and (reports / "data_docs" / "index.html").is_file()

    bad = manifest.copy()
    bad.loc[bad.index[0], "fps"] = 0.0
    bad["frames_path"] = [str(ingest_dir / f) for f in bad["frames_path"]]  # absolute: valid from anywhere
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    r = runner.invoke(_app(), args + ["--manifest", str(tmp_path / "bad.parquet")])
    assert r.exit_code == 1
    assert "data gate FAILED" in r.stderr and "fps <= 0" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["failed"] == ["manifest: fps <= 0"]

    mlflow.set_tracking_uri(tracking_uri(load_params()))
    runs = mlflow.search_runs(experiment_names=["test-validate"], order_by=["start_time ASC"])
    assert list(runs["metrics.validate.success"]) == [1.0, 0.0]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs.iloc[1]["run_id"], "validation")}
    assert {"validation/gate.json", "validation/data_docs"} <= arts

    r = runner.invoke(_app(), ["validate", "--manifest", str(tmp_path / "nope.parquet"), "--no-track"])
    assert r.exit_code == 2 and "not found" in r.stderr
