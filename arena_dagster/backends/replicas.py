"""Generation on Ray: requests flow through Ray Data into an actor pool of model replicas.

`RayReplicas` is a `StreamingBackend`: `generate_cached` hands it the cache misses and commits
each completion as its batch comes back, in the driver, whichever replica made it. So exactly
once holds as on one process (the cache is the only writer's), and a killed run re-pays at most
the batches in flight. Each replica is the model's own batch backend (`make_backend`: transformers
on CPU threads, vLLM on the GPU `gpus_per_worker` gives it), loaded once per actor; a greedy
answer does not depend on which batch a request lands in (`test_transformers_backend`), so the
answers are the local engine's. OpenAI-compatible models stay HTTP calls (`backend_for`).
"""

from __future__ import annotations

import pickle
from typing import Sequence

from arena_dagster.backends.base import Backend, ChatRequest, Completion, ModelSpec, OnCompletion
from arena_dagster.compute.cluster import quiet_ray_data, ray_cluster
from arena_dagster.compute.settings import ComputeSettings

REPLICATED = ("transformers", "vllm")


class _Replica:
    """One model replica (one actor): loads the backend once, answers batches of pickled requests."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import torch

        from arena_dagster.backends.registry import make_backend

        torch.set_num_threads(max(1, threads))
        self.backend = make_backend(spec)

    def __call__(self, batch):
        import numpy as np

        requests = [pickle.loads(blob) for blob in batch["request"]]
        completions = self.backend.generate(requests)
        return {"index": np.asarray(batch["index"]), "completion": np.asarray([pickle.dumps(c) for c in completions], dtype=object)}


class RayReplicas:
    """`workers` replicas of `spec`'s backend on the Ray cluster of `settings`, fed by Ray Data."""

    def __init__(self, spec: ModelSpec, settings: ComputeSettings, *, batch_size: int | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.batch_size = batch_size or int(spec.options.get("batch_size", 8))

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        answers: list[Completion | None] = [None] * len(requests)

        def keep(index: int, completion: Completion) -> None:
            answers[index] = completion

        self.generate_streaming(requests, keep)
        return [answer for answer in answers if answer is not None]

    def generate_streaming(self, requests: Sequence[ChatRequest], on_completion: OnCompletion) -> None:
        if not requests:
            return
        import ray.data

        with ray_cluster(self.settings):
            quiet_ray_data()
            items = [{"index": i, "request": pickle.dumps(request)} for i, request in enumerate(requests)]
            blocks = max(self.settings.workers, -(-len(items) // self.batch_size))
            pool = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=self.settings.workers),
                    "num_cpus": self.settings.cpus_per_worker}
            if self.settings.gpus_per_worker:
                pool["num_gpus"] = self.settings.gpus_per_worker
            answered = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
                _Replica, fn_constructor_kwargs={"spec": self.spec, "threads": int(self.settings.cpus_per_worker)},
                batch_size=self.batch_size, batch_format="numpy", **pool)
            for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
                for index, blob in zip(batch["index"], batch["completion"]):
                    on_completion(int(index), pickle.loads(blob))


def backend_for(spec: ModelSpec, settings: ComputeSettings | None) -> Backend:
    """The backend of `spec` on the engine of `settings`: replicas on Ray for local models, else as it is."""
    from arena_dagster.backends.registry import make_backend

    if settings is not None and settings.engine == "ray" and spec.backend in REPLICATED:
        return RayReplicas(spec, settings)
    return make_backend(spec)
