"""VAU-Eval: an LLM judge scores a model's anomaly description + analysis against the ground truth.

Protocol (docs/evaluation.md, after VAU-R1's VAU-Eval): the judge reads the reference (class, key objects,
description, analysis) and the model's answer and returns JSON with five integer scores 0-10:
``classification`` (is the anomaly type right), ``key_objects`` (key objects and actions),
``fluency``, ``informativeness`` and ``factual_consistency``. Any OpenAI-compatible chat-completions
endpoint serves (DeepSeek, OpenAI, vLLM, ...); VAU-R1 used DeepSeek-V3. Judge model and temperature
are pinned in params and written into every verdict.

Departures: VAU-R1's judge prompt is not reproduced word for word (ours is written here); a reply is
accepted only when it parses as a JSON object holding all five dimensions as numbers within 0-10
(a fenced ```json block is accepted); anything else is retried and, when retries run out, stored
as an invalid verdict and left out of the means (counted in ``n_invalid``), never guessed at.

Transport: ``srvau.chat.ChatClient`` (a total deadline per request, retries with capped backoff
honouring ``Retry-After``, ``judge.concurrency`` verdicts requested at once, the API key from the
variable named by ``judge.api_key_env`` only, never logged or stored). An endpoint that refuses (bad
key, unknown model: a 4xx) or stays unreachable through every retry stops the stage with a
:class:`JudgeError`, since every later request would fail the same way.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from srvau.chat import ChatClient, ChatError, Reply
from srvau.config import JudgeConfig
from srvau.contract.trace import pass_text
from srvau.progress import progress

log = logging.getLogger(__name__)

DIMENSIONS: tuple[str, ...] = ("classification", "key_objects", "fluency", "informativeness", "factual_consistency")
MAX_SCORE = 10.0

SYSTEM = (
    "You are a strict evaluator of video anomaly understanding. You compare a model's description and "
    "analysis of a surveillance video with the reference annotation and score it. Reply with one JSON "
    "object and nothing else."
)

RUBRIC = {
    "classification": "is the anomaly type (or 'Normal') the same as the reference class",
    "key_objects": "are the key objects, people and actions of the reference mentioned correctly",
    "fluency": "is the text fluent, grammatical and coherent",
    "informativeness": "does it give the useful details (what, where, when, why it is anomalous)",
    "factual_consistency": "does it avoid statements that contradict the reference (hallucinations)",
}


class JudgeError(RuntimeError):
    """The endpoint cannot be used (authentication, unknown model, persistent failure)."""


class VerdictError(ValueError):
    """A judge reply that is not a valid verdict."""


def build_messages(prediction: str, reference: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages asking for the five scores; ``reference`` holds the ground-truth fields."""
    rubric = "\n".join(f'- "{k}": {v}' for k, v in RUBRIC.items())
    keys = ", ".join(f'"{k}": <0-10>' for k in DIMENSIONS)
    ref = "\n".join(
        f"{label}: {reference.get(key) or 'n/a'}"
        for label, key in (
            ("Anomaly class", "anomaly_class"),
            ("Key objects", "key_object"),
            ("Description", "answer"),
            ("Analysis", "reasoning"),
        )
    )
    user = (
        f"Reference annotation:\n{ref}\n\nModel answer:\n{prediction.strip() or '(empty)'}\n\n"
        f"Score the model answer on each dimension with an integer from 0 (worst) to 10 (best):\n{rubric}\n\n"
        f'Reply with JSON only: {{{keys}, "rationale": "<one sentence>"}}'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_verdict(content: str | None) -> tuple[dict[str, float], str | None]:
    """(scores, rationale) from a judge reply; raises :class:`VerdictError` when invalid."""
    if not content or not content.strip():
        raise VerdictError("empty reply")
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise VerdictError("reply is not JSON") from None
        try:
            obj = json.loads(text[start : end + 1])
        except json.JSONDecodeError as e:
            raise VerdictError(f"reply is not JSON: {e.msg}") from None
    if not isinstance(obj, dict):
        raise VerdictError("reply is not a JSON object")
    missing = [k for k in DIMENSIONS if k not in obj]
    if missing:
        raise VerdictError(f"missing dimension(s) {missing}")
    scores: dict[str, float] = {}
    for k in DIMENSIONS:
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise VerdictError(f"{k} is not a number: {v!r}")
        if not 0.0 <= float(v) <= MAX_SCORE:
            raise VerdictError(f"{k}={v} is outside 0-{MAX_SCORE:g}")
        scores[k] = float(v)
    rationale = obj.get("rationale")
    return scores, rationale if isinstance(rationale, str) else None


def judged_text(output: str) -> str:
    """What the judge reads: the final pass of the output (the revised reasoning and answer)."""
    return pass_text(output, "final").strip()


@dataclass
class Verdict:
    valid: bool
    scores: dict[str, float] | None
    rationale: str | None
    raw: str | None
    error: str | None
    attempts: int
    latency_s: float

    @property
    def total(self) -> float | None:
        return sum(self.scores.values()) if self.scores else None


def _validated(reply: Reply) -> tuple[dict[str, float], str | None]:
    """The client's validator: an invalid verdict is a rejected reply, asked again."""
    try:
        return parse_verdict(reply.content)
    except VerdictError as e:
        raise ChatError("invalid_verdict", str(e)) from None


class Judge:
    """One judge endpoint; use as a context manager (closes the HTTP client)."""

    def __init__(self, cfg: JudgeConfig, client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self.chat = ChatClient(cfg, name="judge", http=client, sleep=sleep)

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.chat.close()

    def score(self, prediction: str, reference: dict[str, Any]) -> Verdict:
        """One verdict. Raises :class:`JudgeError` when the endpoint refuses or stays unreachable."""
        t0 = time.perf_counter()
        try:
            res = self.chat.complete(self.chat.body(build_messages(prediction, reference)), _validated)
        except ChatError as e:
            if not e.retry:
                raise JudgeError(f"judge endpoint {self.chat.url} refused the request: {e}") from None
            if e.reply is None:  # never a reply to judge: the endpoint is unusable
                raise JudgeError(f"judge endpoint {self.chat.url} failed {e.attempts} time(s); last error: {e}") from None
            return Verdict(False, None, None, e.reply, str(e), e.attempts, time.perf_counter() - t0)
        scores, rationale = res.value
        return Verdict(True, scores, rationale, res.content, None, res.attempts, res.latency_s)


def summarize(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Mean score per dimension (0-10) and of the total (0-50) over valid verdicts."""
    valid = [v for v in verdicts if v.valid and v.scores]
    out: dict[str, Any] = {"n": len(valid), "n_invalid": len(verdicts) - len(valid)}
    for k in DIMENSIONS:
        out[k] = round(sum(v.scores[k] for v in valid) / len(valid), 3) if valid else None
    out["total"] = round(sum(v.total for v in valid) / len(valid), 3) if valid else None
    return out


def judge_records(
    records: Iterable[dict[str, Any]],
    cfg: JudgeConfig,
    out_jsonl: Path,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Judge every description record (``task == "description"``, style in ``cfg.styles``).

    ``cfg.concurrency`` verdicts are requested at once; each is appended to ``out_jsonl`` in record
    order as soon as it and those before it have arrived, with the judge model and temperature.
    Returns ``{style: summary}`` plus the judge settings.
    """
    items = [r for r in records if r.get("task") == "description" and r.get("style") in cfg.styles]
    out_jsonl = Path(out_jsonl)
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    by_style: dict[str, list[Verdict]] = {}
    with Judge(cfg, client=client, sleep=sleep) as judge, open(out_jsonl, "w") as sink:
        verdicts = judge.chat.map(lambda r: judge.score(judged_text(r.get("output") or ""), r.get("truth") or {}), items, ordered=True)
        for r, v in zip(items, progress(verdicts, total=len(items), desc="judge", unit="answer", enabled=bool(items))):
            by_style.setdefault(r["style"], []).append(v)
            sink.write(
                json.dumps(
                    {
                        "model": r.get("model"),
                        "video_id": r.get("video_id"),
                        "style": r.get("style"),
                        "judge_model": cfg.model,
                        "judge_temperature": cfg.temperature,
                        "valid": v.valid,
                        "scores": v.scores,
                        "total": v.total,
                        "rationale": v.rationale,
                        "error": v.error,
                        "attempts": v.attempts,
                        "latency_s": round(v.latency_s, 3),
                        "raw": v.raw,
                    }
                )
                + "\n"
            )
            sink.flush()
    return {
        "judge_model": cfg.model,
        "judge_temperature": cfg.temperature,
        "styles": {s: summarize(vs) for s, vs in by_style.items()},
    }
