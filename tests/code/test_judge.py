"""VAU-Eval judge against a real chat-completions server on 127.0.0.1 (http.server, scripted replies)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from srvau.config import JudgeConfig
from srvau.evaluation.judge import (
    DIMENSIONS,
    Judge,
    JudgeError,
    VerdictError,
    judge_records,
    parse_verdict,
    summarize,
)

from chat_server import GOOD, TRICKLE, ChatServer, completion

REFERENCE = {"anomaly_class": "Fire", "key_object": "orange flames", "answer": "Flames appear at 2 s.", "reasoning": "Fire is anomalous."}


def cfg(url: str, **kw) -> JudgeConfig:
    base = dict(enabled=True, base_url=url, model="judge-x", temperature=0.0, timeout_s=5.0, max_retries=2, backoff_s=0.5,
                api_key_env="SRVAU_TEST_JUDGE_KEY")
    return JudgeConfig(**{**base, **kw})


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def test_good_verdict_and_request(monkeypatch):
    monkeypatch.setenv("SRVAU_TEST_JUDGE_KEY", "sk-test-123")
    with ChatServer([(200, completion(json.dumps(GOOD)), 0)]) as srv, Judge(cfg(srv.url, temperature=0.3)) as j:
        v = j.score("<think>x</think><answer>Orange flames burn at the bottom.</answer>", REFERENCE)
    assert v.valid and v.attempts == 1
    assert v.scores == {k: float(GOOD[k]) for k in DIMENSIONS}
    assert v.total == 37.0 and v.rationale == "ok"
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    assert req["json"]["model"] == "judge-x" and req["json"]["temperature"] == 0.3
    user = req["json"]["messages"][-1]["content"]
    assert "Orange flames burn at the bottom." in user and "orange flames" in user and "Fire" in user


def test_server_error_then_good_retries_with_backoff():
    sleeps = Sleeps()
    with ChatServer([(500, {"error": "boom"}, 0), (503, {"error": "busy"}, 0), (200, completion(json.dumps(GOOD)), 0)]) as srv:
        with Judge(cfg(srv.url, max_retries=3), sleep=sleeps) as j:
            v = j.score("answer", REFERENCE)
    assert v.valid and v.attempts == 3 and len(srv.requests) == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff


def test_timeout_is_retried():
    with ChatServer([(200, completion(json.dumps(GOOD)), 1.5), (200, completion(json.dumps(GOOD)), 0)]) as srv:
        with Judge(cfg(srv.url, timeout_s=0.3), sleep=Sleeps()) as j:
            v = j.score("answer", REFERENCE)
    assert v.valid and v.attempts == 2


def test_malformed_json_is_stored_invalid_after_retries():
    with ChatServer([(200, completion("Scores: classification 8, fluency 9"), 0)]) as srv:
        with Judge(cfg(srv.url, max_retries=2), sleep=Sleeps()) as j:
            v = j.score("answer", REFERENCE)
    assert not v.valid and v.scores is None and v.attempts == 3 and len(srv.requests) == 3
    assert "not JSON" in v.error and v.raw == "Scores: classification 8, fluency 9"


def test_out_of_range_rejected_then_valid_retry():
    bad = {**GOOD, "fluency": 11}
    with ChatServer([(200, completion(json.dumps(bad)), 0), (200, completion(json.dumps(GOOD)), 0)]) as srv:
        with Judge(cfg(srv.url), sleep=Sleeps()) as j:
            v = j.score("answer", REFERENCE)
    assert v.valid and v.attempts == 2 and v.scores["fluency"] == 9.0


def test_client_error_stops_at_once():
    with ChatServer([(401, {"error": "bad key"}, 0)]) as srv, Judge(cfg(srv.url), sleep=Sleeps()) as j:
        with pytest.raises(JudgeError, match="401"):
            j.score("answer", REFERENCE)
    assert len(srv.requests) == 1


def test_unreachable_endpoint_raises_after_retries():
    with ChatServer([(200, {}, 0)]) as srv:
        url = srv.url
    with Judge(cfg(url, max_retries=1), sleep=Sleeps()) as j, pytest.raises(JudgeError, match="failed 2 time"):
        j.score("answer", REFERENCE)


def finishes_within(seconds: float, fn):
    """``fn()``, failing (not hanging) when it runs past ``seconds``; returns (value, error, elapsed)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as e:  # handed to the test
            out["error"] = e

    t0 = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return out.get("value"), out.get("error"), time.monotonic() - t0


