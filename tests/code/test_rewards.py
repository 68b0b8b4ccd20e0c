"""Reward functions (docs/rewards.md) on hand-written completions: every case the design names, and the
rule that no policy earns more by being wrong on purpose."""

from __future__ import annotations

import math

import pytest

from srvau.contract.trace import render_trace
from srvau.training import rewards as R


def qa(first: str, final: str) -> str:
    return render_trace("looked at the car", first, "the first answer ignores the smoke", "smoke at 3 s", final)


def grounding(first: str, final: str, ans1: str = "Anomaly", ans2: str = "Anomaly") -> str:
    return (
        f"<think>flames appear</think><answer>{ans1}</answer><glue>{first}</glue>\n"
        f"<reflection>check the start</reflection>\n"
        f"<think>the flames start later</think><answer>{ans2}</answer><glue>{final}</glue>"
    )


def one(fn, completion, **cols):
    """Call a TRL-style reward on a single completion with one-element columns."""
    out = fn([completion], **{k: [v] for k, v in cols.items()})
    assert len(out) == 1
    return out[0]


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "text, task, expected",
    [
        (qa("A", "B"), "qa", 1.0),
        (grounding("[1.0, 3.0]", "[2.0, 4.0]"), "grounding", 1.0),
        (grounding("[-1.0, -1.0]", "[-1.0, -1.0]", "Normal", "Normal"), "grounding", 1.0),
        # grounding needs an interval that parses in both passes
        (qa("Anomaly", "Anomaly"), "grounding", 0.0),
        (grounding("[1.0, 3.0]", "soon"), "grounding", 0.0),
        # single pass only
        ("<think>x</think><answer>B</answer>", "qa", 0.0),
        # an empty block
        (render_trace("x", "A", "r", "y", "B").replace("<reflection>r</reflection>", "<reflection> </reflection>"), "qa", 0.0),
        ("<think></think><answer>A</answer><reflection>r</reflection><think>y</think><answer>B</answer>", "qa", 0.0),
        # wrong order: reflection first
        ("<reflection>r</reflection><think>x</think><answer>A</answer><think>y</think><answer>B</answer>", "qa", 0.0),
        # two reflections
        (qa("A", "B") + "<reflection>again</reflection><think>z</think><answer>C</answer>", "qa", 0.0),
        # an unclosed tag
        ("<think>x</think><answer>A</answer><reflection>r<think>y</think><answer>B</answer>", "qa", 0.0),
        # text outside the blocks
        ("Sure! " + qa("A", "B"), "qa", 0.0),
        (qa("A", "B") + " hope this helps", "qa", 0.0),
        ("", "qa", 0.0),
    ],
)
def test_format(text, task, expected):
    assert one(R.format_reward, text, task=task) == expected


def test_format_reads_conversational_completions():
    msg = [{"role": "assistant", "content": qa("A", "B")}]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": qa("A", "B")}]}]
    assert R.format_reward([msg, parts], task=["qa", "qa"]) == [1.0, 1.0]


@pytest.mark.parametrize(
    "text, task, expected",
    [
        ("<think>x</think><answer>B</answer>", "qa", 1.0),
        ("<think>x</think><answer>Anomaly</answer><glue>[1.0, 2.0]</glue>", "grounding", 1.0),
        ("<think>x</think><answer>Anomaly</answer>", "grounding", 0.0),
        ("<answer>B</answer>", "qa", 0.0),
        (qa("A", "B"), "qa", 0.0),  # the reflection format is not VAU-R1's single pass
        ("<think>x</think><answer>B</answer> extra", "qa", 0.0),
    ],
)
def test_format_single(text, task, expected):
    assert one(R.format_single_reward, text, task=task) == expected


# ----------------------------------------------------------------------------- reflective accuracy


@pytest.mark.parametrize(
    "first, final, expected",
    [
        ("A", "B", 1.0),  # wrong -> right
        ("B", "B", 1.0),  # right -> right pays the same: a wrong first pass earns nothing extra
        ("B", "C", -0.25),  # right -> wrong: a regression is penalised below wrong -> wrong
        ("A", "C", 0.0),  # wrong -> wrong
        ("(B) the car", "B. the car", 1.0),  # letter spellings
        ("no idea", "B", 1.0),  # an unreadable first answer counts as wrong
        ("B", "none of them", -0.25),
    ],
)
def test_reflective_accuracy_qa_transitions(first, final, expected):
    assert one(R.reflective_accuracy_reward, qa(first, final), task="qa", answer="B") == expected


