"""RoCoT teachers: who writes the three-part trace of a (video, task) sample.

Every teacher turns :class:`TaskItem` s into :class:`Generated` results (a :class:`TraceParts` or a
failure reason); the builder renders, judges and filters them (``srvau.cot.builder``).

``annotation`` (offline default)
    Builds the trace from the ground-truth fields. Which items get a flawed first pass is planned by
    the builder (``cot.flaws``): with ``cues`` (the default) exactly the items whose annotation
    records a misleading cue (a ``Misleading Cue:`` part of ``Reasoning``: something that looks like
    another class for a moment), so the first pass goes wrong *for a reason visible in the video*:
    it takes the cue for the event (its option, its class, its interval). With ``random`` a seeded
    share (``cot.flawed_share``) gets a wrong option, a shifted interval, a confusable class. A flawed
    first pass is written in the same template as a correct one, so its content, not its first
    token, decides the branch. The reflection names what the first pass missed; the second pass
    looks at the whole clip again (its wording differs from the first pass's even when both are
    right). Blocks are short on purpose (``cot.think_max_words``) so a tiny model can learn the
    structure. Departure: SRVAU-R1 has an LLM write RoCoT; this teacher is a deterministic stand-in
    that needs no model and no network.
``openai``
    Any OpenAI-compatible chat-completions endpoint through ``srvau.chat.ChatClient``: a few cached
    frames as base64 images, the ground truth in the prompt, a JSON reply validated against a
    schema. A malformed or truncated reply is retried like a timeout or a 5xx; one that fails every
    attempt is quarantined with its reason. Replies are cached on disk by the sha256 of the request,
    so a re-run pays nothing twice. Deadline, retries, concurrency and the API key: see ``srvau.chat``.
``policy`` (SRPO's recipe)
    The current policy model writes the first pass (``srvau.modeling.generation``, on the
    accelerator when there is one; greedy unless ``cot.policy.temperature > 0``); a reviser
    (``annotation`` or ``openai``) writes the reflection and the revision. An unparseable first pass
    is kept as written (tags stripped) and judged wrong. The policy never sees the test split: those
    items get the reviser's own full trace.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from srvau.chat import ChatClient, ChatError, Reply, ReplyCache
from srvau.config import CotConfig, OpenAITeacherConfig, Params
from srvau.contract import trace as fmt
from srvau.contract.prompts import option_choice
from srvau.contract.scoring import STOPWORDS, content_words, grounding_label
from srvau.contract.truth import Truth
from srvau.contract.vocab import optional_text
from srvau.cot.filter import is_correct
from srvau.progress import progress
from srvau.contract.vocab import CLASSES, NORMAL, canonical_class

log = logging.getLogger(__name__)

Interval = tuple[float, float]


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TaskItem:
    """One (video, task) to write a trace for, with its ground truth and the evidence to cite."""

    sample_id: str
    video_id: str
    split: str
    task: str
    prompt: str
    truth: Truth
    anomaly_class: str | None
    interval_kind: str
    key_object: str | None
    evidence: str
    reference: str | None  # the annotation's description
    options: dict[str, str]  # letter -> option text (QA)
    duration_s: float
    frames_path: Path | None  # absolute path of the frame-cache entry
    video_interval: Interval = (float("nan"), float("nan"))  # the row's (start, end); (-1, -1) normal
    flawed: bool = False  # plan for teachers that write both passes
    cue: "Cue | None" = None  # a misleading cue the annotation records

    @property
    def gt_interval(self) -> Interval | None:
        return self.truth.interval


@dataclass(frozen=True)
class Cue:
    """Something in the video that looks like another class for a moment (recorded in ``Reasoning``)."""

    what: str  # e.g. "a brief yellow blast"
    interval: Interval
    resembles: str  # canonical class name
    evidence: str = ""  # what it looks like, in the words of the class's own evidence

    @property
    def thing(self) -> str:
        """The cue without its "a brief" ("yellow blast")."""
        return re.sub(r"^(an?\s+)?(brief|short|momentary)\s+", "", self.what.strip(), flags=re.I)


_CUE = re.compile(
    r"Misleading\s+Cue:\s*(?P<what>[^(]+?)\s*(?:\((?P<ev>[^)]*)\))?\s+from\s+(?P<s>\d+(?:\.\d+)?)\s*s\s+to\s+"
    r"(?P<e>\d+(?:\.\d+)?)\s*s\s+looks\s+like\s+(?P<cls>[A-Za-z_ ]+?)\s+but",
    re.I | re.S,
)


def misleading_cue(reasoning: Any) -> Cue | None:
    """The ``Misleading Cue: <what> [(<evidence>)] from <s> s to <e> s looks like <class> but ...`` part of a
    Reasoning text, or None (VAU-Bench's own annotations have none)."""
    text = text_or_none(reasoning)
    m = _CUE.search(text) if text else None
    cls = canonical_class(m.group("cls")) if m else None
    if m is None or cls is None:
        return None
    what = " ".join(m.group("what").split())
    return Cue(what, (float(m.group("s")), float(m.group("e"))), cls, " ".join((m.group("ev") or "").split()))


@dataclass(frozen=True)
class Pass:
    think: str
    answer: str
    interval: Interval | None = None  # grounding only


@dataclass(frozen=True)
class TraceParts:
    first: Pass
    reflection: str
    final: Pass


@dataclass(frozen=True)
class Generated:
    """A teacher's result for one item: ``parts``, or ``why`` (a short reason) + ``detail``."""

    item: TaskItem
    teacher: str
    parts: TraceParts | None = None
    why: str | None = None
    detail: str = ""
    attempts: int = 0
    cached: bool = False


# ----------------------------------------------------------------------------- text helpers

_TAG = re.compile(r"</?\s*(?:think|answer|glue|reflection)\s*>|<\|[^|>]*\|>", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_EVIDENCE = re.compile(r"key\s+evidence\s*:?\s*(.*?)(?:###|$)", re.I | re.S)
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")


def text_or_none(v: Any) -> str | None:
    """One-line text of a cell, or None when it is missing (the contract's rule)."""
    text = optional_text(v)
    return " ".join(text.split()) if text is not None else None


def clean(text: str | None) -> str:
    """One line without trace tags or chat special tokens (they would break the rendered trace)."""
    return " ".join(_TAG.sub(" ", text or "").split())


def clip_words(text: str, n: int) -> str:
    """At most ``n`` words; a cut phrase loses its dangling tail ("rises from the bottom and")."""
    ws = text.split()
    if len(ws) <= n:
        return text.strip()
    ws = ws[:n]
    while len(ws) > 1 and ws[-1].lower().strip(",;:-") in STOPWORDS:
        ws.pop()
    return " ".join(ws).rstrip(" ,;:-")


def clip_sentences(text: str, n: int, focus: str | None = None) -> str:
    """Up to ``n`` words of whole sentences, in order, preferring those that mention ``focus`` (the key
    object); a sentence longer than the budget is cut at the word limit."""
    sents = [x for x in _SENTENCE_END.split(text.strip()) if x]
    if not sents:
        return ""
    keys = set(content_words(focus))
    ranked = sorted(range(len(sents)), key=lambda i: (not (keys & set(content_words(sents[i]))), i))
    chosen: list[int] = []
    count = 0
    for i in ranked:
        k = len(sents[i].split())
        if count + k <= n:
            chosen.append(i)
            count += k
    if not chosen:
        chosen, sents[ranked[0]] = [ranked[0]], clip_words(sents[ranked[0]], n)
    s = " ".join(sents[i] for i in sorted(chosen)).strip()
    return s if s.endswith((".", "!", "?")) else s.rstrip(" ,;:-") + "."


def key_evidence(reasoning: Any, description: Any, key_object: Any, max_words: int) -> str:
    """The annotation's key evidence, short: VAU-Bench's ``Key Evidence:`` part of Reasoning (its
    quoted items joined), else the first sentence of Reasoning or Description, else the key object."""
    for source in (text_or_none(reasoning), text_or_none(description)):
        if not source:
            continue
        m = _EVIDENCE.search(source)
        if m and m.group(1).strip():
            seg = m.group(1).strip()
            items = [a or b for a, b in _QUOTED.findall(seg)] if seg.startswith("[") else []
            seg = ", ".join(i.strip() for i in items) if items else _SENTENCE_END.split(seg)[0]
        else:
            seg = _SENTENCE_END.split(re.sub(r"#+\s*", " ", source).strip())[0]
        seg = clip_words(clean(seg).strip("[]'\" "), max_words).rstrip(" .")
        if seg:
            return seg
    return clean(text_or_none(key_object) or "")


def _phrase(key_object: str | None, fallback: str) -> str:
    """'the <key object>' (lower-cased unless it starts with an acronym), at most six words."""
    k = _lower_first(clip_words(clean(key_object or ""), 6))
    if not k:
        return fallback
    return k if re.match(r"(the|a|an|two|three|some)\b", k) else f"the {k}"


def _lower_first(text: str) -> str:
    """Lower-case the first letter for use mid-sentence, unless it starts an acronym ("CCTV")."""
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _t(x: float) -> str:
    return f"{x:.1f}"


def _readable(cls: str) -> str:
    return cls.replace("_", " ")


# Classes a first pass plausibly confuses with each other (VAU-Bench's 20 names).
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "Abuse": ("Assault", "Fighting"),
    "Agriculture": ("Natural Hazard", "Food Safety"),
    "Arrest": ("Fighting", "Assault"),
    "Arson": ("Fire", "Vandalism"),
    "Assault": ("Fighting", "Abuse", "Robbery"),
    "Explosion": ("Fire", "Arson"),
    "Fighting": ("Assault", "Abuse"),
    "Fire": ("Arson", "Explosion"),
    "Food Safety": ("Medical Abnormality", "Agriculture"),
    "Medical Abnormality": ("People_falling", "Food Safety"),
    "Natural Hazard": ("Water_incident", "Fire"),
    "Normal": ("Fighting", "Traffic_accident", "Stealing"),
    "Object_falling": ("People_falling", "Explosion"),
    "People_falling": ("Medical Abnormality", "Object_falling"),
    "Robbery": ("Stealing", "Assault"),
    "Shooting": ("Robbery", "Explosion"),
    "Stealing": ("Robbery", "Vandalism"),
    "Traffic_accident": ("Explosion", "Object_falling"),
    "Vandalism": ("Stealing", "Arson"),
    "Water_incident": ("Natural Hazard", "Traffic_accident"),
}

# Descriptions that miss the key object (tried in order until one is judged wrong).
_VAGUE_ANOMALY = (
    "A street scene with ordinary activity and nothing unusual.",
    "People move around and nothing seems out of place.",
    "Unclear footage.",
)
_VAGUE_NORMAL = ("Something alarming seems to happen here.", "A sudden dangerous event unfolds.", "Unclear footage.")


def item_rng(seed: int, item: TaskItem) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(item.sample_id.encode())])


