"""VAU-Bench CSV importer: the real annotation files, counted independently, and every quirk by hand."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from srvau.contract.vocab import CLASSES
from srvau.cli.data import import_vau_bench
from srvau.data.vau_bench import (
    ANNOTATION_COLUMNS,
    VAU_COLUMNS,
    VauBenchFormatError,
    make_video_id,
    read_vau_bench,
)

REAL = Path("/work/shared/data/vau-bench")
SUMMARY_KEYS = {"rows", "qa_rows", "interval_kinds", "options_normalised", "classes", "rejected"}

# Counted by hand once (csv module + a spreadsheet-style tally); the files are fixed by sha256 in
# the README next to them. (rows, anomaly, normal, unavailable)
KNOWN = {
    "val.csv": (734, 339, 214, 181),
    "ucf_subset_train.csv": (1194, 0, 588, 606),
    "ucf_subset_val.csv": (299, 0, 147, 152),
}

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real VAU-Bench CSVs not on this machine")


def _independent_counts(path: Path) -> dict:
    """The importer's summary recomputed with the csv module alone."""
    with open(path, newline="", encoding="utf-8") as f:
        recs = list(csv.DictReader(f))
    kinds = Counter()
    for r in recs:
        s, e = float(r["Start Time"]), float(r["End Time"])
        kinds["normal" if (s, e) == (0.0, 0.0) else "unavailable" if (s, e) == (-1.0, -1.0) else "anomaly"] += 1
    return {
        "rows": len(recs),
        "qa_rows": sum(r["Question"].strip() != "-1" for r in recs),
        "interval_kinds": {k: kinds[k] for k in ("anomaly", "normal", "unavailable")},
        "options_normalised": sum(r["Correct Option"].strip() not in ("A", "B", "C", "D") for r in recs),
        "classes": dict(Counter(r["Anomaly Class"].strip() for r in recs)),
        "rejected": 0,
        "prefixes": Counter(r["Video Name"].split("_", 1)[0] for r in recs),
        "zero_start_anomalies": sum(
            float(r["Start Time"]) == 0 and float(r["End Time"]) > 0 for r in recs
        ),
    }


# ----------------------------------------------------------------------------- real files


@needs_real
@pytest.mark.parametrize("name", sorted(KNOWN))
def test_real_csv_counts_match_an_independent_count(name):
    path = REAL / name
    result = read_vau_bench(path)
    summary = result.summary()
    expected = _independent_counts(path)

    assert set(summary) == SUMMARY_KEYS
    rows, anomaly, normal, unavailable = KNOWN[name]
    assert summary["rows"] == expected["rows"] == rows
    assert summary["interval_kinds"] == expected["interval_kinds"] == {
        "anomaly": anomaly, "normal": normal, "unavailable": unavailable,
    }
    assert summary["qa_rows"] == expected["qa_rows"]
    assert summary["options_normalised"] == expected["options_normalised"]
    assert summary["classes"] == expected["classes"]
    assert summary["rejected"] == 0 and result.rejected == []
    # every class resolves to the 20-name list
    assert set(result.rows["anomaly_class"]) <= set(CLASSES)
    assert sum(summary["classes"].values()) == rows
    # prefixes give the dataset; ids are unique
    assert Counter(result.rows["dataset"]) == Counter(expected["prefixes"])
    assert result.rows["video_id"].is_unique
    assert list(result.rows.columns) == list(ANNOTATION_COLUMNS)
    # 0,N is an anomaly starting at 0, not a normal video
    zero_start = result.rows[(result.rows["start_s"] == 0) & (result.rows["end_s"] > 0)]
    assert len(zero_start) == expected["zero_start_anomalies"]
    assert set(zero_start["interval_kind"]) <= {"anomaly"}
    # -1,-1 -> NaN, 0,0 -> 0.0
    unav = result.rows[result.rows["interval_kind"] == "unavailable"]
    assert unav["start_s"].isna().all() and unav["end_s"].isna().all()
    norm = result.rows[result.rows["interval_kind"] == "normal"]
    assert (norm["start_s"] == 0).all() and (norm["end_s"] == 0).all()