@pytest.mark.parametrize(
    "first, final, expected",
    [
        ("Fire", "Traffic accident", 1.0),
        ("traffic_accident", "Traffic_accident", 1.0),
        ("Traffic accident", "Normal", -0.25),
        ("Fire", "Explosion", 0.0),
    ],
)
def test_reflective_accuracy_classification(first, final, expected):
    text = qa(first, final)
    assert one(R.reflective_accuracy_reward, text, task="classification", answer="Traffic_accident") == expected


def test_reflective_accuracy_right_to_wrong_is_a_parameter():
    funcs, weights = R.get_reward_funcs(
        {"reflective_accuracy": 1.0}, {"reflective_accuracy": {"right_to_wrong": -0.5}}
    )
    assert one(funcs[0], qa("B", "C"), task="qa", answer="B") == -0.5
    assert one(funcs[0], qa("A", "B"), task="qa", answer="B") == 1.0  # other cells untouched


@pytest.mark.parametrize(
    "first, final, expected",
    [("A", "B", 1.0), ("B", "B", 0.75), ("B", "C", 0.25), ("A", "C", 0.0)],
)
def test_srpo_table_stays_available_for_reproduction(first, final, expected):
    assert one(R.reflective_accuracy_srpo_reward, qa(first, final), task="qa", answer="B") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>x</think><answer>B</answer>", 0.5),  # only one answer, correct
        ("<think>x</think><answer>C</answer>", 0.0),  # only one answer, wrong
        ("<think>x</think> I think it is B", 0.0),  # no answer block at all
        ("", 0.0),
        # an unclosed final answer block is not an answer: only the first one counts
        ("<think>x</think><answer>B</answer><reflection>r</reflection><think>y</think><answer>C", 0.5),
        ("<think>x</think><answer>C</answer><reflection>r</reflection><think>y</think><answer>B", 0.0),
    ],
)
def test_reflective_accuracy_single_answer(text, expected):
    assert one(R.reflective_accuracy_reward, text, task="qa", answer="B") == expected


def test_reflective_accuracy_does_not_apply_to_other_tasks():
    out = R.reflective_accuracy_reward(
        [qa("A", "B")] * 3,
        task=["grounding", "description", "qa"],
        answer=["Anomaly", "a car burns", None],
    )
    assert out == [None, None, None]  # no discrete answer / no ground truth -> not scored


# ----------------------------------------------------------------------------- temporal IoU


GT = dict(task="grounding", answer="Anomaly", gt_start=2.0, gt_end=6.0, interval_kind="anomaly")
NORMAL = dict(task="grounding", answer="Normal", gt_start=-1.0, gt_end=-1.0, interval_kind="normal")


def test_temporal_iou_final_interval():
    # same first and final: no reflection term; IoU([3,7],[2,6]) = 3/5
    assert one(R.temporal_iou_reward, grounding("[3.0, 7.0]", "[3.0, 7.0]"), **GT) == pytest.approx(0.6)
    assert one(R.temporal_iou_reward, grounding("[2.0, 6.0]", "[2.0, 6.0]"), **GT) == pytest.approx(1.0)
    assert one(R.temporal_iou_reward, grounding("[7.0, 8.0]", "[7.0, 8.0]"), **GT) == 0.0


def test_temporal_iou_penalises_loss_and_never_pays_for_gain():
    lam = R.IOU_REGRESSION_WEIGHT
    gain = one(R.temporal_iou_reward, grounding("[0.0, 1.0]", "[2.0, 6.0]"), **GT)
    assert gain == pytest.approx(1.0)  # the final interval alone: no bonus for a worse first pass
    loss = one(R.temporal_iou_reward, grounding("[2.0, 6.0]", "[3.0, 7.0]"), **GT)
    assert loss == pytest.approx(0.6 - lam * (1.0 - 0.6))
    assert loss < 0.6 < gain
    funcs, _ = R.get_reward_funcs({"temporal_iou": 1.0}, {"temporal_iou": {"regression_weight": 0.0}})
    assert one(funcs[0], grounding("[2.0, 6.0]", "[3.0, 7.0]"), **GT) == pytest.approx(0.6)


def test_temporal_iou_srpo_pays_for_a_deliberately_wrong_first_interval():
    # the gameable original, kept as a named option: wrong-then-right beats right-then-right
    wrong_first = one(R.temporal_iou_srpo_reward, grounding("[0.0, 1.0]", "[2.0, 6.0]"), **GT)
    right_first = one(R.temporal_iou_srpo_reward, grounding("[2.0, 6.0]", "[2.0, 6.0]"), **GT)
    assert wrong_first == pytest.approx(1.5) and right_first == pytest.approx(1.0)


