"""GRPO reward functions, registered by name and weighted in ``params.yaml`` (open-r1 style; docs/rewards.md).

Every function has TRL's signature ``fn(completions, **columns) -> list[float | None]``: one value per
completion; ``columns`` are the dataset columns TRL passes along (RoCoT: ``task``, ``answer``,
``gt_start``, ``gt_end``, ``interval_kind``), one entry per completion. Parsing and correctness are the
contract layer's (:mod:`srvau.contract.scoring`): the rewards only turn its verdicts into numbers.

``None`` means "does not apply to this sample" (e.g. ``temporal_iou`` on a QA prompt). TRL 1.16 turns
it into NaN: the function then drops out of that sample's weighted sum (``nansum``) and out of the
logged ``rewards/<name>/mean``. A *malformed* answer to an applicable task is a real 0, never None.

The rule every default reward keeps: **no policy earns more by being wrong on purpose.** A reflection
term that pays for the gain between the first and the final pass pays a model to make its first pass
worse, and GRPO finds that. So the defaults reward the final answer and let the reflection terms only
*penalise* regressions:

* ``format``: 1/0 for the full reflection structure (:func:`srvau.contract.scoring.well_formed`);
  SRPO's 0.5 is carried by the weight so every logged mean reads as a rate.
* ``reflective_accuracy`` (QA, classification): final right 1.0 whatever the first answer was;
  right->wrong ``right_to_wrong`` (-0.25, below wrong->wrong 0); only one answer, correct: 0.5.
* ``temporal_iou`` (grounding): the final pass's interval score minus ``regression_weight`` x the
  score lost since the first pass (never a bonus for a gain).
* ``length``: SRPO's conciseness term, only on a well-formed trace (else 0).

SRPO's published terms stay available under their own names for faithful reproduction, documented as
gameable: ``reflective_accuracy_srpo`` (wrong->right 1.0, right->right 0.75, right->wrong 0.25,
wrong->wrong 0) and ``temporal_iou_srpo`` (final + 0.5 x (final - first): a deliberately wrong first
interval earns up to 1.5x). VAU-R1's single-pass baseline set: ``format_single``, ``accuracy``, ``iou``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Sequence

from srvau.contract import scoring as S
from srvau.contract import trace as T
from srvau.contract.trace import completion_text
from srvau.contract.truth import Interval, Truth, truth_from_columns

RewardFn = Callable[..., list]

# Default (un-gameable) reflective accuracy.
FINAL_RIGHT = 1.0
RIGHT_TO_WRONG = -0.25
WRONG_TO_WRONG = 0.0
SINGLE_CORRECT = 0.5
IOU_REGRESSION_WEIGHT = 0.5
# SRPO's published table (gameable: right->right pays less than wrong->right).
SRPO_TABLE = {"wrong_to_right": 1.0, "right_to_right": 0.75, "right_to_wrong": 0.25, "wrong_to_wrong": 0.0}
SRPO_IOU_REFLECTION_WEIGHT = 0.5


def _column(columns: dict[str, Any], name: str, n: int) -> list[Any]:
    values = columns.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"reward column {name!r} has {len(values)} values for {n} completions")
    return values


def _answers(trace: T.Trace) -> list[str]:
    return [c.strip() for n, c in trace.blocks if n == "answer"]


def _glues(trace: T.Trace) -> list[str]:
    return [c for n, c in trace.blocks if n == "glue"]


# ----------------------------------------------------------------------------- per-completion scores


def format_score(text: str, task: str | None = None) -> float:
    return float(S.well_formed(text, "reflect", task))


def format_single_score(text: str, task: str | None = None) -> float:
    return float(S.well_formed(text, "think", task))


def _first_final(text: str, truth: Truth) -> tuple[bool | None, bool]:
    """(first right, final right) of the answer blocks; first is None when there is only one answer."""
    answers = _answers(T.parse_trace(text))
    if not answers:
        return None, False
    final = S.answer_correct(truth.task, answers[-1], truth.answer)
    return (S.answer_correct(truth.task, answers[0], truth.answer) if len(answers) > 1 else None), final


def reflective_accuracy_score(text: str, truth: Truth | None, right_to_wrong: float = RIGHT_TO_WRONG) -> float | None:
    """Default reflective accuracy (module docstring); None for tasks without a discrete answer."""
    if truth is None or truth.task not in ("qa", "classification"):
        return None
    first, final = _first_final(text, truth)
    if first is None:
        return SINGLE_CORRECT if final else 0.0
    if final:
        return FINAL_RIGHT
    return right_to_wrong if first else WRONG_TO_WRONG


def reflective_accuracy_srpo_score(text: str, truth: Truth | None, right_to_wrong: float = SRPO_TABLE["right_to_wrong"]) -> float | None:
    """SRPO's transition table (gameable, see the module docstring)."""
    if truth is None or truth.task not in ("qa", "classification"):
        return None
    first, final = _first_final(text, truth)
    if first is None:
        return SINGLE_CORRECT if final else 0.0
    if first and final:
        return SRPO_TABLE["right_to_right"]
    if first:
        return right_to_wrong
    return SRPO_TABLE["wrong_to_right"] if final else SRPO_TABLE["wrong_to_wrong"]


