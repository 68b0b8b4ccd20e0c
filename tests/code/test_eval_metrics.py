"""Evaluation metrics (docs/evaluation.md) from hand-written outputs, and ``eval predictions`` on the real CSVs."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from srvau.contract.trace import render_trace
from srvau.data.vau_bench import VAU_COLUMNS
from srvau.cli.evaluate import eval_predictions
from srvau.evaluation.metrics import (
    cls_correct,
    cls_metrics,
    pct,
    qa_choice_metrics,
    qa_correct,
    qa_metrics,
    reflection_metrics,
    tag_iou,
    tag_metrics,
    transitions,
)
from srvau.evaluation.predictions import PredictionsError, evaluate_predictions

REAL = Path("/work/shared/data/vau-bench")
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real VAU-Bench CSVs not on this machine")
KEYS = {
    "qa": {"task", "n", "accuracy"},
    "tag": {"task", "n", "miou", "r@0.3", "r@0.5", "r@0.7"},
    "cls": {"task", "n", "binary_acc", "multi_acc"},
}


# ----------------------------------------------------------------------------- QA letters


def point(metrics: dict | None) -> dict | None:
    """The point estimates (VAU-R1's keys) without the ``_ci95`` intervals beside them."""
    return None if metrics is None else {k: v for k, v in metrics.items() if not k.endswith("_ci95")}


@pytest.mark.parametrize(
    "text, gt",
    [
        ("<think>The man runs.</think><answer>C</answer>", "C"),
        ("<answer> b </answer>", "B"),  # VAU-R1 matches case-insensitively
        ("I pick <B> here", "B"),  # tag-like letter
        ("final: <D/>", "D"),
        ("<think>A looks wrong, D maybe</think> so the option is B", "B"),  # last letter after </think>
        ("<think>It is C</think>", "C"),  # nothing after </think>: last letter anywhere
        ("Options A and C fit; I go with C", "C"),
        ("<answer>(D)</answer>", "D"),  # not rule 1 (parenthesis), last standalone letter
    ],
)
def test_qa_letter_rules(text, gt):
    assert qa_correct(text, gt)
    assert not qa_correct(text, "A" if gt != "A" else "B")


def test_qa_rule_order_and_missing_answers():
    # <answer>X</answer> beats a later tag-like letter and later standalone letters
    assert qa_correct("<answer>A</answer> <C> then D", "A")
    # a tag-like letter beats standalone letters, even after </think>
    assert qa_correct("<think>x</think> <B> but C", "B")
    # VAU-R1's rule 1 needs the bare letter; with text inside, the last standalone letter counts,
    # and (exactly as VAU-R1, case-insensitive) the article "a" is one
    assert qa_correct("<answer>B. a man falls</answer>", "A")
    for empty in (None, "", "no option given", float("nan")):
        assert not qa_correct(empty, "A")
    assert point(qa_metrics(["A", "B", None, "D"], ["A", "B", "C", "C"])) == {"n": 4, "accuracy": 50.0}
    assert point(qa_metrics([], [])) == {"n": 0, "accuracy": None}


def test_final_vs_first_answer_in_reflection_outputs():
    trace = render_trace("first look", "A", "The man did not fall; he ran.", "second look", "B")
    assert qa_correct(trace, "B") and not qa_correct(trace, "B", which="first")
    assert qa_correct(trace, "A", which="first")
    cls_trace = render_trace("x", "Normal", "There is smoke.", "y", "Fire")
    assert cls_correct(cls_trace, "Fire") == (True, True)
    assert cls_correct(cls_trace, "Fire", which="first") == (False, False)
    tag_trace = render_trace("x", "Anomaly", "too early", "y", "Anomaly", first_glue=(0.0, 4.0), final_glue=(2.0, 6.0))
    assert tag_iou(tag_trace, (2.0, 6.0)) == 1.0
    assert tag_iou(tag_trace, (2.0, 6.0), which="first") == pytest.approx(2.0 / 6.0)


# ----------------------------------------------------------------------------- grounding


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>Anomaly</answer><glue>[5.0, 10.0]</glue>", 1.0),
        ("<glue>[00:00:05, 00:00:10]</glue>", 1.0),  # hh:mm:ss
        ("<glue>[0:05, 0:10.0]</glue>", 1.0),  # mm:ss
        ("<glue>[5.0s, 10.0s]</glue>", 1.0),  # units dropped as VAU-R1 does
        ("<answer>Anomaly</answer> from [5, 10]", 1.0),  # missing glue: first [...]
        ("<answer>Anomaly</answer> around 5 to 10 s", 0.0),  # nothing parseable -> (0, 0)
        ("<glue>[7.5, 7.5]</glue>", 0.0),  # start == end scores 0
        ("<glue>[10, 5]</glue>", 0.0),  # reversed
        ("<glue>[-1.0, -1.0]</glue>", 0.0),  # "normal" answer on an anomaly
        ("[Anomaly] at [5, 10]", 0.0),  # VAU-R1 reads the first bracket only
        ("<glue>[0.0, 15.0]</glue>", 5.0 / 15.0),  # overlap 5 / (max end - min start) 15
        ("<glue>[7.5, 20]</glue>", 2.5 / 15.0),
        ("<glue>[12, 20]</glue>", 0.0),
    ],
)
def test_tag_iou_rules(text, expected):
    assert tag_iou(text, (5.0, 10.0)) == pytest.approx(expected)


