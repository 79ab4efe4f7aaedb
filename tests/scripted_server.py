"""A scripted OpenAI-shaped HTTP server for unit tests (a fake: the real server is tests/test_server_backend.py).

Imported by the test modules that talk HTTP to it (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest


def reply(handler: BaseHTTPRequestHandler, status: int, blob: bytes, headers: dict[str, str] | None = None) -> None:
    """Send a JSON reply; a client that has gone away (killed, timed out) is not an error."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(blob)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(blob)
    except (BrokenPipeError, ConnectionResetError):
        pass


class LocalHTTP:
    """A threaded HTTP server on 127.0.0.1 at `self.url` (/v1), serving `handler`."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ScriptedServer(LocalHTTP):
    """An OpenAI-shaped /v1/chat/completions whose behaviour per call is scripted by `plan(n, body)`.

    `plan` returns (status, payload, delay); a payload of bytes is sent as the raw body.
    """

    def __init__(self, plan: Callable[[int, dict], tuple[int, dict | bytes, float]]) -> None:
        self.calls: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = len(outer.calls)
                    outer.calls.append(body)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, payload, delay = plan(n, body)
                if delay:
                    time.sleep(delay)
                blob = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                reply(self, status, blob, {"Retry-After": "0"} if status == 429 else None)

        self.serve(Handler)


def ok(body: dict, content: str | None = "") -> dict:
    prompt = body["messages"][-1]["content"]
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"re: {prompt}" if content == "" else content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def answer(body: dict, content: str | None) -> dict:
    """A well-formed chat completion whose content is exactly `content` (None: JSON null)."""
    reply = ok(body)
    reply["choices"][0]["message"]["content"] = content
    return reply


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []

    def start(plan):
        server = ScriptedServer(plan)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def settled(count: Callable[[], int], quiet_s: float = 0.5, timeout_s: float = 30.0) -> int:
    """`count()` once it has not changed for `quiet_s`: a killed client's last request may still be on its way."""
    last, since = count(), time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last
