"""One client for OpenAI-compatible chat-completions endpoints: the RoCoT teacher and the LLM judge.

What every caller gets (settings: :class:`srvau.config.EndpointConfig`):

- **A total deadline per request.** ``timeout_s`` bounds one HTTP request end to end (connect, send,
  wait, the whole body). httpx's ``timeout`` bounds each read or connect, not the request, so a server
  trickling one byte a second would hold a request open forever (see docs/pitfalls.md). A watchdog
  timer shuts the request's socket down when the deadline passes, and the body is streamed with the
  deadline checked between chunks. Each request says ``Connection: close`` so its socket is always a
  fresh one the watchdog saw being opened (a pooled socket is invisible to it); an LLM call takes
  seconds, the extra handshake milliseconds.
- **Retries** on 408/409/425/429/5xx, timeouts, connection errors, replies that are not a chat
  completion and replies the caller's validator rejects (it raises :class:`ChatError`). The wait is
  ``backoff_s * 2**n``, or the server's ``Retry-After`` (seconds or an HTTP date), capped at
  ``max_backoff_s`` either way. Any other 4xx (bad key, unknown model) fails at once: every retry
  would fail the same way.
- **Bounded concurrency.** At most ``concurrency`` requests are on the wire at once, however many
  threads call :meth:`ChatClient.complete`; :meth:`ChatClient.map` runs a batch on that many threads.
- **A reply cache hook**: an object with ``get(key)``/``put(key, record)`` (:class:`ReplyCache` is
  the on-disk one), keyed by :func:`request_key`, the sha256 of the request. A cached reply is
  validated again before use, so a stricter validator re-asks instead of trusting old replies.
- **The API key** is read from the environment variable *named* by ``api_key_env``, sent as a bearer
  header and nowhere else: not logged, and cut out of any error text (a server may echo it).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import httpx

from srvau.config import EndpointConfig
from srvau.io import write_text

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
_REDACTED = "***"


class ChatError(Exception):
    """A failed request or a rejected reply.

    ``why`` is a short reason (``timeout``, ``http_503``, ``malformed_json``, ...), ``retry`` whether
    trying again may help, ``wait_s`` the server's ``Retry-After``. When the client gives up it sets
    ``attempts`` (requests made) and ``reply`` (the last reply text received, if any).
    """

    def __init__(self, why: str, detail: str = "", retry: bool = True, wait_s: float | None = None):
        super().__init__(f"{why}: {detail}" if detail else why)
        self.why, self.detail, self.retry, self.wait_s = why, detail, retry, wait_s
        self.attempts = 0
        self.reply: str | None = None


@dataclass(frozen=True)
class Reply:
    """What a validator sees: the assistant message's content and why generation stopped."""

    content: str | None
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatResult(Generic[T]):
    value: T  # what the validator returned
    content: str | None
    attempts: int  # requests made (0 when served from the cache)
    cached: bool
    latency_s: float


class Cache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, record: dict[str, Any]) -> None: ...


class ReplyCache:
    """Replies on disk, one JSON file per request hash; written atomically (threads share it)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable cache entry %s", p)
            return None

    def put(self, key: str, record: dict[str, Any]) -> None:
        write_text(self.path(key), json.dumps(record, ensure_ascii=False))


def request_key(url: str, body: dict[str, Any]) -> str:
    """sha256 of what is asked (endpoint + body, images included); headers (the key) are not part of it."""
    blob = json.dumps({"url": url, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date); None when absent or garbled."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Deadline:
    """Shuts a request's sockets down when its deadline passes (httpx only bounds each read).

    Sockets are learnt from httpx's ``trace`` extension as they are opened; shutting one down wakes
    the thread blocked reading it, whatever part of the response it is waiting for.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._at = time.monotonic() + seconds
        self._streams: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return max(self._at - time.monotonic(), 0.001)

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(("connect_tcp.complete", "connect_unix_socket.complete", "start_tls.complete")):
            stream = info.get("return_value")
            with self._lock:
                self._streams.append(stream)
                late = self.expired
            if late:
                _shutdown(stream)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            streams = list(self._streams)
        for s in streams:
            _shutdown(s)

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _shutdown(stream: Any) -> None:
    try:
        stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):  # already closed, or not a socket stream
        pass