def test_tag_metrics_by_hand():
    texts = ["<glue>[5, 10]</glue>", "<glue>[0, 15]</glue>", "<glue>[6, 10]</glue>", "nothing"]
    # IoUs: 1, 1/3, 4/5, 0 -> mean 0.5333..; >=0.3: 3, >=0.5: 2, >=0.7: 2
    got = tag_metrics(texts, [(5.0, 10.0)] * 4)
    assert point(got) == {"n": 4, "miou": 53.33, "r@0.3": 75.0, "r@0.5": 50.0, "r@0.7": 50.0}


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    "text, gt, expected",
    [
        ("<answer> traffic accident </answer>", "Traffic_accident", (True, True)),
        ("Object falling", "object_falling", (True, True)),  # spelling variants on both sides
        ("<answer>FOOD SAFETY</answer>", "Food Safety", (True, True)),
        ("Normal", "Robbery", (False, False)),
        ("<answer>Fighting</answer>", "Assault", (True, False)),  # anomaly vs anomaly: binary right
        ("<answer>Normal</answer>", "Normal", (True, True)),
        ("<answer>Fire</answer>", "Normal", (False, False)),
        ("<answer>Absence_of_anomaly</answer>", "Normal", (False, False)),  # no class = wrong
        ("", "Normal", (False, False)),
        ("Firearm seen", "Shooting", (False, False)),  # word boundaries: not "Fire"
        ("Fire, then an Explosion", "Fire", (True, True)),  # the first class mentioned
        ("<think>Looks Normal, maybe Fire</think><answer>Explosion</answer>", "Explosion", (True, True)),
        ("<answer> Robbery", "Robbery", (True, True)),  # unclosed answer reads to the end
    ],
)
def test_cls_rules(text, gt, expected):
    assert cls_correct(text, gt) == expected


def test_cls_metrics_by_hand():
    got = cls_metrics(["Fire", "Normal", "Fighting", None], ["Fire", "Normal", "Assault", "Fire"])
    assert point(got) == {"n": 4, "binary_acc": 75.0, "multi_acc": 50.0}