@pytest.mark.parametrize(
    "first, final, cols, expected",
    [
        ("[-1.0, -1.0]", "[-1.0, -1.0]", NORMAL, 1.0),  # both normal
        ("[2.0, 4.0]", "[-1.0, -1.0]", NORMAL, 1.0),  # corrected to normal
        ("[-1.0, -1.0]", "[2.0, 4.0]", NORMAL, 0.0 - R.IOU_REGRESSION_WEIGHT),  # normal lost
        ("[-1.0, -1.0]", "[-1.0, -1.0]", GT, 0.0),  # predicts normal on an anomaly
        ("[2.0, 6.0]", "[-1.0, -1.0]", GT, 0.0 - R.IOU_REGRESSION_WEIGHT),
    ],
)
def test_temporal_iou_normal_videos(first, final, cols, expected):
    assert one(R.temporal_iou_reward, grounding(first, final), **cols) == pytest.approx(expected)


def test_temporal_iou_normal_from_coordinates_when_kind_missing():
    cols = dict(task="grounding", answer="Normal", gt_start=-1.0, gt_end=-1.0)
    assert one(R.temporal_iou_reward, grounding("[-1.0, -1.0]", "[-1.0, -1.0]"), **cols) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        grounding("[2.0, 6.0]", "from two to six"),  # unparseable final glue
        grounding("[2.0, 6.0]", ""),  # empty final glue
        "<think>x</think><answer>Anomaly</answer>",  # no glue at all
        "The anomaly is at [2.0, 6.0]",  # bare bracket: the reward wants the glue block
        "",
    ],
)
def test_temporal_iou_malformed_is_zero(text):
    assert one(R.temporal_iou_reward, text, **GT) == 0.0


def test_temporal_iou_malformed_first_gives_no_reflection_term():
    text = grounding("early", "[3.0, 7.0]")
    assert one(R.temporal_iou_reward, text, **GT) == pytest.approx(0.6)


@pytest.mark.parametrize(
    "first, final, expected_final",
    [
        ("[00:00:02, 00:00:06]", "[00:00:02, 00:00:06]", 1.0),  # hh:mm:ss
        ("[00:03, 00:07]", "[00:03, 00:07]", 0.6),  # mm:ss
        ("[0:00:00.5, 0:00:01]", "[0:00:03.0, 0:00:07.0]", 0.6),
    ],
)
def test_temporal_iou_clock_times(first, final, expected_final):
    assert one(R.temporal_iou_reward, grounding(first, final), **GT) == pytest.approx(expected_final)


def test_temporal_iou_not_applicable():
    out = R.temporal_iou_reward(
        [grounding("[2.0, 6.0]", "[2.0, 6.0]")] * 4,
        task=["qa", "grounding", "grounding", "classification"],
        answer=["B", "Anomaly", "Anomaly", "Fire"],
        gt_start=[2.0, -1.0, math.nan, 2.0],
        gt_end=[6.0, -1.0, math.nan, 6.0],
        interval_kind=["anomaly", "unavailable", "anomaly", "anomaly"],
    )
    assert out == [None, None, None, None]


def test_zero_length_prediction_scores_zero():
    assert one(R.temporal_iou_reward, grounding("[3.0, 3.0]", "[3.0, 3.0]"), **GT) == 0.0


# ----------------------------------------------------------------------------- length


def _trace_of_length(first_pass: str, rest_len: int) -> str:
    filler = "x" * max(rest_len - len("<reflection></reflection><think>y</think><answer>B</answer>"), 1)
    return first_pass + f"<reflection>{filler}</reflection><think>y</think><answer>B</answer>"


def test_length_peaks_at_twice_the_first_pass():
    first = "<think>" + "a" * 40 + "</think><answer>A</answer>"
    l1 = len(first)
    at_target = _trace_of_length(first, l1)
    assert len(at_target) == 2 * l1
    assert one(R.length_reward, at_target) == pytest.approx(1.0)
    at_cap = _trace_of_length(first, int(1.5 * l1))
    assert len(at_cap) == pytest.approx(2.5 * l1, abs=1)
    expected = math.exp(-(((len(at_cap) - 2 * l1) / (0.5 * l1)) ** 2))
    assert one(R.length_reward, at_cap) == pytest.approx(expected)
    assert expected == pytest.approx(math.exp(-1), rel=0.05)
    # too short is penalised symmetrically, longer is worse
    short = _trace_of_length(first, int(0.5 * l1))
    longer = _trace_of_length(first, 3 * l1)
    assert one(R.length_reward, short) < 1.0
    assert one(R.length_reward, longer) < one(R.length_reward, at_cap)


