"""Any OpenAI-compatible chat server: vLLM serve, SGLang, TGI, Ollama, llama.cpp, hosted APIs.

Requests go out through `openai.AsyncOpenAI` with the client's own retries switched off;
retries are ours (tenacity): exponential backoff with full jitter, honouring `Retry-After`,
on 408/409/425/429/5xx, timeouts, connection errors and answers that are no answer (a body
that is not JSON or has no choices, `content: null` or ""). Other statuses (400, 401,
404...) fail at once: retrying them only wastes the budget.

`spec.concurrency` workers each take the next request, so that many are in flight; every
finished completion is handed to the caller at once (`generate_streaming`), which commits it
before anything else: a killed run loses only the requests in flight. A request that fails
for good is reported after the others; one that shows the server is down or refuses us
(connection, timeout, 5xx or a malformed answer after every retry; 401/403/404) stops new
requests from starting, so a dead server fails the run in one request's retries, not all of them.

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
built; it is kept in memory only. Every message goes through `redact`: the key, URL
credentials and Authorization headers never appear.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import time
from typing import Any, Sequence
from urllib.parse import urlsplit

from arena_dagster.backends.base import BackendError, ChatRequest, Completion, ModelSpec, OnCompletion
from arena_dagster.backends.generation import PartialBatchError
from arena_dagster.backends.redact import redact, redact_url
from arena_dagster.errors import ArenaError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Statuses that say the server refuses every request of this run, not just this one.
REFUSING_STATUS = frozenset({401, 403, 404})
_NO_KEY = "EMPTY"  # local servers accept any key; the client insists on one


class OpenAIBackendError(BackendError):
    """Requests that failed for good (after retries, or at once for non-retryable errors)."""


class OpenAIConfigError(ArenaError, ValueError):
    pass


class OpenAIBatchError(PartialBatchError, OpenAIBackendError):
    """`generate` (the batch form) failed part-way; `completed` holds the answered requests."""


class ServerFault(Exception):
    """A 200 that is no answer: not JSON, no choices, `content: null` or "". Retried like a 5xx."""


class EmptyCompletion(ServerFault):
    """`content: null` or "": may be this prompt's doing, so it does not stop the other requests."""


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
    except (TypeError, ValueError):
        raise OpenAIConfigError(
            f"option {name!r} must be {kind.__name__}, got {value!r}", f"model {spec.name!r}"
        ) from None


