"""The openai teacher against a real HTTP server on 127.0.0.1 that speaks chat completions.

The server is scripted per sample (found by the ``Sample: <id>`` line of the prompt): good answers,
500s, slow replies past the client's timeout, replies trickled one byte a second, malformed JSON,
truncated JSON, 400s. It counts every request, so the tests can tell retries from cache hits. Frames come from the real frame cache of the
demo set (conftest ``ingest_dir``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from srvau.contract import trace as fmt
from srvau.cot.builder import build_rocot, task_items
from srvau.cot.dataset import load_all
from srvau.cot.teachers import OpenAITeacher, teacher_frames

API_KEY = "sk-test-not-a-real-key-4242"
SLOW_S = 4.0  # server delay for "sleep" answers; the client times out after 2 s (room for a busy machine: at 0.4 s an answered request could time out)


def reply_for(row: dict, task: str) -> dict:
    """A correct teacher reply (wrong first pass, corrected) written from the manifest row."""
    key = row["key_object"]
    if task == "qa":
        gt = row["correct_option"]
        wrong = next(x for x in "ABCD" if x != gt)
        return {"first_think": "The scene looks calm at first.", "first_answer": wrong,
                "reflection": f"Looking again, the {key} is clearly visible and contradicts that option.",
                "final_think": f"The {key} decides the question.", "final_answer": f"{gt}. {row['option_' + gt.lower()]}"}
    if task == "grounding":
        if row["interval_kind"] == "normal":
            return {"first_think": "Something odd happens early.", "first_answer": "Anomaly", "first_interval": [1.0, 3.0],
                    "reflection": f"Every frame shows only the {key} walking calmly.",
                    "final_think": "No event at any time.", "final_answer": "Normal", "final_interval": [-1, -1]}
        s, e = float(row["start_s"]), float(row["end_s"])
        return {"first_think": f"The {key} shows up late.", "first_answer": "Anomaly", "first_interval": [e, e + 2.0],
                "reflection": f"The {key} already appears at {s:.1f} seconds, earlier than I said.",
                "final_think": f"The {key} is visible from {s:.1f} s.", "final_answer": "Anomaly", "final_interval": [s, e]}
    raise AssertionError(task)


class ChatServer:
    """A tiny chat-completions endpoint; ``plan[sample_id]`` lists what to do on each request."""

    def __init__(self, replies: dict[str, dict], plan: dict[str, list[str]]):
        self.replies, self.plan = replies, plan
        self.counts: Counter = Counter()
        self.requests: dict[str, dict] = {}
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        self.closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][1]["content"][0]["text"]
                sid = re.search(r"^Sample: (\S+)$", text, re.M).group(1)
                with outer.lock:
                    n = outer.counts[sid]
                    outer.counts[sid] += 1
                    outer.requests[sid] = body
                    outer.auth.add(self.headers.get("Authorization", ""))
                steps = outer.plan.get(sid, ["ok"])
                action = steps[min(n, len(steps) - 1)]
                content, finish = json.dumps(outer.replies[sid]), "stop"
                if action == "500":
                    return self._send(500, b'{"error": "overloaded"}')
                if action == "400":
                    return self._send(400, b'{"error": "bad request: image too large"}')
                if action == "trickle":  # every read gets a byte within a second: no per-read timeout fires
                    data = json.dumps({"choices": [{"finish_reason": "stop", "message": {"content": content}}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for b in data:
                        if outer.closing.is_set():
                            return
                        try:
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        time.sleep(1.0)
                    return
                if action == "sleep":
                    time.sleep(SLOW_S)
                elif action == "malformed":
                    content = "Sure! Here is the JSON you asked for: first_think = ..."
                elif action == "truncated":
                    content, finish = content[: len(content) // 2], "length"
                payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": finish,
                                        "message": {"role": "assistant", "content": content}}]}
                try:
                    self._send(200, json.dumps(payload).encode())
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _send(self, code: int, data: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def subset(tmp_path_factory, ingest_dir) -> tuple[Path, pd.DataFrame]:
    """Eight train videos (QA + grounding: 16 samples) as their own manifest."""
    m = pd.read_parquet(ingest_dir / "manifest.parquet")
    sub = m[m["split"] == "train"].head(8).copy()
    sub["frames_path"] = [str(ingest_dir / f) for f in sub["frames_path"]]
    path = tmp_path_factory.mktemp("manifest") / "manifest.parquet"
    sub.to_parquet(path, index=False)
    return path, sub


def _params(params, url: str, cache: Path, **openai):
    data = params.model_dump(by_alias=True)
    # one sample per (video, task), as the paper recipe writes them: the server answers by sample id
    data["cot"].update(teacher="openai", tasks=["qa", "grounding"], qa_option_orders=1)
    data["cot"]["openai"].update({"base_url": url, "cache_dir": str(cache), "timeout_s": 2.0, "max_retries": 2,
                                  "backoff_s": 0.01, "concurrency": 4, "frames": 3,
                                  "api_key_env": "SRVAU_TEST_TEACHER_KEY", **openai})
    return type(params).model_validate(data)


def _replies(sub: pd.DataFrame) -> dict[str, dict]:
    return {f"{r['video_id']}:{t}": reply_for(r, t) for r in sub.to_dict("records") for t in ("qa", "grounding")}


def test_retries_quarantine_and_a_second_run_served_from_cache(tmp_path, params, subset, monkeypatch, caplog):
    path, sub = subset
    monkeypatch.setenv("SRVAU_TEST_TEACHER_KEY", API_KEY)
    replies = _replies(sub)
    ids = sorted(replies)
    plan = {
        ids[0]: ["500", "ok"],
        ids[1]: ["sleep", "ok"],
        ids[2]: ["malformed", "ok"],
        ids[3]: ["truncated", "ok"],
        ids[4]: ["500"],  # always
        ids[5]: ["400"],  # permanent: no retry
        ids[6]: ["malformed"],
        ids[7]: ["sleep"],
        ids[8]: ["truncated"],
    }
    failing = {ids[4]: "http_500", ids[5]: "http_400", ids[6]: "malformed_json", ids[7]: "timeout", ids[8]: "truncated_json"}
    out = tmp_path / "rocot"
    caplog.set_level(logging.DEBUG)
    with ChatServer(replies, plan) as server:
        p = _params(params, server.url, tmp_path / "cache")
        res = build_rocot(path, out, p)
        first_counts = dict(server.counts)

        # retries happened, as the server saw them; permanent failures stop at once
        assert first_counts[ids[0]] == first_counts[ids[1]] == first_counts[ids[2]] == first_counts[ids[3]] == 2
        assert first_counts[ids[4]] == first_counts[ids[6]] == first_counts[ids[7]] == first_counts[ids[8]] == 3
        assert first_counts[ids[5]] == 1
        assert all(first_counts[i] == 1 for i in ids[9:])

        # permanent failures quarantined with their reason; everything else generated and kept
        quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
        assert {q["sample_id"]: q["why"] for q in quarantine} == failing
        assert all(q["attempts"] == first_counts[q["sample_id"]] for q in quarantine)
        generated = [json.loads(x)["sample_id"] for x in (out / "generated.jsonl").read_text().splitlines()]
        assert sorted(generated) == sorted(set(ids) - set(failing))
        kept = load_all(out)
        assert sorted(kept["sample_id"]) == sorted(set(ids) - set(failing))
        assert set(kept["teacher"]) == {"openai"}
        assert (~kept["first_correct"]).all()  # the scripted first passes are wrong, the finals right
        for _, r in kept.iterrows():
            assert fmt.parse_trace(r["completion"]).reflective
            assert r["final_answer"] == r["answer"]
        assert dict(res.quarantined) == Counter(failing.values())
        assert res.teacher_stats["cache_hits"] == 0

        # second run: every reply already paid for comes from the cache
        res2 = build_rocot(path, tmp_path / "rocot2", p)
        for sid in set(ids) - set(failing):
            assert server.counts[sid] == first_counts[sid], sid
        assert res2.teacher_stats["cache_hits"] == len(ids) - len(failing)
        pd.testing.assert_frame_equal(load_all(tmp_path / "rocot2"), kept)

    # the key went to the server and nowhere else
    assert server.auth == {f"Bearer {API_KEY}"}
    assert API_KEY not in caplog.text
    for f in list(out.rglob("*")) + list((tmp_path / "cache").rglob("*")):
        if f.is_file():
            assert API_KEY.encode() not in f.read_bytes(), f


def test_request_carries_frames_ground_truth_and_schema(tmp_path, params, subset, monkeypatch):
    path, sub = subset
    monkeypatch.delenv("SRVAU_TEST_TEACHER_KEY", raising=False)
    replies = _replies(sub)
    row = sub.iloc[0]
    sid = f"{row['video_id']}:grounding"
    with ChatServer(replies, {}) as server:
        p = _params(params, server.url, tmp_path / "cache", image_format="png")
        items = [it for it in task_items(sub, path.parent, p) if it.sample_id == sid]
        results = list(OpenAITeacher(p.cot.openai, p.cot, tmp_path / "cache").generate(items))
    assert len(results) == 1 and results[0].parts is not None
    body = server.requests[sid]
    assert body["model"] == p.cot.openai.model and body["temperature"] == p.cot.openai.temperature
    schema = body["response_format"]["json_schema"]["schema"]
    assert set(schema["required"]) == {"first_think", "first_answer", "reflection", "final_think", "final_answer",
                                       "first_interval", "final_interval"}
    text = body["messages"][1]["content"][0]["text"]
    if row["interval_kind"] == "anomaly":
        assert f"[{row['start_s']:.1f}, {row['end_s']:.1f}]" in text
    images = [c["image_url"]["url"] for c in body["messages"][1]["content"][1:]]
    frames, times = teacher_frames(Path(row["frames_path"]), 3)
    assert len(images) == len(frames) == 3
    from PIL import Image
    import numpy as np

    for url, frame in zip(images, frames):
        assert url.startswith("data:image/png;base64,")
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        np.testing.assert_array_equal(img, frame)  # PNG is lossless: exactly the cached frame
    assert server.auth == {""}  # no key in the environment: no Authorization header


def finishes_within(seconds: float, fn):
    """``fn()``, failing (not hanging) when it runs past ``seconds``."""
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return out["value"]


def test_a_trickling_server_is_cut_at_the_deadline_and_the_sample_quarantined(tmp_path, params, subset):
    """A reply trickled one byte a second passes every per-read timeout; timeout_s is the total
    deadline, so each attempt ends on time, the sample is quarantined and the others are kept."""
    path, sub = subset
    replies = _replies(sub)
    slow = sorted(replies)[0]
    out = tmp_path / "rocot"
    with ChatServer(replies, {slow: ["trickle"]}) as server:
        p = _params(params, server.url, tmp_path / "cache", timeout_s=1.5, max_retries=1)
        t0 = time.monotonic()
        res = finishes_within(2 * 1.5 + 5.0, lambda: build_rocot(path, out, p))
        elapsed = time.monotonic() - t0
    assert server.counts[slow] == 2 and 2 * 1.5 <= elapsed < 2 * 1.5 + 3.0, elapsed
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["sample_id"], q["why"], q["attempts"]) for q in quarantine] == [(slow, "timeout", 2)]
    assert dict(res.quarantined) == {"timeout": 1}
    assert sorted(load_all(out)["sample_id"]) == sorted(set(replies) - {slow})


def test_an_interrupted_run_loses_nothing_it_generated(tmp_path, params, subset):
    """A crash mid-run (here an interrupt while reading frames) keeps what was generated: the rows
    in generated.jsonl and the replies in the cache, so the re-run does not ask for them again."""
    path, sub = subset
    replies = _replies(sub)
    calls = {"n": 0}

    def dying_frames(p, n):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return teacher_frames(p, n)

    with ChatServer(replies, {}) as server:
        p = _params(params, server.url, tmp_path / "cache", concurrency=1)
        teacher = OpenAITeacher(p.cot.openai, p.cot, tmp_path / "cache", frames_fn=dying_frames)
        with pytest.raises(KeyboardInterrupt):
            build_rocot(path, tmp_path / "rocot", p, teacher=teacher)
        done = [json.loads(x)["sample_id"] for x in (tmp_path / "rocot" / "generated.jsonl").read_text().splitlines()]
        answered = dict(server.counts)  # a worker may finish one more request while the run unwinds
        assert len(done) == 4 and set(done) <= set(answered) and all(n == 1 for n in answered.values())
        assert len(list((tmp_path / "cache").rglob("*.json"))) == len(answered)
        res = build_rocot(path, tmp_path / "rocot", p)
        assert all(server.counts[s] == 1 for s in answered)
        assert res.teacher_stats["cache_hits"] == len(answered)
        assert res.teacher_stats["requests"] == len(replies) - len(answered)
        assert len(load_all(tmp_path / "rocot")) == len(replies)
