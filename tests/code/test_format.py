"""The reflection trace format and the answer parsers (srvau/contract/trace.py)."""

from __future__ import annotations

import pytest

from srvau.contract.prompts import option_choice, option_key_word, qa_prompt_parts, task_prompt
from srvau.contract.trace import (
    extract_class,
    extract_interval,
    extract_letter,
    iou,
    is_normal_interval,
    letter_of,
    parse_interval_strict,
    parse_time,
    parse_trace,
    pass_text,
    render_trace,
)

WELL_FORMED = (
    "<think>A man walks, then a car hits a pole.</think><answer>Anomaly</answer><glue>[2.0, 5.0]</glue>\n"
    "<reflection>The impact starts later, when the bumper touches the pole.</reflection>\n"
    "<think>The collision is at 3 s and debris settles by 6 s.</think><answer>Anomaly</answer><glue>[3.0, 6.0]</glue>"
)


# ----------------------------------------------------------------------------- parse_trace


def test_well_formed_reflection_trace():
    t = parse_trace(WELL_FORMED)
    assert t.reflective and not t.single_pass
    assert t.first_think.startswith("A man walks") and t.final_think.startswith("The collision")
    assert (t.first_answer, t.final_answer) == ("Anomaly", "Anomaly")
    assert (t.first_glue, t.final_glue) == ("[2.0, 5.0]", "[3.0, 6.0]")
    assert t.reflection.startswith("The impact starts later")
    assert [n for n, _ in t.blocks] == ["think", "answer", "glue", "reflection", "think", "answer", "glue"]


def test_render_and_parse_round_trip():
    text = render_trace(" first ", "A", " crit ", " second ", "B", first_glue=(1.0, 2.0), final_glue=(1.5, 2.5))
    t = parse_trace(text)
    assert t.reflective
    assert (t.first_think, t.first_answer, t.reflection, t.final_think, t.final_answer) == (
        "first", "A", "crit", "second", "B",
    )
    assert parse_interval_strict(t.first_glue) == (1.0, 2.0)
    assert parse_interval_strict(t.final_glue) == (1.5, 2.5)


def test_single_pass_is_not_reflective():
    t = parse_trace("<think>x</think><answer>C</answer>")
    assert t.single_pass and not t.reflective and t.reflection is None
    assert t.first_answer == t.final_answer == "C"
    assert parse_trace("<think>x</think>\n<answer>Anomaly</answer><glue>[1, 2]</glue>").single_pass


@pytest.mark.parametrize(
    "text",
    [
        # empty reflection
        "<think>a</think><answer>A</answer><reflection> </reflection><think>b</think><answer>B</answer>",
        # empty final think
        "<think>a</think><answer>A</answer><reflection>r</reflection><think></think><answer>B</answer>",
        # two reflections
        "<think>a</think><answer>A</answer><reflection>r</reflection><reflection>s</reflection>"
        "<think>b</think><answer>B</answer>",
        # wrong order in the first pass
        "<answer>A</answer><think>a</think><reflection>r</reflection><think>b</think><answer>B</answer>",
        # no final pass
        "<think>a</think><answer>A</answer><reflection>r</reflection>",
        # stray text outside the blocks
        "Sure! <think>a</think><answer>A</answer><reflection>r</reflection><think>b</think><answer>B</answer>",
        # a tag nested inside a block
        "<think>a <answer>C</answer></think><answer>A</answer><reflection>r</reflection>"
        "<think>b</think><answer>B</answer>",
        # unclosed final answer
        "<think>a</think><answer>A</answer><reflection>r</reflection><think>b</think><answer>B",
        "",
    ],
)
def test_malformed_traces_are_not_reflective(text):
    assert not parse_trace(text).reflective


def test_passes_do_not_borrow_each_others_answers():
    # the first pass has no answer: first_answer is None, not the final answer
    t = parse_trace("<think>a</think><reflection>r</reflection><think>b</think><answer>B</answer>")
    assert t.first_answer is None and t.final_answer == "B" and not t.reflective
    t = parse_trace("<think>a</think><answer>A</answer><reflection>r</reflection><think>b</think>")
    assert t.first_answer == "A" and t.final_answer is None


def test_pass_text_scopes():
    assert pass_text(WELL_FORMED, "first").endswith("<glue>[2.0, 5.0]</glue>\n")
    assert pass_text(WELL_FORMED, "final").startswith("\n<think>The collision")
    assert pass_text("plain", "first") == pass_text("plain", "final") == "plain"
    # a reflection that never closes: the final pass is what follows its opening tag
    assert pass_text("<answer>A</answer><reflection>no, <answer>B</answer>", "final") == "no, <answer>B</answer>"
    assert pass_text(None) == ""
    with pytest.raises(ValueError):
        pass_text("x", "middle")


