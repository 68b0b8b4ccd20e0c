"""GRPO reward functions (DESIGN 5), registered by name and weighted in ``params.yaml`` (open-r1 style).

Every function has TRL's signature ``fn(completions, **columns) -> list[float | None]``: one value per
completion; ``columns`` are the dataset columns TRL passes along (RoCoT: ``task``, ``answer``,
``gt_start``, ``gt_end``, ``interval_kind``), one entry per completion. Completions may be plain
strings or TRL's conversational form (a list of ``{"role", "content"}`` messages); both are read.
Everything is parsed through :mod:`srvau.cot.format`, the one parser shared with the RoCoT filter and
the evaluation.

``None`` means "does not apply to this sample" (e.g. ``temporal_iou`` on a QA prompt). TRL 1.16 turns
it into NaN: the function then drops out of that sample's weighted sum (``nansum``) and out of the
logged ``rewards/<name>/mean``, so a multi-task batch is scored by the functions that apply to each
task. A *malformed* answer to an applicable task is a real 0, never None.

Scales and decisions (where SRVAU-R1/SRPO leave room):

* ``format`` returns 1.0/0.0; SRPO's 0.5 is carried by the *weight* (``grpo.reward_funcs.format:
  0.5``) so that every function's logged mean reads as a rate in [0, 1].
* ``reflective_accuracy`` values are SRPO's (wrong->right 1.0, right->right 0.75, right->wrong 0.25,
  wrong->wrong 0, single answer correct 0.5); right->wrong is a parameter (SRPO's other code: -0.25).
* ``temporal_iou`` = ``s_final + reflection_weight * (s_final - s_first)`` where ``s`` is the per-pass
  interval score (IoU; both normal 1.0; exactly one normal 0; malformed 0). ``reflection_weight``
  defaults to 0.5, so the reward lies in [-0.5, 1.5]: a revision from IoU 0.2 to 0.8 earns
  0.8 + 0.3 = 1.1, one from 0.8 to 0.2 earns 0.2 - 0.3 = -0.1. A malformed final interval scores 0
  outright (no reflection term); a missing/unparseable first interval gives no reflection term
  (``format`` already penalises the missing block).
* ``length`` follows SRPO: ``exp(-((L - T) / (Tmax - T))**2)`` with ``T = 2 * L1`` and
  ``Tmax = 2.5 * L1``, where ``L1`` is the first pass's length and ``L`` the whole completion's, both
  in *characters* of the stripped text (tokenizer-independent, so the same completion gets the same
  reward under any model). A completion without a delimitable first pass (no ``<reflection>``) gets 0.
* VAU-R1's single-pass baseline set: ``format_single`` (1/0), ``accuracy`` (QA letter / class, by
  the evaluation's extraction rules), ``iou`` (the interval score above on the evaluation's interval).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Iterable, Sequence

from srvau.cot import format as fmt
from srvau.data.classes import class_key
from srvau.data.manifest import optional_float as _float

RewardFn = Callable[..., list]

# SRPO's values (DESIGN 5).
WRONG_TO_RIGHT = 1.0
RIGHT_TO_RIGHT = 0.75
RIGHT_TO_WRONG = 0.25
WRONG_TO_WRONG = 0.0
SINGLE_CORRECT = 0.5
IOU_REFLECTION_WEIGHT = 0.5

_OUTSIDE = re.compile(r"<(" + "|".join(fmt.TAGS) + r")>.*?</\1>", re.DOTALL)


# ----------------------------------------------------------------------------- column helpers


def completion_text(completion: Any) -> str:
    """Plain text of a TRL completion (a string, or a list of chat messages)."""
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


def _column(columns: dict[str, Any], name: str, n: int) -> list[Any]:
    values = columns.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"reward column {name!r} has {len(values)} values for {n} completions")
    return values


def only_blocks(text: str) -> bool:
    """Nothing but whitespace outside the tagged blocks (open-r1/SRPO format rewards match the whole text)."""
    return not _OUTSIDE.sub("", text).strip()


# ----------------------------------------------------------------------------- ground truth


def gt_interval(gt_start: Any, gt_end: Any, interval_kind: Any = None) -> tuple[float, float] | None:
    """Ground-truth interval for grounding, ``NORMAL_INTERVAL`` for a normal video, None if unavailable."""
    kind = str(interval_kind).lower() if interval_kind is not None else None
    if kind == "unavailable":
        return None
    if kind == "normal":
        return fmt.NORMAL_INTERVAL
    s, e = _float(gt_start), _float(gt_end)
    if s is None or e is None:
        return None
    if fmt.is_normal_interval((s, e)) or (kind is None and s == 0 and e == 0):
        return fmt.NORMAL_INTERVAL
    return (s, e)


def interval_score(pred: tuple[float, float] | None, gt: tuple[float, float]) -> float:
    """One pass's interval score: IoU; both normal 1.0; exactly one normal 0; malformed (None) 0."""
    if pred is None:
        return 0.0
    pred_normal, gt_normal = fmt.is_normal_interval(pred), fmt.is_normal_interval(gt)
    if pred_normal and gt_normal:
        return 1.0
    if pred_normal != gt_normal:
        return 0.0
    return fmt.iou(pred, gt)