def test_length_zero_without_first_pass():
    assert R.length_reward(["<think>x</think><answer>B</answer>", "<reflection>r</reflection>", ""]) == [0.0, 0.0, 0.0]


def test_length_pays_nothing_for_a_malformed_trace():
    first = "<think>" + "a" * 40 + "</think><answer>A</answer>"
    good = _trace_of_length(first, len(first))
    assert one(R.length_reward, good, task="qa") == pytest.approx(1.0)
    broken = good.replace("<think>y</think>", "<think> </think>")  # an empty block: not well formed
    assert len(broken) == len(good)
    assert one(R.length_reward, broken, task="qa") == 0.0
    assert one(R.length_reward, good + " trailing text", task="qa") == 0.0


# ----------------------------------------------------------------------------- VAU-R1 baseline set


@pytest.mark.parametrize(
    "text, task, answer, expected",
    [
        ("<think>x</think><answer>B</answer>", "qa", "B", 1.0),
        ("<think>x</think><answer>C</answer>", "qa", "B", 0.0),
        ("<think>x</think>The answer is B", "qa", "B", 1.0),  # evaluation fallback: last standalone letter
        (qa("A", "B"), "qa", "B", 1.0),  # the last answer block
        ("<think>x</think><answer>traffic accident</answer>", "classification", "Traffic_accident", 1.0),
        ("<answer>Fire</answer>", "classification", "Explosion", 0.0),
        ("nothing here", "classification", "Fire", 0.0),
        ("<answer>A</answer>", "grounding", "Anomaly", None),
        ("<answer>A</answer>", "description", "a car burns", None),
    ],
)
def test_accuracy(text, task, answer, expected):
    assert one(R.accuracy_reward, text, task=task, answer=answer) == expected


@pytest.mark.parametrize(
    "text, cols, expected",
    [
        ("<think>x</think><answer>Anomaly</answer><glue>[3.0, 7.0]</glue>", GT, 0.6),
        ("It happens at [00:00:02, 00:00:06].", GT, 1.0),  # evaluation fallback: first bracket
        ("<answer>Normal</answer><glue>[-1.0, -1.0]</glue>", NORMAL, 1.0),
        ("<answer>Normal</answer><glue>[-1.0, -1.0]</glue>", GT, 0.0),
        ("no interval", GT, 0.0),
        ("<glue>[3.0, 7.0]</glue>", dict(GT, task="qa"), None),
    ],
)
def test_iou(text, cols, expected):
    got = one(R.iou_reward, text, **cols)
    assert got == (pytest.approx(expected) if expected is not None else None)


# ----------------------------------------------------------------------------- registry


def test_get_reward_funcs_order_names_and_weights():
    weights = {"format": 0.5, "reflective_accuracy": 1.0, "temporal_iou": 1.0, "length": 0.1}
    funcs, w = R.get_reward_funcs(weights)
    assert [f.__name__ for f in funcs] == list(weights)
    assert w == [0.5, 1.0, 1.0, 0.1]
    # a mixed multi-task batch: each function scores the tasks it applies to
    comps = [qa("A", "B"), grounding("[0.0, 1.0]", "[2.0, 6.0]")]
    cols = dict(
        task=["qa", "grounding"],
        answer=["B", "Anomaly"],
        gt_start=[math.nan, 2.0],
        gt_end=[math.nan, 6.0],
        interval_kind=["unavailable", "anomaly"],
        prompts=["p1", "p2"],
        completion_ids=[[1], [2]],
        trainer_state=None,
    )
    table = [f(comps, **cols) for f in funcs]
    assert table[0] == [1.0, 1.0]
    assert table[1] == [1.0, None]
    assert table[2] == [None, pytest.approx(1.0)]
    assert all(0.0 < v <= 1.0 for v in table[3])


