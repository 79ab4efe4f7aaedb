"""The one generation interface shared by target, competitor and judge models.

A backend turns a batch of chat requests into completions. Backends never cache:
`arena_dagster.backends.cache` sits in front of every backend, keyed by
`ChatRequest.cache_key(model)`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass(frozen=True)
class ChatRequest:
    request_id: str
    messages: tuple[dict[str, str], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    template_version: str = ""

    def cache_key(self, model: ModelSpec) -> str:
        payload = {
            "model": model.path or model.name,
            "revision": model.revision,
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


def user_messages(prompt: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": prompt},)
