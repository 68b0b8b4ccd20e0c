"""srvau.chat.ChatClient against a real chat-completions server on 127.0.0.1 (http.server, raw socket
writes where a test needs a misbehaving server): the total deadline against a trickling server,
retries and Retry-After, bounded concurrency, the cache hook and the API key's confinement."""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from chat_server import LoopbackServer

from srvau.chat import ChatClient, ChatError, Reply, request_key, retry_after_s
from srvau.config import EndpointConfig

API_KEY = "sk-test-chat-client-7731"
KEY_ENV = "SRVAU_TEST_CHAT_KEY"


def completion(content: str, finish: str = "stop") -> bytes:
    return json.dumps({"id": "c1", "object": "chat.completion",
                       "choices": [{"index": 0, "finish_reason": finish,
                                    "message": {"role": "assistant", "content": content}}]}).encode()


class Endpoint(LoopbackServer):
    """Answers request n with ``script[n]`` (the last entry repeats):

    ``"ok"`` a completion of ``content``; ``"slow"`` the same after 0.3 s; ``"garbage"`` a 200 that is
    not a chat completion; ``"<code>"`` or ``"<code>:<Retry-After>"`` an error status (a 401 echoes the
    Authorization header back, as some servers do); ``"trickle_body"`` headers at once, then the body
    one byte a second; ``"trickle_headers"`` the header block itself one byte a second. Trickling stops
    when the client hangs up (recorded in ``hung_up``) or the server closes.
    """

    def __init__(self, script: list[str], content: str = "hello"):
        self.script, self.content = list(script), content
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.hung_up = threading.Event()
        self.lock = threading.Lock()
        ep = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with ep.lock:
                    action = ep.script[min(len(ep.requests), len(ep.script) - 1)]
                    ep.requests.append({"headers": dict(self.headers), "json": body})
                    ep.in_flight += 1
                    ep.max_in_flight = max(ep.max_in_flight, ep.in_flight)
                self._counted = True
                try:
                    self._act(action)
                except (BrokenPipeError, ConnectionResetError):
                    ep.hung_up.set()
                finally:
                    self._answered()

            def _answered(self):
                # A request stops counting as in flight when its answer starts: the client may release its
                # slot and send the next one before this thread gets to run again (a race on a busy machine).
                if getattr(self, "_counted", False):
                    with ep.lock:
                        ep.in_flight -= 1
                    self._counted = False

            def _act(self, action: str):
                if action in ("ok", "slow"):
                    if action == "slow":
                        time.sleep(0.3)
                    return self._send(200, completion(ep.content))
                if action == "garbage":
                    return self._send(200, b"<html>gateway says hi</html>")
                if action == "trickle_body":
                    data = completion(ep.content)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.flush()
                    return self._trickle(data)
                if action == "trickle_headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    return self._trickle(b"X-Padding: " + b"a" * 1000 + b"\r\n")
                code, _, after = action.partition(":")
                echo = f'{{"error": "invalid key {self.headers.get("Authorization")}"}}' if code == "401" else '{"error": "x"}'
                self._send(int(code), echo.encode(), {"Retry-After": after} if after else {})

            def _trickle(self, data: bytes):
                for b in data:
                    if ep.closing.is_set():
                        return
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(1.0)

            def _send(self, code: int, data: bytes, headers: dict | None = None):
                self._answered()
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


def endpoint(url: str, **kw) -> EndpointConfig:
    base = dict(base_url=url, model="m-1", api_key_env=KEY_ENV, timeout_s=5.0, max_retries=2, backoff_s=0.01,
                max_backoff_s=1.0, concurrency=2)
    return EndpointConfig(**{**base, **kw})


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def ask(client: ChatClient, validate=lambda r: r.content):
    return client.complete(client.body([{"role": "user", "content": "hi"}]), validate)


# ----------------------------------------------------------------------------- the total deadline


