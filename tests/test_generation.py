from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytest

from arena_dagster.backends.base import BackendError, ChatRequest, Completion, ModelSpec, user_messages
from arena_dagster.backends.cache import CompletionCache
from arena_dagster.backends.generation import (
    BackendContractError,
    GenerationBudget,
    PartialBatchError,
    generate_cached,
)
from arena_dagster.backends.registry import (
    ModelConfigError,
    UnknownBackendError,
    make_backend,
    model_spec_from_config,
)


class CountingBackend:
    """Echoes prompts; counts every request it is sent. Fails on demand."""

    def __init__(self, fail_on: set[str] | None = None, partial: bool = False) -> None:
        self.spec = ModelSpec(name="echo", backend="recorded", path="echo", revision="1")
        self.sent: list[str] = []
        self.batches: list[int] = []
        self.fail_on = fail_on or set()
        self.partial = partial

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        self.batches.append(len(requests))
        out: list[Completion | None] = []
        for request in requests:
            if request.request_id in self.fail_on:
                out.append(None)
                continue
            self.sent.append(request.request_id)
            text = "echo: " + request.messages[-1]["content"]
            out.append(Completion(request.request_id, text, tokens_in=2, tokens_out=3))
        if any(c is None for c in out):
            if self.partial:
                raise PartialBatchError("server died", out)
            raise RuntimeError("server died")
        return out  # type: ignore[return-value]


def _requests(n: int, prefix: str = "q") -> list[ChatRequest]:
    return [ChatRequest(f"{prefix}{i}", user_messages(f"prompt {prefix}{i}")) for i in range(n)]


