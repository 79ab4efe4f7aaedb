"""How registered models are served, and models declared by configuration instead of trained.

A profile either trains its base models locally (`models.source: skills`, the embedded
default) or declares them (`models.source: declared`): each entry of `models.competitors`
and `models.initial_target` is a model config of `arena_dagster.backends.registry`
(backend, path or model, revision, base_url, api_key_env, sampling ...).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from arena_dagster.backends.base import ModelSpec, SamplingParams


class DeclaredModelError(ValueError):
    pass


def declared_models(models: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, config) of every declared model; kind is "competitor" or "initial"."""
    from arena_dagster.backends.registry import model_spec_from_config

    target = dict(models.get("initial_target") or {})
    name = target.pop("name", None)
    if not name:
        raise DeclaredModelError("models.initial_target needs a `name` and a model config")
    competitors = models.get("competitors") or {}
    if not competitors:
        raise DeclaredModelError("models.competitors: declare at least one competitor")
    entries = [(name, "initial", target)] + [(n, "competitor", dict(c)) for n, c in competitors.items()]
    for entry_name, _, config in entries:
        model_spec_from_config(entry_name, config)  # a bad config fails here, before any generation
    return entries


def declared_revision(config: dict[str, Any]) -> str:
    """A declared model's cache identity: its config minus secrets' names and throughput knobs."""
    identity = {k: v for k, v in config.items() if k not in {"api_key_env", "concurrency", "base_url", "timeout_s"}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generation_spec(row: dict[str, Any], profile: dict[str, Any]) -> ModelSpec:
    """The ModelSpec that answers with a registered model (a row of model_registry)."""
    manifest = row.get("manifest") or {}
    if isinstance(manifest, str):
        manifest = json.loads(manifest)
    if "declared" in manifest:
        from arena_dagster.backends.registry import model_spec_from_config

        spec = model_spec_from_config(row["model"], manifest["declared"])
        return ModelSpec(**{**spec.__dict__, "revision": spec.revision or row["revision"]})
    generation = profile.get("generation", {})
    return ModelSpec(
        name=row["model"],
        backend=generation.get("backend", "transformers"),
        path=row["path"],
        revision=row["revision"],
        sampling=SamplingParams(**generation.get("sampling", {})),
        options=dict(generation.get("options", {})),
    )


def trained_models_settings(profile: dict[str, Any]) -> dict[str, Any]:
    """The `models:` section as the local trainer reads it (`source` is this module's key)."""
    return {k: v for k, v in (profile.get("models") or {}).items() if k != "source"}