def test_a_trickling_endpoint_is_reported_within_the_deadline(tmp_path):
    """A verdict trickled one byte a second passes every per-read timeout; timeout_s is the total
    deadline, so the judge gives up after its retries and says why, having kept the verdicts before."""
    records = [{"model": "grpo", "video_id": f"v{i}", "task": "description", "style": "reflect", "output": "x",
                "truth": REFERENCE} for i in range(2)]
    out = tmp_path / "judge.jsonl"
    with ChatServer([(200, completion(json.dumps(GOOD)), 0), (200, completion(json.dumps(GOOD)), TRICKLE)]) as srv:
        c = cfg(srv.url, timeout_s=1.5, max_retries=1, backoff_s=0.01, concurrency=1)
        _, err, elapsed = finishes_within(2 * 1.5 + 5.0, lambda: judge_records(records, c, out))
    assert isinstance(err, JudgeError) and "failed 2 time(s)" in str(err) and "timeout" in str(err)
    assert len(srv.requests) == 3 and 2 * 1.5 <= elapsed < 2 * 1.5 + 3.0, elapsed
    assert [json.loads(x)["video_id"] for x in out.read_text().splitlines()] == ["v0"]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "empty"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "fluency"}), "missing"),
        (json.dumps({**GOOD, "classification": -1}), "outside"),
        (json.dumps({**GOOD, "informativeness": 10.5}), "outside"),
        (json.dumps({**GOOD, "fluency": True}), "not a number"),
        (json.dumps({**GOOD, "fluency": "9"}), "not a number"),
    ],
)
def test_parse_verdict_rejects(content, problem):
    with pytest.raises(VerdictError, match=problem):
        parse_verdict(content)


def test_parse_verdict_accepts_fenced_and_bounds():
    scores, why = parse_verdict("Here you go:\n```json\n" + json.dumps({**GOOD, "fluency": 0, "classification": 10}) + "\n```")
    assert scores["fluency"] == 0.0 and scores["classification"] == 10.0 and why == "ok"


def test_judge_records_stores_every_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("SRVAU_TEST_JUDGE_KEY", "sk-secret-999")
    records = [
        {"model": "grpo", "video_id": "v1", "task": "description", "style": "reflect", "output": "<think>a</think><answer>first</answer>"
         "<reflection>r</reflection><think>b</think><answer>Orange flames.</answer>", "truth": REFERENCE},
        {"model": "grpo", "video_id": "v2", "task": "description", "style": "reflect", "output": "x", "truth": REFERENCE},
        {"model": "grpo", "video_id": "v1", "task": "description", "style": "direct", "output": "y", "truth": REFERENCE},
        {"model": "grpo", "video_id": "v1", "task": "qa", "style": "reflect", "output": "A", "truth": {"answer": "A"}},
    ]
    script = [(200, completion(json.dumps(GOOD)), 0), (200, completion("nope"), 0)]
    out = tmp_path / "judge" / "grpo.jsonl"
    with ChatServer(script) as srv:
        # one at a time: the scripted server answers in request order
        summary = judge_records(records, cfg(srv.url, max_retries=0, temperature=0.2, concurrency=1), out, sleep=Sleeps())
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["video_id"] for x in lines] == ["v1", "v2"]  # only reflect-style descriptions
    assert [x["valid"] for x in lines] == [True, False]
    assert all(x["judge_model"] == "judge-x" and x["judge_temperature"] == 0.2 for x in lines)
    assert lines[1]["raw"] == "nope" and lines[1]["scores"] is None
    # The judge reads the final pass only, never the first answer.
    first_user = srv.requests[0]["json"]["messages"][-1]["content"]
    assert "Orange flames." in first_user and "first" not in first_user.split("Model answer:")[1]
    assert "sk-secret-999" not in out.read_text()
    s = summary["styles"]["reflect"]
    assert s["n"] == 1 and s["n_invalid"] == 1 and s["fluency"] == 9.0 and s["total"] == 37.0
    assert summary["judge_model"] == "judge-x" and summary["judge_temperature"] == 0.2


def test_summarize_empty():
    assert summarize([]) == {"n": 0, "n_invalid": 0, **{k: None for k in DIMENSIONS}, "total": None}
