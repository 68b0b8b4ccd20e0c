"""A scripted OpenAI-compatible chat-completions endpoint on 127.0.0.1 (http.server), for the tests of the
clients that talk to one (the judge, the evaluation stage)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# A valid VAU-Eval verdict (five 0-10 scores and a rationale).
GOOD = {"classification": 8, "key_objects": 7, "fluency": 9, "informativeness": 6, "factual_consistency": 7, "rationale": "ok"}


def completion(content: str) -> dict:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


TRICKLE = -1.0  # as a delay: send the headers, then the body one byte a second


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 for one test, serving ``handler``: ``with`` starts and stops
    it; ``closing`` is set on exit, so a handler that sleeps or trickles can give up."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.closing = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class ChatServer(LoopbackServer):
    """A chat-completions endpoint answering from a script: (status, body, delay_s) per request.

    When the script runs out the last entry repeats. Every request (path, headers, JSON) is kept.
    """

    def __init__(self, script: list[tuple[int, object, float]]):
        self.script = list(script)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                status, payload, delay = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                if delay > 0:
                    time.sleep(delay)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if delay == TRICKLE:
                        for b in data:
                            if server.closing.is_set():
                                return
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(1.0)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

            def log_message(self, *args):
                pass

        super().__init__(Handler)