# ----------------------------------------------------------------------------- annotation teacher


class AnnotationTeacher:
    """Traces from the annotations (see the module docstring); also a reviser for ``policy``."""

    name = "annotation"

    def __init__(self, cfg: CotConfig, seed: int):
        self.cfg = cfg
        self.seed = seed

    # -- public

    def generate(self, items: Iterable[TaskItem]) -> Iterator[Generated]:
        for item in items:
            yield Generated(item, self.name, parts=self.trace(item))

    def trace(self, item: TaskItem) -> TraceParts:
        first = self.flawed_pass(item, item_rng(self.seed, item)) if item.flawed else None
        first = first or self.first_pass(item)
        return TraceParts(first, self.reflect(item, first), self.second_pass(item))

    def revise(self, pairs: Iterable[tuple[TaskItem, Pass]]) -> Iterator[Generated]:
        """Reflection + correct revision for someone else's first pass (the policy's)."""
        for item, first in pairs:
            yield Generated(item, self.name, parts=TraceParts(first, self.reflect(item, first), self.second_pass(item)))

    # -- passes

    def _k(self, item: TaskItem) -> str:
        anomalous = item.anomaly_class is not None and item.anomaly_class != NORMAL
        return _phrase(item.key_object, "the anomalous event" if anomalous else "the scene")

    def _ev(self, item: TaskItem) -> str:
        return item.evidence or self._k(item)

    def _pass(self, item: TaskItem, lead: str, ev: str, answer: str, interval: Interval | None = None,
              thing: str | None = None) -> Pass:
        """One pass in the template every pass of a task shares, whatever it concludes: ``lead`` +
        the evidence it rests on + its answer. Grounding states ``thing``'s interval instead."""
        task = item.task
        if task == "qa":
            return Pass(f"{lead}{ev}; {option_choice(item.options.get(answer, ''), answer)}.", answer)
        if task == "grounding":
            if interval is None or fmt.is_normal_interval(interval):
                return Pass(f"{lead}no anomaly, {ev}.", NORMAL, fmt.NORMAL_INTERVAL)
            s, e = round(interval[0], 1), round(interval[1], 1)
            return Pass(f"{lead}{thing or ev} from {_t(s)} s to {_t(e)} s.", "Anomaly", (s, e))
        return Pass(f"{lead}{ev}.", answer)

    def first_pass(self, item: TaskItem) -> Pass:
        """A right first pass: the evidence at first glance and the answer it supports."""
        return self._right(item, "At first glance: ")

    def second_pass(self, item: TaskItem) -> Pass:
        """The final pass: the whole clip looked at again; always right."""
        return self._right(item, "Over the whole clip: ")

    def _right(self, item: TaskItem, lead: str) -> Pass:
        ev, task = _lower_first(self._ev(item)), item.task
        if task == "qa":
            return self._pass(item, lead, ev, item.truth.answer)
        if task == "grounding":
            return self._pass(item, lead, ev, "", item.gt_interval, self._k(item))
        if task == "classification":
            return self._pass(item, lead, ev, item.truth.answer)
        if task == "description":
            text = clip_sentences(clean(item.reference or item.truth.answer), self.cfg.answer_max_words, f"{item.key_object or ''} {item.evidence}")
            return self._pass(item, lead, ev, text)
        raise ValueError(f"unknown task {task!r}")

    def _wrong(self, item: TaskItem, p: Pass) -> bool:
        glue = f"[{_t(p.interval[0])}, {_t(p.interval[1])}]" if p.interval else None
        return not is_correct(item.truth, p.answer, glue, self.cfg)

    def flawed_pass(self, item: TaskItem, rng: np.random.Generator) -> Pass | None:
        """The first first-pass candidate judged wrong by the filter's rules, or None when the item's cue
        cannot mislead this task (the first pass is then right)."""
        cands = self._cue_candidates(item) if item.cue is not None else self._random_candidates(item, rng)
        return next((p for p in cands if self._wrong(item, p)), None)

    def _cue_candidates(self, item: TaskItem) -> Iterator[Pass]:
        """What a first glance that takes the cue for the event answers."""
        cue, task, lead = item.cue, item.task, "At first glance: "
        assert cue is not None
        # the cue described the way a right first pass describes the real event (same words, same template)
        ev = _lower_first(clip_words(clean(cue.evidence or cue.thing), self.cfg.think_max_words))
        if task == "qa":
            w = _option_naming(item.options, f"{cue.thing} {cue.evidence}", exclude=item.truth.answer)
            if w:
                yield self._pass(item, lead, ev, w)
        elif task == "grounding":
            yield self._pass(item, lead, ev, "", cue.interval, _phrase(cue.thing, "something"))
        elif task == "classification":
            yield self._pass(item, lead, ev, cue.resembles)
        elif task == "description":
            s, e = cue.interval
            yield self._pass(item, lead, ev, f"From {_t(s)} s to {_t(e)} s, {_lower_first(cue.evidence or cue.thing)} appears.")

    def _random_candidates(self, item: TaskItem, rng: np.random.Generator) -> Iterator[Pass]:
        """``cot.flaws: random``: plausible wrong first passes without a recorded cause."""
        task, lead = item.task, "At first glance: "
        if task == "qa":
            others = [x for x in "ABCD" if x != item.truth.answer and item.options.get(x)]
            for w in rng.permutation(others).tolist() or [x for x in "ABCD" if x != item.truth.answer]:
                opt = _lower_first(clip_words(clean(item.options.get(w, "")), 8).rstrip(" ."))
                yield self._pass(item, lead, opt or self._ev(item), w)
        elif task == "grounding":
            iv = item.gt_interval
            dur = max(float(item.duration_s or 0.0), 1.0)
            if iv is None or fmt.is_normal_interval(iv):
                fs = round(float(rng.uniform(0.0, dur * 0.5)), 1)
                fe = round(min(dur, fs + max(1.0, dur * 0.3)), 1)
                yield self._pass(item, lead, "", "", (fs, fe), "something unusual")
                return
            for iv_wrong in _wrong_intervals(iv, dur, rng):
                yield self._pass(item, lead, "", "", iv_wrong, self._k(item))
            yield self._pass(item, lead, _lower_first(self._ev(item)), "", fmt.NORMAL_INTERVAL)
        elif task == "classification":
            gt = canonical_class(item.truth.answer) or item.truth.answer
            near = list(CONFUSABLE.get(gt, ()))
            rest = [c for c in CLASSES if c != gt and c not in near]
            for w in rng.permutation(near).tolist() + rng.permutation(rest).tolist():
                yield self._pass(item, lead, _readable(w).lower(), w)
        elif task == "description":
            normal = item.anomaly_class == NORMAL or item.interval_kind == "normal"
            for text in _VAGUE_NORMAL if normal else _VAGUE_ANOMALY:
                yield self._pass(item, lead, "nothing specific stands out", text)
        else:
            raise ValueError(f"unknown task {task!r}")

    # -- reflections

    def reflect(self, item: TaskItem, first: Pass) -> str:
        """Confirming when ``first`` is right, else naming what the first pass missed: the cue it took for
        the event (``cot.flaws: cues``) or the evidence that corrects it."""
        ok = not self._wrong(item, first)
        k, ev, task = self._k(item), _lower_first(self._ev(item)), item.task
        cue = item.cue
        if not ok and cue is not None:
            s, e = cue.interval
            brief = f"{_upper_first(_phrase(cue.thing, 'the cue'))} at {_t(s)}-{_t(e)} s is gone at once"
            iv = item.gt_interval
            if task == "grounding" and iv is not None and not fmt.is_normal_interval(iv):
                return f"{brief}; {k} lasts from {_t(iv[0])} s to {_t(iv[1])} s."
            return f"{brief}; the sustained evidence is {ev}."
        if task == "qa":
            letter = item.truth.answer
            if ok:
                return f"Rechecking the whole clip, {k} supports option {letter}."
            w = fmt.letter_of(first.answer)
            return f"Option {w} is not supported: the video shows {ev}." if w else f"The first answer is not supported: the video shows {ev}."
        if task == "grounding":
            iv = item.gt_interval
            gt_normal = iv is None or fmt.is_normal_interval(iv)
            if ok:
                if gt_normal:
                    return "Rechecking every frame, nothing unusual happens."
                return f"Rechecking, no {k.removeprefix('the ')} before {_t(iv[0])} s or after {_t(iv[1])} s."
            if gt_normal:
                return f"Nothing unusual occurs; the video only shows {ev}."
            f_iv = first.interval
            if grounding_label(first.answer) != "Anomaly" or f_iv is None or fmt.is_normal_interval(f_iv):
                return f"The first pass missed {k}: {ev}."
            if f_iv[0] < iv[0] - 0.05 and f_iv[1] > iv[1] + 0.05:
                return f"The interval is too wide: {k} appears only from {_t(iv[0])} s to {_t(iv[1])} s."
            return f"The interval is off: {k} is visible from {_t(iv[0])} s, not {_t(f_iv[0])} s."
        if task == "classification":
            gt = _readable(item.truth.answer)
            if ok:
                return f"Rechecking the whole clip, {ev} fits {gt} and no other class."
            w = fmt.extract_class(first.answer)
            return f"{_readable(w)} does not fit: the video shows {ev}." if w else f"The first class does not fit: the video shows {ev}."
        if task == "description":
            if ok:
                return f"Rechecking the whole clip, the description covers {k}."
            return f"The first description misses {k}: {ev}."
        raise ValueError(f"unknown task {task!r}")