@needs_real
def test_real_val_has_zero_start_anomalies_and_mixed_datasets():
    result = read_vau_bench(REAL / "val.csv")
    s = result.rows
    # hand-checked: 161 anomalies start at 0.0 (0,N) in val.csv
    assert ((s["interval_kind"] == "anomaly") & (s["start_s"] == 0)).sum() == 161
    assert Counter(s["dataset"]) == {"ecva": 339, "ucf": 299, "msad": 96}
    assert set(s["split"]) == {"val"}
    first = s.iloc[0]
    assert first["video_name"] == "ecva_17.mp4" and first["video_id"] == "ecva/17"
    assert (first["start_s"], first["end_s"], first["interval_kind"]) == (37.0, 45.0, "anomaly")
    assert first["source_line"] == 2
    # the single blank Key Object is None, not ""
    assert s["key_object"].isna().sum() == 1


@needs_real
def test_real_train_row_fields():
    s = read_vau_bench(REAL / "ucf_subset_train.csv").rows
    row = s.iloc[0]
    assert row["video_name"] == "ucf_Abuse001_x264.mp4"
    assert row["video_id"] == "ucf/Abuse001_x264"
    assert row["dataset"] == "ucf" and row["split"] == "train"
    assert row["correct_option"] == "C" and bool(row["has_qa"])
    assert row["anomaly_class"] == "Abuse" and row["interval_kind"] == "unavailable"
    assert math.isnan(row["start_s"])
    assert row["option_c"].startswith("The man in black punching the woman")


# ----------------------------------------------------------------------------- hand-written CSVs


def _row(name: str, **kw) -> dict[str, str]:
    base = {
        "Video Name": name,
        "Question": "What happens?",
        "Option 1": "A car crashes into a pole",
        "Option 2": "A man steals a bag",
        "Option 3": "Nothing unusual happens",
        "Option 4": "Green trash bin catches fire",
        "Correct Option": "B",
        "Key Object": "man",
        "Description": "desc",
        "Reasoning": "why",
        "Anomaly Class": "Stealing",
        "Start Time": "1.0",
        "End Time": "4.5",
    }
    base.update({k.replace("_", " "): v for k, v in kw.items()})
    return base


def _write(path: Path, rows: list[dict], header=VAU_COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(c, "") for c in header] if isinstance(r, dict) else r)
    return path


def _by_name(result):
    return {r["video_name"]: r for r in result.rows.to_dict("records")}


def _rejected(result):
    return {r["video_name"]: r for r in result.rejected}


def test_interval_kinds_and_time_rejections(tmp_path):
    rows = [
        _row("ucf_normal.mp4", Start_Time="0", End_Time="0", Anomaly_Class="Normal"),
        _row("ucf_unav.mp4", Start_Time="-1", End_Time="-1.0"),
        _row("ucf_zero_start.mp4", Start_Time="0.0", End_Time="12.5"),
        _row("ucf_text.mp4", Start_Time="abc", End_Time="3"),
        _row("ucf_blank.mp4", Start_Time="", End_Time="3"),
        _row("ucf_nan.mp4", Start_Time="nan", End_Time="3"),
        _row("ucf_backwards.mp4", Start_Time="10", End_Time="5"),
        _row("ucf_neg.mp4", Start_Time="-1", End_Time="5"),
        _row("ucf_flat.mp4", Start_Time="5", End_Time="5"),
    ]
    res = read_vau_bench(_write(tmp_path / "train.csv", rows))
    kept, rej = _by_name(res), _rejected(res)
    assert kept["ucf_normal.mp4"]["interval_kind"] == "normal"
    assert (kept["ucf_normal.mp4"]["start_s"], kept["ucf_normal.mp4"]["end_s"]) == (0.0, 0.0)
    assert kept["ucf_unav.mp4"]["interval_kind"] == "unavailable" and math.isnan(kept["ucf_unav.mp4"]["end_s"])
    assert kept["ucf_zero_start.mp4"]["interval_kind"] == "anomaly"
    assert (kept["ucf_zero_start.mp4"]["start_s"], kept["ucf_zero_start.mp4"]["end_s"]) == (0.0, 12.5)
    assert {n: r["reason"] for n, r in rej.items()} == {
        "ucf_text.mp4": "non_numeric_time",
        "ucf_blank.mp4": "non_numeric_time",
        "ucf_nan.mp4": "non_numeric_time",
        "ucf_backwards.mp4": "end_before_start",
        "ucf_neg.mp4": "negative_time",
        "ucf_flat.mp4": "zero_length_interval",
    }
    assert rej["ucf_backwards.mp4"]["line"] == 8  # header is line 1
    assert rej["ucf_backwards.mp4"]["source"] == str(tmp_path / "train.csv")
    assert all(r["detail"] for r in res.rejected)
    s = res.summary()
    assert s["interval_kinds"] == {"anomaly": 1, "normal": 1, "unavailable": 1}
    assert s["rows"] + s["rejected"] == len(rows)  # nothing silently dropped


