"""Score a VAU-R1-style prediction CSV against VAU-Bench annotations (``srvau eval predictions``).

Inputs: the annotation CSV (read through :func:`srvau.data.vau_bench.read_vau_bench`, so full-text
correct options, ``-1`` QA fields and class spellings are normalised; an imported ``.parquet`` works
too) and a prediction CSV with ``Video Name`` and one answer column (``QA answer``,
``Temporal Grounding``, ``CLS answer``, or any column holding raw/reflection-format outputs).

Which rows count (``n``): prediction rows matched to an annotation row with a valid ground truth for
the task: ``qa`` rows with a question (not ``-1``); ``tag`` rows whose interval is an anomaly
(``0,0`` normal and ``-1,-1`` unavailable excluded); ``cls`` rows with a class (not ``-1``). Every
percentage is over ``n``. Prediction rows that match no annotation, match ambiguously, repeat a
video already predicted (the first is kept, as VAU-R1 does) or hit a row without valid ground truth,
and annotation rows with no prediction, are reported (counts + names) and never silently dropped.

Departures from VAU-R1's scripts, all in the direction docs/evaluation.md states: QA and CLS there divide by all
ground-truth rows (a video without a prediction counts wrong); here that video is reported as missing
and the denominator is ``n`` (equal whenever the prediction file covers the annotations, as VAU-R1's
own inference writes it). VAU-R1's grounding skips only ``0,0`` rows; ``-1,-1`` rows are skipped
here too (no interval to ground). Ground-truth classes are compared by canonical spelling.

Name matching (prediction ``Video Name`` -> annotation row), first rule that gives one row wins:

1. equal to the row's ``video_id`` (``ucf/Abuse028_x264``) or its video name;
2. same base name without directories and video extension (``Abuse028_x264`` ~ ``Abuse028_x264.mp4``;
   VAU-R1 appends ``.mp4`` the same way);
3. same base name once a dataset prefix (``ucf_``, ``msad_``, ``ecva_``, ``demo_``) is removed from
   both sides, so ``Abuse028_x264.mp4`` matches ``ucf_Abuse028_x264.mp4``. A rule that finds several
   rows (e.g. ``ucf_17`` and ``ecva_17`` in a mixed file) is ambiguous: reported, not guessed.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from srvau.contract.truth import truth_of
from srvau.contract.vocab import METRIC_TASK
from srvau.data.vau_bench import read_vau_bench, split_prefix, strip_video_ext
from srvau.evaluation.metrics import TASKS, task_metrics

log = logging.getLogger(__name__)

DEFAULT_COLUMNS: dict[str, str] = {"qa": "QA answer", "tag": "Temporal Grounding", "cls": "CLS answer"}
NAME_COLUMN = "Video Name"


class PredictionsError(ValueError):
    """A prediction or annotation file that cannot be scored at all."""


@dataclass
class MatchReport:
    """What happened to every prediction row and every annotation row with valid ground truth."""

    matched: list[tuple[int, int]] = field(default_factory=list)  # (prediction index, annotation index)
    unmatched: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    no_ground_truth: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # annotation rows (valid GT) without a prediction
    rejected_annotations: int = 0
    truths: list[Any] = field(default_factory=list)  # per annotation row: its ground truth, None if not scored

    def log(self, task: str) -> None:
        for what, names, why in (
            ("unmatched prediction", self.unmatched, "no annotation row has this video"),
            ("ambiguous prediction", self.ambiguous, "several annotation rows fit this name"),
            ("duplicate prediction", self.duplicates, "video predicted again; the first row is kept"),
            ("prediction", self.no_ground_truth, f"the annotation has no valid {task} ground truth"),
            ("annotation", self.missing, f"valid {task} ground truth but no prediction"),
        ):
            if names:
                shown = ", ".join(names[:10]) + (f", ... (+{len(names) - 10})" if len(names) > 10 else "")
                log.warning("%d %s row(s) not scored (%s): %s", len(names), what, why, shown)
        if self.rejected_annotations:
            log.warning(
                "%d annotation record(s) rejected by the importer (listed above)", self.rejected_annotations
            )


# ----------------------------------------------------------------------------- reading


def load_annotations(path: Path) -> tuple[pd.DataFrame, int]:
    """Annotation rows in manifest columns, and how many records the importer rejected."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"annotation file not found: {path}")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        missing = [c for c in ("video_name", "video_id", "correct_option", "has_qa", "anomaly_class",
                               "start_s", "end_s", "interval_kind") if c not in df.columns]
        if missing:
            raise PredictionsError(f"{path}: not an imported annotation file, missing {missing}")
        return df.reset_index(drop=True), 0
    result = read_vau_bench(path)
    for r in result.rejected:
        log.warning("annotation %s line %s (%s) rejected: %s: %s", r["source"], r["line"], r["video_name"],
                    r["reason"], r["detail"])
    return result.rows, len(result.rejected)


