"""Generation through Ray replicas: the local backend's greedy answers, each committed once by the driver."""

from __future__ import annotations

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, StreamingBackend, user_messages
from arena_dagster.backends.cache import CompletionCache
from arena_dagster.backends.generation import generate_cached
from arena_dagster.backends.replicas import RayReplicas, backend_for
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.prompts.skills import make_items


def test_backend_for_replicates_local_models_only():
    ray2 = ComputeSettings(engine="ray", workers=2)
    assert isinstance(backend_for(ModelSpec(name="m", backend="transformers", path="x"), ray2), RayReplicas)
    assert isinstance(RayReplicas(ModelSpec(name="m", backend="transformers", path="x"), ray2), StreamingBackend)
    served = ModelSpec(name="s", backend="openai", path="m", base_url="http://127.0.0.1:1/v1")
    assert not isinstance(backend_for(served, ray2), RayReplicas)  # HTTP calls stay HTTP calls
    assert not isinstance(backend_for(ModelSpec(name="m", backend="transformers", path="x"), ComputeSettings()), RayReplicas)


def test_ray_replicas_answer_as_the_local_backend_and_commit_once(ray_local_cluster, tiny_model_dir, tmp_path):
    from arena_dagster.backends.registry import make_backend

    spec = ModelSpec(name="tiny", backend="transformers", path=tiny_model_dir, options={"batch_size": 4, "threads": 1})
    requests = [ChatRequest(request_id=f"r{k}", messages=user_messages(i.prompt), sampling=SamplingParams(max_tokens=8))
                for k, i in enumerate(make_items(18, seed=5))]
    local = make_backend(spec).generate(requests)
    cache = CompletionCache(tmp_path / "cache.sqlite")
    first = generate_cached(RayReplicas(spec, ComputeSettings(engine="ray", workers=2)), requests, cache, batch_size=4)
    assert [c.text for c in first.completions] == [c.text for c in local]
    assert [c.request_id for c in first.completions] == [r.request_id for r in requests]
    assert first.generated == len({r.cache_key(spec) for r in requests})
    again = generate_cached(RayReplicas(spec, ComputeSettings(engine="ray", workers=2)), requests, cache, batch_size=4)
    assert again.generated == 0 and [c.text for c in again.completions] == [c.text for c in local]