def answer_correct(task: str, block: str | None, answer: Any) -> bool:
    """Is one answer block's text (no tags) correct for a QA letter or a classification class?"""
    if block is None or answer is None:
        return False
    if task == "qa":
        got = fmt.letter_of(block)
        return got is not None and got == str(answer).strip().upper()[:1]
    if task == "classification":
        got = fmt.extract_class(block)
        return got is not None and class_key(got) == class_key(str(answer))
    raise ValueError(f"answer_correct: task {task!r} has no discrete answer")


def _has_answer(answer: Any) -> bool:
    return answer is not None and not (isinstance(answer, float) and math.isnan(answer)) and str(answer).strip() != ""


def _glue_blocks(trace: fmt.Trace) -> list[str]:
    return [c for n, c in trace.blocks if n == "glue"]


def _answer_blocks(trace: fmt.Trace) -> list[str]:
    return [c.strip() for n, c in trace.blocks if n == "answer"]


# ----------------------------------------------------------------------------- per-completion scores


def format_score(text: str, task: str | None = None) -> float:
    """1.0 for the full reflection structure in order, every block non-empty, nothing outside the
    blocks; grounding additionally needs a ``<glue>`` interval that parses in both passes."""
    trace = fmt.parse_trace(text)
    if not trace.reflective or not only_blocks(text):
        return 0.0
    if task == "grounding":
        glues = _glue_blocks(trace)
        if len(glues) != 2 or any(fmt.parse_interval_strict(g) is None for g in glues):
            return 0.0
    return 1.0


def format_single_score(text: str, task: str | None = None) -> float:
    """VAU-R1's format: one ``<think>..</think><answer>..</answer>`` pass (+``<glue>`` for grounding)."""
    trace = fmt.parse_trace(text)
    if not trace.single_pass or not only_blocks(text):
        return 0.0
    if task == "grounding":
        glues = _glue_blocks(trace)
        if len(glues) != 1 or fmt.parse_interval_strict(glues[0]) is None:
            return 0.0
    return 1.0


def reflective_accuracy_score(text: str, task: str, answer: Any, right_to_wrong: float = RIGHT_TO_WRONG) -> float | None:
    """SRPO's transition table on (first, final) answer blocks; None for tasks without a discrete answer."""
    if task not in ("qa", "classification") or not _has_answer(answer):
        return None
    answers = _answer_blocks(fmt.parse_trace(text))
    if not answers:
        return 0.0
    if len(answers) == 1:
        return SINGLE_CORRECT if answer_correct(task, answers[0], answer) else 0.0
    first, final = answer_correct(task, answers[0], answer), answer_correct(task, answers[-1], answer)
    if first and final:
        return RIGHT_TO_RIGHT
    if first:
        return right_to_wrong
    return WRONG_TO_RIGHT if final else WRONG_TO_WRONG


def temporal_iou_score(
    text: str, gt: tuple[float, float] | None, reflection_weight: float = IOU_REFLECTION_WEIGHT
) -> float | None:
    """Final interval score plus ``reflection_weight`` x (final - first); None without a ground truth."""
    if gt is None:
        return None
    glues = _glue_blocks(fmt.parse_trace(text))
    if not glues:
        return 0.0
    final = fmt.parse_interval_strict(glues[-1])
    if final is None:
        return 0.0
    s_final = interval_score(final, gt)
    if len(glues) < 2:
        return s_final
    first = fmt.parse_interval_strict(glues[0])
    if first is None:
        return s_final
    return s_final + reflection_weight * (s_final - interval_score(first, gt))