def _pass_scores(text: str, gt: Interval) -> tuple[float | None, float | None]:
    """(first, final) interval scores of the glue blocks; None for a missing/unparseable one."""
    glues = _glues(T.parse_trace(text))
    if not glues:
        return None, None
    final = T.parse_interval_strict(glues[-1])
    s_final = S.interval_score(final, gt) if final is not None else None
    first = T.parse_interval_strict(glues[0]) if len(glues) > 1 else None
    return (S.interval_score(first, gt) if first is not None else None), s_final


def temporal_iou_score(text: str, truth: Truth | None, regression_weight: float = IOU_REGRESSION_WEIGHT) -> float | None:
    """Final interval score minus ``regression_weight`` x the score lost since the first pass."""
    if truth is None or truth.interval is None:
        return None
    s_first, s_final = _pass_scores(text, truth.interval)
    if s_final is None:
        return 0.0
    lost = max(0.0, s_first - s_final) if s_first is not None else 0.0
    return s_final - regression_weight * lost


def temporal_iou_srpo_score(text: str, truth: Truth | None, reflection_weight: float = SRPO_IOU_REFLECTION_WEIGHT) -> float | None:
    """SRPO-style final + weight x (final - first) (gameable: a wrong first interval earns a bonus)."""
    if truth is None or truth.interval is None:
        return None
    s_first, s_final = _pass_scores(text, truth.interval)
    if s_final is None:
        return 0.0
    return s_final if s_first is None else s_final + reflection_weight * (s_final - s_first)


def first_pass_length(text: str) -> int | None:
    """Characters before ``<reflection>`` (the first pass), or None when there is no reflection."""
    i = text.strip().find("<reflection>")
    return i if i > 0 else None


def length_score(text: str, task: str | None = None, t_factor: float = 2.0, tmax_factor: float = 2.5) -> float:
    """SRPO's conciseness term exp(-((L - T)/(Tmax - T))^2), T = 2x and Tmax = 2.5x the first pass's
    length (characters: tokenizer-independent); 0 unless the trace is well formed, so a broken trace
    earns nothing for its length."""
    l1 = first_pass_length(text)
    if not l1 or not S.well_formed(text, "reflect", task):
        return 0.0
    length = len(text.strip())
    target, cap = t_factor * l1, tmax_factor * l1
    return math.exp(-(((length - target) / (cap - target)) ** 2))


def accuracy_score(text: str, truth: Truth | None) -> float | None:
    """VAU-R1 accuracy: the evaluation's lenient extraction on the whole completion."""
    if truth is None or truth.task not in ("qa", "classification"):
        return None
    if truth.task == "qa":
        return float(S.lenient_qa_correct(text, truth.answer))
    return float(S.lenient_cls_correct(text, truth.answer)[1])


def iou_score(text: str, truth: Truth | None) -> float | None:
    """VAU-R1 IoU reward on the evaluation's interval (last glue, else first bracket, else (0, 0))."""
    if truth is None or truth.interval is None:
        return None
    return S.interval_score(T.extract_interval(text), truth.interval)


# ----------------------------------------------------------------------------- TRL reward functions


def _texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c) for c in completions]


def truths(columns: dict[str, Any], n: int) -> list[Truth | None]:
    """One ground truth per completion from the RoCoT columns TRL passes along."""
    cols = [_column(columns, k, n) for k in ("task", "answer", "gt_start", "gt_end", "interval_kind")]
    return [truth_from_columns(*row) for row in zip(*cols)]