def _option_naming(options: dict[str, str], thing: str, exclude: str) -> str | None:
    """The letter of the option that names ``thing`` best (most shared content words), or None."""
    want = set(content_words(thing))
    scored = [(len(want & set(content_words(text))), letter) for letter, text in sorted(options.items()) if letter != exclude]
    best = max(scored, default=(0, None))
    return best[1] if best[0] > 0 else None


def _wrong_intervals(iv: Interval, dur: float, rng: np.random.Generator) -> list[Interval]:
    """Shifted (by 3/4 of the length, either way) and stretched (3x) versions of ``iv`` inside the
    video, rounded like the rendered trace, in a seeded order; the caller keeps the first judged wrong."""
    s, e = iv
    length = max(e - s, 0.2)
    d = max(0.75 * length, 1.0)
    shifts = [(s + d, e + d), (s - d, e - d)]
    stretch = [(s - length, e + length)]
    cands = shifts + stretch if rng.random() < 0.5 else stretch + shifts
    out = []
    for a, b in cands:
        a, b = round(max(0.0, a), 1), round(min(dur, b), 1)
        if b - a >= 0.2:
            out.append((a, b))
    return out


# ----------------------------------------------------------------------------- openai teacher


class TeacherError(ChatError):
    """A teacher reply or input that is not usable: ``why`` is a short reason, ``retry`` whether
    asking again may help (a :class:`ChatError`, so the client retries a rejected reply)."""


