"""Is an answer right? Is a trace well formed? The one home of every correctness rule
(docs/rewards.md, docs/evaluation.md).

Two readings of a model output, both here:

* **strict** (training): the answer is the content of one ``<answer>`` block (and ``<glue>`` block for
  grounding) of a parsed trace. The RoCoT quality filter, the GRPO rewards and the difficulty filter
  use it, so the data the model learns from and the reward it is paid agree.
* **lenient** (the evaluation protocol): VAU-R1's extraction rules on the text of one pass
  (:func:`srvau.contract.trace.extract_letter` etc.), so our numbers are computed the way VAU-R1
  computes its published ones. ``metrics.json`` and the VAU-R1 baseline rewards (``accuracy``, ``iou``)
  use it.
"""

from __future__ import annotations

import re
from typing import Any

from srvau.contract import trace as T
from srvau.contract.truth import Interval, Truth
from srvau.contract.vocab import NORMAL, canonical_class, class_key

# ----------------------------------------------------------------------------- intervals


def interval_score(pred: Interval | None, gt: Interval) -> float:
    """One pass's interval score: IoU; both normal 1.0; exactly one normal 0; malformed (None) 0."""
    if pred is None:
        return 0.0
    pred_normal, gt_normal = T.is_normal_interval(pred), T.is_normal_interval(gt)
    if pred_normal and gt_normal:
        return 1.0
    if pred_normal != gt_normal:
        return 0.0
    return T.iou(pred, gt)


def grounding_label(block: str | None) -> str | None:
    """'Anomaly' or 'Normal' from a grounding answer block ("no anomaly" reads as Normal)."""
    if not block:
        return None
    text = block.lower()
    if re.search(r"\b(no|not an?|without)\s+(anomal|abnormal)", text):
        return NORMAL
    m = re.search(r"\b(anomal\w*|abnormal\w*|normal)\b", text)
    if not m:
        return None
    return NORMAL if m.group(1) == "normal" else "Anomaly"


# ----------------------------------------------------------------------------- descriptions

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a an the and or but of in on at to from by with for as is are was were be been being it its this that
    these those there their they them he she his her we our you your i my me so then than too very can could
    would should will may might must do does did not no nor into onto over under out up down off again also
    just only both each other some such any all while when where which who whom what why how about after
    before between during through s""".split()
)


def words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def content_words(text: str | None) -> list[str]:
    return [w for w in words(text) if len(w) > 2 and w not in STOPWORDS]


def description_ok(text: str | None, reference: str | None, min_overlap: float) -> bool:
    """Substantive (>= 3 content words) and faithful (at least ``min_overlap`` of them occur in the
    reference). Free text has no equality; completeness is the LLM judge's job."""
    pred = content_words(text)
    ref = set(content_words(reference))
    if len(pred) < 3 or not ref:
        return False
    return sum(w in ref for w in pred) / len(pred) >= min_overlap


def keyword_recall(text: str | None, reference: str | None) -> float | None:
    """Share of the reference's distinct content words that the text mentions (an offline description
    metric: no judge needed). None without a reference."""
    ref = set(content_words(reference))
    if not ref:
        return None
    return len(ref & set(content_words(text))) / len(ref)


# ----------------------------------------------------------------------------- strict (training)


def normalize_answer(task: str, block: str | None) -> str | None:
    """The comparable form of one answer block: letter, class, Anomaly/Normal label or the text."""
    if block is None:
        return None
    if task == "qa":
        return T.letter_of(block)
    if task == "classification":
        return T.extract_class(block)
    if task == "grounding":
        return grounding_label(block)
    if task == "description":
        return " ".join(block.split()) or None
    raise ValueError(f"unknown task {task!r}")


def answer_correct(task: str, block: str | None, answer: Any) -> bool:
    """Is one answer block's text correct for a QA letter or a classification class?"""
    if block is None or answer is None:
        return False
    got = normalize_answer(task, block)
    if got is None:
        return False
    if task == "qa":
        return got == str(answer).strip().upper()[:1]
    if task == "classification":
        return class_key(got) == class_key(str(answer))
    raise ValueError(f"answer_correct: task {task!r} has no discrete answer")


