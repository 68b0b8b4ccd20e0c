"""Reading the manifest (output of ``srvau ingest``): one home for every stage that consumes it.

The CoT builder, the data gate and the evaluation all start from ``manifest.parquet``; they share
this reader so a missing file, an unreadable file, missing columns or an empty split fail the same
way, with the same message, everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

MANIFEST_NAME = "manifest.parquet"
QUARANTINE_NAME = "quarantine.jsonl"  # inputs ingestion rejected, one JSON object per line, next to the manifest


class ManifestError(ValueError):
    """The manifest is missing, unreadable, lacks columns or has no row to work on."""


def read_manifest(path: str | Path, required: Iterable[str] = (), split: str | None = None) -> pd.DataFrame:
    """The manifest's rows (only ``split``'s when given), checked for ``required`` columns and rows."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found (run `srvau ingest` first)")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ManifestError(f"manifest {path} is not a readable parquet file: {e}") from None
    missing = sorted({c for c in required if c not in df.columns})
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing}")
    if split is not None:
        if "split" not in df.columns:
            raise ManifestError(f"manifest {path} lacks column(s) ['split']")
        rows = df[df["split"] == split]
        if rows.empty:
            raise ManifestError(f"manifest {path} has no row in split {split!r} (splits: {sorted(df['split'].unique())})")
        return rows.reset_index(drop=True)
    if df.empty:
        raise ManifestError(f"manifest {path} has no rows")
    return df