TRACE_KEYS = ("first_think", "first_answer", "reflection", "final_think", "final_answer")
REVISION_KEYS = ("reflection", "final_think", "final_answer")


def reply_schema(task: str, keys: Sequence[str]) -> dict[str, Any]:
    """JSON schema of the teacher's reply (grounding adds ``*_interval`` as ``[start, end]``)."""
    props: dict[str, Any] = {k: {"type": "string", "minLength": 1} for k in keys}
    if task == "grounding":
        for k in keys:
            if k.endswith("_answer"):
                props[k.replace("_answer", "_interval")] = {
                    "type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
                }
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def validate_reply(data: Any, task: str, keys: Sequence[str]) -> dict[str, Any]:
    """The reply's fields, or TeacherError('schema_mismatch') naming what is wrong."""
    if not isinstance(data, dict):
        raise TeacherError("schema_mismatch", f"expected a JSON object, got {type(data).__name__}")
    schema = reply_schema(task, keys)
    out: dict[str, Any] = {}
    for k, spec in schema["properties"].items():
        v = data.get(k)
        if spec["type"] == "string":
            if not isinstance(v, str) or not clean(v):
                raise TeacherError("schema_mismatch", f"{k} must be a non-empty string")
            out[k] = clean(v)
        else:
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise TeacherError("schema_mismatch", f"{k} must be [start, end] in seconds")
            out[k] = (float(v[0]), float(v[1]))
    return out


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_reply(reply: Reply, task: str, keys: Sequence[str]) -> dict[str, Any]:
    """The validated fields of a teacher reply (live or cached); raises TeacherError."""
    content, finish = reply.content, reply.finish_reason
    if not isinstance(content, str) or not content.strip():
        raise TeacherError("malformed_json", "empty content")
    text = content.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        truncated = finish == "length" or e.pos >= len(text.rstrip()) - 1
        raise TeacherError("truncated_json" if truncated else "malformed_json", f"{e.msg} at char {e.pos}") from None
    if finish == "length":
        raise TeacherError("truncated_json", "finish_reason=length")
    return validate_reply(data, task, keys)


