"""Demo data: real mp4s decoded by decord, events visible exactly inside the CSV interval, decoys exactly
inside the interval their annotation records."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from decord import VideoReader, cpu

from srvau.contract.vocab import canonical_class
from srvau.cot.teachers import misleading_cue
from srvau.data.synth import NORMAL_OPTION, STYLES, TIME_BAR, TIME_BAR_HEIGHT, VAU_BENCH_COLUMNS, synthesize


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
        cue = misleading_cue(r["Reasoning"])
        if r["Anomaly Class"] == "Normal":
            for name, st in STYLES.items():
                if cue is None or name != cue.resembles:
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


def test_each_option_starts_with_its_own_word():
    """A trace names the option it picks by its first words (srvau.cot.teachers): they must tell the
    options apart, or naming them says nothing about which letter follows."""
    firsts = [o.split()[0].lower() for o in [NORMAL_OPTION, *(st.option for st in STYLES.values())]]
    assert len(set(firsts)) == len(firsts), firsts


def test_the_time_bar_shows_elapsed_time(demo_dir, params):
    """The top band's bar covers t / duration of the width in every frame: time is in the pixels, where
    a model reads it, and not only in the rotary positions Qwen2.5-VL gives video tokens."""
    cfg = params.synth
    assert cfg.time_bar
    band = slice(1, int(TIME_BAR_HEIGHT * cfg.height) - 1)  # inside the bar, off its compressed edge
    for r in _rows(demo_dir, "val")[:3]:
        vr = VideoReader(str(demo_dir / "videos" / r["Video Name"]), ctx=cpu(0), num_threads=1)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        covered = [_colour_share(f[band], TIME_BAR) for f in frames]
        expected = [k / cfg.fps / cfg.duration_s for k in range(len(frames))]
        assert np.abs(np.array(covered) - np.array(expected)).max() < 0.1, (r["Video Name"], covered)


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


def test_letters_are_balanced_within_each_split(demo_dir):
    for split in ("train", "val", "test"):
        letters = [r["Correct Option"] for r in _rows(demo_dir, split)]
        counts = [letters.count(x) for x in "ABCD"]
        assert max(counts) - min(counts) <= 1, (split, counts)


def test_decoys_are_visible_only_where_the_annotation_says_and_mislead_on_purpose(demo_dir, params):
    """A decoy shows another class's look inside its recorded interval only, before the real event, and
    its class's option is among the QA options (what a first glance at it would pick)."""
    cued = 0
    for split in ("train", "val", "test"):
        for r in _rows(demo_dir, split):
            cue = misleading_cue(r["Reasoning"])
            if cue is None:
                continue
            cued += 1
            assert cue.resembles != r["Anomaly Class"]
            vr = VideoReader(str(demo_dir / "videos" / r["Video Name"]), ctx=cpu(0), num_threads=1)
            frames = vr.get_batch(list(range(len(vr)))).asnumpy()
            t = np.arange(len(vr)) / params.synth.fps
            color = STYLES[cue.resembles].color
            s, e = cue.interval
            assert e - s == pytest.approx(params.synth.decoy_s)
            inside = [_colour_share(f, color) for f, ti in zip(frames, t) if s + 0.13 <= ti < e - 0.13]
            outside = [_colour_share(f, color) for f, ti in zip(frames, t) if ti < s - 0.13 or ti >= e + 0.13]
            assert inside and min(inside) > 0.005 and max(outside) < 0.002, r["Video Name"]
            if r["Anomaly Class"] != "Normal":
                assert e + 0.5 <= float(r["Start Time"]) + 1e-9
            options = [r[f"Option {i}"] for i in range(1, 5)]
            assert STYLES[cue.resembles].option in options
            assert r[f"Option {'ABCD'.index(r['Correct Option']) + 1}"] != STYLES[cue.resembles].option
    n = params.synth.n_train + params.synth.n_val + params.synth.n_test
    assert cued >= round(n * params.synth.decoy_share) - 3