def test_qa_choice_metrics_split_seeing_from_looking_up():
    """The annotation teacher's choice ("...; Orange B fits.") tells a misread video from a letter found
    at the wrong option: the two failures GRPO trades against each other on the demo."""
    from srvau.contract.prompts import option_choice, qa_row, task_prompt

    options = ["Orange flames spread", "Grey smoke rises", "A blue car crashes", "Nothing happens"]
    prompt = task_prompt("qa", qa_row("What happens?", options))

    def said(key_option: int, letter: str) -> str:  # names options[key_option]'s key word, then a letter
        think = "I see " + option_choice(options[key_option], letter)
        return render_trace("first look", "D", "check", think, letter)

    texts = [
        said(1, "B"),  # seen and looked up: right
        said(1, "A"),  # seen, the letter found at the wrong option
        said(0, "A"),  # misread the video, looked up right
        "<think>no choice named</think><answer>B</answer>",
    ]
    m = qa_choice_metrics([prompt] * 4, texts, ["B"] * 4)
    assert (m["named_share"], m["seen_accuracy"], m["lookup_accuracy"]) == (75.0, 66.67, 66.67)
    assert m["lookup_accuracy_ci95"][0] < 66.67 < m["lookup_accuracy_ci95"][1]
    # the final pass is read, not the first: here only the first pass names a choice
    first_only = render_trace("I see " + option_choice(options[1], "B"), "B", "check", "sure", "B")
    assert qa_choice_metrics([prompt], [first_only], ["B"])["named_share"] == 0.0
    assert qa_choice_metrics([prompt], [first_only], ["B"], which="first")["seen_accuracy"] == 100.0
    # a prompt that is not a QA prompt names nothing
    assert qa_choice_metrics(["p"], [texts[0]], ["B"])["seen_accuracy"] is None


# ----------------------------------------------------------------------------- reflection


def test_transitions_and_reflection_metrics():
    t = transitions([False, True, True, False, False], [True, False, True, False, True])
    assert (t.wrong_to_right, t.right_to_wrong, t.right_to_right, t.wrong_to_wrong, t.n) == (2, 1, 1, 1, 5)
    assert t.as_dict()["wrong_to_right"] == 40.0

    texts = [
        render_trace("a", "A", "r", "b", "B"),  # wrong -> right
        render_trace("a", "B", "r", "b", "C"),  # right -> wrong
        "<think>x</think><answer>B</answer>",  # single pass, right -> right
        render_trace("a", "D", "r", "b", "D"),  # wrong -> wrong
    ]
    m = reflection_metrics("qa", texts, ["B", "B", "B", "B"])
    # transitions count reflective outputs only: the single pass has no first/final pair and is
    # reported in the malformed share instead of as right -> right
    assert (m["n"], m["reflective"], m["malformed_share"]) == (4, 3, 25.0)
    rates = [m[k] for k in ("wrong_to_right", "right_to_wrong", "right_to_right", "wrong_to_wrong")]
    assert rates == [33.33, 33.33, 0.0, 33.33]
    assert (m["first_accuracy"], m["final_accuracy"]) == (33.33, 33.33)
    assert m["wrong_to_right_ci95"][0] < 33.33 < m["wrong_to_right_ci95"][1]


def test_truncated_output_is_not_a_right_to_wrong_transition():
    # a truncated trace has no final answer: the old counting called it right -> wrong
    truncated = render_trace("a", "B", "r", "b", "B")[:-20]
    m = reflection_metrics("qa", [truncated, render_trace("a", "A", "r", "b", "B")], ["B", "B"])
    assert (m["reflective"], m["right_to_wrong"], m["wrong_to_right"], m["malformed_share"]) == (1, 0.0, 100.0, 50.0)

    g = (10.0, 20.0)
    tag_texts = [
        render_trace("a", "Anomaly", "r", "b", "Anomaly", first_glue=(0.0, 10.0), final_glue=(10.0, 20.0)),
        render_trace("a", "Anomaly", "r", "b", "Anomaly", first_glue=(10.0, 20.0), final_glue=(15.0, 20.0)),
    ]
    m = reflection_metrics("tag", tag_texts, [g, g])
    # IoUs first (0, 1), final (1, 0.5): mean change ((1 - 0) + (0.5 - 1)) / 2 = 0.25
    assert (m["miou_first"], m["miou_final"], m["iou_change"]) == (50.0, 75.0, 25.0)
    assert (m["iou_improved"], m["iou_worsened"]) == (50.0, 50.0)
    assert (m["wrong_to_right"], m["right_to_right"]) == (50.0, 50.0)  # right = IoU >= 0.5

    m = reflection_metrics("cls", [render_trace("a", "Normal", "r", "b", "Fire")], ["Fire"])
    assert m["wrong_to_right"] == 100.0


