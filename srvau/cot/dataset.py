"""The RoCoT dataset on disk: one parquet file per split (Hugging Face ``datasets`` layout) + a card.

``load_rocot(root, split)`` returns a ``datasets.Dataset`` (what TRL's trainers take). Loading goes
through pandas into an in-memory Arrow table, not ``load_dataset``: nothing is written to the
Hugging Face cache and the explicit features keep the column types stable even for an empty split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")

# name -> datasets dtype; the contract between the cot stage, the gate, training and evaluation.
SCHEMA: dict[str, str] = {
    "sample_id": "string",  # "{video_id}:{task}", "{video_id}:qa@{r}" for train QA rotated by r letters
    "video_id": "string",
    "split": "string",
    "task": "string",  # qa | grounding | classification | description
    "style": "string",  # reflect | think
    "system": "string",
    "prompt": "string",
    "completion": "string",  # the full trace
    "first_answer": "string",  # normalised: letter / class / Anomaly|Normal / text; null if unparseable
    "final_answer": "string",
    "first_correct": "bool",
    "answer": "string",  # ground truth
    "gt_start": "float64",  # seconds; -1 normal; NaN unavailable
    "gt_end": "float64",
    "interval_kind": "string",  # anomaly | normal | unavailable
    "anomaly_class": "string",
    "teacher": "string",
    "frames_path": "string",  # absolute, or relative to the project root (Params.resolve)
}
COLUMNS: tuple[str, ...] = tuple(SCHEMA)
ROTATED = "@"  # sample_id mark of a train QA sample whose options are rotated (cot.qa_option_orders)


def is_rotated(sample_id: str) -> bool:
    """True for the extra option orders of a train QA question; False for its annotated order."""
    return ROTATED in str(sample_id).rpartition(":")[2]


def features():
    from datasets import Features, Value

    return Features({name: Value(dtype) for name, dtype in SCHEMA.items()})


def split_path(root: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(root) / f"{split}.parquet"


def save_split(df: pd.DataFrame, root: str | Path, split: str) -> Path:
    """Write one split atomically with the RoCoT features (an empty frame gives an empty split)."""
    from datasets import Dataset

    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"RoCoT rows lack column(s) {missing}")
    ds = Dataset.from_pandas(df[list(COLUMNS)].reset_index(drop=True), features=features(), preserve_index=False)
    path = split_path(root, split)
    import pyarrow.parquet as pq

    from srvau.io import atomic_path

    # pyarrow directly: same file as Dataset.to_parquet (features in the schema metadata), no progress bar
    with atomic_path(path) as tmp:
        pq.write_table(ds.data.table, tmp)
    return path


def load_frame(root: str | Path, split: str) -> pd.DataFrame:
    path = split_path(root, split)
    if not path.is_file():
        raise FileNotFoundError(f"RoCoT split {path} not found (run `srvau cot` first)")
    return pd.read_parquet(path)


def load_rocot(root: str | Path, split: str):
    """One split as a ``datasets.Dataset`` with the RoCoT features."""
    from datasets import Dataset

    df = load_frame(root, split)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{split_path(root, split)} lacks RoCoT column(s) {missing}")
    return Dataset.from_pandas(df[list(COLUMNS)], features=features(), preserve_index=False)


def load_all(root: str | Path) -> pd.DataFrame:
    """Every split that exists, concatenated (for the validation gate and reports)."""
    parts = [load_frame(root, s) for s in SPLITS if split_path(root, s).is_file()]
    if not parts:
        raise FileNotFoundError(f"no RoCoT split under {root} (run `srvau cot` first)")
    return pd.concat(parts, ignore_index=True)