def _check_base_url(spec: ModelSpec) -> None:
    parts = urlsplit(spec.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OpenAIConfigError(
            f"base_url {redact_url(spec.base_url)!r} is not an http(s) URL", f"model {spec.name!r}",
            "give the server's API root, e.g. http://127.0.0.1:8000/v1",
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise OpenAIConfigError(
            f"base_url {redact_url(spec.base_url)!r} has an invalid port", f"model {spec.name!r}",
            "give the server's API root, e.g. http://127.0.0.1:8000/v1",
        ) from None


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server, `spec.concurrency` requests in flight."""

    def __init__(self, spec: ModelSpec) -> None:
        if not spec.base_url:
            raise OpenAIConfigError("the openai backend needs `base_url`", f"model {spec.name!r}",
                                    "set base_url (--base-url), e.g. http://127.0.0.1:8000/v1")
        if not spec.path:
            raise OpenAIConfigError("the openai backend needs the served model name in `model`",
                                    f"model {spec.name!r}", "set model (--model-name) to a name the server serves")
        _check_base_url(spec)
        self.spec = spec
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise OpenAIConfigError(
                    f"environment variable {spec.api_key_env} (api_key_env) is not set or empty",
                    f"model {spec.name!r}",
                    f"export {spec.api_key_env}=<your key>, or drop api_key_env for a server that needs no key",
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
            raise OpenAIConfigError("max_tokens_field must be 'max_tokens' or 'max_completion_tokens'",
                                    f"model {spec.name!r}")
        self.attempts = 0  # every HTTP attempt made, retries included
        self.retries = 0

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.spec.path!r}, base_url={redact_url(self.spec.base_url)!r})"

    @property
    def where(self) -> str:
        return f"{redact_url(self.spec.base_url)} (model {self.spec.path!r})"

    def _redact(self, text: object) -> str:
        return redact(text, [self._api_key] if self._api_key != _NO_KEY else [])

    def _describe(self, exc: BaseException) -> str:
        status = getattr(exc, "status_code", None)
        head = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
        return self._redact(f"{head}: {exc}")[:500]

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
        return isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, asyncio.TimeoutError, ServerFault))

    def _halts_run(self, exc: BaseException) -> bool:
        """Whether a request that failed for good with `exc` means the server fails every request."""
        status = getattr(exc, "status_code", None)
        if status is not None:
            return status in REFUSING_STATUS or self._retryable(exc)
        if isinstance(exc, EmptyCompletion):
            return False  # e.g. a reasoning model that spent max_tokens thinking on this prompt
        return self._retryable(exc)  # a body that is no answer at all is the server's fault

    @staticmethod
    def _completion(request: ChatRequest, response: Any, latency_s: float) -> Completion:
        """The answer in `response`, or ServerFault when there is none."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):
            kind = type(response).__name__
            raise ServerFault(f"the server's answer is not a chat completion (a {kind} without `choices`)")
        if not choices:
            raise ServerFault("the server's answer has no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content:
            shown = "null" if content is None else repr(content)
            refusal = getattr(message, "refusal", None)
            raise EmptyCompletion(
                f"the server returned an empty completion (content {shown}, finish_reason "
                f"{getattr(choice, 'finish_reason', None)!r}" + (f", refusal {refusal!r}" if refusal else "") + ")"
            )
        usage = getattr(response, "usage", None)
        return Completion(
            request_id=request.request_id,
            text=content,
            tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
            tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=latency_s,
            finish_reason=getattr(choice, "finish_reason", None) or "",
        )

    async def _one(self, client: Any, request: ChatRequest, limiter: RequestsPerMinuteLimiter) -> Completion:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        body = self._request_body(request)
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._retryable),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._retry_wait,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.retries += 1
                await limiter.wait()
                self.attempts += 1
                started = time.perf_counter()
                try:
                    response = await client.chat.completions.create(**body)
                except ValueError as exc:  # the body was not JSON (json.JSONDecodeError)
                    raise ServerFault(f"the server's answer is not JSON ({exc})") from None
                # An empty answer is a server fault, never an answer to cache: raised inside the
                # attempt, so it is retried with the same backoff as a 5xx.
                return self._completion(request, response, time.perf_counter() - started)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def agenerate_streaming(self, requests: Sequence[ChatRequest], on_completion: OnCompletion) -> None:
        """The async form of `generate_streaming` for callers that already run an event loop."""
        from openai import AsyncOpenAI

        if not requests:
            return
        limiter = RequestsPerMinuteLimiter(self.requests_per_minute)
        client = AsyncOpenAI(
            api_key=self._api_key, base_url=self.spec.base_url, timeout=self.timeout_s, max_retries=0
        )
        indices = iter(range(len(requests)))  # shared by the workers: each request is taken once
        failures: list[tuple[int, BaseException]] = []
        halted: list[tuple[int, BaseException]] = []
        delivering = asyncio.Lock()

        async def worker() -> None:
            while not halted:
                index = next(indices, None)
                if index is None:
                    return
                try:
                    completion = await self._one(client, requests[index], limiter)
                except Exception as exc:  # noqa: BLE001 - reported below, with every other failure
                    failures.append((index, exc))
                    if self._halts_run(exc):
                        halted.append((index, exc))
                    continue
                # One delivery at a time, off the event loop: a commit never stalls requests in flight.
                async with delivering:
                    await asyncio.to_thread(on_completion, index, completion)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(max(1, self.spec.concurrency), len(requests)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # on_completion failed (or we were cancelled): abandon what is in flight, re-raise unchanged.
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            await client.close()
        if failures:
            # Requests no worker took (the run halted) are what `indices` still holds.
            shown = halted[0] if halted else min(failures, key=lambda item: item[0])
            raise self._failure(requests, len(failures), shown, skipped=sum(1 for _ in indices)) from None

    def _failure(
        self, requests: Sequence[ChatRequest], failed: int, shown: tuple[int, BaseException], skipped: int
    ) -> OpenAIBackendError:
        """The error for `failed` requests; `shown` is the one that stopped the run, else the first."""
        index, error = shown
        what = (
            f"{failed} of {len(requests)} requests to {self.where} failed"
            + (f" and {skipped} were not sent once the server failed" if skipped else "")
            + f"; retryable errors were tried {self.max_retries + 1} times. "
            + ("Failure that stopped the run" if skipped else "First failure")
            + f", request {requests[index].request_id!r}: {self._describe(error)}"
        )
        fix = ("check that the server is up, reachable and serves this model (a slow one: raise timeout_s), "
               "then rerun: every answered request is cached and is not sent again")
        # Raised without a cause: the client's exception carries the request, headers (and key) included.
        return OpenAIBackendError(what, fix=fix)

    def _run(self, coroutine: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        # Called from inside an event loop: run ours on a worker thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coroutine).result()

    def generate_streaming(self, requests: Sequence[ChatRequest], on_completion: OnCompletion) -> None:
        """Answer every request, handing each completion to `on_completion(index, completion)` as it arrives.

        See `StreamingBackend.generate_streaming`; failures raise OpenAIBackendError.
        """
        self._run(self.agenerate_streaming(requests, on_completion))

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """The async form of `generate`."""
        results: list[Completion | None] = [None] * len(requests)

        def keep(index: int, completion: Completion) -> None:
            results[index] = completion

        try:
            await self.agenerate_streaming(requests, keep)
        except OpenAIBackendError as exc:
            raise OpenAIBatchError(exc.what, results, exc.input, exc.fix) from None
        return results  # type: ignore[return-value]

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer every request in order; raise OpenAIBatchError (answered ones kept) if any fail for good."""
        return self._run(self.agenerate(requests))