@pytest.mark.timeout(30)  # the old per-read timeout never fires against a trickle: fail, do not hang
@pytest.mark.parametrize("trickle", ["trickle_body", "trickle_headers"])
def test_a_trickling_server_is_cut_at_the_deadline(trickle):
    """1 byte a second keeps every read under any per-read timeout; the request still ends at timeout_s."""
    with Endpoint([trickle]) as srv, ChatClient(endpoint(srv.url, timeout_s=1.5, max_retries=0)) as client:
        t0 = time.monotonic()
        with pytest.raises(ChatError) as err:
            ask(client)
        elapsed = time.monotonic() - t0
        assert err.value.why == "timeout" and err.value.attempts == 1
        assert 1.5 <= elapsed < 3.0, elapsed  # each read waits 1 s < 1.5 s: only the deadline ends it
        assert srv.hung_up.wait(3.0)  # the client closed the socket, it does not linger


@pytest.mark.timeout(30)
def test_each_retry_gets_a_fresh_deadline():
    sleeps = Sleeps()
    with Endpoint(["trickle_body", "ok"]) as srv, ChatClient(endpoint(srv.url, timeout_s=1.0), sleep=sleeps) as client:
        res = ask(client)
    assert res.value == "hello" and res.attempts == 2 and len(srv.requests) == 2 and sleeps == [0.01]
    assert client.stats == {"requests": 2, "retries": 1, "cache_hits": 0}


# ----------------------------------------------------------------------------- retries


def test_retry_after_seconds_and_http_date_are_honoured_and_capped():
    in_3s = email.utils.formatdate(time.time() + 3, usegmt=True)
    sleeps = Sleeps()
    cfg = endpoint("", max_retries=3, backoff_s=0.1, max_backoff_s=5.0)
    with Endpoint(["429:2", f"503:{in_3s}", "500:999", "ok"]) as srv:
        with ChatClient(cfg.model_copy(update={"base_url": srv.url}), sleep=sleeps) as client:
            res = ask(client)
    assert res.attempts == 4
    assert sleeps[0] == 2.0 and 1.0 < sleeps[1] <= 3.0 and sleeps[2] == 5.0  # the last one capped


