"""Demo data: real mp4s decoded by decord, events visible exactly inside the CSV interval."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from decord import VideoReader, cpu

from srvau.data.classes import canonical_class
from srvau.data.synth import STYLES, VAU_BENCH_COLUMNS, synthesize


def _rows(demo_dir, split):
    with open(demo_dir / f"{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def _colour_share(frame: np.ndarray, color) -> float:
    """Share of pixels within a small distance of ``color`` (H.264 shifts colours a little)."""
    d = np.abs(frame.astype(int) - np.array(color)).sum(-1)
    return float((d < 60).mean())


def test_csvs_have_exact_vau_bench_columns(demo_dir):
    for split in ("train", "val", "test"):
        with open(demo_dir / f"{split}.csv", newline="") as f:
            assert next(csv.reader(f)) == VAU_BENCH_COLUMNS


def test_counts_classes_and_letters(demo_dir, params):
    rows = [r for s in ("train", "val", "test") for r in _rows(demo_dir, s)]
    assert len(rows) == params.synth.n_train + params.synth.n_val + params.synth.n_test
    assert all(canonical_class(r["Anomaly Class"]) for r in rows)
    assert len({r["Anomaly Class"] for r in rows}) >= 5  # >= 4 anomaly types + Normal
    letters = [r["Correct Option"] for r in rows]
    assert set(letters) <= set("ABCD") and len(set(letters)) >= 3  # shuffled, not always the same
    for r in rows:
        correct = r[f"Option {'ABCD'.index(r['Correct Option']) + 1}"]
        if r["Anomaly Class"] == "Normal":
            assert (r["Start Time"], r["End Time"]) == ("0.0", "0.0")
            assert "nothing unusual" in correct
        else:
            assert correct == STYLES[r["Anomaly Class"]].option
            assert STYLES[r["Anomaly Class"]].key_object == r["Key Object"]
            assert 0 < float(r["Start Time"]) < float(r["End Time"]) <= params.synth.duration_s


def test_event_frames_differ_inside_the_interval(demo_dir, params):
    """Each anomaly's colour covers the frame inside [start, end) and is absent outside it."""
    checked = 0
    for r in _rows(demo_dir, "train"):
        vr = VideoReader(str(demo_dir / "videos" / r["Video Name"]), ctx=cpu(0), num_threads=1)
        assert len(vr) == round(params.synth.duration_s * params.synth.fps)
        assert vr[0].shape == (params.synth.height, params.synth.width, 3)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        t = np.arange(len(vr)) / params.synth.fps
        if r["Anomaly Class"] == "Normal":
            for st in STYLES.values():
                assert max(_colour_share(f, st.color) for f in frames) < 0.002
            continue
        color = STYLES[r["Anomaly Class"]].color
        s, e = float(r["Start Time"]), float(r["End Time"])
        inside = [_colour_share(f, color) for f, ti in zip(frames, t) if s + 0.13 <= ti < e - 0.13]
        outside = [_colour_share(f, color) for f, ti in zip(frames, t) if ti < s - 0.13 or ti >= e + 0.13]
        assert inside and min(inside) > 0.005, (r["Video Name"], r["Anomaly Class"], inside)
        assert not outside or max(outside) < 0.002, (r["Video Name"], outside)
        checked += 1
    assert checked >= 4


def test_deterministic_by_seed(tmp_path, params):
    from srvau.config import load_params

    small = load_params(overrides={"synth.n_train": 3, "synth.n_val": 1, "synth.n_test": 1})

    def digest(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}

    synthesize(tmp_path / "a", small.synth, 7)
    synthesize(tmp_path / "b", small.synth, 7)
    synthesize(tmp_path / "c", small.synth, 8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_rejects_a_class_it_cannot_draw(tmp_path):
    from srvau.config import load_params

    p = load_params(overrides={"synth.classes": ["Fire", "Arson"]})
    with pytest.raises(ValueError, match="no drawing style for 'Arson'"):
        synthesize(tmp_path, p.synth, 0)
    p = load_params(overrides={"synth.classes": ["Fire", "Firee"]})
    with pytest.raises(ValueError, match="not a VAU-Bench class"):
        synthesize(tmp_path, p.synth, 0)


def test_no_two_videos_are_identical(demo_dir):
    """Identical clips (e.g. two normal videos) would share a sha256 across splits: a leak."""
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (demo_dir / "videos").glob("*.mp4")]
    assert len(digests) == len(set(digests))