def test_vau_r1_baseline_set_is_registered():
    funcs, w = R.get_reward_funcs({"format_single": 1.0, "accuracy": 1.0, "iou": 1.0})
    assert [f.__name__ for f in funcs] == ["format_single", "accuracy", "iou"] and w == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "weights, options, match",
    [
        ({"formatt": 1.0}, None, "unknown reward"),
        ({}, None, "no reward functions"),
        ({"format": 1.0}, {"format": {"x": 1}}, r"grpo.reward_options.format: unknown option"),
        ({"format": 1.0}, {"length": {"t_factor": 3}}, r"grpo.reward_options.length: .*not in grpo.reward_funcs"),
    ],
)
def test_get_reward_funcs_errors(weights, options, match):
    with pytest.raises(ValueError, match=match):
        R.get_reward_funcs(weights, options)


def test_column_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="task"):
        R.format_reward(["a", "b"], task=["qa"])


# ----------------------------------------------------------------------------- difficulty filter


def test_final_correct():
    def truth(**cols):
        return R.truths({k: [v] for k, v in cols.items()}, 1)[0]

    assert R.final_correct(qa("A", "B"), truth(task="qa", answer="B")) is True
    assert R.final_correct(qa("B", "A"), truth(task="qa", answer="B")) is False
    assert R.final_correct(grounding("[0, 1]", "[2.5, 6.0]"), truth(**GT)) is True
    assert R.final_correct(grounding("[0, 1]", "[5.0, 9.0]"), truth(task="grounding", gt_start=2.0, gt_end=6.0)) is False
    # the final label must agree with the interval (the RoCoT filter's rule)
    assert R.final_correct(grounding("[0, 1]", "[2.0, 6.0]", ans2="Normal"), truth(**GT)) is False
    assert R.final_correct("x", truth(task="description", answer="a car burns")) is None


def test_difficulty_filter_keeps_groups_between_bounds():
    g = 4
    correct = [True] * 4 + [False] * 4 + [True, False, False, False] + [None] * 4 + [True, True, True, False]
    assert R.difficulty_keep(correct, g) == [False, False, True, True, True]
    assert R.difficulty_keep(correct, g, low=0.3, high=0.7) == [False, False, False, True, False]
    with pytest.raises(ValueError):
        R.difficulty_keep(correct[:-1], g)


# ----------------------------------------------------------------------------- no reward for being wrong on purpose

DEFAULT_WEIGHTS = {"format": 0.5, "reflective_accuracy": 1.0, "temporal_iou": 1.0, "length": 0.1}


def _composite(text: str, cols: dict, weights: dict) -> float:
    funcs, w = R.get_reward_funcs(weights)
    total = 0.0
    for f, wi in zip(funcs, w):
        v = one(f, text, **cols)
        total += 0.0 if v is None else wi * v
    return total


def _policies(task: str) -> tuple[dict, list[tuple[str, str]]]:
    """Columns and (wrong-then-right, right-then-right) completions for ``task``, of equal length in each
    pair: the length term depends on lengths alone, so only correctness differs."""
    if task == "qa":
        return dict(task="qa", answer="B"), [(qa("A", "B"), qa("B", "B")), (qa("C", "B"), qa("B", "B"))]
    if task == "classification":
        cols = dict(task="classification", answer="Arson")
        return cols, [(qa("Abuse", "Arson"), qa("Arson", "Arson")), (qa("Fight", "Arson"), qa("Arson", "Arson"))]
    return GT, [
        (grounding("[0.0, 1.0]", "[2.0, 6.0]"), grounding("[2.0, 6.0]", "[2.0, 6.0]")),
        (grounding("[7.0, 8.0]", "[2.5, 6.0]"), grounding("[2.5, 6.0]", "[2.5, 6.0]")),
        (grounding("[-1.0, -1.0]", "[2.0, 6.0]", ans1="Normal"), grounding("[2.00, 6.0]", "[2.0, 6.0]", ans1="Anomaly")),
    ]


@pytest.mark.parametrize("task", ["qa", "classification", "grounding"])
def test_wrong_then_right_earns_no_more_than_right_then_right(task):
    cols, pairs = _policies(task)
    for wrong_first, right_first in pairs:
        assert _composite(wrong_first, cols, DEFAULT_WEIGHTS) <= _composite(right_first, cols, DEFAULT_WEIGHTS) + 1e-9


@pytest.mark.parametrize("task", ["qa", "grounding"])
def test_srpo_options_are_gameable_as_documented(task):
    weights = {"format": 0.5, "reflective_accuracy_srpo": 1.0, "temporal_iou_srpo": 1.0, "length": 0.1}
    cols, pairs = _policies(task)
    wrong_first, right_first = pairs[0]
    assert _composite(wrong_first, cols, weights) > _composite(right_first, cols, weights)
