"""Great Expectations (GX Core 1.x) suites for the manifest, the RoCoT dataset, the splits and the
annotation CSVs.

Every expectation carries ``meta["check"]``: the defect it catches, in words, which is what the gate's
summary prints. Checks that need a computation across rows or a parser (a video in two splits, an
interval past the video's end, the share of well-formed traces) validate *derived* columns named
``gate_*``, added by :func:`prepare_manifest` / :func:`prepare_rocot`; the Data Docs show them
next to the data columns. (GX's ``UnexpectedRowsExpectation`` would need a SQL data source; a custom
expectation class would hide the rule inside GX plumbing.)

Two suites see what the manifest alone cannot: ``splits`` validates one summary row per split (kept and
quarantined rows from ingest's quarantine file, anomaly intervals the grounding task can learn from),
and ``annotations`` validates the annotation CSVs themselves, so a video listed in two splits leaks even
when its file is missing (ingest quarantines such rows, and the manifest never shows them). Their
expectations also carry ``meta["fix"]``: what to change, printed with the failure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from srvau.config import Params
from srvau.contract.scoring import well_formed
from srvau.contract.truth import truth_of
from srvau.contract.vocab import CLASSES, INTERVAL_KINDS, LETTERS, TASKS
from srvau.cot.dataset import COLUMNS as ROCOT_COLUMNS
from srvau.cot.dataset import SPLITS
from srvau.data.vau_bench import split_from_filename

MANIFEST_COLUMNS: tuple[str, ...] = (
    "video_id", "dataset", "split", "path", "sha256", "duration_s", "fps", "num_frames", "width", "height",
    "anomaly_class", "start_s", "end_s", "interval_kind", "question", "option_a", "option_b", "option_c",
    "option_d", "correct_option", "has_qa", "key_object", "description", "reasoning", "frames_path",
)
FLOAT_TYPES = ["float64", "float32", "Float64", "Float32", "int64", "int32", "Int64", "Int32"]
INT_TYPES = ["int64", "int32", "int16", "Int64", "Int32", "Int16", "uint16", "uint32", "uint64"]
BOOL_TYPES = ["bool", "boolean"]
_ESCAPING_PATH = r"^/|^[A-Za-z]:|(?:^|[\\/])\.\.(?:[\\/]|$)"


def _splits_per_video(df: pd.DataFrame, keys: tuple[str, ...]) -> pd.Series:
    """For every row, the most splits any of its identities (``keys``) occurs in."""
    out = pd.Series(1, index=df.index, dtype="int64")
    if "split" not in df.columns:
        return out
    for key in keys:
        if key in df.columns:
            n = df.groupby(df[key].astype("string"), dropna=True)["split"].transform("nunique")
            out = np.maximum(out, n.fillna(1).astype("int64"))
    return out


def prepare_manifest(df: pd.DataFrame, manifest_dir: Path | None = None) -> pd.DataFrame:
    """The manifest plus the derived ``gate_*`` columns its suite validates (fresh 0..n-1 index:
    GX reports offending rows by index)."""
    df = df.reset_index(drop=True)
    # A video under two ids still leaks: compare ids and files. (Not sha256: distinct demo clips
    # of a quiet scene can be byte-identical.)
    df["gate_splits_per_video"] = _splits_per_video(df, ("video_id", "path"))
    if {"end_s", "duration_s"} <= set(df.columns):
        over = pd.to_numeric(df["end_s"], errors="coerce") - pd.to_numeric(df["duration_s"], errors="coerce")
        df["gate_end_past_duration_s"] = over.astype("float64")
    if manifest_dir is not None and "frames_path" in df.columns:
        df["gate_frames_cached"] = [
            isinstance(p, str) and bool(p) and (Path(p) if Path(p).is_absolute() else Path(manifest_dir) / p).is_file()
            for p in df["frames_path"]
        ]
    return df


def prepare_rocot(df: pd.DataFrame) -> pd.DataFrame:
    """RoCoT plus ``gate_well_formed`` (the contract's structural rule) and ``gate_splits_per_video``."""
    df = df.reset_index(drop=True)
    if {"completion", "style", "task"} <= set(df.columns):
        df["gate_well_formed"] = [
            well_formed(c if isinstance(c, str) else "", str(s), str(t))
            for c, s, t in zip(df["completion"], df["style"], df["task"])
        ]
    df["gate_splits_per_video"] = _splits_per_video(df, ("video_id",))
    return df


# Quarantine reasons of a row that repeats a video already kept (VAU-Bench's val.csv holds every row of
# ucf_subset_val.csv again): they are not missing data and do not count towards the quarantined share.
REPEATED_ROW_REASONS = frozenset({"duplicate_video_id", "duplicate_video_name"})


def _quarantine_split(record: dict) -> str:
    """The split a quarantine record belongs to (a whole bad file: the split its name says)."""
    return record.get("split") or split_from_filename(Path(str(record.get("source") or ""))) or "unknown"


def split_summary(manifest: pd.DataFrame, quarantine: list[dict]) -> pd.DataFrame:
    """One row per split (train/val/test always, so an absent train split still fails):
    kept rows, quarantined rows, the quarantined share and the grounding rows' anomaly intervals."""
    kept = manifest["split"].astype("string").value_counts().to_dict() if "split" in manifest.columns else {}
    lost: dict[str, int] = {}
    for q in quarantine:
        if q.get("why") in REPEATED_ROW_REASONS:  # the same video is kept from another row: nothing is lost
            continue
        lost[_quarantine_split(q)] = lost.get(_quarantine_split(q), 0) + 1
    anomalies: dict[str, int] = {}
    for row in manifest.to_dict("records"):
        truth = truth_of("grounding", row)
        if truth is not None and not truth.is_normal:
            anomalies[str(row.get("split"))] = anomalies.get(str(row.get("split")), 0) + 1
    splits = list(SPLITS) + sorted((set(kept) | set(lost)) - set(SPLITS))
    rows = []
    for split in splits:
        k, q = int(kept.get(split, 0)), int(lost.get(split, 0))
        rows.append({"split": split, "kept_rows": k, "quarantined_rows": q,
                     "quarantine_share": round(q / (k + q), 3) if k + q else 0.0,  # rounded: it is printed
                     "grounding_anomaly_intervals": int(anomalies.get(split, 0))})
    return pd.DataFrame(rows)


def prepare_annotations(rows: pd.DataFrame) -> pd.DataFrame:
    """Imported annotation rows (every CSV of ``ingest.annotations``) plus ``gate_splits_per_video``."""
    df = rows.reset_index(drop=True)
    keep = [c for c in ("video_id", "split", "video_name", "source_csv", "source_line") if c in df.columns]
    df = df[keep].copy()
    df["gate_splits_per_video"] = _splits_per_video(df, ("video_id",))
    return df


def _e(cls_name: str, check: str, fix: str | None = None, **kwargs):
    import great_expectations as gx

    meta = {"check": check, **({"fix": fix} if fix else {})}
    return getattr(gx.expectations, cls_name)(meta=meta, **kwargs)


def split_expectations(params: Params) -> list:
    from great_expectations.expectations.row_conditions import Column

    v = params.validate_
    return [
        _e("ExpectColumnValuesToBeBetween",
           f"train grounding has fewer than {v.min_train_anomaly_intervals} anomaly intervals",
           "add annotation CSVs whose train rows carry anomaly intervals to ingest.annotations (for VAU-Bench: "
           "its train.csv, see README 'Paper scale') and their videos under ingest.video_root; "
           "validate.min_train_anomaly_intervals is the floor",
           column="grounding_anomaly_intervals", min_value=v.min_train_anomaly_intervals,
           row_condition=Column("split") == "train"),
        _e("ExpectColumnValuesToBeBetween", f"quarantined share of a split above {v.max_quarantine_share:g}",
           "read quarantine.jsonl next to the manifest (field 'why'): put missing videos under "
           "ingest.video_root, replace broken ones or fix the CSV rows, then re-run ingest; "
           "validate.max_quarantine_share is the ceiling",
           column="quarantine_share", max_value=v.max_quarantine_share),
    ]


def annotation_expectations(params: Params) -> list:
    return [
        _e("ExpectColumnValuesToBeBetween", "video in more than one split of the annotation CSVs",
           "keep each video in one split only: delete its row from the other split's CSV in ingest.annotations",
           column="gate_splits_per_video", min_value=1, max_value=1),
    ]


def manifest_expectations(params: Params, frames_checked: bool = True) -> list:
    from great_expectations.expectations.row_conditions import Column

    anomaly = Column("interval_kind") == "anomaly"
    ex = [_e("ExpectTableRowCountToBeBetween", "empty manifest", min_value=1)]
    ex += [_e("ExpectColumnToExist", f"missing column {c}", column=c) for c in MANIFEST_COLUMNS]
    for c in ("video_id", "dataset", "split", "path", "sha256", "duration_s", "fps", "num_frames", "width", "height",
              "interval_kind", "has_qa", "frames_path"):
        ex.append(_e("ExpectColumnValuesToNotBeNull", f"null {c}", column=c))
    for c in ("duration_s", "fps", "start_s", "end_s"):
        ex.append(_e("ExpectColumnValuesToBeInTypeList", f"{c} is not numeric", column=c, type_list=FLOAT_TYPES))
    for c in ("num_frames", "width", "height"):
        ex.append(_e("ExpectColumnValuesToBeInTypeList", f"{c} is not an integer", column=c, type_list=INT_TYPES))
    ex += [
        _e("ExpectColumnValuesToBeInTypeList", "has_qa is not boolean", column="has_qa", type_list=BOOL_TYPES),
        _e("ExpectCompoundColumnsToBeUnique", "duplicate video_id within a split", column_list=["video_id", "split"]),
        _e("ExpectColumnValuesToBeBetween", "fps <= 0", column="fps", min_value=0, strict_min=True),
        _e("ExpectColumnValuesToBeBetween", "duration <= 0", column="duration_s", min_value=0, strict_min=True),
        _e("ExpectColumnValuesToBeBetween", "num_frames < 1", column="num_frames", min_value=1),
        _e("ExpectColumnValuesToBeBetween", "width < 1", column="width", min_value=1),
        _e("ExpectColumnValuesToBeBetween", "height < 1", column="height", min_value=1),
        _e("ExpectColumnValuesToBeInSet", "unknown split", column="split", value_set=list(SPLITS)),
        _e("ExpectColumnValuesToBeInSet", "unknown interval kind", column="interval_kind", value_set=list(INTERVAL_KINDS)),
        _e("ExpectColumnValuesToBeInSet", "unknown class", column="anomaly_class", value_set=list(CLASSES)),
        _e("ExpectColumnValuesToBeInSet", "bad answer letter", column="correct_option", value_set=list(LETTERS)),
        _e("ExpectColumnValuesToNotBeNull", "QA row without an answer letter", column="correct_option",
           row_condition=Column("has_qa") == True),  # noqa: E712 (a GX condition, not a comparison)
        _e("ExpectColumnValuesToBeBetween", "negative start time in an anomaly interval", column="start_s",
           min_value=0, row_condition=anomaly),
        _e("ExpectColumnPairValuesAToBeGreaterThanB", "start >= end in an anomaly interval", column_A="end_s",
           column_B="start_s", or_equal=False, row_condition=anomaly),
        _e("ExpectColumnValuesToBeBetween", "anomaly interval past the video's duration",
           column="gate_end_past_duration_s", max_value=float(params.ingest.interval_slack_s), row_condition=anomaly),
        _e("ExpectColumnValuesToNotMatchRegex", "video path escapes the video root", column="path", regex=_ESCAPING_PATH),
        _e("ExpectColumnValuesToMatchRegex", "malformed sha256", column="sha256", regex=r"^[0-9a-f]{64}$"),
        _e("ExpectColumnValuesToBeBetween", "video in more than one split", column="gate_splits_per_video",
           min_value=1, max_value=1),
    ]
    if frames_checked:
        ex.append(_e("ExpectColumnValuesToBeInSet", "frame cache entry missing", column="gate_frames_cached", value_set=[True]))
    return ex


def rocot_expectations(params: Params) -> list:
    from great_expectations.expectations.row_conditions import Column

    share = params.validate_.min_well_formed_share
    ex = [_e("ExpectTableRowCountToBeBetween", "empty RoCoT dataset", min_value=1)]
    ex += [_e("ExpectColumnToExist", f"missing column {c}", column=c) for c in ROCOT_COLUMNS]
    for c in ("sample_id", "video_id", "split", "task", "style", "system", "prompt", "completion", "final_answer",
              "first_correct", "answer", "interval_kind", "teacher"):
        ex.append(_e("ExpectColumnValuesToNotBeNull", f"null {c}", column=c))
    ex += [
        _e("ExpectColumnValuesToBeUnique", "duplicate sample_id", column="sample_id"),
        _e("ExpectColumnValuesToBeInTypeList", "first_correct is not boolean", column="first_correct", type_list=BOOL_TYPES),
        _e("ExpectColumnValuesToBeInTypeList", "gt_start is not numeric", column="gt_start", type_list=FLOAT_TYPES),
        _e("ExpectColumnValuesToBeInTypeList", "gt_end is not numeric", column="gt_end", type_list=FLOAT_TYPES),
        _e("ExpectColumnValuesToBeInSet", "unknown task", column="task", value_set=list(TASKS)),
        _e("ExpectColumnValuesToBeInSet", "unknown style", column="style", value_set=["reflect", "think"]),
        _e("ExpectColumnValuesToBeInSet", "unknown split", column="split", value_set=list(SPLITS)),
        _e("ExpectColumnValuesToBeInSet", "unknown interval kind", column="interval_kind", value_set=list(INTERVAL_KINDS)),
        _e("ExpectColumnValuesToBeInSet", "unknown class", column="anomaly_class", value_set=list(CLASSES)),
        _e("ExpectColumnValuesToBeInSet", "bad answer letter", column="answer", value_set=list(LETTERS),
           row_condition=Column("task") == "qa"),
        _e("ExpectColumnValuesToBeInSet", "bad final answer letter", column="final_answer", value_set=list(LETTERS),
           row_condition=Column("task") == "qa"),
        _e("ExpectColumnValuesToBeInSet", "unknown class as classification answer", column="answer",
           value_set=list(CLASSES), row_condition=Column("task") == "classification"),
        _e("ExpectColumnValuesToBeInSet", "grounding answer not Anomaly/Normal", column="answer",
           value_set=["Anomaly", "Normal"], row_condition=Column("task") == "grounding"),
        _e("ExpectColumnPairValuesAToBeGreaterThanB", "start >= end in an anomaly interval", column_A="gt_end",
           column_B="gt_start", or_equal=False, row_condition=Column("interval_kind") == "anomaly"),
        _e("ExpectColumnMeanToBeBetween", f"well-formed trace share below {share:g}", column="gate_well_formed",
           min_value=share),
        _e("ExpectColumnValuesToBeBetween", "video in more than one split", column="gate_splits_per_video",
           min_value=1, max_value=1),
    ]
    return ex