# ----------------------------------------------------------------------------- parsers


def test_extract_letter_on_reflection_traces():
    trace = render_trace("a", "A", "r", "b", "C")
    assert extract_letter(trace) == "C" and extract_letter(trace, "first") == "A"
    assert extract_letter("<answer>c</answer>") == "C"
    assert extract_letter("nothing here") is None


def test_letter_of_block_text():
    assert letter_of("B") == "B"
    assert letter_of("(D) the dog") == "D"
    assert letter_of("C. text") == "C"
    assert letter_of("") is None


@pytest.mark.parametrize(
    "token, seconds",
    [("7", 7.0), ("12.5", 12.5), ("02:03", 123.0), ("1:02:03.5", 3723.5), ("00:00:05", 5.0), ("-1", -1.0)],
)
def test_parse_time(token, seconds):
    assert parse_time(token) == seconds


def test_parse_time_rejects_garbage():
    for bad in ("1:2:3:4", "abc", ""):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_parse_interval_strict_and_extract_interval():
    assert parse_interval_strict("[1.0, 2.5]") == (1.0, 2.5)
    assert parse_interval_strict("[00:01, 00:02]") == (1.0, 2.0)
    assert parse_interval_strict("1.0 to 2.5") is None
    assert parse_interval_strict(None) is None
    assert extract_interval("<glue>[1, 2]</glue> later <glue>[3, 4]</glue>") == (1.0, 2.0)  # VAU-R1: first
    assert extract_interval(WELL_FORMED) == (3.0, 6.0)
    assert extract_interval(WELL_FORMED, "first") == (2.0, 5.0)
    assert extract_interval("<glue>[1, 2, 3]</glue>") == (0.0, 0.0)
    assert extract_interval("<glue>[1:xx, 2]</glue>") == (0.0, 0.0)
    assert extract_interval(None) == (0.0, 0.0)
    assert is_normal_interval((-1.0, -1.0)) and not is_normal_interval((0.0, 3.0)) and not is_normal_interval(None)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ((0.0, 10.0), (5.0, 15.0), 5.0 / 15.0),
        ((5.0, 15.0), (5.0, 15.0), 1.0),
        ((0.0, 4.0), (5.0, 15.0), 0.0),
        ((6.0, 8.0), (5.0, 15.0), 2.0 / 10.0),
        ((7.0, 7.0), (5.0, 15.0), 0.0),
        ((9.0, 6.0), (5.0, 15.0), 0.0),
    ],
)
def test_iou(pred, gt, expected):
    assert iou(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>Traffic Accident</answer>", "Traffic_accident"),
        ("<answer>people   falling</answer>", "People_falling"),
        ("medical_abnormality observed", "Medical Abnormality"),
        ("<answer>Arson</answer> though Fire is mentioned first in the think", "Arson"),
        ("Firearm", None),
        ("_Fire_", None),  # underscores are word characters for VAU-R1's \b
        ("Shooting then Fighting", "Shooting"),
        (None, None),
    ],
)
def test_extract_class(text, expected):
    assert extract_class(text) == expected


def test_extract_class_reflection_passes():
    trace = render_trace("looks calm", "Normal", "smoke appears later", "flames", "Fire")
    assert extract_class(trace) == "Fire" and extract_class(trace, "first") == "Normal"


@pytest.mark.parametrize("option, key", [
    ("Orange flames break out at the bottom of the scene", "Orange"),
    ("A man steals a bicycle", "man"),
    ("The car, crashing", "car"),
    ('"Smoke" rises', "Smoke"),
    ("", ""),
    ("the", ""),
])
def test_an_option_is_named_by_its_first_word_that_is_not_an_article(option, key):
    assert option_key_word(option) == key
    assert option_choice(option, "C") == f"{key or 'option'} C fits"


def test_a_qa_prompt_gives_back_its_question_and_options():
    row = {"question": "What happens?\nLook closely.", "option_a": "Orange flames", "option_b": "A. man runs",
           "option_c": "Cars crash", "option_d": "Nothing"}
    assert qa_prompt_parts(task_prompt("qa", row)) == ("What happens?\nLook closely.",
                                                        ["Orange flames", "A. man runs", "Cars crash", "Nothing"])
    assert qa_prompt_parts(task_prompt("grounding", row)) is None
    assert qa_prompt_parts(task_prompt("qa", row).replace("\nC. ", "\nE. ")) is None