def test_backoff_doubles_up_to_its_cap():
    sleeps = Sleeps()
    with Endpoint(["500", "502", "503", "504", "ok"]) as srv:
        with ChatClient(endpoint(srv.url, max_retries=4, backoff_s=1.0, max_backoff_s=3.0), sleep=sleeps) as client:
            assert ask(client).attempts == 5
    assert sleeps == [1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("code", [408, 409, 425, 429, 500, 529])
def test_transient_statuses_are_retried(code):
    with Endpoint([str(code), "ok"]) as srv, ChatClient(endpoint(srv.url), sleep=Sleeps()) as client:
        assert ask(client).attempts == 2


@pytest.mark.parametrize("code", [400, 404, 422])
def test_other_client_errors_fail_at_once(code):
    with Endpoint([str(code), "ok"]) as srv, ChatClient(endpoint(srv.url), sleep=Sleeps()) as client:
        with pytest.raises(ChatError) as err:
            ask(client)
    assert err.value.why == f"http_{code}" and not err.value.retry and err.value.attempts == 1
    assert len(srv.requests) == 1


def test_a_rejected_reply_is_retried_and_the_last_reply_kept():
    def only_json(r: Reply):
        try:
            return json.loads(r.content)
        except ValueError:
            raise ChatError("not_json", "reply is not JSON") from None

    with Endpoint(["ok"], content="no JSON here") as srv, ChatClient(endpoint(srv.url), sleep=Sleeps()) as client:
        with pytest.raises(ChatError) as err:
            ask(client, only_json)
    assert err.value.why == "not_json" and err.value.attempts == 3 and err.value.reply == "no JSON here"
    assert len(srv.requests) == 3


def test_a_reply_that_is_not_a_chat_completion_is_retried():
    with Endpoint(["garbage", "ok"]) as srv, ChatClient(endpoint(srv.url), sleep=Sleeps()) as client:
        assert ask(client).attempts == 2


def test_an_unreachable_endpoint_fails_after_retries():
    with Endpoint(["ok"]) as srv:
        url = srv.url
    with ChatClient(endpoint(url, max_retries=1), sleep=Sleeps()) as client, pytest.raises(ChatError) as err:
        ask(client)
    assert err.value.why == "connection_error" and err.value.attempts == 2 and err.value.reply is None


def test_retry_after_parsing():
    assert retry_after_s("1.5") == 1.5 and retry_after_s("-3") == 0.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


# ----------------------------------------------------------------------------- concurrency


def test_a_batch_keeps_at_most_concurrency_requests_in_flight():
    with Endpoint(["slow"]) as srv, ChatClient(endpoint(srv.url, concurrency=3)) as client:
        results = list(client.map(lambda i: ask(client).value, range(12)))
    assert results == ["hello"] * 12 and len(srv.requests) == 12
    assert srv.max_in_flight == 3  # reached, never passed


def test_callers_own_threads_share_the_same_bound():
    with Endpoint(["slow"]) as srv, ChatClient(endpoint(srv.url, concurrency=2)) as client:
        threads = [threading.Thread(target=ask, args=(client,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(srv.requests) == 8 and srv.max_in_flight == 2


def test_map_keeps_input_order_when_asked():
    with Endpoint(["ok"]) as srv, ChatClient(endpoint(srv.url, concurrency=4)) as client:
        def slow_first(i: int) -> int:
            time.sleep(0.2 if i == 0 else 0.0)
            return i

        assert list(client.map(slow_first, range(6), ordered=True)) == list(range(6))
        assert sorted(client.map(slow_first, range(6))) == list(range(6))


# ----------------------------------------------------------------------------- cache hook


class DictCache(dict):
    def put(self, key, record):
        self[key] = record


def test_cache_hook_serves_a_second_ask_and_revalidates():
    cache = DictCache()
    with Endpoint(["ok"], content='{"a": 1}') as srv, ChatClient(endpoint(srv.url), cache=cache) as client:
        body = client.body([{"role": "user", "content": "hi"}])
        first = client.complete(body, lambda r: json.loads(r.content), cache_record={"sample_id": "s1"})
        second = client.complete(body, lambda r: json.loads(r.content))
        assert first.value == second.value == {"a": 1} and not first.cached and second.cached and second.attempts == 0
        assert len(srv.requests) == 1
        (key,) = cache
        assert key == request_key(client.url, body) and len(key) == 64
        assert cache[key]["sample_id"] == "s1" and cache[key]["content"] == '{"a": 1}'

        def stricter(r: Reply):
            if "b" not in json.loads(r.content):
                raise ChatError("missing_b")
            return r.content

        with pytest.raises(ChatError, match="missing_b"):  # the cached reply is not trusted: asked again
            client.complete(body, stricter)
        assert len(srv.requests) == 1 + 3
    assert client.stats["cache_hits"] == 1


# ----------------------------------------------------------------------------- the API key


def test_key_goes_as_a_bearer_header_and_nowhere_else(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at DEBUG
    cache = DictCache()
    with Endpoint(["500", "ok", "401"]) as srv, ChatClient(endpoint(srv.url), cache=cache, sleep=Sleeps()) as client:
        assert ask(client).attempts == 2
        with pytest.raises(ChatError) as err:  # the server echoes the key back in its error body
            client.complete(client.body([{"role": "user", "content": "other"}]))
    assert {r["headers"]["Authorization"] for r in srv.requests} == {f"Bearer {API_KEY}"}
    assert err.value.why == "http_401" and API_KEY not in str(err.value) and "***" in str(err.value)
    assert API_KEY not in caplog.text and "retrying" in caplog.text
    assert API_KEY not in repr(client) and API_KEY not in json.dumps(cache)
    assert API_KEY not in json.dumps(srv.requests[0]["json"])


def test_no_key_in_the_environment_sends_no_header(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with Endpoint(["ok"]) as srv, ChatClient(endpoint(srv.url)) as client:
        ask(client)
    assert "Authorization" not in srv.requests[0]["headers"]
    assert srv.requests[0]["json"] == {"model": "m-1", "messages": [{"role": "user", "content": "hi"}],
                                       "temperature": 0.0, "max_tokens": 512}
