"""OpenAI-compatible models on Ray: HTTP calls fanned out from the workers, each answer committed once.

The server here is the scripted OpenAI-shaped stub in the test process (a fake, for a unit test); the real
vLLM server path is `tests/test_server_backend.py::test_http_fanned_out_from_ray_workers_reaches_the_real_server`.
"""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
from scripted_server import ok, serve  # noqa: F401 - `serve` is a fixture

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.cache import CompletionCache
from arena_dagster.backends.generation import generate_cached
from arena_dagster.backends.openai_backend import OpenAIBackend, OpenAIBackendError
from arena_dagster.backends.replicas import Answered, RayHTTPFanout, backend_for, deliver
from arena_dagster.compute.settings import ComputeSettings

RAY2 = ComputeSettings(engine="ray", workers=2)


def _spec(url: str) -> ModelSpec:
    return ModelSpec(name="served", backend="openai", path="stub-model", base_url=url, concurrency=2,
                     options={"max_retries": 0, "timeout_s": 10, "batch_size": 3})


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest(f"q{i}", user_messages(f"question {i}"), SamplingParams(max_tokens=8)) for i in range(n)]


def test_openai_models_on_ray_are_http_calls_from_the_workers_each_committed_once(ray_local_cluster, serve, tmp_path):
    stub = serve(lambda _n, body: (200, ok(body), 0.0))
    url = stub.url
    requests = _requests(10)
    local = generate_cached(OpenAIBackend(_spec(url)), requests, CompletionCache(tmp_path / "local.sqlite"))
    fanout = backend_for(_spec(url), RAY2)
    assert isinstance(fanout, RayHTTPFanout)
    cache = CompletionCache(tmp_path / "ray.sqlite")
    on_ray = generate_cached(fanout, requests, cache)
    assert [c.text for c in on_ray.completions] == [c.text for c in local.completions]
    assert [c.request_id for c in on_ray.completions] == [r.request_id for r in requests]
    assert on_ray.generated == len(requests) == len(cache)
    asked = Counter(call["messages"][-1]["content"] for call in stub.calls)
    assert set(asked.values()) == {2}  # once by the local run, once from the workers: no request sent twice
    again = generate_cached(backend_for(_spec(url), RAY2), requests, cache)
    assert again.generated == 0 and len(stub.calls) == 2 * len(requests) and len(cache) == len(requests)


def test_a_dead_server_on_a_worker_is_the_local_error(ray_local_cluster, tmp_path):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{free.getsockname()[1]}/v1"
    errors = []
    for backend in (OpenAIBackend(_spec(dead)), backend_for(_spec(dead), RAY2)):
        with pytest.raises(OpenAIBackendError) as caught:
            generate_cached(backend, _requests(4), CompletionCache(tmp_path / f"{len(errors)}.sqlite"))
        errors.append(caught.value)
    local, on_ray = errors
    assert type(on_ray) is OpenAIBackendError and on_ray.fix == local.fix and dead in str(on_ray)
    assert "APIConnectionError" in str(on_ray) and "Traceback" not in str(on_ray)


def test_a_batch_delivered_twice_is_committed_once_and_a_worker_error_raised_after_its_answers():
    answer = Completion(request_id="q0", text="a")
    failure = OpenAIBackendError("1 of 2 requests failed", fix="check the server")
    # What a worker returns travels pickled (Ray's serialization): the error with its fix, as raised locally.
    batch = pickle.loads(pickle.dumps(Answered([0, 1], [answer, None], failure)))
    seen, delivered = [], set()
    for _ in range(2):
        with pytest.raises(OpenAIBackendError, match="1 of 2 requests failed") as caught:
            deliver(batch, delivered, lambda index, completion: seen.append((index, completion.text)))
        assert caught.value.fix == "check the server"
    assert seen == [(0, "a")]


def test_the_workers_share_the_models_request_rate():
    """`requests_per_minute` is the server's quota: `workers` clients each send their share of it."""
    spec = ModelSpec(name="served", backend="openai", path="m", base_url="http://127.0.0.1:1/v1",
                     options={"requests_per_minute": 120})
    fanout = backend_for(spec, ComputeSettings(engine="ray", workers=4))
    assert isinstance(fanout, RayHTTPFanout) and fanout.backend.requests_per_minute == 30
    assert OpenAIBackend(spec).requests_per_minute == 120