def encode_image(frame: np.ndarray, image_format: str = "jpeg") -> str:
    from PIL import Image

    buf = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(frame).save(buf, format="JPEG", quality=85)
    else:
        Image.fromarray(frame).save(buf, format="PNG")
    return f"data:image/{image_format};base64,{base64.b64encode(buf.getvalue()).decode()}"


def teacher_frames(path: Path | None, n: int) -> tuple[list[np.ndarray], list[float]]:
    """``n`` frames evenly spaced over the cached clip, with their timestamps in seconds."""
    from srvau.video.cache import load_cached

    if path is None or not Path(path).is_file():
        raise TeacherError("frames_missing", f"frame cache entry {path} not found", retry=False)
    c = load_cached(path)
    idx = np.unique(np.linspace(0, len(c.frames) - 1, min(n, len(c.frames))).round().astype(int))
    return [c.frames[i] for i in idx], [float(c.timestamps[i]) for i in idx]


_ANSWER_FORMAT = {
    "qa": "the option letter (A, B, C or D)",
    "grounding": "Anomaly or Normal",
    "classification": "exactly one of these class names: " + ", ".join(CLASSES),
    "description": "two or three sentences describing the video",
}


def _truth_text(item: TaskItem) -> str:
    if item.task == "qa":
        a = item.truth.answer
        return f"option {a} ({item.options.get(a, '')})"
    if item.task == "grounding":
        iv = item.gt_interval
        if iv is None or fmt.is_normal_interval(iv):
            return "Normal, interval [-1.0, -1.0]"
        return f"Anomaly, interval [{_t(iv[0])}, {_t(iv[1])}] seconds"
    return item.truth.answer


