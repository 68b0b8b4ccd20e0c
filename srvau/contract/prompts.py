"""Task prompts, one home for RoCoT generation, GRPO rollouts and evaluation.

Three answer styles (docs/trace-format.md): ``reflect`` (our three-part trace), ``think`` (VAU-R1's single
pass with reasoning) and ``direct`` (VAU-R1's no-think prompt: the answer alone). The wording of the
task questions follows VAU-R1's prompts in spirit; exact strings are ours.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Mapping

from srvau.contract.vocab import CLASSES, LETTERS, TASKS

Task = Literal["qa", "grounding", "classification", "description"]
Style = Literal["reflect", "think", "direct"]

SYSTEM = {
    "reflect": (
        "Watch the video and answer in three parts: first reason in <think></think> and answer in "
        "<answer></answer>; then check that first answer against the video in <reflection></reflection>; "
        "then reason again in <think></think> and give your final answer in <answer></answer>."
    ),
    "think": "Watch the video, reason in <think></think>, then answer in <answer></answer>.",
    "direct": "Watch the video and answer in <answer></answer> only.",
}

_GLUE_HINT = " For grounding, add the interval as <glue>[start, end]</glue> in seconds after each answer."


# the manifest/RoCoT fields of a question's options, in letter order
OPTION_FIELDS: tuple[str, ...] = tuple(f"option_{letter.lower()}" for letter in LETTERS)


def options_text(row: Mapping[str, Any]) -> str:
    return "\n".join(f"{letter}. {row[field]}" for letter, field in zip(LETTERS, OPTION_FIELDS))


def qa_row(question: str, options: list[str]) -> dict[str, str]:
    """The fields :func:`task_prompt` reads for a QA prompt."""
    return {"question": question, **dict(zip(OPTION_FIELDS, options))}


def qa_prompt_parts(prompt: str) -> tuple[str, list[str]] | None:
    """The question and four options of a QA prompt written by :func:`task_prompt` (the inverse of its
    ``qa`` branch); None for any other text."""
    lines = str(prompt).split("\n")
    if len(lines) < 6 or lines[-1] != "Answer with the option's letter.":
        return None
    options = lines[-5:-1]
    if not all(o.startswith(f"{letter}. ") for letter, o in zip("ABCD", options)):
        return None
    return "\n".join(lines[:-5]), [o[3:] for o in options]


_ARTICLES = {"a", "an", "the"}


def option_key_word(option: str) -> str:
    """The word a QA pass names an option by, just before its letter ("...; Orange B fits."): the option's
    first word that is not an article, as the prompt spells it. Writing it right before the letter turns
    the letter into a look-up a small model learns (docs/trace-format.md); "" for an empty option."""
    for word in str(option or "").split():
        word = word.strip(".,;:!?\"'()[]")
        if word and word.lower() not in _ARTICLES:
            return word
    return ""


def option_choice(option: str, letter: str) -> str:
    """How a QA pass states its choice, the key word right before the letter: "Orange B fits"."""
    return f"{option_key_word(option) or 'option'} {letter} fits"


_CHOICE = re.compile(r"([^\s;,.:]+) ([A-D]) fits\b")


def named_choice(text: str | None) -> tuple[str, str] | None:
    """(key word, letter) of the last choice ``text`` states as :func:`option_choice` writes it
    ("...; Orange B fits." -> ("Orange", "B")); None when it states none."""
    found = _CHOICE.findall(str(text or ""))
    return found[-1] if found else None


def task_prompt(task: str, row: Mapping[str, Any]) -> str:
    """The user text for one (video, task); ``row`` is a manifest/RoCoT row."""
    if task == "qa":
        return f"{row['question']}\n{options_text(row)}\nAnswer with the option's letter."
    if task == "grounding":
        return (
            "Does an anomaly occur in this video? Answer Anomaly or Normal, and give the anomaly's start "
            "and end time in seconds as <glue>[start, end]</glue> ([-1.0, -1.0] when normal)."
        )
    if task == "classification":
        return "Which class describes the video? Choose one of: " + ", ".join(CLASSES) + "."
    if task == "description":
        return "Describe what happens in the video and explain whether and why it is anomalous."
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def system_prompt(style: str, task: str | None = None) -> str:
    if style not in SYSTEM:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {sorted(SYSTEM)}")
    return SYSTEM[style] + (_GLUE_HINT if task == "grounding" and style != "direct" else "")
