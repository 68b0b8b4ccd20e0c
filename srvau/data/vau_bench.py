"""Read and normalise a VAU-Bench annotation CSV into the manifest's annotation columns (docs/contracts.md).

The importer works on annotations alone (the videos are joined later by ingestion). Every CSV record
either becomes one row of :attr:`ImportResult.rows` or one entry of :attr:`ImportResult.rejected`
with a machine-readable reason; nothing is dropped silently and no malformed record raises. Only a
file that is not a VAU-Bench CSV at all (missing columns, undecodable bytes, broken CSV quoting)
raises :class:`VauBenchFormatError`.

Normalisation rules (the quirks found in VAU-R1's published files):

* ``Start Time``/``End Time`` are seconds. ``0,0`` is a normal video (``interval_kind="normal"``,
  times kept as 0.0), ``-1,-1`` means the interval is unavailable (``"unavailable"``, times NaN),
  ``0,N`` with N > 0 is an anomaly starting at 0. Any other negative time, a zero-length interval
  other than 0,0, end < start, or a non-numeric/non-finite time is rejected.
* ``Correct Option`` becomes a letter A-D. Besides a bare letter (any case, ``B.``, ``(B)``) it may
  hold the option text, optionally led by a letter (``"D. Green trash bin ..."``) or
  ``"Option 4"``: the letter is found by matching the option texts (exact after normalising case,
  blanks and a trailing ellipsis, else an unambiguous prefix match). Such rows are counted in
  ``options_normalised``. A leading letter that contradicts the matched text, or text that matches
  no option, rejects the row.
* QA fields of ``-1`` (or blank): when *all* of question, four options and correct option are
  missing the row is kept with ``has_qa=False`` (test_ucf_crime.csv has such rows, whose key
  object, description, reasoning and class are ``-1`` as well). A partly missing QA block is rejected.
* ``Anomaly Class`` resolves through :func:`srvau.contract.vocab.canonical_class` (case-insensitive,
  space == underscore). ``-1``/blank -> ``None`` (class unavailable, row kept); any other unknown
  name is rejected. A class/interval disagreement (``Normal`` with an anomaly interval, an anomaly
  class with ``0,0``) is kept as written and logged as a warning.
* Dataset: train/val names carry a prefix (``ucf_``, ``ecva_``, ``msad_``; the synthetic demo uses
  ``demo_``); test names do not. ``dataset="auto"`` takes the prefix, else the one dataset named in
  the file name (``test_msad.csv`` -> msad, ``test_ucf_crime.csv`` -> ucf), else ``"unknown"``
  (logged). An explicit dataset rejects rows whose prefix names another dataset.
* ``video_id = f"{dataset}/{stem}"`` where ``stem`` is the video name without the dataset prefix and
  without its video extension: ``ucf_Abuse001_x264.mp4`` (train) and ``Abuse001_x264.mp4`` (test,
  ``--dataset ucf``) both map to ``ucf/Abuse001_x264``, so the same video has the same id in every
  split file. Names with path separators are rejected (``unsafe_video_name``); a repeated video
  name or id within one file rejects the later record (``duplicate_video_name``/``duplicate_video_id``)
  and keeps the first, as VAU-R1's own scripts do.
* Split: the ``split`` argument, else the one of train/val/test named in the file name, else
  ``"unknown"`` (logged).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from srvau.contract.vocab import CLASSES, INTERVAL_KINDS, LETTERS, NORMAL, canonical_class, optional_text

log = logging.getLogger(__name__)

VAU_COLUMNS: tuple[str, ...] = (
    "Video Name",
    "Question",
    "Option 1",
    "Option 2",
    "Option 3",
    "Option 4",
    "Correct Option",
    "Key Object",
    "Description",
    "Reasoning",
    "Anomaly Class",
    "Start Time",
    "End Time",
)
QA_COLUMNS = ("Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option")

#: Manifest annotation columns (docs/contracts.md), in order.
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "video_name",
    "video_id",
    "dataset",
    "split",
    "question",
    "option_a",
    "option_b",
    "option_c",
    "option_d",
    "correct_option",
    "has_qa",
    "option_normalised",
    "key_object",
    "description",
    "reasoning",
    "anomaly_class",
    "start_s",
    "end_s",
    "interval_kind",
    "source_csv",
    "source_line",
)

DATASET_PREFIXES: dict[str, str] = {"ucf_": "ucf", "ecva_": "ecva", "msad_": "msad", "demo_": "demo"}
DATASETS: tuple[str, ...] = ("msad", "ucf", "ecva", "demo")
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")
# Reasoning cells run to a few KB; the csv default cap (128 KiB) is too tight for safety, not for data.
_FIELD_LIMIT = 16 * 1024 * 1024


class VauBenchFormatError(ValueError):
    """The file as a whole is not a readable VAU-Bench CSV."""


@dataclass
class ImportResult:
    """One imported CSV: kept rows (manifest annotation columns) and rejected records."""

    rows: pd.DataFrame
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return summarize(self.rows, self.rejected)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- small helpers


def _tokens(path: Path) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", path.stem.lower()) if t]


def dataset_from_filename(path: Path) -> str | None:
    """The single dataset named in a file name (``test_ucf_crime.csv`` -> ``ucf``), else None."""
    found = {t for t in _tokens(path) if t in DATASETS}
    return found.pop() if len(found) == 1 else None


def split_from_filename(path: Path) -> str | None:
    """The single split named in a file name (``ucf_subset_val.csv`` -> ``val``), else None."""
    found = {_SPLIT_ALIASES[t] for t in _tokens(path) if t in _SPLIT_ALIASES}
    return found.pop() if len(found) == 1 else None


def split_prefix(name: str) -> tuple[str | None, str]:
    """``ucf_Abuse001_x264.mp4`` -> (``ucf``, ``Abuse001_x264.mp4``); no known prefix -> (None, name)."""
    for prefix, dataset in DATASET_PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return dataset, name[len(prefix) :]
    return None, name


def strip_video_ext(name: str) -> str:
    for ext in VIDEO_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def make_video_id(dataset: str, video_name: str) -> str:
    """Stable id: ``{dataset}/{name without dataset prefix and video extension}``."""
    return f"{dataset}/{strip_video_ext(split_prefix(video_name)[1])}"


def _norm_option_text(s: str) -> str:
    s = s.strip().strip("\"'").strip()
    s = re.sub(r"(\.\.\.|\u2026)\s*$", "", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    return s.lower()


_BARE_LETTER = re.compile(r"^\(?([A-Da-d])\)?[.):]?$")
_OPTION_N = re.compile(r"^option\s*([1-4])$", re.IGNORECASE)
_LED_TEXT = re.compile(r"^\(?([A-Da-d])\s*[.):]\s*(\S.*)$", re.DOTALL)
_MIN_PREFIX = 8  # a shorter fragment is too weak to identify an option by prefix


def resolve_correct_option(value: str, options: list[str]) -> tuple[str, bool]:
    """``Correct Option`` -> (letter, normalised?). Raises _Reject when it cannot be resolved."""
    v = value.strip()
    m = _BARE_LETTER.match(v)
    if m:
        letter = m.group(1).upper()
        return letter, letter != v
    m = _OPTION_N.match(v)
    if m:
        return LETTERS[int(m.group(1)) - 1], True
    m = _LED_TEXT.match(v)
    lead, text = (m.group(1).upper(), m.group(2)) if m else (None, v)
    matched = _match_option(text, options)
    if lead is not None and matched is not None and matched != lead:
        raise _Reject(
            "correct_option_conflict",
            f"Correct Option {v!r} is led by {lead} but its text matches option {matched}",
        )
    if matched is None and lead is None:
        raise _Reject("correct_option_unresolved", f"Correct Option {v!r} matches no option text")
    return (matched or lead), True  # type: ignore[return-value]


def _match_option(text: str, options: list[str]) -> str | None:
    t = _norm_option_text(text)
    if not t:
        return None
    normed = [_norm_option_text(o) for o in options]
    exact = [LETTERS[i] for i, o in enumerate(normed) if o == t]
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None  # identical options: ambiguous
    if len(t) < _MIN_PREFIX:
        return None
    prefix = [
        LETTERS[i] for i, o in enumerate(normed) if o.startswith(t) or (len(o) >= _MIN_PREFIX and t.startswith(o))
    ]
    return prefix[0] if len(prefix) == 1 else None


def _parse_time(value: str | None, column: str) -> float:
    s = (value or "").strip()
    try:
        x = float(s)
    except ValueError:
        raise _Reject("non_numeric_time", f"{column} {s!r} is not a number of seconds") from None
    if not math.isfinite(x):
        raise _Reject("non_numeric_time", f"{column} {s!r} is not a finite number")
    return x


def classify_interval(start: float, end: float) -> str:
    """``normal`` (0,0), ``unavailable`` (-1,-1) or ``anomaly``; raises _Reject for anything else."""
    if start == 0 and end == 0:
        return "normal"
    if start == -1 and end == -1:
        return "unavailable"
    if start < 0 or end < 0:
        raise _Reject("negative_time", f"interval ({start}, {end}): negative times other than -1,-1")
    if end < start:
        raise _Reject("end_before_start", f"End Time {end} is before Start Time {start}")
    if end == start:
        raise _Reject("zero_length_interval", f"interval ({start}, {end}) has zero length")
    return "anomaly"


# ----------------------------------------------------------------------------- one record


def _parse_record(rec: dict[str, str], dataset_arg: str, file_dataset: str | None) -> dict[str, Any]:
    name = (rec["Video Name"] or "").strip()
    if not name or name == "-1":
        raise _Reject("missing_video_name", "Video Name is blank")
    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise _Reject("unsafe_video_name", f"Video Name {name!r} is not a plain file name")

    prefixed, _ = split_prefix(name)
    if dataset_arg == "auto":
        dataset = prefixed or file_dataset or "unknown"
    else:
        if prefixed is not None and prefixed != dataset_arg:
            raise _Reject("dataset_mismatch", f"prefix says {prefixed!r} but --dataset is {dataset_arg!r}")
        dataset = dataset_arg

    # interval
    start = _parse_time(rec["Start Time"], "Start Time")
    end = _parse_time(rec["End Time"], "End Time")
    kind = classify_interval(start, end)
    if kind == "unavailable":
        start = end = float("nan")

    # class
    raw_class = optional_text(rec["Anomaly Class"])
    anomaly_class = None
    if raw_class is not None:
        anomaly_class = canonical_class(raw_class)
        if anomaly_class is None:
            raise _Reject("unknown_class", f"Anomaly Class {raw_class!r} is not one of the 20 VAU-Bench classes")

    # QA block
    qa = {c: optional_text(rec[c]) for c in QA_COLUMNS}
    present = [c for c, v in qa.items() if v is not None]
    correct, normalised = None, False
    if present and len(present) < len(QA_COLUMNS):
        missing = [c for c, v in qa.items() if v is None]
        raise _Reject("qa_incomplete", f"QA fields missing: {', '.join(missing)}")
    has_qa = bool(present)
    if has_qa:
        options = [qa[f"Option {i}"] for i in range(1, 5)]
        correct, normalised = resolve_correct_option(qa["Correct Option"], options)  # type: ignore[arg-type]

    return {
        "video_name": name,
        "video_id": make_video_id(dataset, name),
        "dataset": dataset,
        "question": qa["Question"],
        "option_a": qa["Option 1"],
        "option_b": qa["Option 2"],
        "option_c": qa["Option 3"],
        "option_d": qa["Option 4"],
        "correct_option": correct,
        "has_qa": has_qa,
        "option_normalised": normalised,
        "key_object": optional_text(rec["Key Object"]),
        "description": optional_text(rec["Description"]),
        "reasoning": optional_text(rec["Reasoning"]),
        "anomaly_class": anomaly_class,
        "start_s": float(start),
        "end_s": float(end),
        "interval_kind": kind,
    }


# ----------------------------------------------------------------------------- the file


def _records(path: Path):
    """Yield (first line, last line, header, fields) for every non-blank record after the header."""
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    raise VauBenchFormatError(f"{path}: line {start}: broken CSV: {e}") from e
                if not fields or all(not x.strip() for x in fields):
                    continue
                if header is None:
                    header = [h.strip() for h in fields]
                    missing = [c for c in VAU_COLUMNS if c not in header]
                    if missing:
                        raise VauBenchFormatError(
                            f"{path}: not a VAU-Bench CSV: missing column(s) {missing}; found {header}"
                        )
                    extra = [h for h in header if h not in VAU_COLUMNS]
                    if extra:
                        log.warning("%s: ignoring extra column(s) %s", path, extra)
                    continue
                yield start, reader.line_num, header, fields
    except UnicodeDecodeError as e:
        raise VauBenchFormatError(f"{path}: not UTF-8 text ({e})") from e


def read_vau_bench(csv_path: str | Path, dataset: str = "auto", split: str | None = None) -> ImportResult:
    """Import one VAU-Bench CSV; see the module docstring for every rule."""
    path = Path(csv_path)
    if dataset != "auto" and dataset not in DATASETS:
        raise ValueError(f"dataset must be 'auto' or one of {DATASETS}, got {dataset!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not path.is_file():
        raise FileNotFoundError(f"annotation CSV not found: {path}")

    file_dataset = dataset_from_filename(path)
    split = split or split_from_filename(path)
    if split is None:
        log.warning("%s: no split given and none in the file name; split='unknown'", path)
        split = "unknown"

    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    first_by_name: dict[str, int] = {}
    first_by_id: dict[str, int] = {}
    for line, last_line, header, fields in _records(path):
        name_at = header.index("Video Name")
        raw_name = fields[name_at].strip() if len(fields) > name_at else ""

        def reject(reason: str, detail: str) -> None:
            rejected.append(
                {"source": str(path), "line": line, "video_name": raw_name, "reason": reason, "detail": detail}
            )

        if len(fields) > len(header) and not any(x.strip() for x in fields[len(header) :]):
            fields = fields[: len(header)]  # trailing commas, as spreadsheets write them
        if len(fields) != len(header):
            span = f" (record spans lines {line}-{last_line}: unbalanced quote?)" if last_line - line > 20 else ""
            reject("malformed_row", f"expected {len(header)} fields, got {len(fields)}{span}")
            continue
        rec = dict(zip(header, fields))
        try:
            row = _parse_record(rec, dataset, file_dataset)
        except _Reject as r:
            reject(r.reason, r.detail)
            continue
        if row["video_name"] in first_by_name:
            reject("duplicate_video_name", f"first seen on line {first_by_name[row['video_name']]}")
            continue
        if row["video_id"] in first_by_id:
            vid = row["video_id"]
            reject("duplicate_video_id", f"video_id {vid!r} first seen on line {first_by_id[vid]}")
            continue
        first_by_name[row["video_name"]] = line
        first_by_id[row["video_id"]] = line
        row.update(split=split, source_csv=str(path), source_line=line)
        kept.append(row)

    rows = _frame(kept)
    _warn_inconsistencies(path, rows)
    log.info("%s: %d rows kept, %d rejected", path, len(rows), len(rejected))
    return ImportResult(rows=rows, rejected=rejected)


def _frame(kept: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(kept, columns=list(ANNOTATION_COLUMNS))
    for col in ANNOTATION_COLUMNS:
        if col in ("has_qa", "option_normalised"):
            df[col] = df[col].astype(bool)
        elif col in ("start_s", "end_s"):
            df[col] = df[col].astype("float64")
        elif col == "source_line":
            df[col] = df[col].astype("int64")
        else:
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


def _warn_inconsistencies(path: Path, rows: pd.DataFrame) -> None:
    if rows.empty:
        return
    normal_cls = rows["anomaly_class"] == NORMAL
    anomalous_cls = ~normal_cls & rows["anomaly_class"].notna()
    kind = rows["interval_kind"]
    bad = rows[(normal_cls & (kind == "anomaly")) | (anomalous_cls & (kind == "normal"))]
    if len(bad):
        log.warning(
            "%s: %d row(s) where class and interval disagree (kept as written), e.g. line %d",
            path, len(bad), int(bad["source_line"].iloc[0]),
        )
    unknown = int((rows["dataset"] == "unknown").sum())
    if unknown:
        log.warning("%s: %d row(s) with no dataset prefix and no --dataset: dataset='unknown'", path, unknown)
    no_class = int(rows["anomaly_class"].isna().sum())
    if no_class:
        log.info("%s: %d row(s) without an anomaly class (-1); kept for the other tasks", path, no_class)


def summarize(rows: pd.DataFrame, rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """The importer's JSON (issue 3): counts over kept rows, plus the number rejected."""
    kinds = Counter(rows["interval_kind"]) if len(rows) else Counter()
    order = {c: i for i, c in enumerate(CLASSES)}
    classes = Counter(c for c in rows["anomaly_class"] if c is not None) if len(rows) else Counter()
    return {
        "rows": int(len(rows)),
        "qa_rows": int(rows["has_qa"].sum()) if len(rows) else 0,
        "interval_kinds": {k: int(kinds.get(k, 0)) for k in INTERVAL_KINDS},
        "options_normalised": int(rows["option_normalised"].sum()) if len(rows) else 0,
        "classes": {c: int(classes[c]) for c in sorted(classes, key=lambda c: order.get(c, len(order)))},
        "rejected": len(rejected),
    }