def _flaw_instruction(item: TaskItem, min_iou: float) -> str:
    if item.task == "qa":
        return "make it plausible but choose a wrong option."
    if item.task == "grounding":
        iv = item.gt_interval
        if iv is None or fmt.is_normal_interval(iv):
            return "make it plausible but wrongly claim an anomaly with some interval."
        return f"make it plausible but give a shifted or stretched interval (IoU with the truth below {min_iou})."
    if item.task == "classification":
        return "make it plausible but name a confusable wrong class."
    return "make it plausible but miss the key object."


class OpenAITeacher:
    """Chat-completions teacher (see the module docstring)."""

    name = "openai"

    def __init__(
        self,
        cfg: OpenAITeacherConfig,
        cot: CotConfig,
        cache_dir: Path,
        api_key: str | None = None,
        frames_fn: Callable[[Path | None, int], tuple[list[np.ndarray], list[float]]] = teacher_frames,
    ):
        self.cfg, self.cot = cfg, cot
        self.client = ChatClient(cfg, name="teacher", cache=ReplyCache(cache_dir), api_key=api_key)
        self._frames_fn = frames_fn

    @property
    def stats(self) -> dict[str, int]:
        """HTTP requests made, retries among them, replies served from the cache."""
        return dict(self.client.stats)

    # -- public

    def generate(self, items: Iterable[TaskItem]) -> Iterator[Generated]:
        return self._run([(it, None) for it in items])

    def revise(self, pairs: Iterable[tuple[TaskItem, Pass]]) -> Iterator[Generated]:
        return self._run(list(pairs))

    # -- requests

    def _messages(self, item: TaskItem, first: Pass | None) -> tuple[list[dict[str, Any]], list[str]]:
        frames, times = self._frames_fn(item.frames_path, self.cfg.frames)
        keys = list(TRACE_KEYS if first is None else REVISION_KEYS)
        n = self.cot.think_max_words
        lines = [
            f"Sample: {item.sample_id}",
            "You write one training example for a video anomaly model that answers in three parts: a first "
            "pass (reasoning + answer), a reflection that checks the first pass against the video, and a final "
            "pass (reasoning + answer).",
            f"The model sees {len(frames)} frames (at {', '.join(_t(x) for x in times)} s of a "
            f"{item.duration_s:.1f} s video) and this task:",
            "---", item.prompt, "---",
            f"Ground truth (the final answer must equal it): {_truth_text(item)}.",
        ]
        if item.key_object:
            lines.append(f"Key object: {item.key_object}.")
        if item.evidence:
            lines.append(f"Key evidence: {item.evidence}.")
        if item.task == "description" and item.reference:
            lines.append(f"Reference description: {item.reference}")
        if first is None:
            plan = _flaw_instruction(item, self.cot.min_iou) if item.flawed else "make it correct."
            lines.append(f"First pass: {plan} The reflection then names the visual evidence that "
                         + ("corrects it." if item.flawed else "confirms it."))
        else:
            glue = f" interval [{_t(first.interval[0])}, {_t(first.interval[1])}]" if first.interval else ""
            lines.append(f"The model's first pass was: reasoning \"{first.think}\", answer \"{first.answer}\"{glue}. "
                         "Write the reflection on it and the final pass.")
        lines.append(
            f"Rules: every reasoning and the reflection under {n} words; the reflection names concrete visual "
            f"evidence and never merely restates an answer; answers are {_ANSWER_FORMAT[item.task]}."
        )
        fields = ", ".join(reply_schema(item.task, keys)["properties"])
        lines.append(f"Reply with one JSON object with the keys {fields}"
                     + (" (intervals as [start, end] in seconds, [-1.0, -1.0] for a normal video)." if item.task == "grounding" else "."))
        content: list[dict[str, Any]] = [{"type": "text", "text": "\n".join(lines)}]
        content += [{"type": "image_url", "image_url": {"url": encode_image(f, self.cfg.image_format)}} for f in frames]
        system = "You write precise, concise training data for video anomaly understanding. Reply with JSON only."
        return [{"role": "system", "content": system}, {"role": "user", "content": content}], keys

    def _body(self, item: TaskItem, messages: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.cfg.response_format == "json_schema":
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": f"rocot_{item.task}", "schema": reply_schema(item.task, keys)},
            }
        elif self.cfg.response_format == "json_object":
            extra["response_format"] = {"type": "json_object"}
        return self.client.body(messages, **extra)

    def _one(self, work: tuple[TaskItem, Pass | None]) -> Generated:
        item, first = work
        try:
            messages, keys = self._messages(item, first)
        except TeacherError as e:
            return Generated(item, self.name, why=e.why, detail=e.detail)
        except Exception as e:  # an unreadable cache entry must not stop the others
            return Generated(item, self.name, why="frames_unreadable", detail=f"{type(e).__name__}: {e}"[:300])
        try:
            res = self.client.complete(self._body(item, messages, keys), lambda r: parse_reply(r, item.task, keys),
                                       label=item.sample_id, cache_record={"sample_id": item.sample_id})
        except ChatError as e:
            return Generated(item, self.name, why=e.why, detail=e.detail, attempts=e.attempts)
        return Generated(item, self.name, parts=self._parts(item, res.value, first), attempts=res.attempts, cached=res.cached)

    @staticmethod
    def _parts(item: TaskItem, f: dict[str, Any], first: Pass | None) -> TraceParts:
        grounding = item.task == "grounding"
        if first is None:
            first = Pass(f["first_think"], f["first_answer"], f.get("first_interval") if grounding else None)
        final = Pass(f["final_think"], f["final_answer"], f.get("final_interval") if grounding else None)
        return TraceParts(first, f["reflection"], final)

    def _run(self, work: list[tuple[TaskItem, Pass | None]]) -> Iterator[Generated]:
        return self.client.map(self._one, work)


