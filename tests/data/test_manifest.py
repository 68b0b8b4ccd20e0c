"""The one manifest reader: every consuming stage fails the same way on the same bad input."""

from __future__ import annotations

import pytest

from srvau.cot.builder import read_manifest as cot_read
from srvau.data.manifest import ManifestError, read_manifest
from srvau.evaluation.inference import read_manifest as eval_read
from srvau.validation.gate import GateInputError, run_gate


def test_reads_rows_and_splits(ingest_dir, manifest):
    df = read_manifest(ingest_dir / "manifest.parquet", required=["video_id", "frames_path"])
    assert len(df) == len(manifest)
    test = read_manifest(ingest_dir / "manifest.parquet", split="test")
    assert set(test["split"]) == {"test"} and len(test) == (manifest["split"] == "test").sum()


def test_bad_inputs_fail_alike_in_every_stage(tmp_path, ingest_dir, manifest, params):
    missing, corrupt = tmp_path / "nope.parquet", tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    for path, why in ((missing, "not found"), (corrupt, "not a readable parquet")):
        for read in (lambda p: read_manifest(p), lambda p: cot_read(p, ["qa"]), lambda p: eval_read(p, "test")):
            with pytest.raises(ManifestError, match=why):
                read(path)
        with pytest.raises(GateInputError, match=why):
            run_gate(path, None, tmp_path / "reports", params)

    narrow = tmp_path / "narrow.parquet"
    manifest.drop(columns=["question", "frames_path"]).to_parquet(narrow)
    with pytest.raises(ManifestError, match=r"lacks column\(s\) \['frames_path', 'question'\]"):
        read_manifest(narrow, required=["video_id", "question", "frames_path"])
    with pytest.raises(ManifestError, match="no row in split 'holdout'"):
        read_manifest(ingest_dir / "manifest.parquet", split="holdout")
    empty = tmp_path / "empty.parquet"
    manifest.head(0).to_parquet(empty)
    with pytest.raises(ManifestError, match="has no rows"):
        read_manifest(empty)