def _per_completion(score: Callable[..., float | None]) -> RewardFn:
    """A TRL reward function from a per-completion ``score(text, truth, **options)``."""

    def reward(completions: Sequence[Any], **columns) -> list[float | None]:
        texts = _texts(completions)
        opts = {k: v for k, v in columns.items() if k in _OPTION_NAMES}
        return [score(x, t, **opts) for x, t in zip(texts, truths(columns, len(texts)))]

    return reward


def _per_task(score: Callable[..., float]) -> RewardFn:
    """A TRL reward function from ``score(text, task, **options)`` (applies to every task)."""

    def reward(completions: Sequence[Any], **columns) -> list[float]:
        texts = _texts(completions)
        opts = {k: v for k, v in columns.items() if k in _OPTION_NAMES}
        return [score(x, t, **opts) for x, t in zip(texts, _column(columns, "task", len(texts)))]

    return reward


format_reward = _per_task(format_score)
reflective_accuracy_reward = _per_completion(reflective_accuracy_score)
temporal_iou_reward = _per_completion(temporal_iou_score)
length_reward = _per_task(length_score)
reflective_accuracy_srpo_reward = _per_completion(reflective_accuracy_srpo_score)
temporal_iou_srpo_reward = _per_completion(temporal_iou_srpo_score)
format_single_reward = _per_task(format_single_score)
accuracy_reward = _per_completion(accuracy_score)
iou_reward = _per_completion(iou_score)

REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "reflective_accuracy": reflective_accuracy_reward,
    "temporal_iou": temporal_iou_reward,
    "length": length_reward,
    "reflective_accuracy_srpo": reflective_accuracy_srpo_reward,
    "temporal_iou_srpo": temporal_iou_srpo_reward,
    "format_single": format_single_reward,
    "accuracy": accuracy_reward,
    "iou": iou_reward,
}

# Keyword parameters each reward accepts through ``get_reward_funcs(..., options=...)``.
REWARD_OPTIONS: dict[str, tuple[str, ...]] = {
    "reflective_accuracy": ("right_to_wrong",),
    "reflective_accuracy_srpo": ("right_to_wrong",),
    "temporal_iou": ("regression_weight",),
    "temporal_iou_srpo": ("reflection_weight",),
    "length": ("t_factor", "tmax_factor"),
}
_OPTION_NAMES = frozenset(o for opts in REWARD_OPTIONS.values() for o in opts)


def check_reward_config(weights: dict[str, float], options: dict[str, dict[str, Any]] | None = None) -> None:
    """Raise ValueError naming the key for an unknown reward, an unknown option or options without a weight."""
    if not weights:
        raise ValueError("grpo.reward_funcs: no reward functions configured")
    unknown = [k for k in weights if k not in REWARDS]
    if unknown:
        raise ValueError(f"grpo.reward_funcs: unknown reward function(s) {unknown}; known: {sorted(REWARDS)}")
    for name, opts in (options or {}).items():
        if name not in weights:
            raise ValueError(f"grpo.reward_options.{name}: options given for a reward that is not in grpo.reward_funcs")
        bad = sorted(set(opts) - set(REWARD_OPTIONS.get(name, ())))
        if bad:
            raise ValueError(f"grpo.reward_options.{name}: unknown option(s) {bad}; allowed: {list(REWARD_OPTIONS.get(name, ()))}")


def _bind(name: str, fn: RewardFn, opts: dict[str, Any]) -> RewardFn:
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
    ``{"reflective_accuracy": {"right_to_wrong": -0.5}}``."""
    check_reward_config(weights, options)
    funcs = [_bind(name, REWARDS[name], dict((options or {}).get(name, {}))) for name in weights]
    return funcs, [float(weights[k]) for k in weights]


# ----------------------------------------------------------------------------- SRPO difficulty filter


def final_correct(text: str, truth: Truth | None, min_iou: float = 0.5) -> bool | None:
    """Is the *final* pass right (:func:`srvau.contract.scoring.pass_correct`)? None where correctness is
    undefined (description, no ground truth)."""
    if truth is None or truth.task not in ("qa", "classification", "grounding"):
        return None
    tr = T.parse_trace(text)
    return S.pass_correct(truth, tr.final_answer, tr.final_glue, min_iou=min_iou)


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
