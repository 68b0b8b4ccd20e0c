"""The video-blind prior (srvau.evaluation.prior): fitted on train answers only, scored like a model."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from srvau.evaluation.inference import Sample, ground_truth
from srvau.evaluation.prior import best_fixed_interval, fit_prior, prior_metrics, prior_output


def _iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def _row(vid, letter, cls, start, end, kind, duration=8.0):
    return {"video_id": vid, "question": "What happens?", "correct_option": letter, "has_qa": True,
            "anomaly_class": cls, "start_s": start, "end_s": end, "interval_kind": kind, "duration_s": duration}


def test_the_fixed_interval_is_the_best_on_its_grid():
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 0.6, 40)
    fracs = [(s, min(1.0, s + rng.uniform(0.1, 0.4))) for s in starts]
    got = best_fixed_interval(fracs, grid=20)
    score = lambda c: sum(_iou(c, f) for f in fracs) / len(fracs)  # noqa: E731
    pts = [i / 20 for i in range(21)]
    brute = max(score((a, b)) for a, b in itertools.product(pts, pts) if b > a)
    assert score(got) == pytest.approx(brute)
    assert best_fixed_interval([(0.25, 0.5)] * 3, grid=20) == (0.25, 0.5)
    assert best_fixed_interval([]) is None


def test_fit_uses_the_most_common_answers_and_anomaly_intervals_in_fractions():
    rows = pd.DataFrame([
        _row("v1", "B", "Fire", 2.0, 4.0, "anomaly"),
        _row("v2", "B", "Fire", 4.0, 8.0, "anomaly", duration=16.0),  # the same fractions on a longer video
        _row("v3", "C", "Normal", 0.0, 0.0, "normal"),
        _row("v4", "C", "Explosion", 2.0, 4.0, "anomaly"),
        _row("v5", "A", "Normal", 0.0, 0.0, "normal"),
    ])
    fit = fit_prior(rows)
    assert fit["qa"] == "B"  # B and C tie at 2: alphabetical, so the fit is deterministic
    assert fit["classification"] == "Fire"  # Fire and Normal tie at 2
    assert fit["grounding"] == [0.25, 0.5] and fit["n"]["grounding"] == 3  # normal videos are not grounding truth


def test_prior_is_scored_like_a_model_on_the_same_pairs():
    fit = {"qa": "A", "classification": "Fire", "grounding": [0.25, 0.5]}
    test = [_row("t1", "A", "Fire", 2.0, 4.0, "anomaly"), _row("t2", "D", "Fire", 0.0, 4.0, "anomaly", duration=4.0),
            _row("t3", "A", "Normal", 0.0, 0.0, "normal")]
    samples = [Sample(r["video_id"], task, style, "", "", "", ground_truth(task, r), 0)
               for r in test for task in ("qa", "grounding", "classification", "description")
               for style in ("reflect", "direct") if ground_truth(task, r) is not None]
    m = prior_metrics(samples, {r["video_id"]: r["duration_s"] for r in test}, fit, ["reflect", "direct"])
    assert set(m) == {"qa", "grounding", "classification", "fit"}  # no description prior
    assert m["qa"]["reflect"] == m["qa"]["direct"] and m["qa"]["reflect"]["n"] == 3
    assert m["qa"]["reflect"]["accuracy"] == pytest.approx(200 / 3, abs=0.01)
    # t1: [2.0, 4.0] exactly (IoU 1); t2 (4 s long): [1.0, 2.0] against [0, 4] (IoU 0.25)
    assert prior_output("grounding", fit, 4.0) == "<answer>Anomaly</answer><glue>[1.0, 2.0]</glue>"
    assert m["grounding"]["direct"]["n"] == 2 and m["grounding"]["direct"]["miou"] == pytest.approx(62.5)
    assert m["classification"]["direct"]["multi_acc"] == pytest.approx(200 / 3, abs=0.01)
    assert m["classification"]["direct"]["binary_acc"] == pytest.approx(200 / 3, abs=0.01)
    assert "grounding" not in prior_metrics(samples, {"t1": 8.0}, fit, ["direct"])  # a duration unknown


def test_fit_on_real_vau_bench_answers_matches_a_plain_count_of_the_csv(vau_bench_dir):
    """Fitted on the real VAU-Bench val CSV through the importer, the prior's QA letter and class are the
    CSV's most common `Correct Option` and `Anomaly Class`, counted here with the csv module alone; rows
    without a known duration (no video probed yet) give no fixed interval rather than a wrong one."""
    import csv
    from collections import Counter

    from srvau.contract.vocab import canonical_class
    from srvau.data.vau_bench import read_vau_bench

    path = vau_bench_dir / "val.csv"
    rows = read_vau_bench(path, split="val").rows
    fit = fit_prior(rows)
    with open(path, newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    letters = Counter(r["Correct Option"].strip().upper() for r in raw if r["Correct Option"].strip().upper() in "ABCD")
    classes = Counter(canonical_class(r["Anomaly Class"].strip()) for r in raw if canonical_class(r["Anomaly Class"].strip()))
    assert fit["qa"] == min(letters, key=lambda v: (-letters[v], v))
    assert fit["classification"] == min(classes, key=lambda v: (-classes[v], v))
    assert fit["n"]["qa"] > 0 and "grounding" not in fit  # the importer knows no durations
    with_duration = rows.assign(duration_s=rows["end_s"].clip(lower=1.0) * 2)  # every event in the first half
    a, b = fit_prior(with_duration)["grounding"]
    assert 0 <= a < b <= 0.5