def test_correct_option_forms(tmp_path):
    rows = [
        _row("ucf_letter.mp4", Correct_Option="D"),
        _row("ucf_lower.mp4", Correct_Option="d"),
        _row("ucf_paren.mp4", Correct_Option="(C)"),
        _row("ucf_dot.mp4", Correct_Option="B."),
        _row("ucf_full.mp4", Correct_Option="D. Green trash bin catches fire"),
        _row("ucf_full_trunc.mp4", Correct_Option="D. Green trash bin ..."),
        _row("ucf_text_only.mp4", Correct_Option="a man steals a bag"),
        _row("ucf_option_n.mp4", Correct_Option="Option 3"),
        _row("ucf_conflict.mp4", Correct_Option="A. Green trash bin catches fire"),
        _row("ucf_nomatch.mp4", Correct_Option="A purple elephant dances"),
    ]
    res = read_vau_bench(_write(tmp_path / "test_ucf_crime.csv", rows))
    kept, rej = _by_name(res), _rejected(res)
    got = {n: (r["correct_option"], r["option_normalised"]) for n, r in kept.items()}
    assert got == {
        "ucf_letter.mp4": ("D", False),
        "ucf_lower.mp4": ("D", True),
        "ucf_paren.mp4": ("C", True),
        "ucf_dot.mp4": ("B", True),
        "ucf_full.mp4": ("D", True),
        "ucf_full_trunc.mp4": ("D", True),
        "ucf_text_only.mp4": ("B", True),
        "ucf_option_n.mp4": ("C", True),
    }
    assert rej["ucf_conflict.mp4"]["reason"] == "correct_option_conflict"
    assert rej["ucf_nomatch.mp4"]["reason"] == "correct_option_unresolved"
    assert res.summary()["options_normalised"] == 7


def test_qa_minus_one_keeps_row_for_other_tasks(tmp_path):
    # the shape of test_ucf_crime.csv's Abuse030 row: every text field -1, interval present
    no_qa = ["Abuse030_x264.mp4"] + ["-1"] * 10 + ["42.5", "45.33"]
    partial = _row("Arrest001_x264.mp4", Option_3="-1")
    rows = [no_qa, _row("Arson007_x264.mp4"), partial]
    res = read_vau_bench(_write(tmp_path / "test_ucf_crime.csv", rows))
    kept, rej = _by_name(res), _rejected(res)
    r = kept["Abuse030_x264.mp4"]
    assert r["has_qa"] is False and r["question"] is None and r["correct_option"] is None
    assert r["anomaly_class"] is None and r["description"] is None and r["key_object"] is None
    assert (r["start_s"], r["end_s"], r["interval_kind"]) == (42.5, 45.33, "anomaly")
    # test files carry no prefix: dataset and split come from the file name
    assert (r["dataset"], r["split"], r["video_id"]) == ("ucf", "test", "ucf/Abuse030_x264")
    assert rej["Arrest001_x264.mp4"]["reason"] == "qa_incomplete"
    s = res.summary()
    assert (s["rows"], s["qa_rows"], s["rejected"]) == (2, 1, 1)
    assert s["classes"] == {"Stealing": 1}  # the -1 class is not a class