def test_wilson_interval():
    from srvau.evaluation.metrics import wilson_ci

    assert wilson_ci(0, 0) is None
    low, high = wilson_ci(8, 16)
    assert (low, high) == (28.0, 72.0)  # the textbook Wilson interval for 8/16
    assert wilson_ci(16, 16)[1] == 100.0 and wilson_ci(0, 16)[0] == 0.0
    assert qa_metrics(["A"] * 16, ["A"] * 8 + ["B"] * 8)["accuracy_ci95"] == [28.0, 72.0]


def test_pct_rounds_like_vau_r1():
    assert pct(0.35774) == 35.77
    assert pct(1 / 3) == 33.33
    assert pct(None) is None


# ----------------------------------------------------------------------------- prediction files


def _ann_row(name: str, **kw) -> dict:
    base = {
        "Video Name": name, "Question": "What happens?", "Option 1": "A car crashes",
        "Option 2": "A man steals a bag", "Option 3": "Nothing happens", "Option 4": "Green trash bin burns",
        "Correct Option": "B", "Key Object": "man", "Description": "d", "Reasoning": "r",
        "Anomaly Class": "Stealing", "Start Time": "2.0", "End Time": "6.0",
    }
    base.update({k.replace("_", " "): v for k, v in kw.items()})
    return base


