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
from srvau.validation.gate import Gate, make_context, read_annotations, run_gate


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


def test_clean_data_passes_and_writes_data_docs_and_json(gate, manifest, rocot, ingest_dir, demo_dir, params):
    annotations = read_annotations(params.model_copy(update={"ingest": params.ingest.model_copy(
        update={"annotations": [str(p) for p in sorted(demo_dir.glob("*.csv"))]})}))
    result = gate.run(manifest, rocot, ingest_dir, annotations=annotations)
    assert result.success, result.summary()
    assert result.failures == [] and result.evaluated["manifest"] > 30 and result.evaluated["rocot"] > 30
    verdict = json.loads(result.json_path.read_text())
    assert verdict["success"] is True and verdict["failures"] == []
    assert set(verdict["results"]) == {"manifest", "rocot", "splits", "annotations"}
    assert result.docs_index.is_file()
    pages = sorted(p.relative_to(result.docs_dir).parts[1] for p in (result.docs_dir / "validations").rglob("*.html"))
    assert pages == ["srvau_annotations", "srvau_manifest", "srvau_rocot", "srvau_splits"]
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
    from srvau.cli.app import main
    from srvau.cli.validate import validate_cmd

    app = typer.Typer()
    app.callback()(main)
    app.command("validate")(validate_cmd)
    return app