def test_class_spellings_and_unknown_class(tmp_path):
    rows = [
        _row("msad_a.mp4", Anomaly_Class="traffic accident"),
        _row("msad_b.mp4", Anomaly_Class="FOOD_SAFETY"),
        _row("msad_c.mp4", Anomaly_Class=" Object  falling "),
        _row("msad_d.mp4", Anomaly_Class="normal", Start_Time="0", End_Time="0"),
        _row("msad_e.mp4", Anomaly_Class="Jaywalking"),
    ]
    res = read_vau_bench(_write(tmp_path / "val.csv", rows))
    kept = _by_name(res)
    assert [kept[n]["anomaly_class"] for n in ("msad_a.mp4", "msad_b.mp4", "msad_c.mp4", "msad_d.mp4")] == [
        "Traffic_accident", "Food Safety", "Object_falling", "Normal",
    ]
    assert _rejected(res)["msad_e.mp4"]["reason"] == "unknown_class"
    assert res.summary()["classes"] == {"Food Safety": 1, "Normal": 1, "Object_falling": 1, "Traffic_accident": 1}


def test_duplicates_unsafe_names_and_malformed_rows(tmp_path):
    rows = [
        _row("ucf_x.mp4"),
        _row("ucf_x.mp4", Correct_Option="A"),
        _row("x.mp4"),  # same video as ucf_x.mp4 once the prefix is gone
        _row("../escape.mp4"),
        _row("sub/dir.mp4"),
        _row(""),
        ["ucf_short.mp4", "What?", "only three fields"],
        [_row("ucf_long.mp4")[c] for c in VAU_COLUMNS] + ["surplus"],
        [_row("ucf_after.mp4")[c] for c in VAU_COLUMNS] + ["", " "],  # trailing commas are harmless
    ]
    res = read_vau_bench(_write(tmp_path / "train.csv", rows), dataset="ucf")
    kept = _by_name(res)
    assert set(kept) == {"ucf_x.mp4", "ucf_after.mp4"}
    assert kept["ucf_x.mp4"]["correct_option"] == "B"  # the first record wins
    reasons = [(r["video_name"], r["reason"]) for r in res.rejected]
    assert reasons == [
        ("ucf_x.mp4", "duplicate_video_name"),
        ("x.mp4", "duplicate_video_id"),
        ("../escape.mp4", "unsafe_video_name"),
        ("sub/dir.mp4", "unsafe_video_name"),
        ("", "missing_video_name"),
        ("ucf_short.mp4", "malformed_row"),
        ("ucf_long.mp4", "malformed_row"),
    ]
    assert "line 2" in res.rejected[0]["detail"]


def test_dataset_argument_and_fallbacks(tmp_path):
    path = _write(tmp_path / "annotations.csv", [_row("ucf_a.mp4"), _row("b.mp4")])
    auto = read_vau_bench(path)
    assert list(auto.rows["dataset"]) == ["ucf", "unknown"]
    assert list(auto.rows["video_id"]) == ["ucf/a", "unknown/b"]
    assert set(auto.rows["split"]) == {"unknown"}

    explicit = read_vau_bench(path, dataset="msad", split="test")
    assert list(explicit.rows["video_id"]) == ["msad/b"]
    assert explicit.rejected[0]["reason"] == "dataset_mismatch"
    assert set(explicit.rows["split"]) == {"test"}

    with pytest.raises(ValueError):
        read_vau_bench(path, dataset="kinetics")
    with pytest.raises(ValueError):
        read_vau_bench(path, split="dev")

    assert make_video_id("ucf", "ucf_Abuse001_x264.mp4") == make_video_id("ucf", "Abuse001_x264.mp4")


