"""The openai backend against a scripted local HTTP server (a fake: unit tests only).

The real-server tests are in tests/test_server_backend.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("openai")

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.cache import CompletionCache
from arena_dagster.backends.generation import PartialBatchError, generate_cached
from arena_dagster.backends.openai_backend import (
    OpenAIBackend,
    OpenAIBackendError,
    OpenAIConfigError,
    RequestsPerMinuteLimiter,
)

SECRET = "sk-unit-test-SECRET-4242"


class ScriptedServer:
    """An OpenAI-shaped /v1/chat/completions whose behaviour per call is scripted by `plan(n, body)`."""

    def __init__(self, plan: Callable[[int, dict], tuple[int, dict, float]]) -> None:
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
                blob = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(blob)))
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(blob)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(body: dict) -> dict:
    prompt = body["messages"][-1]["content"]
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"re: {prompt}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


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


def spec_for(url: str, **options) -> ModelSpec:
    base = {"timeout_s": 5, "max_retries": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    base.update(options)
    return ModelSpec(name="srv", backend="openai", path="served", base_url=url, concurrency=4, options=base)


def reqs(n: int) -> list[ChatRequest]:
    return [ChatRequest(f"r{i}", user_messages(f"p{i}"), SamplingParams(max_tokens=5, seed=1)) for i in range(n)]


def test_answers_in_order_with_usage_and_sampling(serve) -> None:
    server = serve(lambda n, body: (200, ok(body), 0.01 * (n % 3)))
    out = OpenAIBackend(spec_for(server.url)).generate(reqs(6))
    assert [c.request_id for c in out] == [f"r{i}" for i in range(6)]
    assert [c.text for c in out] == [f"re: p{i}" for i in range(6)]
    assert (out[0].tokens_in, out[0].tokens_out, out[0].finish_reason) == (7, 3, "stop")
    body = server.calls[0]
    assert (body["model"], body["max_tokens"], body["seed"], body["temperature"]) == ("served", 5, 1, 0.0)


def test_retries_500_and_429_then_succeeds(serve) -> None:
    def plan(n, body):
        if n < 2:
            return 500, {"error": {"message": "boom"}}, 0
        if n < 4:
            return 429, {"error": {"message": "slow down"}}, 0
        return 200, ok(body), 0

    server = serve(plan)
    backend = OpenAIBackend(spec_for(server.url, max_retries=5))
    out = backend.generate(reqs(1))
    assert out[0].text == "re: p0"
    assert len(server.calls) == 5 and backend.retries == 4


def test_timeout_is_retried_then_reported(serve) -> None:
    server = serve(lambda n, body: (200, ok(body), 2.0))
    backend = OpenAIBackend(spec_for(server.url, timeout_s=0.3, max_retries=1))
    started = time.perf_counter()
    with pytest.raises(OpenAIBackendError, match="Timeout") as info:
        backend.generate(reqs(1))
    assert time.perf_counter() - started < 1.9
    assert len(server.calls) == 2
    assert server.url in str(info.value) and "'served'" in str(info.value)


def test_client_errors_are_not_retried(serve) -> None:
    server = serve(lambda n, body: (400, {"error": {"message": "bad request"}}, 0))
    with pytest.raises(OpenAIBackendError, match="HTTP 400"):
        OpenAIBackend(spec_for(server.url)).generate(reqs(1))
    assert len(server.calls) == 1


def test_partial_failure_keeps_answered_rows_in_the_cache(serve, tmp_path: Path) -> None:
    server = serve(lambda n, body: (503, {}, 0) if body["messages"][-1]["content"] == "p2" else (200, ok(body), 0))
    cache = CompletionCache(tmp_path / "c.sqlite")
    spec = spec_for(server.url, max_retries=1)
    with pytest.raises(PartialBatchError, match="1 of 4 requests") as info:
        generate_cached(OpenAIBackend(spec), reqs(4), cache)
    assert "'r2'" in str(info.value)
    assert len(cache) == 3


def test_dead_server_error_names_url_and_model_not_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_UNIT_KEY", SECRET)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    spec = spec_for(url, max_retries=2)
    spec = ModelSpec(**{**spec.__dict__, "api_key_env": "ARENA_UNIT_KEY"})
    backend = OpenAIBackend(spec)
    with pytest.raises(OpenAIBackendError) as info:
        backend.generate(reqs(2))
    text = str(info.value)
    assert url in text and "'served'" in text and "Connection" in text
    assert SECRET not in text and SECRET not in repr(backend)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert backend.attempts == 6


def test_key_sent_as_bearer_but_scrubbed_from_errors(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_UNIT_KEY", SECRET)
    server = serve(lambda n, body: (401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}, 0))
    spec = ModelSpec(**{**spec_for(server.url).__dict__, "api_key_env": "ARENA_UNIT_KEY"})
    with pytest.raises(OpenAIBackendError) as info:
        OpenAIBackend(spec).generate(reqs(1))
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(info.value) and "***" in str(info.value)


def test_missing_key_variable_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARENA_ABSENT_KEY", raising=False)
    spec = ModelSpec(name="m", backend="openai", path="x", base_url="http://127.0.0.1:9/v1", api_key_env="ARENA_ABSENT_KEY")
    with pytest.raises(OpenAIConfigError, match="ARENA_ABSENT_KEY"):
        OpenAIBackend(spec)


def test_concurrency_is_bounded(serve) -> None:
    active = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def plan(n, body):
        with lock:
            active["now"] += 1
            active["peak"] = max(active["peak"], active["now"])
        time.sleep(0.05)
        with lock:
            active["now"] -= 1
        return 200, ok(body), 0

    server = serve(plan)
    OpenAIBackend(spec_for(server.url)).generate(reqs(12))
    assert active["peak"] == 4 and len(server.calls) == 12


def test_requests_per_minute_spaces_request_starts(serve) -> None:
    server = serve(lambda n, body: (200, ok(body), 0))
    started = time.perf_counter()
    OpenAIBackend(spec_for(server.url, requests_per_minute=600)).generate(reqs(4))
    assert time.perf_counter() - started >= 0.3  # starts at 0, 0.1, 0.2, 0.3 s


def test_rate_limiter_without_limit_never_waits() -> None:
    import asyncio

    limiter = RequestsPerMinuteLimiter(None)
    started = time.perf_counter()
    async def hundred() -> None:
        await asyncio.gather(*(limiter.wait() for _ in range(100)))

    asyncio.run(asyncio.wait_for(hundred(), 1))
    assert time.perf_counter() - started < 0.5


def test_response_format_and_extra_body_pass_through(serve) -> None:
    server = serve(lambda n, body: (200, ok(body), 0))
    schema = {"type": "json_schema", "json_schema": {"name": "score", "schema": {"type": "object"}}}
    spec = spec_for(server.url, response_format=schema, extra_body={"top_k": 5})
    OpenAIBackend(spec).generate(reqs(1))
    assert server.calls[0]["response_format"] == schema
    assert server.calls[0]["top_k"] == 5


def test_generate_works_inside_a_running_event_loop(serve) -> None:
    import asyncio

    server = serve(lambda n, body: (200, ok(body), 0))
    backend = OpenAIBackend(spec_for(server.url))

    async def inside():
        return backend.generate(reqs(2))

    assert [c.text for c in asyncio.run(inside())] == ["re: p0", "re: p1"]
