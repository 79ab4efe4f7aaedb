"""The one generation interface shared by target, competitor and judge models.

A backend turns chat requests into completions. Backends never cache:
`arena_dagster.backends.cache` sits in front of every backend, keyed by
`ChatRequest.cache_key(model)`, and `generation.generate_cached` commits each answer to it.

Two ways to answer, one contract (every request answered, or an error):
- `Backend.generate(requests) -> list[Completion]`: a batch at once, in request order
  (transformers, vllm, recorded: their engines answer a batch together);
- `StreamingBackend.generate_streaming(requests, on_completion)`: each completion handed
  over the moment it arrives (openai: requests finish one by one), so the caller commits it
  at once and a killed run loses only the requests in flight.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from arena_dagster.backends.redact import redact_url
from arena_dagster.errors import ArenaError


class BackendError(ArenaError, RuntimeError):
    """A backend could not answer: the server, the engine or the model files failed."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A revision that is a content digest (hex, >= 16 digits): a trained checkpoint's spec hash,
# a declared model's config hash, a hub commit sha. It names the weights wherever they live.
CONTENT_REVISION = re.compile(r"[0-9a-f]{16,128}")


@dataclass(frozen=True)
class ModelSpec:
    """A model as declared in a profile: who answers, through which backend."""

    name: str
    backend: str  # "transformers" | "vllm" | "openai" | "recorded"
    path: str = ""  # local folder, hub id, or served model name
    revision: str = ""  # checkpoint hash or hub revision: part of every cache key
    base_url: str = ""
    api_key_env: str = ""
    concurrency: int = 4
    sampling: SamplingParams = field(default_factory=SamplingParams)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.revision}" if self.revision else self.name

    def cache_identity(self) -> dict[str, str]:
        """What names this model in a cache key: content, not location.

        A content revision alone when there is one (so a checkpoint trained in two homes, at
        two paths, is one model); otherwise the path or hub id with its revision (a tag such
        as `main` names nothing without its repository), else the name.
        """
        if CONTENT_REVISION.fullmatch(self.revision):
            return {"model": "", "revision": self.revision}
        return {"model": self.path or self.name, "revision": self.revision}

    def __repr__(self) -> str:
        # The dataclass repr would print base_url whole, credentials included.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["base_url"] = redact_url(self.base_url)
        return "ModelSpec(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


@dataclass(frozen=True)
class ChatRequest:
    request_id: str
    messages: tuple[dict[str, str], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    template_version: str = ""

    def cache_key(self, model: ModelSpec) -> str:
        """sha256 of the model's cache identity, messages, sampling and template version.

        Keys of models without a content revision are the same as in cache schema 1; keys of
        models with one no longer hash the path (schema 2: `CompletionCache` rekeys old rows).
        """
        payload = {
            **model.cache_identity(),
            "messages": list(self.messages),
            "sampling": self.sampling.as_dict(),
            "template": self.template_version,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class Completion:
    request_id: str
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"
    cached: bool = False


class Backend(Protocol):
    spec: ModelSpec

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer every request, in the same order; raise on failure, never drop a row."""
        ...


# on_completion(index, completion): index is the position of the answered request.
OnCompletion = Callable[[int, Completion], None]


@runtime_checkable
class StreamingBackend(Protocol):
    spec: ModelSpec

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...

    def generate_streaming(self, requests: Sequence[ChatRequest], on_completion: OnCompletion) -> None:
        """Answer every request, calling `on_completion(index, completion)` as each finishes.

        Calls come in any order, one at a time (never concurrently), from any thread. When
        `on_completion` raises, the backend stops (requests in flight are abandoned) and
        re-raises that exception unchanged. When requests fail for good, the others are
        still delivered where possible, then a `BackendError` says which failed.
        """
        ...


def user_messages(prompt: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": prompt},)
