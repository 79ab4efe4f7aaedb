"""Cached, resumable, budgeted generation in front of any backend: exactly once.

`generate_cached` looks every request up in the `CompletionCache` and sends only the misses
to the backend. What comes back is committed at once:
- a streaming backend (`StreamingBackend`: openai) hands over each completion as it
  finishes, and each is committed in its own small transaction as it arrives, so
  a run killed at any moment loses only the requests in flight (at most the concurrency);
- a batch backend (transformers, vllm, recorded) answers a batch together, and the batch is
  committed in one transaction, so a kill loses at most the batch being generated.
The next call resumes from what was committed: nothing answered is generated again.
Progress (`compute.progress.Progress`): a tqdm bar on a terminal and, through `log`, a line every
5% of the requests to generate, with requests/s; local and on Ray alike (the driver commits).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from arena_dagster.backends.base import Backend, BackendError, ChatRequest, Completion, StreamingBackend
from arena_dagster.backends.cache import CacheSession, CompletionCache
from arena_dagster.compute.progress import Progress


class BackendContractError(BackendError):
    """A backend broke the interface: wrong number or order of completions, an index twice."""


class PartialBatchError(BackendError):
    """Raised by a batch backend whose batch failed part-way: the completions it did get are kept.

    `completed[i]` is the completion of the batch's i-th request, or None where it failed.
    `generate_cached` writes the completed ones to the cache before re-raising, so a dead
    server mid-batch loses no finished work.
    """

    def __init__(
        self, what: str, completed: Sequence[Completion | None], input: str | None = None, fix: str | None = None
    ) -> None:
        super().__init__(what, input, fix)
        self.completed = list(completed)


@dataclass
class GenerationBudget:
    """A cap on what generation may spend; share one object across the calls of a round.

    Cache hits are free. `max_requests` is exact (what is sent is cut to fit); `max_tokens`
    (tokens in + out of generated completions) is checked after each batch of `batch_size`
    requests, so a round can pass it by at most one batch. Spending is kept on the object, so calls that share
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


def _contract_error(backend: Backend, what: str) -> BackendContractError:
    return BackendContractError(
        f"backend {type(backend).__name__} ({backend.spec.name}) {what}",
        fix="this is a bug in that backend: report it with the model config",
    )


def _check_batch(batch: Sequence[ChatRequest], answers: Sequence[Completion | None], backend: Backend) -> None:
    if len(answers) != len(batch):
        raise _contract_error(backend, f"returned {len(answers)} completions for {len(batch)} requests")
    for request, answer in zip(batch, answers):
        if answer is not None and answer.request_id != request.request_id:
            raise _contract_error(
                backend,
                f"answered request {answer.request_id!r} where {request.request_id!r} was expected: "
                "completions must keep request order",
            )


class _Tally:
    """What one `generate_cached` call has committed and spent so far, with its progress."""

    def __init__(self, backend: Backend, store: CacheSession, budget: GenerationBudget | None,
                 answers: dict[str, Completion], say: Callable[[str], None], progress: Progress) -> None:
        self.backend, self.store, self.budget, self.answers, self.say = backend, store, budget, answers, say
        self.progress = progress
        self.generated = self.tokens_in = self.tokens_out = 0

    def record(self, key: str, completion: Completion) -> None:
        """Account for a completion already committed to the cache."""
        self.answers[key] = dataclasses.replace(completion, cached=False)
        self.generated += 1
        self.tokens_in += completion.tokens_in
        self.tokens_out += completion.tokens_out
        if self.budget is not None:
            self.budget.charge([completion])


def _answer_batch(backend: Backend, chunk: list[tuple[str, ChatRequest]], tally: _Tally) -> None:
    """One `generate` call; its answers (all, or the answered part of a failed batch) in one transaction."""
    batch = [request for _, request in chunk]
    try:
        produced: list[Completion | None] = list(backend.generate(batch))
        failure: PartialBatchError | None = None
    except PartialBatchError as exc:
        produced, failure = exc.completed, exc
    _check_batch(batch, produced, backend)
    done = [(key, request, answer) for (key, request), answer in zip(chunk, produced) if answer is not None]
    tally.store.put_many([(key, backend.spec, request, answer) for key, request, answer in done])
    for key, _request, answer in done:
        tally.record(key, answer)
    tally.progress.update(len(done))
    if failure is not None:
        tally.say(f"{backend.spec.name}: batch failed with {len(done)} of {len(batch)} answered and cached")
        raise failure


