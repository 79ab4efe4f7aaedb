"""The openai backend against a scripted local HTTP server (a fake: unit tests only).

The real-server tests are in tests/test_server_backend.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")

from scripted_server import answer, ok, serve  # noqa: F401 - `serve` is a fixture

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.cache import CompletionCache
from arena_dagster.backends.generation import generate_cached
from arena_dagster.backends.openai_backend import (
    OpenAIBackend,
    OpenAIBackendError,
    OpenAIBatchError,
    OpenAIConfigError,
    RequestsPerMinuteLimiter,
)
from arena_dagster.errors import ArenaError

SECRET = "sk-unit-test-SECRET-4242"


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
    with pytest.raises(OpenAIBackendError, match="1 of 4 requests") as info:
        generate_cached(OpenAIBackend(spec), reqs(4), cache)
    assert "'r2'" in str(info.value) and isinstance(info.value, ArenaError) and "\n" not in str(info.value)
    assert len(cache) == 3
    # The batch form keeps the answered ones on the error.
    with pytest.raises(OpenAIBatchError) as batch:
        OpenAIBackend(spec).generate(reqs(4))
    assert [c is None for c in batch.value.completed] == [False, False, True, False]


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


def test_a_closed_port_fails_fast_and_stops_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 requests at concurrency 4 against nothing: the run stops after the first requests' retries
    # instead of retrying all 40 (that would take 10x as long for the same answer).
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(spec_for(f"http://127.0.0.1:{port}/v1", max_retries=2))
    with pytest.raises(OpenAIBackendError, match=r"were not sent once the server failed") as info:
        backend.generate_streaming(reqs(40), lambda index, completion: None)
    assert backend.attempts <= 4 * 3
    assert "check that the server is up" in str(info.value)


def test_unauthorized_stops_the_run_but_a_bad_request_does_not(serve) -> None:
    server = serve(lambda n, body: (401, {"error": {"message": "bad key"}}, 0))
    with pytest.raises(OpenAIBackendError, match="HTTP 401"):
        OpenAIBackend(spec_for(server.url)).generate(reqs(20))
    assert len(server.calls) <= 4  # the requests in flight when the first 401 came back
    # A 400 is this request's fault (e.g. too long): the others are still answered and kept.
    server = serve(lambda n, body: (400, {"error": {"message": "too long"}}, 0) if body["messages"][-1]["content"] == "p3"
                   else (200, ok(body), 0))
    delivered: list[int] = []
    with pytest.raises(OpenAIBackendError, match="1 of 20 requests"):
        OpenAIBackend(spec_for(server.url)).generate_streaming(reqs(20), lambda i, c: delivered.append(i))
    assert sorted(delivered) == [i for i in range(20) if i != 3] and len(server.calls) == 20


@pytest.mark.parametrize("content", [None, ""], ids=["null", "empty"])
def test_null_or_empty_content_is_retried_never_cached(serve, tmp_path: Path, content) -> None:
    # Always empty: retried with backoff, then a counted failure naming it; nothing cached.
    server = serve(lambda n, body: (200, answer(body, content), 0))
    cache = CompletionCache(tmp_path / "c.sqlite")
    backend = OpenAIBackend(spec_for(server.url, max_retries=2))
    with pytest.raises(OpenAIBackendError, match="empty completion") as info:
        generate_cached(backend, reqs(1), cache)
    assert "null" in str(info.value) if content is None else "''" in str(info.value)
    assert len(server.calls) == 3 and backend.retries == 2 and len(cache) == 0
    # Empty once, then an answer: the answer is what is cached.
    server = serve(lambda n, body: (200, answer(body, content if n == 0 else "the real answer"), 0))
    result = generate_cached(OpenAIBackend(spec_for(server.url)), reqs(1), cache)
    assert [c.text for c in result.completions] == ["the real answer"] and len(server.calls) == 2
    assert list(cache.get_many([reqs(1)[0].cache_key(spec_for(server.url))]).values())[0].text == "the real answer"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not JSON"),
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[1, 2]", "not a chat completion"),
        ({"id": "x", "object": "chat.completion", "created": 0, "model": "m"}, "not a chat completion"),
        ({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}, "no choices"),
    ],
    ids=["broken-json", "html", "json-array", "no-choices-field", "empty-choices"],
)
def test_malformed_answers_are_retried_then_a_clear_error(serve, tmp_path: Path, payload, message) -> None:
    server = serve(lambda n, body: (200, payload, 0) if n < 2 else (200, ok(body), 0))
    result = generate_cached(OpenAIBackend(spec_for(server.url, max_retries=3)), reqs(1), CompletionCache(tmp_path / "a.sqlite"))
    assert result.completions[0].text == "re: p0" and len(server.calls) == 3
    server = serve(lambda n, body: (200, payload, 0))
    cache = CompletionCache(tmp_path / "b.sqlite")
    with pytest.raises(OpenAIBackendError, match=message) as info:
        generate_cached(OpenAIBackend(spec_for(server.url, max_retries=1)), reqs(3), cache)
    assert len(cache) == 0 and "\n" not in str(info.value)


def test_completions_are_handed_over_as_they_finish(serve) -> None:
    # r0 is slow: r1..r3 must be delivered (and so committed) before it, not after the whole batch.
    server = serve(lambda n, body: (200, ok(body), 0.6 if body["messages"][-1]["content"] == "p0" else 0.02))
    order: list[tuple[int, str]] = []
    OpenAIBackend(spec_for(server.url)).generate_streaming(reqs(4), lambda i, c: order.append((i, c.request_id)))
    assert order[-1] == (0, "r0") and sorted(order) == [(i, f"r{i}") for i in range(4)]


def test_a_failing_callback_stops_the_run_and_is_reraised(serve) -> None:
    server = serve(lambda n, body: (200, ok(body), 0.05))

    class DiskFull(Exception):
        pass

    def on_completion(index, completion):
        raise DiskFull("no space")

    backend = OpenAIBackend(spec_for(server.url))
    with pytest.raises(DiskFull):
        backend.generate_streaming(reqs(40), on_completion)
    assert len(server.calls) <= 8  # the first answers and those already in flight, not all 40


def test_credentials_in_the_base_url_never_appear(serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = serve(lambda n, body: (500, {"error": {"message": "down"}}, 0))
    url = server.url.replace("http://", "http://alice:hunter2-secret@")
    spec = spec_for(url, max_retries=1)
    backend = OpenAIBackend(spec)
    logged: list[str] = []
    with pytest.raises(OpenAIBackendError) as info:
        generate_cached(backend, reqs(2), CompletionCache(tmp_path / "c.sqlite"), log=logged.append)
    shown = [str(info.value), repr(backend), repr(spec), *logged]
    assert all("hunter2" not in text and "alice" not in text for text in shown)
    assert "http://***@127.0.0.1" in str(info.value)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"hunter2" not in raw


def test_a_bad_base_url_is_a_config_error_without_credentials() -> None:
    for url in ("127.0.0.1:8000/v1", "ftp://u:pw-secret@host/v1", "http://u:pw-secret@host:port/v1"):
        spec = ModelSpec(name="m", backend="openai", path="x", base_url=url)
        with pytest.raises(OpenAIConfigError, match="base_url") as info:
            OpenAIBackend(spec)
        assert "pw-secret" not in str(info.value)


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
    with pytest.raises(OpenAIConfigError, match="ARENA_ABSENT_KEY") as info:
        OpenAIBackend(spec)
    assert str(info.value).endswith("or drop api_key_env for a server that needs no key")


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