def pick_column(columns: list[str], task: str, column: str | None) -> str:
    """The answer column: ``column`` if given, else the task default, else the only non-name column."""
    if column is not None:
        if column not in columns:
            raise PredictionsError(f"column {column!r} not in the prediction file; found {columns}")
        return column
    if DEFAULT_COLUMNS[task] in columns:
        return DEFAULT_COLUMNS[task]
    others = [c for c in columns if c != NAME_COLUMN]
    if len(others) == 1:
        log.info("no %r column; using the only answer column %r", DEFAULT_COLUMNS[task], others[0])
        return others[0]
    raise PredictionsError(
        f"no {DEFAULT_COLUMNS[task]!r} column and several candidates {others}; pass --column"
    )


def read_predictions(path: Path, task: str, column: str | None = None) -> tuple[pd.DataFrame, str]:
    """(frame with ``name`` and ``response``, the column used). Blank responses stay (scored wrong)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"prediction file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise PredictionsError(f"{path}: cannot read as CSV: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    if NAME_COLUMN not in df.columns:
        raise PredictionsError(f"{path}: no {NAME_COLUMN!r} column; found {list(df.columns)}")
    col = pick_column(list(df.columns), task, column)
    return pd.DataFrame({"name": df[NAME_COLUMN].astype(str).str.strip(), "response": df[col].astype(str)}), col


# ----------------------------------------------------------------------------- matching


def _base(name: str) -> str:
    return strip_video_ext(re.split(r"[\\/]", name.strip())[-1])


def _bare(name: str) -> str:
    return split_prefix(_base(name))[1]


class NameIndex:
    """Annotation rows by id/name, base name and prefix-free base name (see the module docstring)."""

    def __init__(self, ann: pd.DataFrame) -> None:
        self.exact: dict[str, set[int]] = defaultdict(set)
        self.base: dict[str, set[int]] = defaultdict(set)
        self.bare: dict[str, set[int]] = defaultdict(set)
        for i, (name, vid) in enumerate(zip(ann["video_name"], ann["video_id"])):
            self.exact[str(name)].add(i)
            self.exact[str(vid)].add(i)
            self.base[_base(str(name))].add(i)
            self.bare[_bare(str(name))].add(i)

    def lookup(self, name: str) -> tuple[int | None, bool]:
        """(annotation index or None, ambiguous?)."""
        for table, key in ((self.exact, name), (self.exact, strip_video_ext(name)), (self.base, _base(name)),
                           (self.bare, _bare(name))):
            hits = table.get(key)
            if hits:
                if len(hits) == 1:
                    return next(iter(hits)), False
                return None, True
        return None, False


_PIPELINE_TASK = {v: k for k, v in METRIC_TASK.items()}  # tag -> grounding, ...


def ground_truth(task: str, row: Mapping[str, Any]) -> Any:
    """What one annotation row is scored against for a VAU-R1 task (qa/tag/cls), or None when the row does
    not count (:func:`srvau.contract.truth.truth_of`; grounding on anomaly intervals only)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    truth = truth_of(_PIPELINE_TASK[task], row)
    if truth is None or not truth.in_grounding_protocol:
        return None
    return truth.interval if task == "tag" else truth.answer


def match(task: str, ann: pd.DataFrame, preds: pd.DataFrame) -> MatchReport:
    index = NameIndex(ann)
    truths = [ground_truth(task, row) for row in ann.to_dict("records")]
    valid = [t is not None for t in truths]
    report = MatchReport()
    seen: set[int] = set()
    for p, name in enumerate(preds["name"]):
        a, ambiguous = index.lookup(name)
        if a is None:
            (report.ambiguous if ambiguous else report.unmatched).append(name)
        elif a in seen:
            report.duplicates.append(name)
        else:
            seen.add(a)
            if valid[a]:
                report.matched.append((p, a))
            else:
                report.no_ground_truth.append(name)
    report.missing = [str(ann["video_name"].iloc[a]) for a in range(len(ann)) if valid[a] and a not in seen]
    report.truths = truths
    return report


# ----------------------------------------------------------------------------- the stage


def evaluate_predictions(
    task: str, annotations: Path, predictions: Path, column: str | None = None
) -> tuple[dict[str, Any], MatchReport]:
    """The issue-6 JSON for one prediction file, and the match report behind ``n``."""
    if task not in TASKS:
        raise PredictionsError(f"task must be one of {TASKS}, got {task!r}")
    ann, rejected = load_annotations(annotations)
    preds, col = read_predictions(predictions, task, column)
    report = match(task, ann, preds)
    report.rejected_annotations = rejected
    texts = [preds["response"].iloc[p] for p, _ in report.matched]
    gts = [report.truths[a] for _, a in report.matched]
    result = task_metrics(task, texts, gts)
    log.info("%s: scored %d of %d prediction rows from column %r", predictions, result["n"], len(preds), col)
    return result, report