class ChatClient:
    """Chat completions against one endpoint (see the module docstring); a context manager."""

    def __init__(
        self,
        cfg: EndpointConfig,
        *,
        name: str = "chat",
        cache: Cache | None = None,
        api_key: str | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.cfg, self.name, self.cache = cfg, name, cache
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key if api_key is not None else (os.environ.get(cfg.api_key_env) if cfg.api_key_env else None)
        if not self._api_key:
            log.info("%s: no API key in $%s; requests go without one (fine for a local server)", name, cfg.api_key_env)
        self._http = http or httpx.Client(limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=0))
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(cfg.concurrency)
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "cache_hits": 0}

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never the key
        return f"ChatClient({self.name!r}, {self.url!r}, model={self.cfg.model!r})"

    # -- requests

    def body(self, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A request body with the endpoint's pinned model and sampling settings."""
        return {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens, **extra}

    def complete(
        self,
        body: dict[str, Any],
        validate: Callable[[Reply], T] = lambda r: r.content,
        *,
        label: str = "",
        cache_record: dict[str, Any] | None = None,
    ) -> ChatResult[T]:
        """The validated reply to ``body``; raises :class:`ChatError` (with ``attempts`` and ``reply``)
        when the endpoint refuses, or when retries run out. ``cache_record`` adds fields to the
        cached record (e.g. the sample id, for a reader of the cache folder)."""
        t0 = time.perf_counter()
        label = label or self.name
        key = request_key(self.url, body) if self.cache is not None else ""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    value = validate(Reply(hit.get("content"), hit.get("finish_reason")))
                except ChatError as e:
                    log.warning("%s: cached reply no longer validates (%s); asking again", label, e.why)
                else:
                    self._count("cache_hits")
                    return ChatResult(value, hit.get("content"), 0, True, time.perf_counter() - t0)
        attempts = self.cfg.max_retries + 1
        last_reply: str | None = None
        for attempt in range(attempts):
            if attempt:
                self._count("retries")
            try:
                reply = self._request(body)
                last_reply = reply.content
                value = validate(reply)
            except ChatError as e:
                last_reply = e.reply if e.reply is not None else last_reply
                if not e.retry or attempt + 1 == attempts:
                    e.attempts, e.reply = attempt + 1, last_reply
                    raise e from None
                wait = min(e.wait_s if e.wait_s is not None else self.cfg.backoff_s * 2**attempt, self.cfg.max_backoff_s)
                log.info("%s: %s (attempt %d/%d), retrying in %.2f s", label, e.why, attempt + 1, attempts, wait)
                self._sleep(wait)
                continue
            if self.cache is not None:
                self.cache.put(key, {"key": key, "model": self.cfg.model, **(cache_record or {}),
                                     "content": reply.content, "finish_reason": reply.finish_reason})
            return ChatResult(value, reply.content, attempt + 1, False, time.perf_counter() - t0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, body: dict[str, Any]) -> Reply:
        """One HTTP request under the total deadline; a reply that is not a chat completion raises."""
        headers = {"Connection": "close"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        timeout_s = self.cfg.timeout_s
        with self._slots:
            self._count("requests")
            with _Deadline(timeout_s) as deadline:
                try:
                    with self._http.stream("POST", self.url, json=body, headers=headers,
                                           timeout=httpx.Timeout(deadline.remaining()),
                                           extensions={"trace": deadline.trace}) as resp:
                        chunks = []
                        for chunk in resp.iter_bytes():
                            if deadline.expired:
                                raise ChatError("timeout", f"no complete reply within {timeout_s:g} s")
                            chunks.append(chunk)
                except httpx.HTTPError as e:
                    if deadline.expired or isinstance(e, httpx.TimeoutException):
                        raise ChatError("timeout", f"no complete reply within {timeout_s:g} s") from None
                    raise ChatError("connection_error", self._redact(f"{type(e).__name__}: {e}")) from None
        return self._reply(resp.status_code, resp.headers, b"".join(chunks))

    def _reply(self, code: int, headers: httpx.Headers, data: bytes) -> Reply:
        text = self._redact(data.decode("utf-8", "replace"))
        if code in RETRY_STATUS or code >= 500:
            raise ChatError(f"http_{code}", text[:200], wait_s=retry_after_s(headers.get("retry-after")))
        if code >= 400:
            raise ChatError(f"http_{code}", text[:200], retry=False)
        try:
            choice = json.loads(data)["choices"][0]
            content, finish = choice["message"]["content"], choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            err = ChatError("malformed_response", "not a chat completion (no choices[0].message.content)")
            err.reply = text[:2000]
            raise err from None
        return Reply(content if isinstance(content, str) or content is None else json.dumps(content), finish)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, _REDACTED) if self._api_key else text

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    # -- batches

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, ordered: bool = False) -> Iterator[R]:
        """``fn`` over ``items`` on ``concurrency`` threads; results in input order if ``ordered``,
        else as they finish. An exception from ``fn`` stops the batch (pending items are cancelled)."""
        items = list(items)
        if not items:
            return
        with ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix=self.name) as pool:
            futures = [pool.submit(fn, it) for it in items]
            try:
                for fut in futures if ordered else as_completed(futures):
                    yield fut.result()
            finally:
                for f in futures:
                    f.cancel()