def test_second_run_is_all_hits_in_request_order(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    backend = CountingBackend()
    requests = _requests(10)
    first = generate_cached(backend, requests, cache, batch_size=3)
    assert (first.hits, first.misses, first.generated) == (0, 10, 10)
    assert backend.batches == [3, 3, 3, 1]
    assert [c.request_id for c in first.completions] == [r.request_id for r in requests]
    assert not any(c.cached for c in first.completions)
    assert (first.tokens_in, first.tokens_out) == (20, 30)

    second = generate_cached(backend, list(reversed(requests)), cache)
    assert (second.hits, second.misses, second.generated) == (10, 0, 0)
    assert len(backend.sent) == 10
    assert all(c.cached for c in second.completions)
    assert [c.request_id for c in second.completions] == [r.request_id for r in reversed(requests)]
    assert second.completions[0].text == "echo: prompt q9"
    assert (second.tokens_in, second.tokens_out) == (0, 0)


def test_duplicates_are_generated_once_and_keep_their_own_ids(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    backend = CountingBackend()
    same = user_messages("same prompt")
    requests = [ChatRequest("a", same), ChatRequest("b", same), ChatRequest("c", user_messages("other"))]
    result = generate_cached(backend, requests, cache)
    assert backend.sent == ["a", "c"]
    assert [c.request_id for c in result.completions] == ["a", "b", "c"]
    assert result.completions[1].text == "echo: same prompt"
    assert (result.hits, result.misses, result.generated) == (0, 3, 2)
    assert len(cache) == 2


def test_failure_keeps_finished_batches_and_resume_skips_them(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    requests = _requests(10)
    with pytest.raises(RuntimeError, match="server died"):
        generate_cached(CountingBackend(fail_on={"q7"}), requests, cache, batch_size=3)
    assert len(cache) == 6  # batches q0-2 and q3-5 committed; q6-8 lost as a whole

    healthy = CountingBackend()
    result = generate_cached(healthy, requests, cache, batch_size=3)
    assert healthy.sent == ["q6", "q7", "q8", "q9"]
    assert result.hits == 6 and len(result.completions) == 10 and len(cache) == 10


def test_partial_batch_error_keeps_the_answered_part(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    requests = _requests(6)
    with pytest.raises(PartialBatchError):
        generate_cached(CountingBackend(fail_on={"q4"}, partial=True), requests, cache, batch_size=3)
    assert len(cache) == 5
    healthy = CountingBackend()
    generate_cached(healthy, requests, cache)
    assert healthy.sent == ["q4"]


def test_budget_on_requests_stops_cleanly_and_is_shared(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    backend = CountingBackend()
    budget = GenerationBudget(max_requests=7)
    result = generate_cached(backend, _requests(5, "a"), cache, batch_size=2, budget=budget)
    assert not result.stopped_by_budget and len(result.completions) == 5
    result = generate_cached(backend, _requests(5, "b"), cache, batch_size=4, budget=budget)
    assert result.stopped_by_budget
    assert [c.request_id for c in result.completions] == ["b0", "b1"]
    assert result.missing_request_ids == ["b2", "b3", "b4"]
    assert len(backend.sent) == 7 and budget.exhausted


def test_budget_on_tokens_stops_after_the_batch_that_crosses_it(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    backend = CountingBackend()
    budget = GenerationBudget(max_tokens=12)  # 5 tokens per request
    result = generate_cached(backend, _requests(10), cache, batch_size=2, budget=budget)
    assert result.stopped_by_budget
    assert len(backend.sent) == 4 and budget.spent_tokens == 20
    # Cache hits are free: a rerun with an exhausted budget still returns the cached ones.
    again = generate_cached(backend, _requests(10), cache, budget=budget)
    assert len(again.completions) == 4 and len(backend.sent) == 4


def test_backend_breaking_order_is_a_clear_error(tmp_path: Path) -> None:
    class Shuffler(CountingBackend):
        def generate(self, requests):
            return list(reversed(super().generate(requests)))

    with pytest.raises(BackendContractError, match="request order"):
        generate_cached(Shuffler(), _requests(3), CompletionCache(tmp_path / "c.sqlite"))


def test_model_spec_from_config_maps_keys_and_options() -> None:
    spec = model_spec_from_config(
        "judge",
        {
            "backend": "openai",
            "model": "gpt-x",
            "revision": "2024",
            "base_url": "http://127.0.0.1:1/v1",
            "api_key_env": "KEY_VAR",
            "concurrency": 8,
            "sampling": {"max_tokens": 32, "temperature": 0.5},
            "timeout_s": 12,
        },
    )
    assert (spec.name, spec.backend, spec.path, spec.revision) == ("judge", "openai", "gpt-x", "2024")
    assert (spec.base_url, spec.api_key_env, spec.concurrency) == ("http://127.0.0.1:1/v1", "KEY_VAR", 8)
    assert (spec.sampling.max_tokens, spec.sampling.temperature, spec.sampling.top_p) == (32, 0.5, 1.0)
    assert spec.options == {"timeout_s": 12}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"path": "x"}, "backend"),
        ({"backend": "tgi", "path": "x"}, "unknown backend 'tgi'"),
        ({"backend": "openai", "model": "x"}, "base_url"),
        ({"backend": "vllm"}, "path"),
        ({"backend": "vllm", "path": "x", "sampling": {"temp": 1}}, "temp"),
        ({"backend": "vllm", "path": "x", "concurrency": 0}, "concurrency"),
        ({"backend": "openai", "model": "x", "base_url": "u", "api_key": "sk"}, "api_key_env"),
    ],
)
def test_bad_model_config_names_model_and_field(cfg: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message) as info:
        model_spec_from_config("bad-model", cfg)
    assert "bad-model" in str(info.value)


def test_make_backend_rejects_unknown_backend() -> None:
    with pytest.raises(UnknownBackendError, match="'nope'"):
        make_backend(ModelSpec(name="x", backend="nope"))


def test_vllm_backend_without_vllm_says_how_to_install() -> None:
    import importlib.util

    from arena_dagster.backends.vllm_backend import BackendUnavailableError

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is importable in this environment")
    with pytest.raises(BackendUnavailableError, match=r"arena-dagster\[vllm\]"):
        make_backend(ModelSpec(name="m", backend="vllm", path="x"))


# ---------------------------------------------------------------- streaming backends: one commit per completion

class StreamingEcho(CountingBackend):
    """Delivers each answer as it is made; sees the cache grow one row per delivery."""

    def __init__(self, cache: CompletionCache | None = None, fail_after: int | None = None, misbehave: str = "") -> None:
        super().__init__()
        self.cache = cache
        self.fail_after = fail_after
        self.misbehave = misbehave
        self.rows_seen: list[int] = []

    def generate_streaming(self, requests, on_completion) -> None:
        self.batches.append(len(requests))
        for index, request in enumerate(requests):
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise BackendError(f"server died after {self.fail_after} answers")
            if self.cache is not None:
                self.rows_seen.append(len(self.cache))
            self.sent.append(request.request_id)
            completion = Completion(request.request_id, "echo: " + request.messages[-1]["content"], 2, 3)
            if self.misbehave == "twice":
                on_completion(0, completion)
            elif self.misbehave == "wrong-id":
                completion.request_id = "someone-else"
            elif self.misbehave == "drop" and index == len(requests) - 1:
                return
            on_completion(index, completion)


def test_a_streaming_backend_gets_every_miss_at_once_and_each_answer_is_committed_as_it_comes(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    generate_cached(StreamingEcho(), _requests(3), cache)
    backend = StreamingEcho(cache)
    result = generate_cached(backend, _requests(10), cache, batch_size=4)
    assert backend.batches == [7] and backend.sent == [f"q{i}" for i in range(3, 10)]
    assert backend.rows_seen == list(range(3, 10))  # the previous answer was committed before the next request
    assert [c.request_id for c in result.completions] == [f"q{i}" for i in range(10)]
    assert (result.hits, result.generated, result.tokens_out) == (3, 7, 21)


def test_a_streaming_backend_that_dies_keeps_every_answer_it_delivered(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    logged: list[str] = []
    with pytest.raises(BackendError, match="server died"):
        generate_cached(StreamingEcho(fail_after=5), _requests(10), cache, log=logged.append)
    assert len(cache) == 5 and "stopped with 5 of 10 answered and cached" in logged[-1]
    healthy = StreamingEcho()
    generate_cached(healthy, _requests(10), cache)
    assert healthy.sent == [f"q{i}" for i in range(5, 10)]


def test_budgets_cut_what_a_streaming_backend_is_sent(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    backend = StreamingEcho()
    result = generate_cached(backend, _requests(10), cache, budget=GenerationBudget(max_requests=6))
    assert backend.batches == [6] and result.stopped_by_budget and len(result.completions) == 6
    # A token budget is checked between calls of batch_size requests: it can pass by at most one call.
    backend = StreamingEcho()
    result = generate_cached(backend, _requests(10, "t"), cache, batch_size=2, budget=GenerationBudget(max_tokens=12))
    assert backend.batches == [2, 2] and result.stopped_by_budget


@pytest.mark.parametrize(("misbehave", "message"), [("twice", "twice or out of range"), ("wrong-id", "someone-else"),
                                                    ("drop", "1 of 3 requests unanswered")])
def test_a_streaming_backend_breaking_the_contract_is_a_clear_error(tmp_path: Path, misbehave: str, message: str) -> None:
    with pytest.raises(BackendContractError, match=message):
        generate_cached(StreamingEcho(misbehave=misbehave), _requests(3), CompletionCache(tmp_path / "c.sqlite"))
