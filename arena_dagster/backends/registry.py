"""Model specs from config, and the backend that serves each spec.

A model config (one entry of a profile's `models:` mapping) looks like:

    backend: openai            # transformers | vllm | openai | recorded
    model: Qwen/Qwen2.5-7B-Instruct   # or `path:` (a local folder, hub id, JSONL file; none for a
                               # `recorded` model whose answers were not kept: only a recorded judge judges it)
    revision: main             # part of every cache key
    base_url: http://127.0.0.1:8000/v1
    api_key_env: MY_API_KEY    # the *name* of the variable holding the key
    concurrency: 16
    sampling: {max_tokens: 512, temperature: 0.0, top_p: 1.0, seed: 0}
    timeout_s: 60              # any other key goes into ModelSpec.options

Backends are imported lazily: building a spec never imports torch, vllm or openai.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from arena_dagster.backends.base import Backend, ModelSpec, SamplingParams
from arena_dagster.errors import ArenaError

BACKENDS = ("transformers", "vllm", "openai", "recorded")

_SPEC_KEYS = {"backend", "path", "model", "revision", "base_url", "api_key_env", "concurrency", "sampling"}
_SAMPLING_KEYS = {f.name for f in dataclasses.fields(SamplingParams)}


class ModelConfigError(ArenaError, ValueError):
    pass


class UnknownBackendError(ModelConfigError):
    pass


def _sampling_from_config(name: str, raw: Any) -> SamplingParams:
    if raw is None:
        return SamplingParams()
    if isinstance(raw, SamplingParams):
        return raw
    if not isinstance(raw, dict):
        raise ModelConfigError(f"model {name!r}: `sampling` must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _SAMPLING_KEYS)
    if unknown:
        raise ModelConfigError(
            f"model {name!r}: unknown sampling keys {unknown} (known: {sorted(_SAMPLING_KEYS)})"
        )
    try:
        return SamplingParams(
            max_tokens=int(raw.get("max_tokens", SamplingParams.max_tokens)),
            temperature=float(raw.get("temperature", SamplingParams.temperature)),
            top_p=float(raw.get("top_p", SamplingParams.top_p)),
            seed=int(raw.get("seed", SamplingParams.seed)),
        )
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"model {name!r}: bad sampling value: {exc}") from exc


def model_spec_from_config(name: str, cfg: dict[str, Any]) -> ModelSpec:
    """Build the ModelSpec of model `name` from its config mapping (see the module docstring)."""
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"model {name!r}: config must be a mapping, got {type(cfg).__name__}")
    backend = cfg.get("backend")
    if not backend:
        raise ModelConfigError(f"model {name!r}: `backend` is required (one of {', '.join(BACKENDS)})")
    if backend not in BACKENDS:
        raise UnknownBackendError(f"model {name!r}: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if "path" in cfg and "model" in cfg and cfg["path"] != cfg["model"]:
        raise ModelConfigError(f"model {name!r}: give `path` or `model`, not both")
    path = str(cfg.get("path") or cfg.get("model") or "")
    # `recorded` without a file: a model known only through a recorded judge's verdicts (no answers).
    if not path and backend != "recorded":
        raise ModelConfigError(f"model {name!r}: `path` (or `model`) is required for backend {backend!r}")
    if backend == "openai" and not cfg.get("base_url"):
        raise ModelConfigError(f"model {name!r}: `base_url` is required for backend 'openai'")
    try:
        concurrency = int(cfg.get("concurrency", ModelSpec.concurrency))
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"model {name!r}: `concurrency` must be an integer") from exc
    if concurrency < 1:
        raise ModelConfigError(f"model {name!r}: `concurrency` must be >= 1, got {concurrency}")
    if "api_key" in cfg:
        raise ModelConfigError(
            f"model {name!r}: put the key in an environment variable and name it in `api_key_env`; "
            "keys are never read from config files"
        )
    options = {key: value for key, value in cfg.items() if key not in _SPEC_KEYS}
    return ModelSpec(
        name=name,
        backend=str(backend),
        path=path,
        revision=str(cfg.get("revision") or ""),
        base_url=str(cfg.get("base_url") or ""),
        api_key_env=str(cfg.get("api_key_env") or ""),
        concurrency=concurrency,
        sampling=_sampling_from_config(name, cfg.get("sampling")),
        options=options,
    )


def _transformers(spec: ModelSpec) -> Backend:
    from arena_dagster.backends.transformers_backend import TransformersBackend

    return TransformersBackend(spec)


def _vllm(spec: ModelSpec) -> Backend:
    from arena_dagster.backends.vllm_backend import VLLMBackend

    return VLLMBackend(spec)


def _openai(spec: ModelSpec) -> Backend:
    from arena_dagster.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(spec)


def _recorded(spec: ModelSpec) -> Backend:
    from arena_dagster.backends.recorded_backend import RecordedBackend

    return RecordedBackend(spec)


_FACTORIES: dict[str, Callable[[ModelSpec], Backend]] = {
    "transformers": _transformers,
    "vllm": _vllm,
    "openai": _openai,
    "recorded": _recorded,
}


def make_backend(spec: ModelSpec) -> Backend:
    """The backend serving `spec`, chosen by `spec.backend`."""
    factory = _FACTORIES.get(spec.backend)
    if factory is None:
        raise UnknownBackendError(
            f"model {spec.name!r}: unknown backend {spec.backend!r} (known: {', '.join(BACKENDS)})"
        )
    return factory(spec)