def _write_ann(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(VAU_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return path


def _write_preds(path: Path, column: str, pairs: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Video Name", column])
        w.writerows(pairs)
    return path


@pytest.fixture
def cli():
    app = typer.Typer()
    app.command()(eval_predictions)
    return app


def _run(cli, *args) -> tuple[int, dict | None, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


def test_excluded_rows_full_text_options_and_name_matching(tmp_path, caplog):
    ann = _write_ann(tmp_path / "test_msad.csv", [
        _ann_row("Assault_2.mp4"),
        _ann_row("Assault_4.mp4", Correct_Option="D. Green trash bin burns"),  # full-text option
        _ann_row("Normal_1.mp4", Anomaly_Class="Normal", Start_Time="0", End_Time="0"),
        _ann_row("Robbery_9.mp4", Start_Time="-1", End_Time="-1"),
        dict(zip(VAU_COLUMNS, ["Fire_3.mp4"] + ["-1"] * 10 + ["1.0", "3.0"])),
    ])
    preds = _write_preds(tmp_path / "qa.csv", "QA answer", [
        ("Assault_2", "B"),  # no extension, VAU-R1 style
        ("msad_Assault_4.mp4", "<answer>D</answer>"),  # prefixed name, as in the train/val files
        ("Normal_1.mp4", "C"),
        ("Robbery_9.mp4", "B"),
        ("Fire_3.mp4", "A"),  # no question: not scored
        ("Ghost_1.mp4", "A"),  # not in the annotations
        ("Assault_2.mp4", "C"),  # duplicate: first kept
    ])
    with caplog.at_level(logging.WARNING):
        result, report = evaluate_predictions("qa", ann, preds)
    assert point(result) == {"task": "qa", "n": 4, "accuracy": 75.0}  # only Normal_1 (C, truth B) is wrong
    assert report.unmatched == ["Ghost_1.mp4"] and report.duplicates == ["Assault_2.mp4"]
    assert report.no_ground_truth == ["Fire_3.mp4"]
    report.log("qa")
    assert "Ghost_1.mp4" in caplog.text and "duplicate" in caplog.text

    tag = _write_preds(tmp_path / "tag.csv", "Temporal Grounding", [
        ("Assault_2.mp4", "<glue>[2.0, 6.0]</glue>"),
        ("Assault_4.mp4", "<glue>[4.0, 8.0]</glue>"),  # IoU 2/6
        ("Normal_1.mp4", "<glue>[0.0, 0.0]</glue>"),  # 0,0 excluded
        ("Robbery_9.mp4", "<glue>[1.0, 2.0]</glue>"),  # -1,-1 excluded
        ("Fire_3.mp4", "<glue>[1.0, 3.0]</glue>"),  # QA -1 but an interval: scored
    ])
    result, report = evaluate_predictions("tag", ann, tag)
    assert point(result) == {"task": "tag", "n": 3, "miou": pct((1 + 2 / 6 + 1) / 3), "r@0.3": 100.0,
                      "r@0.5": pct(2 / 3), "r@0.7": pct(2 / 3)}
    assert sorted(report.no_ground_truth) == ["Normal_1.mp4", "Robbery_9.mp4"]

    cls = _write_preds(tmp_path / "cls.csv", "CLS answer", [
        ("Assault_2.mp4", "stealing"), ("Normal_1.mp4", "<answer> Normal </answer>"), ("Fire_3.mp4", "Fire"),
    ])
    result, report = evaluate_predictions("cls", ann, cls)
    assert point(result) == {"task": "cls", "n": 2, "binary_acc": 100.0, "multi_acc": 100.0}
    assert report.no_ground_truth == ["Fire_3.mp4"]  # class -1
    assert sorted(report.missing) == ["Assault_4.mp4", "Robbery_9.mp4"]


def test_ambiguous_names_are_reported_not_guessed(tmp_path):
    ann = _write_ann(tmp_path / "val.csv", [_ann_row("ucf_17.mp4"), _ann_row("ecva_17.mp4")])
    preds = _write_preds(tmp_path / "p.csv", "QA answer", [("17.mp4", "B"), ("ecva/17", "B")])
    result, report = evaluate_predictions("qa", ann, preds)
    assert report.ambiguous == ["17.mp4"] and result["n"] == 1  # video_id ecva/17 is exact


def test_column_detection_and_override(cli, tmp_path):
    ann = _write_ann(tmp_path / "test_ecva.csv", [_ann_row("14.mp4"), _ann_row("24.mp4", Correct_Option="A")])
    one_col = _write_preds(tmp_path / "out.csv", "response", [("14.mp4", "<answer>B</answer>"), ("24.mp4", "B")])
    code, out, _ = _run(cli, "--task", "qa", "--annotations", str(ann), "--predictions", str(one_col))
    assert code == 0 and point(out) == {"task": "qa", "n": 2, "accuracy": 50.0}

    two = tmp_path / "two.csv"
    two.write_text("Video Name,think,no_think\n14.mp4,A,B\n24.mp4,A,B\n")
    code, out, err = _run(cli, "--task", "qa", "--annotations", str(ann), "--predictions", str(two))
    assert code == 2 and out is None and "--column" in err
    code, out, _ = _run(cli, "--task", "qa", "--annotations", str(ann), "--predictions", str(two), "--column", "think")
    assert point(out) == {"task": "qa", "n": 2, "accuracy": 50.0}
    code, out, _ = _run(cli, "--task", "qa", "--annotations", str(ann), "--predictions", str(two), "--column", "x")
    assert code == 2
    with pytest.raises(PredictionsError):
        evaluate_predictions("qa", ann, tmp_path / "absent.csv")

    nothing = _write_preds(tmp_path / "none.csv", "QA answer", [("99.mp4", "A")])
    code, out, _ = _run(cli, "--task", "qa", "--annotations", str(ann), "--predictions", str(nothing))
    assert code == 1 and point(out) == {"task": "qa", "n": 0, "accuracy": None}


# ----------------------------------------------------------------------------- real CSVs


def _real_rows(name: str) -> list[dict]:
    with open(REAL / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _anomaly(r: dict) -> bool:
    s, e = float(r["Start Time"]), float(r["End Time"])
    return e > s >= 0


@needs_real
@pytest.mark.parametrize("name", ["val.csv", "ucf_subset_val.csv", "ucf_subset_train.csv"])
def test_ground_truth_as_predictions_scores_100(cli, tmp_path, name):
    rows = _real_rows(name)
    ann = str(REAL / name)
    qa = _write_preds(tmp_path / "qa.csv", "QA answer", [(r["Video Name"], r["Correct Option"]) for r in rows])
    code, out, _ = _run(cli, "--task", "qa", "--annotations", ann, "--predictions", str(qa))
    assert code == 0 and set(point(out)) == KEYS["qa"]
    assert point(out) == {"task": "qa", "n": sum(r["Question"] != "-1" for r in rows), "accuracy": 100.0}

    cls = _write_preds(tmp_path / "cls.csv", "CLS answer",
                       [(r["Video Name"], f"<answer> {r['Anomaly Class']} </answer>") for r in rows])
    code, out, _ = _run(cli, "--task", "cls", "--annotations", ann, "--predictions", str(cls))
    assert code == 0 and set(point(out)) == KEYS["cls"]
    assert point(out) == {"task": "cls", "n": len(rows), "binary_acc": 100.0, "multi_acc": 100.0}

    tag = _write_preds(tmp_path / "tag.csv", "Temporal Grounding",
                       [(r["Video Name"], f"<glue>[{r['Start Time']}, {r['End Time']}]</glue>") for r in rows])
    code, out, _ = _run(cli, "--task", "tag", "--annotations", ann, "--predictions", str(tag))
    n_anomaly = sum(_anomaly(r) for r in rows)
    if n_anomaly:
        assert code == 0 and set(point(out)) == KEYS["tag"]
        assert point(out) == {"task": "tag", "n": n_anomaly, "miou": 100.0, "r@0.3": 100.0, "r@0.5": 100.0, "r@0.7": 100.0}
    else:  # the UCF subsets have no anomaly interval (only 0,0 and -1,-1)
        assert code == 1 and out["n"] == 0


@needs_real
def test_shifted_intervals_score_the_hand_computed_iou(cli, tmp_path):
    rows = [r for r in _real_rows("val.csv") if _anomaly(r)]
    # shift every interval right by half its length L: overlap L/2, span 1.5 L -> IoU exactly 1/3
    half = _write_preds(tmp_path / "half.csv", "Temporal Grounding", [
        (r["Video Name"], "<glue>[{:.4f}, {:.4f}]</glue>".format(
            float(r["Start Time"]) + (float(r["End Time"]) - float(r["Start Time"])) / 2,
            float(r["End Time"]) + (float(r["End Time"]) - float(r["Start Time"])) / 2))
        for r in rows
    ])
    code, out, _ = _run(cli, "--task", "tag", "--annotations", str(REAL / "val.csv"), "--predictions", str(half))
    assert point(out) == {"task": "tag", "n": len(rows), "miou": 33.33, "r@0.3": 100.0, "r@0.5": 0.0, "r@0.7": 0.0}

    # a constant 3 s shift: IoU = max(0, L - 3) / (L + 3) per row, computed here without srvau
    by_hand = []
    for r in rows:
        length = float(r["End Time"]) - float(r["Start Time"])
        by_hand.append(max(0.0, length - 3.0) / (length + 3.0))
    shifted = _write_preds(tmp_path / "shift.csv", "Temporal Grounding", [
        (r["Video Name"],
         f"<answer>Anomaly</answer><glue>[{float(r['Start Time']) + 3}, {float(r['End Time']) + 3}]</glue>")
        for r in rows
    ])
    code, out, _ = _run(cli, "--task", "tag", "--annotations", str(REAL / "val.csv"), "--predictions", str(shifted))
    mean = sum(by_hand) / len(by_hand)
    assert out["n"] == len(rows) == 339
    assert out["miou"] == round(round(mean, 4) * 100, 2)
    for k in (0.3, 0.5, 0.7):
        assert out[f"r@{k}"] == round(round(sum(x >= k for x in by_hand) / len(by_hand), 4) * 100, 2)
    assert 0 < out["miou"] < 100


# ----------------------------------------------------------------------------- two models on the same prompts


def _answers(both: int, this_only: int, other_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    this = [True] * both + [True] * this_only + [False] * other_only + [False] * neither
    other = [True] * both + [False] * this_only + [True] * other_only + [False] * neither
    return this, other


def test_paired_difference_counts_discordant_answers_and_is_antisymmetric():
    from srvau.evaluation.metrics import paired_difference

    this, other = _answers(40, 9, 3, 44)
    d = paired_difference(this, other)
    assert (d["n"], d["this_only"], d["other_only"]) == (96, 9, 3)
    assert d["difference"] == pct(6 / 96)
    low, high = d["difference_ci95"]
    assert low < d["difference"] < high
    back = paired_difference(other, this)
    assert back["difference"] == -d["difference"] and back["difference_ci95"] == [-high, -low]
    assert back["mcnemar_p"] == d["mcnemar_p"]
    assert paired_difference([], [])["difference_ci95"] is None
    with pytest.raises(ValueError):
        paired_difference([True], [])


def test_identical_answers_give_an_interval_around_zero_not_a_point():
    from srvau.evaluation.metrics import paired_difference

    d = paired_difference(*_answers(24, 0, 0, 24))
    assert d["difference"] == 0.0 and d["mcnemar_p"] == 1.0
    low, high = d["difference_ci95"]
    assert low < 0 < high and high - low < 10


def test_paired_interval_resolves_what_overlapping_intervals_cannot():
    """12 more right answers of 96, all from the same prompts: the two Wilson intervals overlap, but every
    discordant answer favours one model, which the paired interval and McNemar's test see."""
    from srvau.evaluation.metrics import paired_difference, wilson_ci

    this, other = _answers(48, 12, 0, 36)
    a, b = wilson_ci(sum(this), 96), wilson_ci(sum(other), 96)
    assert a[0] < b[1], "the unpaired intervals overlap"
    d = paired_difference(this, other)
    assert d["difference_ci95"][0] > 0 and d["mcnemar_p"] < 0.001
    even = paired_difference(*_answers(48, 12, 6, 30))  # the same gap of 6 answers, spread both ways
    assert even["difference_ci95"][0] < 0 < even["difference_ci95"][1] and even["mcnemar_p"] > 0.05


def test_mcnemar_exact_p_by_hand():
    from srvau.evaluation.metrics import mcnemar_exact_p

    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 / 2**10)
    assert mcnemar_exact_p(1, 6) == pytest.approx(2 * (1 + 7) / 2**7)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    """Seeded simulation: two models that agree on most prompts, 96 prompts, 1500 draws per setting."""
    import random

    from srvau.evaluation.metrics import paired_difference

    rng = random.Random(0)
    for p_this, p_other, agree in ((0.6, 0.6, 0.8), (0.7, 0.6, 0.7), (0.55, 0.45, 0.5)):
        true = (p_this - (agree * p_this + (1 - agree) * p_other)) * 100
        hits = 0
        for _ in range(1500):
            this = [rng.random() < p_this for _ in range(96)]
            other = [a if rng.random() < agree else rng.random() < p_other for a in this]
            low, high = paired_difference(this, other)["difference_ci95"]
            hits += low <= true <= high
        assert 0.93 <= hits / 1500 <= 0.985, (p_this, p_other, agree, hits / 1500)


def test_paired_mean_difference_of_ious():
    from srvau.evaluation.metrics import paired_mean_difference

    d = paired_mean_difference([0.5, 0.7, 0.9, 0.6], [0.4, 0.5, 0.9, 0.5])
    assert d["n"] == 4 and d["difference"] == pct(0.1)
    assert d["difference_ci95"][0] < 10 < d["difference_ci95"][1]