def test_cli_exit_codes_and_mlflow(tmp_path, manifest, ingest_dir, rocot_dir, demo_dir):
    import mlflow

    from srvau.config import load_params
    from srvau.tracking.runs import tracking_uri

    runner = CliRunner()
    reports = tmp_path / "validation"
    csvs = "[" + ", ".join(str(p) for p in sorted(demo_dir.glob("*.csv"))) + "]"
    args = ["--set", "tracking.experiment=test-validate", "--set", f"ingest.annotations={csvs}",
            "validate", "--rocot", str(rocot_dir), "--reports", str(reports)]
    r = runner.invoke(_app(), args + ["--manifest", str(ingest_dir / "manifest.parquet")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["success"] is True
    assert (reports / "gate.json").is_file() and (reports / "data_docs" / "index.html").is_file()

    bad = manifest.copy()
    bad.loc[bad.index[0], "fps"] = 0.0
    bad["frames_path"] = [str(ingest_dir / f) for f in bad["frames_path"]]  # absolute: valid from anywhere
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    (tmp_path / "quarantine.jsonl").write_bytes((ingest_dir / "quarantine.jsonl").read_bytes())  # ingest's, beside it
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


# ----------------------------------------------------------------------------- splits and annotation CSVs
# Hand-written VAU-Bench-format CSVs over the demo's videos, through the real ingest stage and run_gate:
# the paper rehearsal's three defects (a train split without anomaly intervals, splits mostly quarantined,
# a video in two splits whose file is absent), which the manifest suite alone passed.

VAU_HEADER = ["Video Name", "Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option",
              "Key Object", "Description", "Reasoning", "Anomaly Class", "Start Time", "End Time"]


def _write_csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(VAU_HEADER)
        for name, cls, start, end in rows:
            w.writerow([name, "", "", "", "", "", "", "", "", "", cls, start, end])
    return path


def _demo_names(demo_dir, split):
    import csv

    with open(demo_dir / f"{split}.csv", newline="") as f:
        return [r["Video Name"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, demo_dir, context):
    """Ingest + gate on CSVs carrying the rehearsal's defects; returns the gate's result."""
    from srvau.config import load_params
    from srvau.data.ingest import ingest

    d = tmp_path_factory.mktemp("rehearsal")
    train, val, test = (_demo_names(demo_dir, s) for s in ("train", "val", "test"))
    csvs = [
        # 5 videos with Normal or unavailable intervals; the one anomaly interval has no video (quarantined)
        _write_csv(d / "train.csv", [(n, "Normal" if i % 2 else "", 0 if i % 2 else -1, 0 if i % 2 else -1)
                                     for i, n in enumerate(train[:5])] + [("ucf_Gone001.mp4", "Fighting", 2, 5)]),
        # two ECVA videos listed in val AND test, neither file present: only the CSVs show the leak
        _write_csv(d / "val.csv", [(val[0], "Fire", 1, 3), ("ecva_1953.mp4", "Fighting", 2, 6),
                                   ("ecva_1955.mp4", "Fighting", 1, 4)]),
        _write_csv(d / "test_ecva.csv", [(n, "Fire", 1, 3) for n in test[:4]]
                   + [("1953.mp4", "Fighting", 2, 6), ("1955.mp4", "Fighting", 1, 4)]),
    ]
    p = load_params(overrides={"ingest.annotations": [str(c) for c in csvs], "ingest.dataset": "auto"})
    res = ingest(csvs, demo_dir / "videos", d / "ingest", p)
    assert not res.failed, res.failure
    return run_gate(res.manifest_path, None, d / "reports", p, context), p, res.manifest_path


def test_train_split_without_anomaly_intervals_fails_the_gate(rehearsal):
    result, p, _ = rehearsal
    check = f"splits: train grounding has fewer than {p.validate_.min_train_anomaly_intervals} anomaly intervals"
    assert check in result.failed_checks, result.summary()
    line = next(f.line() for f in result.failures if f"{f.suite}: {f.check}" == check)
    assert "grounding_anomaly_intervals=0" in line and "train.csv" in line and "ingest.annotations" in line


def test_split_mostly_quarantined_fails_the_gate(rehearsal):
    result, p, _ = rehearsal
    check = f"splits: quarantined share of a split above {p.validate_.max_quarantine_share:g}"
    assert check in result.failed_checks, result.summary()
    line = next(f.line() for f in result.failures if f"{f.suite}: {f.check}" == check)
    assert "val (quarantine_share=0.667)" in line and "quarantine.jsonl" in line
    assert "train (" not in line  # 1 of 6 train rows quarantined: under the ceiling


def test_video_in_two_splits_fails_even_without_its_file(rehearsal):
    result, _, _ = rehearsal
    check = "annotations: video in more than one split of the annotation CSVs"
    assert check in result.failed_checks, result.summary()
    line = next(f.line() for f in result.failures if f"{f.suite}: {f.check}" == check)
    assert "ecva/1953" in line and "ecva/1955" in line
    assert "delete its row from the other split" in line
    assert "manifest: video in more than one split" not in result.failed_checks  # the manifest never saw it


def test_thresholds_come_from_params(rehearsal, demo_dir, context, tmp_path):
    """At a floor of 0 intervals and a ceiling of 100% the two split checks pass on the same data."""
    from srvau.config import load_params

    _, p, manifest_path = rehearsal
    relaxed = load_params(overrides={"ingest.annotations": p.ingest.annotations,
                                     "validate.min_train_anomaly_intervals": 0, "validate.max_quarantine_share": 1.0})
    result = run_gate(manifest_path, None, tmp_path / "reports", relaxed, context)
    assert [c for c in result.failed_checks if c.startswith("splits")] == [], result.summary()
    assert result.failed_checks == ["annotations: video in more than one split of the annotation CSVs"]


def test_missing_quarantine_file_is_an_input_error(tmp_path, manifest, params, context):
    from srvau.validation.gate import GateInputError

    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    with pytest.raises(GateInputError, match="quarantine.jsonl not found"):
        run_gate(tmp_path / "manifest.parquet", None, tmp_path / "reports", params, context)


def test_a_row_repeating_a_kept_video_is_not_counted_as_lost():
    """VAU-Bench's val.csv repeats every row of ucf_subset_val.csv: ingest quarantines the repeats, but no data
    is missing, so they must not push the split over validate.max_quarantine_share."""
    import pandas as pd

    from srvau.validation.suites import split_summary

    manifest = pd.DataFrame({"split": ["val"] * 3, "start_s": [0.0] * 3, "end_s": [0.0] * 3, "interval_kind": ["normal"] * 3})
    repeats = [{"split": "val", "why": "duplicate_video_id"}] * 3
    missing = [{"split": "val", "why": "missing"}]
    summary = split_summary(manifest, repeats + missing).set_index("split")
    assert summary.loc["val", "quarantined_rows"] == 1 and summary.loc["val", "quarantine_share"] == 0.25