def test_line_numbers_follow_multiline_cells_and_blank_lines(tmp_path):
    path = tmp_path / "demo_train.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # BOM, as Excel writes
        w = csv.writer(f)
        w.writerow(VAU_COLUMNS)
        w.writerow([_row("demo_0001.mp4", Reasoning="1. first\n2. second\n3. third")[c] for c in VAU_COLUMNS])
        f.write("\r\n")
        w.writerow([_row("demo_0002.mp4", Start_Time="x")[c] for c in VAU_COLUMNS])
    res = read_vau_bench(path)
    assert res.rows.iloc[0]["source_line"] == 2
    assert res.rows.iloc[0]["reasoning"] == "1. first\n2. second\n3. third"
    assert res.rows.iloc[0]["dataset"] == "demo" and res.rows.iloc[0]["split"] == "train"
    assert res.rejected[0]["line"] == 6  # 2 + three physical lines + one blank line


def test_not_a_vau_bench_file(tmp_path):
    bad = tmp_path / "val.csv"
    bad.write_text("name,answer\nx.mp4,A\n")
    with pytest.raises(VauBenchFormatError, match="missing column"):
        read_vau_bench(bad)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    with pytest.raises(VauBenchFormatError):
        read_vau_bench(binary)
    with pytest.raises(FileNotFoundError):
        read_vau_bench(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def cli():
    app = typer.Typer()
    app.command()(import_vau_bench)
    return app


def test_cli_prints_only_the_summary_and_writes_parquet(cli, tmp_path):
    src = _write(tmp_path / "test_msad.csv", [_row("Assault_2.mp4"), _row("Assault_4.mp4", Start_Time="bad")])
    out = tmp_path / "out" / "msad_test.parquet"
    rej = tmp_path / "out" / "rejected.jsonl"
    r = CliRunner().invoke(cli, ["--csv", str(src), "--out", str(out), "--rejected", str(rej)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)  # stdout is exactly one JSON object
    assert summary == {
        "rows": 1, "qa_rows": 1, "interval_kinds": {"anomaly": 1, "normal": 0, "unavailable": 0},
        "options_normalised": 0, "classes": {"Stealing": 1}, "rejected": 1,
    }
    df = pd.read_parquet(out)
    assert list(df.columns) == list(ANNOTATION_COLUMNS)
    assert df.iloc[0]["video_id"] == "msad/Assault_2" and df.iloc[0]["split"] == "test"
    lines = [json.loads(x) for x in rej.read_text().splitlines()]
    assert [(x["video_name"], x["reason"], x["line"]) for x in lines] == [("Assault_4.mp4", "non_numeric_time", 3)]


def test_cli_exit_codes(cli, tmp_path):
    runner = CliRunner()
    all_bad = _write(tmp_path / "train.csv", [_row("ucf_a.mp4", Anomaly_Class="Nope")])
    r = runner.invoke(cli, ["--csv", str(all_bad), "--out", str(tmp_path / "a.parquet")])
    assert r.exit_code == 1 and json.loads(r.stdout)["rows"] == 0
    not_vau = tmp_path / "other.csv"
    not_vau.write_text("a,b\n1,2\n")
    r = runner.invoke(cli, ["--csv", str(not_vau), "--out", str(tmp_path / "b.parquet")])
    assert r.exit_code == 2 and r.stdout == "" and not (tmp_path / "b.parquet").exists()
    r = runner.invoke(cli, ["--csv", str(all_bad), "--out", str(tmp_path / "c.parquet"), "--dataset", "kinetics"])
    assert r.exit_code == 2


def test_unbalanced_quote_is_one_reported_record_not_a_crash(tmp_path):
    path = _write(tmp_path / "val.csv", [_row(f"msad_{i}.mp4") for i in range(3)])
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write('msad_bad.mp4,"What happens?,x\n')  # the quote never closes: it swallows the rest
        for i in range(30):
            f.write(f"msad_late{i}.mp4,q,a,b,c,d,A,k,d,r,Fire,1,2\n")
    res = read_vau_bench(path)
    assert len(res.rows) == 3
    assert [(r["video_name"], r["reason"], r["line"]) for r in res.rejected] == [("msad_bad.mp4", "malformed_row", 5)]
    assert "unbalanced quote" in res.rejected[0]["detail"]
