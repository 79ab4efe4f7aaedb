"""Cached, resumable, budgeted generation in front of any backend.

`generate_cached` looks every request up in the `CompletionCache`, sends only the misses
to the backend, in batches, and writes each batch to the cache as soon as it is answered:
a run killed at any moment resumes from the last committed batch on the next call, with
nothing generated twice and nothing lost.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from arena_dagster.backends.base import Backend, ChatRequest, Completion
from arena_dagster.backends.cache import CompletionCache


class BackendContractError(RuntimeError):
    """A backend answered a batch with the wrong number or order of completions."""


class PartialBatchError(RuntimeError):
    """Raised by a backend whose batch failed part-way: the completions it did get are kept.

    `completed[i]` is the completion of the batch's i-th request, or None where it failed.
    `generate_cached` writes the completed ones to the cache before re-raising, so a dead
    server mid-batch loses no finished work.
    """

    def __init__(self, message: str, completed: Sequence[Completion | None]) -> None:
        super().__init__(message)
        self.completed = list(completed)


@dataclass
class GenerationBudget:
    """A cap on what generation may spend; share one object across the calls of a round.

    Cache hits are free. `max_requests` is exact (batches are cut to fit); `max_tokens`
    (tokens in + out of generated completions) is checked after each batch, so a round
    can pass it by at most one batch. Spending is kept on the object, so calls that share
    it share the cap; seed `spent_*` to carry spending over from an earlier process.
    """

    max_requests: int | None = None
    max_tokens: int | None = None
    spent_requests: int = 0
    spent_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"GenerationBudget.{name} must be >= 0, got {value}")

    def requests_left(self) -> int | None:
        if self.max_requests is None:
            return None
        return max(0, self.max_requests - self.spent_requests)

    @property
    def exhausted(self) -> bool:
        if self.max_requests is not None and self.spent_requests >= self.max_requests:
            return True
        return self.max_tokens is not None and self.spent_tokens >= self.max_tokens

    def charge(self, completions: Sequence[Completion]) -> None:
        self.spent_requests += len(completions)
        self.spent_tokens += sum(c.tokens_in + c.tokens_out for c in completions)


@dataclass
class GenerationResult:
    """What one `generate_cached` call produced.

    `completions` follow request order; a request is absent only when the budget stopped
    the run before it was answered (then `stopped_by_budget` is True). `hits` + `misses` ==
    number of requests; `generated` is how many distinct requests went to the backend
    (duplicates of one cache key are generated once). Token counts and wall time are what
    this call spent on the backend (cache hits cost nothing).
    """

    completions: list[Completion]
    hits: int
    misses: int
    tokens_in: int
    tokens_out: int
    wall_s: float
    stopped_by_budget: bool
    generated: int = 0
    missing_request_ids: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, int | float | bool]:
        return {
            "requests": self.hits + self.misses,
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "generated": self.generated,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "wall_s": round(self.wall_s, 3),
            "stopped_by_budget": self.stopped_by_budget,
        }


def _as_answer(completion: Completion, request: ChatRequest, cached: bool) -> Completion:
    return dataclasses.replace(completion, request_id=request.request_id, cached=cached)


def _check_batch(batch: Sequence[ChatRequest], answers: Sequence[Completion | None], backend: Backend) -> None:
    if len(answers) != len(batch):
        raise BackendContractError(
            f"backend {type(backend).__name__} ({backend.spec.name}) returned {len(answers)} completions "
            f"for {len(batch)} requests"
        )
    for request, answer in zip(batch, answers):
        if answer is not None and answer.request_id != request.request_id:
            raise BackendContractError(
                f"backend {type(backend).__name__} ({backend.spec.name}) answered request "
                f"{answer.request_id!r} where {request.request_id!r} was expected: completions must keep request order"
            )


def generate_cached(
    backend: Backend,
    requests: Sequence[ChatRequest],
    cache: CompletionCache,
    *,
    batch_size: int = 64,
    budget: GenerationBudget | None = None,
    log: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Answer `requests` with `backend`, reusing and filling `cache`. See the module docstring."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    spec = backend.spec
    say = log or (lambda _msg: None)

    keys = [request.cache_key(spec) for request in requests]
    answers: dict[str, Completion] = cache.get_many(keys)
    hit_keys = set(answers)
    hits = sum(1 for key in keys if key in hit_keys)

    # One backend request per distinct missing key, in first-appearance order.
    pending: dict[str, ChatRequest] = {}
    for key, request in zip(keys, requests):
        if key not in hit_keys and key not in pending:
            pending[key] = request
    todo = list(pending.items())
    say(
        f"{spec.name}: {len(requests)} requests, {hits} cached, "
        f"{len(todo)} to generate in batches of {batch_size}"
    )

    tokens_in = tokens_out = generated = 0
    stopped = False
    position = 0
    while position < len(todo):
        size = batch_size
        if budget is not None:
            if budget.exhausted:
                stopped = True
                break
            left = budget.requests_left()
            if left is not None:
                size = min(size, left)
        chunk = todo[position : position + size]
        batch = [request for _, request in chunk]
        batch_started = time.perf_counter()
        try:
            produced: list[Completion | None] = list(backend.generate(batch))
            failure: PartialBatchError | None = None
        except PartialBatchError as exc:
            produced, failure = exc.completed, exc
        _check_batch(batch, produced, backend)

        done = [(key, request, answer) for (key, request), answer in zip(chunk, produced) if answer is not None]
        cache.put_many([(key, spec, request, answer) for key, request, answer in done])
        for key, _request, answer in done:
            answers[key] = dataclasses.replace(answer, cached=False)
        finished = [answer for _, _, answer in done]
        generated += len(finished)
        tokens_in += sum(c.tokens_in for c in finished)
        tokens_out += sum(c.tokens_out for c in finished)
        if budget is not None:
            budget.charge(finished)
        if failure is not None:
            say(f"{spec.name}: batch failed with {len(finished)} of {len(batch)} answered and cached: {failure}")
            raise failure
        position += len(chunk)
        say(
            f"{spec.name}: {position}/{len(todo)} generated "
            f"({len(batch) / max(time.perf_counter() - batch_started, 1e-9):.1f} req/s this batch)"
        )

    completions: list[Completion] = []
    missing: list[str] = []
    for key, request in zip(keys, requests):
        answer = answers.get(key)
        if answer is None:
            missing.append(request.request_id)
            continue
        completions.append(_as_answer(answer, request, cached=key in hit_keys))
    if missing and not stopped:
        raise BackendContractError(f"{spec.name}: {len(missing)} requests left unanswered: {missing[:5]}")
    if stopped:
        say(f"{spec.name}: budget reached; {len(missing)} requests left for a later run")
    return GenerationResult(
        completions=completions,
        hits=hits,
        misses=len(requests) - hits,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        wall_s=time.perf_counter() - started,
        stopped_by_budget=stopped,
        generated=generated,
        missing_request_ids=missing,
    )
