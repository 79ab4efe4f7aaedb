"""Generation on Ray: requests flow through Ray Data into an actor pool, answers come back to the driver.

`RayReplicas` is a `StreamingBackend`: `generate_cached` hands it the cache misses and commits
each completion as its batch comes back, in the driver, whichever worker made it. So exactly
once holds as on one process (the cache is the only writer's, and an index delivered twice is
delivered once), and a killed run re-pays at most the batches in flight. Each replica is the
model's own batch backend (`make_backend`: transformers on CPU threads, vLLM on the GPU
`gpus_per_worker` gives it), loaded once per actor; a greedy answer does not depend on which
batch a request lands in (`test_transformers_backend`), so the answers are the local engine's.

OpenAI-compatible models stay HTTP calls, fanned out from the workers (`RayHTTPFanout`): each
actor is an HTTP client (the backend built in the driver, so a missing key fails there, as
locally) answering its batch with `spec.concurrency` requests in flight. A worker never raises
a backend's error through Ray: it returns what it answered and the error, the driver commits
the answers, then raises the error itself, so a dead server reads as it does locally.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Sequence

from arena_dagster.backends.base import Backend, BackendError, ChatRequest, Completion, ModelSpec, OnCompletion
from arena_dagster.backends.generation import PartialBatchError
from arena_dagster.compute.cluster import quiet_ray_data, ray_cluster
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.errors import ArenaError

REPLICATED = ("transformers", "vllm")
FANNED_OUT = ("openai",)


def _portable(exc: ArenaError) -> ArenaError:
    """`exc` as an error that pickles: a partial batch's error without its completions (they travel apart)."""
    if not isinstance(exc, PartialBatchError):
        return exc
    plain = next(k for k in type(exc).__mro__ if issubclass(k, BackendError) and not issubclass(k, PartialBatchError))
    return plain(exc.what, exc.input, exc.fix)


def answer_batch(backend: Backend, batch: dict) -> dict:
    """A worker's answers to one Ray Data batch of pickled requests, and the error that stopped it, if any."""
    import numpy as np

    requests = [pickle.loads(blob) for blob in batch["request"]]
    failure: ArenaError | None = None
    try:
        completions: list[Completion | None] = list(backend.generate(requests))
    except PartialBatchError as exc:
        completions, failure = list(exc.completed), _portable(exc)
    except ArenaError as exc:
        completions, failure = [None] * len(requests), exc
    blob = pickle.dumps(failure) if failure is not None else b""
    return {"index": np.asarray(batch["index"]),
            "completion": np.asarray([pickle.dumps(c) for c in completions], dtype=object),
            "failure": np.asarray([blob] * len(requests), dtype=object)}


def deliver(batch: dict, delivered: set[int], on_completion: OnCompletion) -> None:
    """Hand a returned batch's answers to `on_completion`, each index once; then raise the worker's error."""
    for index, blob in zip(batch["index"], batch["completion"]):
        completion = pickle.loads(blob)
        if completion is not None and int(index) not in delivered:
            delivered.add(int(index))
            on_completion(int(index), completion)
    failures = [blob for blob in batch["failure"] if blob]
    if failures:
        raise pickle.loads(failures[0])


class _Replica:
    """One model replica (one actor): loads the backend once, answers batches of pickled requests."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import torch

        from arena_dagster.backends.registry import make_backend

        torch.set_num_threads(max(1, threads))
        self.backend = make_backend(spec)

    def __call__(self, batch):
        return answer_batch(self.backend, batch)


class _HTTPClient:
    """One HTTP client (one actor): the driver's backend, its own bounded concurrency and retries."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __call__(self, batch):
        return answer_batch(self.backend, batch)


class RayReplicas:
    """`workers` replicas of `spec`'s backend on the Ray cluster of `settings`, fed by Ray Data."""

    def __init__(self, spec: ModelSpec, settings: ComputeSettings, *, batch_size: int | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.batch_size = batch_size or int(spec.options.get("batch_size", 8))

    def _actors(self) -> tuple[Callable[..., Any], dict, dict]:
        """(actor class, its constructor's arguments, its resources)."""
        resources: dict = {"num_cpus": self.settings.cpus_per_worker}
        if self.settings.gpus_per_worker:
            resources["num_gpus"] = self.settings.gpus_per_worker
        return _Replica, {"spec": self.spec, "threads": int(self.settings.cpus_per_worker)}, resources

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

        actor, arguments, resources = self._actors()
        with ray_cluster(self.settings):
            quiet_ray_data()
            items = [{"index": i, "request": pickle.dumps(request)} for i, request in enumerate(requests)]
            blocks = max(self.settings.workers, -(-len(items) // self.batch_size))
            answered = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
                actor, fn_constructor_kwargs=arguments, batch_size=self.batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.settings.workers), **resources)
            delivered: set[int] = set()
            for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
                deliver(batch, delivered, on_completion)


class RayHTTPFanout(RayReplicas):
    """`workers` HTTP clients of an OpenAI-compatible `backend` on the cluster, each with `spec.concurrency`
    requests in flight; a batch is `batch_size` requests (default 4 x concurrency), committed as it returns."""

    def __init__(self, backend: Backend, settings: ComputeSettings, *, batch_size: int | None = None) -> None:
        spec = backend.spec
        super().__init__(spec, settings, batch_size=batch_size or int(spec.options.get("batch_size", 4 * spec.concurrency)))
        # The server's quota is the model's, not each client's: `workers` clients share `requests_per_minute`.
        rpm = getattr(backend, "requests_per_minute", None)
        if rpm:
            backend.requests_per_minute = rpm / max(1, settings.workers)
        self.backend = backend

    def _actors(self) -> tuple[Callable[..., Any], dict, dict]:
        return _HTTPClient, {"backend": self.backend}, {"num_cpus": self.settings.cpus_per_worker}


def backend_for(spec: ModelSpec, settings: ComputeSettings | None) -> Backend:
    """The backend of `spec` on the engine of `settings`: on Ray, replicas of a local model, HTTP clients
    of a served one; else the backend itself."""
    from arena_dagster.backends.registry import make_backend

    if settings is None or settings.engine != "ray":
        return make_backend(spec)
    if spec.backend in REPLICATED:
        return RayReplicas(spec, settings)
    if spec.backend in FANNED_OUT:
        return RayHTTPFanout(make_backend(spec), settings)
    return make_backend(spec)