def first_pass_length(text: str) -> int | None:
    """Characters before ``<reflection>`` (the first pass), or None when there is no reflection."""
    stripped = text.strip()
    i = stripped.find("<reflection>")
    return i if i > 0 else None


def length_score(text: str, t_factor: float = 2.0, tmax_factor: float = 2.5) -> float:
    """SRPO's conciseness term exp(-((L - T)/(Tmax - T))^2); lengths in characters (module docstring)."""
    l1 = first_pass_length(text)
    if not l1:
        return 0.0
    length = len(text.strip())
    target, cap = t_factor * l1, tmax_factor * l1
    return math.exp(-(((length - target) / (cap - target)) ** 2))


def accuracy_score(text: str, task: str, answer: Any) -> float | None:
    """VAU-R1 accuracy: the evaluation's extraction (DESIGN 6) on the whole completion."""
    if task not in ("qa", "classification") or not _has_answer(answer):
        return None
    if task == "qa":
        got = fmt.extract_letter(text)
        return float(got is not None and got == str(answer).strip().upper()[:1])
    got = fmt.extract_class(text)
    return float(got is not None and class_key(got) == class_key(str(answer)))


def iou_score(text: str, gt: tuple[float, float] | None) -> float | None:
    """VAU-R1 IoU reward on the evaluation's interval (last glue, else first bracket, else (0, 0))."""
    if gt is None:
        return None
    return interval_score(fmt.extract_interval(text), gt)


# ----------------------------------------------------------------------------- TRL reward functions


def _texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c) for c in completions]


def _gts(columns: dict[str, Any], n: int) -> list[tuple[str | None, tuple[float, float] | None]]:
    tasks = _column(columns, "task", n)
    starts, ends, kinds = (_column(columns, k, n) for k in ("gt_start", "gt_end", "interval_kind"))
    return [
        (t, gt_interval(s, e, k) if t == "grounding" else None) for t, s, e, k in zip(tasks, starts, ends, kinds)
    ]


def format_reward(completions: Sequence[Any], **columns) -> list[float]:
    texts = _texts(completions)
    tasks = _column(columns, "task", len(texts))
    return [format_score(x, t) for x, t in zip(texts, tasks)]


def format_single_reward(completions: Sequence[Any], **columns) -> list[float]:
    texts = _texts(completions)
    tasks = _column(columns, "task", len(texts))
    return [format_single_score(x, t) for x, t in zip(texts, tasks)]


def reflective_accuracy_reward(
    completions: Sequence[Any], right_to_wrong: float = RIGHT_TO_WRONG, **columns
) -> list[float | None]:
    texts = _texts(completions)
    tasks, answers = _column(columns, "task", len(texts)), _column(columns, "answer", len(texts))
    return [reflective_accuracy_score(x, t, a, right_to_wrong) for x, t, a in zip(texts, tasks, answers)]


def temporal_iou_reward(
    completions: Sequence[Any], reflection_weight: float = IOU_REFLECTION_WEIGHT, **columns
) -> list[float | None]:
    texts = _texts(completions)
    return [
        temporal_iou_score(x, gt, reflection_weight) if t == "grounding" else None
        for x, (t, gt) in zip(texts, _gts(columns, len(texts)))
    ]


def length_reward(
    completions: Sequence[Any], t_factor: float = 2.0, tmax_factor: float = 2.5, **columns
) -> list[float]:
    return [length_score(x, t_factor, tmax_factor) for x in _texts(completions)]


def accuracy_reward(completions: Sequence[Any], **columns) -> list[float | None]:
    texts = _texts(completions)
    tasks, answers = _column(columns, "task", len(texts)), _column(columns, "answer", len(texts))
    return [accuracy_score(x, t, a) for x, t, a in zip(texts, tasks, answers)]


