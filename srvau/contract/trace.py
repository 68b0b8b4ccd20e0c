"""The reflection trace format and the answer parsers of the evaluation protocol (docs/trace-format.md,
docs/evaluation.md).

One home for reading model outputs: the RoCoT quality filter, the GRPO rewards and the evaluation
all parse through this module, so a trace the filter keeps is scored the same way everywhere.

Reflection format (our decision; SRVAU-R1 does not publish its tags, modelled on SRPO)::

    <think>..</think><answer>..</answer>[<glue>[s, e]</glue>]
    <reflection>..</reflection>
    <think>..</think><answer>..</answer>[<glue>[s, e]</glue>]

The single-pass VAU-R1 format is the first line alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from typing import Any

from srvau.contract.vocab import CLASSES, NORMAL_INTERVAL, class_key

TAGS = ("think", "answer", "glue", "reflection")

_BLOCK = re.compile(r"<(think|answer|glue|reflection)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class Trace:
    """Blocks of a completion; ``first_*`` from the first pass, ``final_*`` from the last."""

    blocks: tuple[tuple[str, str], ...]
    first_think: str | None
    first_answer: str | None
    first_glue: str | None
    reflection: str | None
    final_think: str | None
    final_answer: str | None
    final_glue: str | None
    reflective: bool  # the full three-part structure, in order, every block non-empty
    single_pass: bool  # a well-formed VAU-R1 single pass
    clean: bool = True  # nothing but whitespace outside the blocks
    # Whether a trace is well formed for a task and prompt style: srvau.contract.scoring.well_formed.


def _fmt_time(x: float) -> str:
    return f"{float(x):.1f}"


def render_glue(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return ""
    s, e = interval
    return f"<glue>[{_fmt_time(s)}, {_fmt_time(e)}]</glue>"


def render_pass(think: str, answer: str, glue: tuple[float, float] | None = None) -> str:
    return f"<think>{think.strip()}</think><answer>{answer.strip()}</answer>{render_glue(glue)}"


def render_trace(
    first_think: str,
    first_answer: str,
    reflection: str,
    final_think: str,
    final_answer: str,
    first_glue: tuple[float, float] | None = None,
    final_glue: tuple[float, float] | None = None,
) -> str:
    return (
        render_pass(first_think, first_answer, first_glue)
        + f"\n<reflection>{reflection.strip()}</reflection>\n"
        + render_pass(final_think, final_answer, final_glue)
    )


_ANY_TAG = re.compile(r"</?(?:think|answer|glue|reflection)>")


def _pass_ok(blocks: list[tuple[str, str]], i: int, end: int) -> bool:
    """blocks[i:end] is think, answer[, glue] with non-empty contents that hold no nested tags."""
    names = [b[0] for b in blocks[i:end]]
    if names not in (["think", "answer"], ["think", "answer", "glue"]):
        return False
    return all(b[1].strip() and not _ANY_TAG.search(b[1]) for b in blocks[i:end])


def _only_blocks(text: str) -> bool:
    """Nothing but whitespace outside the blocks (format rewards full-match, as open-r1/VAU-R1 do)."""
    return not _BLOCK.sub("", text).strip()


def parse_trace(text: str) -> Trace:
    """Split a completion into its blocks.

    ``reflective``: exactly ``think, answer[, glue], reflection, think, answer[, glue]``, every block
    non-empty, no tag nested inside a block, nothing but whitespace between blocks. With a
    reflection block the first pass is what precedes it and the final pass what follows it
    (a pass without an answer yields None, never the other pass's answer); without one, first and
    final are the first and last ``<answer>``/``<glue>`` of the text.
    """
    text = text or ""
    blocks = [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]
    names = [b[0] for b in blocks]
    clean = _only_blocks(text)

    def first(tag: str, within: list[tuple[str, str]]) -> str | None:
        return next((c.strip() for n, c in within if n == tag), None)

    def last(tag: str, within: list[tuple[str, str]]) -> str | None:
        return next((c.strip() for n, c in reversed(within) if n == tag), None)

    if "reflection" in names:
        r = names.index("reflection")
        before, after = blocks[:r], blocks[r + 1 :]
        reflective = (
            clean
            and names.count("reflection") == 1
            and _pass_ok(blocks, 0, r)
            and bool(blocks[r][1].strip())
            and _pass_ok(blocks, r + 1, len(blocks))
        )
        reflection = blocks[r][1].strip()
    else:
        before, after, reflective, reflection = blocks, blocks, False, None

    return Trace(
        blocks=tuple(blocks),
        first_think=first("think", before),
        first_answer=first("answer", before),
        first_glue=first("glue", before),
        reflection=reflection,
        final_think=last("think", after) if "reflection" not in names else first("think", after),
        final_answer=last("answer", after),
        final_glue=last("glue", after),
        reflective=bool(reflective),
        single_pass=not reflective and clean and _pass_ok(blocks, 0, len(blocks)),
        clean=clean,
    )


# ----------------------------------------------------------------------------- evaluation scope


def pass_text(text: str | None, which: str = "final") -> str:
    """The part of a completion that one pass's answer is read from.

    ``final``: after the last ``</reflection>`` (after ``<reflection>`` when it never closes);
    ``first``: before the first ``<reflection>``. Without a reflection tag both are the whole text,
    so a VAU-R1 single-pass output is scored exactly as VAU-R1 scores it. (VAU-R1's scripts read
    the *first* ``<answer>``/``<glue>`` of a response; restricting them to one pass is how the same
    rules give the final answer of a reflection trace, docs/trace-format.md.)
    """
    if which not in ("first", "final"):
        raise ValueError(f"which must be 'first' or 'final', got {which!r}")
    text = text if isinstance(text, str) else ""
    if "<reflection>" not in text and "</reflection>" not in text:
        return text
    if which == "first":
        cut = text.find("<reflection>")
        return text[:cut] if cut >= 0 else text[: text.find("</reflection>")]
    if "</reflection>" in text:
        return text.rsplit("</reflection>", 1)[1]
    return text.split("<reflection>", 1)[1]


# ----------------------------------------------------------------------------- multiple choice

# VAU-R1 src/evaluation/inference_qa_qwen.py (clean_model_answer): case-insensitive throughout.
_LETTER_IN_ANSWER = re.compile(r"<answer>\s*([A-D])\s*</answer>", re.IGNORECASE)
_TAG_LETTER = re.compile(r"<\s*([A-D])\s*/?\s*>", re.IGNORECASE)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def extract_letter(text: str | None, which: str = "final") -> str | None:
    """The chosen option letter by VAU-R1's rules, in order (docs/evaluation.md), on one pass of the text.

    1. ``<answer>X</answer>`` with only the letter (and blanks) inside, first occurrence;
    2. a tag-like ``<X>`` / ``<X/>``, first occurrence;
    3. the last standalone A-D after the last ``</think>``;
    4. the last standalone A-D anywhere; else None.

    Exactly as VAU-R1: matching is case-insensitive, so a lone article "a" counts as option A in
    rules 3-4 (a model that follows the answer format never reaches them), and ``<answer>B. text``
    is not rule 1.
    """
    scope = pass_text(text, which)
    if not scope:
        return None
    for pat in (_LETTER_IN_ANSWER, _TAG_LETTER):
        m = pat.search(scope)
        if m:
            return m.group(1).upper()
    parts = _THINK_CLOSE.split(scope)
    if len(parts) > 1:
        hits = _STANDALONE.findall(parts[-1])
        if hits:
            return hits[-1].upper()
    hits = _STANDALONE.findall(scope)
    return hits[-1].upper() if hits else None


def letter_of(block: str | None) -> str | None:
    """Letter inside one answer block's text (no tags), e.g. 'B', 'B.', '(B) text'."""
    if not block:
        return None
    m = re.match(r"\s*\(?([A-D])\b", block)
    if m:
        return m.group(1)
    hits = _STANDALONE.findall(block)
    return hits[-1].upper() if hits else None


# ----------------------------------------------------------------------------- intervals

_TIME = r"(\d+(?::\d{1,2}){0,2}(?:\.\d+)?|-?\d+(?:\.\d+)?)"
_BRACKET = re.compile(r"\[\s*" + _TIME + r"\s*,\s*" + _TIME + r"\s*\]")
# VAU-R1 src/evaluation/evaluation_tag.py (parse_html): first match, no DOTALL.
_EVAL_GLUE = re.compile(r"<glue>(.*?)</glue>")
_EVAL_BRACKET = re.compile(r"\[(.*?)\]")
_NOT_TIME_CHAR = re.compile(r"[^0-9:.,-]")


def parse_time(token: str) -> float:
    """Seconds from ``12.5``, ``mm:ss`` or ``hh:mm:ss`` (fractions allowed on the last field)."""
    parts = token.strip().split(":")
    if len(parts) == 1:
        return float(parts[0])
    if len(parts) > 3:
        raise ValueError(f"not a time: {token!r}")
    total = 0.0
    for p in parts:
        total = total * 60 + float(p)
    return total


def parse_interval_strict(text: str | None) -> tuple[float, float] | None:
    """``[s, e]`` from a glue block's text, or None when unparseable (format checks, rewards)."""
    if not text:
        return None
    m = _BRACKET.search(text)
    if not m:
        return None
    return parse_time(m.group(1)), parse_time(m.group(2))


def extract_interval(text: str | None, which: str = "final") -> tuple[float, float]:
    """Evaluation rule (docs/evaluation.md, VAU-R1's ``parse_html``) on one pass of the text.

    The first ``<glue>..</glue>`` of the pass, else its first ``[..]``; inside it every character
    but digits and ``: . , -`` is dropped (so ``[3.0s, 5.0s]`` reads as 3-5), it must split on
    ``,`` into exactly two times (seconds, ``mm:ss`` or ``hh:mm:ss``); anything else is (0, 0),
    which scores IoU 0. Departure: VAU-R1 crashes on a mix of ``mm:ss`` and plain seconds and on
    minutes/seconds >= 60; here they parse.
    """
    scope = pass_text(text, which)
    m = _EVAL_GLUE.search(scope) or _EVAL_BRACKET.search(scope)
    if not m:
        return (0.0, 0.0)
    parts = _NOT_TIME_CHAR.sub("", m.group(1)).split(",")
    if len(parts) != 2:
        return (0.0, 0.0)
    try:
        return parse_time(parts[0]), parse_time(parts[1])
    except ValueError:
        return (0.0, 0.0)


def is_normal_interval(iv: tuple[float, float] | None) -> bool:
    return iv is not None and iv[0] < 0 and iv[1] < 0


def iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """VAU-R1's temporal IoU: overlap / (max end - min start); a zero-length prediction scores 0.

    (VAU-R1 tests only ``start == end``; a reversed prediction gets zero overlap there too.)
    """
    ps, pe = pred
    gs, ge = gt
    if pe <= ps or ge <= gs:
        return 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(pe, ge) - min(ps, gs)
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------- classes

# VAU-R1 src/evaluation/evaluation_cls.py: one alternation with word boundaries, words joined by
# runs of space/underscore; a hit counts when it normalises to one of the 20 names.
_CLASS_PATTERN = re.compile(
    r"\b("
    + "|".join(r"(?:%s)" % r"[_\s]*".join(map(re.escape, re.split(r"[_\s]+", c))) for c in CLASSES)
    + r")\b",
    re.IGNORECASE,
)
_BY_KEY = {class_key(c): c for c in CLASSES}
_ANSWER_OPEN = "<answer>"


def extract_class(text: str | None, which: str = "final") -> str | None:
    """The first of the 20 class names mentioned (docs/evaluation.md), on one pass of the text.

    Scope: the text of the pass's first ``<answer>`` (to ``</answer>``, or to the end when it never
    closes, as VAU-R1's HTML parser reads it) when the pass contains ``<answer>``, else the whole
    pass. Names match case-insensitively with space == underscore, on word boundaries.
    """
    scope = pass_text(text, which)
    if _ANSWER_OPEN in scope:
        scope = scope.split(_ANSWER_OPEN, 1)[1].split("</answer>", 1)[0]
    for m in _CLASS_PATTERN.finditer(scope):
        name = _BY_KEY.get(class_key(m.group(1)))
        if name is not None:
            return name
    return None


# ----------------------------------------------------------------------------- TRL completions


def completion_text(completion: Any) -> str:
    """Plain text of a completion: a string, or TRL's conversational form (a list of chat messages)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    if isinstance(completion, (list, tuple)):
        return "".join(completion_text(m) for m in completion)
    return str(completion)
