"""Any OpenAI-compatible chat server: vLLM serve, SGLang, TGI, Ollama, llama.cpp, hosted APIs.

Requests go out through `openai.AsyncOpenAI` with the client's own retries switched off;
retries are ours (tenacity): exponential backoff with full jitter, honouring `Retry-After`,
on 408/409/429/5xx, timeouts and connection errors. Other statuses (400, 401, 404...) fail
at once: retrying them only wastes the budget.

Options (ModelSpec.options, all optional):
    timeout_s            per-request timeout, default 60
    max_retries          retries after the first attempt, default 5
    backoff_initial_s    first backoff ceiling, default 0.5 (doubles per attempt)
    backoff_max_s        backoff ceiling, default 30
    requests_per_minute  request starts per minute (retries included), default unlimited
    response_format      passed through, e.g. {"type": "json_schema", "json_schema": {...}}
    extra_body           extra JSON fields for server-specific parameters
    stop                 stop sequences
    max_tokens_field     "max_tokens" (default) or "max_completion_tokens"

The API key is read from the variable named by `spec.api_key_env` when the backend is
built; it is kept in memory only and scrubbed from every error message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import time
from typing import Any, Sequence

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec
from arena_dagster.backends.generation import PartialBatchError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_NO_KEY = "EMPTY"  # local servers accept any key; the client insists on one


class OpenAIBackendError(RuntimeError):
    """A request that failed for good (after retries, or at once for non-retryable errors)."""


class OpenAIConfigError(ValueError):
    pass


class OpenAIBatchError(PartialBatchError, OpenAIBackendError):
    """Some requests of a batch failed for good; `completed` holds the ones that did not."""


class RequestsPerMinuteLimiter:
    """Spaces request starts evenly, at most `rpm` per minute (no bursts)."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def wait(self) -> None:
        if not self.interval:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = time.monotonic()
            start_at = max(now, self._next_at)
            self._next_at = start_at + self.interval
        if start_at > now:
            await asyncio.sleep(start_at - now)


def _option(spec: ModelSpec, name: str, default: Any, kind: type) -> Any:
    value = spec.options.get(name, default)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise OpenAIConfigError(f"model {spec.name!r}: option {name!r} must be {kind.__name__}, got {value!r}") from exc


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server, `spec.concurrency` requests in flight."""

    def __init__(self, spec: ModelSpec) -> None:
        if not spec.base_url:
            raise OpenAIConfigError(f"model {spec.name!r}: the openai backend needs `base_url`")
        if not spec.path:
            raise OpenAIConfigError(f"model {spec.name!r}: the openai backend needs the served model name in `model`")
        self.spec = spec
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise OpenAIConfigError(
                    f"model {spec.name!r}: environment variable {spec.api_key_env!r} (api_key_env) is not set"
                )
            self._api_key = key
        else:
            self._api_key = _NO_KEY
        self.timeout_s = _option(spec, "timeout_s", 60.0, float)
        self.max_retries = _option(spec, "max_retries", 5, int)
        self.backoff_initial_s = _option(spec, "backoff_initial_s", 0.5, float)
        self.backoff_max_s = _option(spec, "backoff_max_s", 30.0, float)
        self.requests_per_minute = _option(spec, "requests_per_minute", None, float)
        self.max_tokens_field = spec.options.get("max_tokens_field", "max_tokens")
        if self.max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise OpenAIConfigError(
                f"model {spec.name!r}: max_tokens_field must be 'max_tokens' or 'max_completion_tokens'"
            )
        self.attempts = 0  # every HTTP attempt made, retries included
        self.retries = 0

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.spec.path!r}, base_url={self.spec.base_url!r})"

    def _scrub(self, text: str) -> str:
        if self._api_key and self._api_key != _NO_KEY:
            text = text.replace(self._api_key, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        status = getattr(exc, "status_code", None)
        head = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
        return self._scrub(f"{head}: {exc}")[:500]

    def _request_body(self, request: ChatRequest) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.spec.path,
            "messages": [dict(m) for m in request.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            self.max_tokens_field: sampling.max_tokens,
        }
        for passthrough in ("response_format", "stop"):
            if self.spec.options.get(passthrough) is not None:
                body[passthrough] = self.spec.options[passthrough]
        if self.spec.options.get("extra_body"):
            body["extra_body"] = dict(self.spec.options["extra_body"])
        return body

    def _retry_wait(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        response = getattr(exc, "response", None)
        retry_after = None
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after"))
            except (TypeError, ValueError):
                retry_after = None
        # Full jitter: uniform in [0, min(max, initial * 2^n)].
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (retry_state.attempt_number - 1))
        wait = random.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        import openai

        if isinstance(exc, openai.APIStatusError):
            return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
        return isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, asyncio.TimeoutError))

    async def _one(self, client: Any, request: ChatRequest, gate: asyncio.Semaphore, limiter: RequestsPerMinuteLimiter) -> Completion:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        body = self._request_body(request)
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._retryable),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._retry_wait,
            reraise=True,
        )
        async with gate:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.retries += 1
                    await limiter.wait()
                    self.attempts += 1
                    started = time.perf_counter()
                    response = await client.chat.completions.create(**body)
        if not response.choices:
            raise OpenAIBackendError(f"request {request.request_id!r}: the server returned no choices")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            request_id=request.request_id,
            text=choice.message.content or "",
            tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
            tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=time.perf_counter() - started,
            finish_reason=choice.finish_reason or "",
        )

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """The async form of `generate` for callers that already run an event loop."""
        from openai import AsyncOpenAI

        if not requests:
            return []
        gate = asyncio.Semaphore(max(1, self.spec.concurrency))
        limiter = RequestsPerMinuteLimiter(self.requests_per_minute)
        client = AsyncOpenAI(
            api_key=self._api_key, base_url=self.spec.base_url, timeout=self.timeout_s, max_retries=0
        )
        try:
            results = await asyncio.gather(
                *(self._one(client, request, gate, limiter) for request in requests), return_exceptions=True
            )
        finally:
            await client.close()
        failures = [(r, res) for r, res in zip(requests, results) if isinstance(res, BaseException)]
        if not failures:
            return list(results)  # type: ignore[arg-type]
        for _, res in failures:
            if isinstance(res, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                raise res
        first_request, first_error = failures[0]
        message = (
            f"{len(failures)} of {len(requests)} requests to {self.spec.base_url} (model {self.spec.path!r}) "
            f"failed; retryable errors were tried {self.max_retries + 1} times. "
            f"First failure, request {first_request.request_id!r}: {self._describe(first_error)}"
        )
        completed = [None if isinstance(res, BaseException) else res for res in results]
        # `from None`: the client's exception carries the request, headers (and key) included.
        raise OpenAIBatchError(message, completed) from None

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer every request in order; raise OpenAIBatchError (answered ones kept) if any fail for good."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        # Called from inside an event loop: run ours on a worker thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.agenerate(requests)).result()