# ----------------------------------------------------------------------------- policy teacher


def pass_from_output(task: str, text: str, max_words: int, answer_words: int) -> Pass:
    """The first pass of a policy's output, kept as written where it parses (tags stripped so the
    rendered trace stays well formed); missing parts get placeholders and are judged wrong."""
    tr = fmt.parse_trace(text)
    think = clean(tr.first_think) or clean(text)
    answer = clean(tr.first_answer)
    if not answer:
        whole = clean(text)
        if task == "qa":
            answer = fmt.extract_letter(text, "first") or ""
        elif task == "classification":
            answer = fmt.extract_class(text, "first") or ""
        elif task == "grounding":
            answer = grounding_label(whole) or ""
        else:
            answer = whole
    interval = None
    if task == "grounding":
        interval = fmt.parse_interval_strict(tr.first_glue) or fmt.extract_interval(text, "first")
    return Pass(clip_words(think, max_words) or "No clear reasoning.", clip_words(answer, answer_words) or "unclear", interval)


class PolicyTeacher:
    """SRPO: the policy's own first pass, reflected on and revised by ``reviser``."""

    # The policy writes first passes on the training splits only: a test-split trace written by the
    # model under evaluation would put its own test answers into RoCoT.
    SPLITS: tuple[str, ...] = ("train", "val")

    def __init__(self, params: Params, reviser: AnnotationTeacher | OpenAITeacher, model_path: str | Path | None = None):
        self.params = params
        self.reviser = reviser
        self.model_path = str(model_path or params.cot.policy.model or params.resolve(params.model.base))
        self.name = f"policy+{reviser.name}"
        self.first_pass_count = 0

    @property
    def stats(self) -> dict[str, int]:
        return {"policy_first_passes": self.first_pass_count, **getattr(self.reviser, "stats", {})}

    def settings(self):
        from srvau.modeling.generation import GenerationSettings

        pcfg = self.params.cot.policy
        return GenerationSettings(max_new_tokens=pcfg.max_new_tokens, temperature=pcfg.temperature, seed=self.params.seed, top_p=pcfg.top_p)

    def first_passes(self, items: Sequence[TaskItem]) -> list[Pass | None]:
        """First passes, batched; None where the item has no cached frames. Test-split items are refused."""
        from srvau.contract.prompts import system_prompt
        from srvau.modeling import load_model, load_processor
        from srvau.modeling.generation import chat_text, generate, inference_device_map

        leaked = sorted({it.split for it in items} - set(self.SPLITS))
        if leaked:
            raise ValueError(f"the policy writes first passes for splits {self.SPLITS} only, not {leaked}")
        pcfg, cot = self.params.cot.policy, self.params.cot
        out: list[Pass | None] = [None] * len(items)
        ready = [i for i, it in enumerate(items) if it.frames_path is not None and Path(it.frames_path).is_file()]
        if not ready:
            return out
        model = load_model(self.model_path, self.params.model, device_map=inference_device_map()).eval()
        processor = load_processor(self.model_path, self.params.model)
        texts = [chat_text(processor, items[i].prompt, system_prompt(pcfg.prompt_style, items[i].task)) for i in ready]
        with progress(total=len(ready), desc="policy first passes", unit="prompt") as bar:
            gens = generate(model, processor, texts, [items[i].frames_path for i in ready], self.settings(), pcfg.batch_size, on_batch=bar.update)
        for i, gen in zip(ready, gens):
            out[i] = pass_from_output(items[i].task, gen.text, cot.think_max_words, cot.answer_max_words)
            self.first_pass_count += 1
        return out

    def generate(self, items: Iterable[TaskItem]) -> Iterator[Generated]:
        items = list(items)
        held_out = [it for it in items if it.split not in self.SPLITS]
        items = [it for it in items if it.split in self.SPLITS]
        firsts = self.first_passes(items)
        for item, first in zip(items, firsts):
            if first is None:
                yield Generated(item, self.name, why="frames_missing", detail=f"frame cache entry {item.frames_path} not found")
        pairs = [(it, f) for it, f in zip(items, firsts) if f is not None]
        for g in self.reviser.revise(pairs):
            yield replace(g, teacher=self.name)
        yield from self.reviser.generate(held_out)  # written (and named) by the reviser alone


def make_teacher(params: Params, cache_dir: Path | None = None) -> AnnotationTeacher | OpenAITeacher | PolicyTeacher:
    cot = params.cot

    def openai() -> OpenAITeacher:
        return OpenAITeacher(cot.openai, cot, cache_dir or params.resolve(cot.openai.cache_dir))

    if cot.teacher == "annotation":
        return AnnotationTeacher(cot, params.seed)
    if cot.teacher == "openai":
        return openai()
    reviser = AnnotationTeacher(cot, params.seed) if cot.policy.reviser == "annotation" else openai()
    return PolicyTeacher(params, reviser)