def _answer_streaming(backend: StreamingBackend, chunk: list[tuple[str, ChatRequest]], tally: _Tally) -> None:
    """One `generate_streaming` call; each completion committed in its own transaction as it arrives."""
    batch = [request for _, request in chunk]
    delivered: set[int] = set()

    def on_completion(index: int, completion: Completion) -> None:
        if not 0 <= index < len(chunk) or index in delivered:
            raise _contract_error(backend, f"delivered index {index} (of {len(chunk)}) twice or out of range")
        key, request = chunk[index]
        if completion.request_id != request.request_id:
            raise _contract_error(
                backend, f"delivered request {completion.request_id!r} at index {index}, which is {request.request_id!r}"
            )
        tally.store.put(key, backend.spec, request, completion)
        delivered.add(index)
        tally.record(key, completion)
        tally.progress.update(1)

    try:
        backend.generate_streaming(batch, on_completion)
    except Exception:
        tally.say(f"{backend.spec.name}: stopped with {len(delivered)} of {len(batch)} answered and cached")
        raise
    if len(delivered) != len(batch):
        raise _contract_error(backend, f"returned with {len(batch) - len(delivered)} of {len(batch)} requests unanswered")


def generate_cached(
    backend: Backend,
    requests: Sequence[ChatRequest],
    cache: CompletionCache,
    *,
    batch_size: int = 64,
    budget: GenerationBudget | None = None,
    log: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Answer `requests` with `backend`, reusing and filling `cache`, each answer committed once.

    A batch backend gets the misses in batches of `batch_size`; a streaming backend gets
    them all in one call (it bounds its own concurrency), or in batches of `batch_size`
    when a token budget has to be checked between them. See the module docstring.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    spec = backend.spec
    say = log or (lambda _msg: None)
    streaming = isinstance(backend, StreamingBackend)

    keys = [request.cache_key(spec) for request in requests]
    with cache.session() as store:
        answers: dict[str, Completion] = store.get_many(keys)
        hit_keys = set(answers)
        hits = sum(1 for key in keys if key in hit_keys)

        # One backend request per distinct missing key, in first-appearance order.
        pending: dict[str, ChatRequest] = {}
        for key, request in zip(keys, requests):
            if key not in hit_keys and key not in pending:
                pending[key] = request
        todo = list(pending.items())
        say(
            f"{spec.name}: {len(requests)} requests, {hits} cached, {len(todo)} to generate"
            + (f" ({spec.concurrency} in flight)" if streaming else f" in batches of {batch_size}")
        )

        progress = Progress(f"{spec.name} generation", len(todo), log=say, unit="requests")
        tally = _Tally(backend, store, budget, answers, say, progress)
        stopped = False
        position = 0
        while position < len(todo):
            size = batch_size
            if streaming and (budget is None or budget.max_tokens is None):
                size = len(todo) - position
            if budget is not None:
                if budget.exhausted:
                    stopped = True
                    break
                left = budget.requests_left()
                if left is not None:
                    size = min(size, left)
            chunk = todo[position : position + size]
            if streaming:
                _answer_streaming(backend, chunk, tally)  # type: ignore[arg-type]
            else:
                _answer_batch(backend, chunk, tally)
            position += len(chunk)
        progress.close()  # the bar only: on an error it is left as it stood

    completions: list[Completion] = []
    missing: list[str] = []
    for key, request in zip(keys, requests):
        answer = answers.get(key)
        if answer is None:
            missing.append(request.request_id)
            continue
        completions.append(_as_answer(answer, request, cached=key in hit_keys))
    if missing and not stopped:
        raise _contract_error(backend, f"left {len(missing)} requests unanswered: {missing[:5]}")
    if stopped:
        say(f"{spec.name}: budget reached; {len(missing)} requests left for a later run")
    return GenerationResult(
        completions=completions,
        hits=hits,
        misses=len(requests) - hits,
        tokens_in=tally.tokens_in,
        tokens_out=tally.tokens_out,
        wall_s=time.perf_counter() - started,
        stopped_by_budget=stopped,
        generated=tally.generated,
        missing_request_ids=missing,
    )