def pass_correct(
    truth: Truth, answer_block: str | None, glue_block: str | None, min_iou: float = 0.5, min_overlap: float = 0.3
) -> bool:
    """Is one pass (its answer block and, for grounding, its glue block) right?

    Grounding: the Anomaly/Normal label agrees and the interval score reaches ``min_iou``;
    description: :func:`description_ok` with ``min_overlap``.
    """
    if answer_block is None or not answer_block.strip():
        return False
    if truth.task in ("qa", "classification"):
        return answer_correct(truth.task, answer_block, truth.answer)
    if truth.task == "grounding":
        if truth.interval is None or grounding_label(answer_block) != truth.answer:
            return False
        pred = T.parse_interval_strict(glue_block)
        return pred is not None and interval_score(pred, truth.interval) >= min_iou
    if truth.task == "description":
        return description_ok(answer_block, truth.answer, min_overlap)
    raise ValueError(f"unknown task {truth.task!r}")


def pass_blocks(trace: T.Trace, style: str, which: str) -> tuple[str | None, str | None]:
    """(answer, glue) blocks of the first or final pass; a single pass is both."""
    if style != "reflect" or which == "final":
        return trace.final_answer, trace.final_glue
    return trace.first_answer, trace.first_glue


def well_formed(text_or_trace: str | T.Trace | None, style: str, task: str | None = None) -> bool:
    """The structure ``style`` asks for, every block non-empty, nothing outside the blocks:

    * ``reflect``: think, answer[, glue], reflection, think, answer[, glue];
    * ``think``: one think, answer[, glue] pass (VAU-R1's format);
    * ``direct``: one answer[, glue] (VAU-R1's no-think format).

    Grounding additionally needs a parseable ``<glue>[s, e]`` after every answer. The format reward, the
    RoCoT filter, the data gate and the evaluation's ``well_formed`` share all use this rule.
    """
    trace = text_or_trace if isinstance(text_or_trace, T.Trace) else T.parse_trace(text_or_trace or "")
    glues = [c for n, c in trace.blocks if n == "glue"]
    if style == "reflect":
        ok, passes = trace.reflective, 2
    elif style == "think":
        ok, passes = trace.single_pass, 1
    elif style == "direct":
        names = [n for n, _ in trace.blocks]
        ok = trace.clean and names in (["answer"], ["answer", "glue"]) and all(c.strip() for _, c in trace.blocks)
        passes = 1
    else:
        raise ValueError(f"unknown prompt style {style!r}")
    if not ok:
        return False
    if task == "grounding":
        return len(glues) == passes and all(T.parse_interval_strict(g) is not None for g in glues)
    return True


# ----------------------------------------------------------------------------- lenient (evaluation protocol)


def lenient_qa_correct(text: str | None, gt_letter: str, which: str = "final") -> bool:
    """VAU-R1's QA rule: the extracted letter equals the correct option."""
    pred = T.extract_letter(text, which)
    return pred is not None and pred == str(gt_letter).strip().upper()


def lenient_iou(text: str | None, gt: Interval, which: str = "final") -> float:
    """VAU-R1's grounding rule: IoU of the extracted interval ((0, 0) when unparseable)."""
    return T.iou(T.extract_interval(text, which), (float(gt[0]), float(gt[1])))


def lenient_cls_correct(text: str | None, gt_class: str, which: str = "final") -> tuple[bool, bool]:
    """VAU-R1's classification rule: (binary correct, 20-way correct) of the first class mentioned."""
    pred = T.extract_class(text, which)
    if pred is None:
        return False, False
    gt = canonical_class(gt_class) or str(gt_class)
    gt_normal = class_key(gt) == class_key(NORMAL)
    binary = (pred == NORMAL) if gt_normal else (pred != NORMAL)
    return binary, class_key(pred) == class_key(gt)