def iou_reward(completions: Sequence[Any], **columns) -> list[float | None]:
    texts = _texts(completions)
    return [iou_score(x, gt) if t == "grounding" else None for x, (t, gt) in zip(texts, _gts(columns, len(texts)))]


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "reflective_accuracy": reflective_accuracy_reward,
    "temporal_iou": temporal_iou_reward,
    "length": length_reward,
    "format_single": format_single_reward,
    "accuracy": accuracy_reward,
    "iou": iou_reward,
}

# Keyword parameters each reward accepts through ``get_reward_funcs(..., options=...)``.
REWARD_OPTIONS: dict[str, tuple[str, ...]] = {
    "reflective_accuracy": ("right_to_wrong",),
    "temporal_iou": ("reflection_weight",),
    "length": ("t_factor", "tmax_factor"),
}


def _bind(name: str, fn: RewardFn, opts: dict[str, Any]) -> RewardFn:
    allowed = REWARD_OPTIONS.get(name, ())
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"reward {name!r} has no option(s) {unknown}; allowed: {list(allowed)}")

    @functools.wraps(fn)
    def bound(completions, **columns):
        return fn(completions, **{**columns, **opts})

    bound.__name__ = name  # TRL names the rewards/<name>/mean metric after it
    return bound


def get_reward_funcs(
    weights: dict[str, float], options: dict[str, dict[str, Any]] | None = None
) -> tuple[list[RewardFn], list[float]]:
    """Reward functions and their weights, in the order given, for ``GRPOTrainer(reward_funcs=...)`` and
    ``GRPOConfig(reward_weights=...)``. Each function's ``__name__`` is its registry name, which TRL
    uses for the ``rewards/<name>/mean`` metrics. ``options`` binds parameters, e.g.
    ``{"reflective_accuracy": {"right_to_wrong": -0.25}}``."""
    if not weights:
        raise ValueError("no reward functions configured (grpo.reward_funcs is empty)")
    unknown = [k for k in weights if k not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward function(s) {unknown}; known: {sorted(REWARDS)}")
    stray = [k for k in (options or {}) if k not in weights]
    if stray:
        raise ValueError(f"options given for reward(s) {stray} that are not in the weights")
    funcs: list[RewardFn] = []
    for name in weights:
        funcs.append(_bind(name, REWARDS[name], dict((options or {}).get(name, {}))))
    return funcs, [float(weights[k]) for k in weights]


# ----------------------------------------------------------------------------- SRPO difficulty filter


def final_correct(text: str, task: str, answer: Any = None, gt_start: Any = None, gt_end: Any = None,
                  interval_kind: Any = None, min_iou: float = 0.5) -> bool | None:
    """Is the *final* answer right? Letter/class equality; grounding: interval score >= ``min_iou``.
    None where correctness is undefined (description, missing ground truth)."""
    answers = _answer_blocks(fmt.parse_trace(text))
    if task in ("qa", "classification"):
        if not _has_answer(answer):
            return None
        return bool(answers) and answer_correct(task, answers[-1], answer)
    if task == "grounding":
        gt = gt_interval(gt_start, gt_end, interval_kind)
        if gt is None:
            return None
        glues = _glue_blocks(fmt.parse_trace(text))
        pred = fmt.parse_interval_strict(glues[-1]) if glues else None
        return interval_score(pred, gt) >= min_iou
    return None


def group_accuracy(correct: Iterable[bool | None]) -> float | None:
    """Share of correct completions in one prompt's group; None when none is scorable."""
    vals = [bool(c) for c in correct if c is not None]
    return sum(vals) / len(vals) if vals else None


def difficulty_keep(
    correct: Sequence[bool | None], num_generations: int, low: float = 0.1, high: float = 0.9
) -> list[bool]:
    """SRPO's online filter: one flag per prompt group (consecutive ``num_generations`` completions),
    True when the group accuracy lies in ``[low, high]`` (neither trivial nor hopeless). Groups with
    no scorable completion (e.g. description) are kept: the filter has no evidence against them."""
    if num_generations < 1 or len(correct) % num_generations:
        raise ValueError(f"{len(correct)} completions do not split into groups of {num_generations}")
    keep = []
    for i in range(0, len(correct), num_generations):
        acc = group_accuracy(correct[i : i + num_generations])
        keep.append(acc is None or low <= acc <= high)
    return keep
