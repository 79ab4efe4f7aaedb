"""Generation on Ray: requests go in batches to an actor pool of model replicas, answers come back to the driver.

`RayReplicas` is a `StreamingBackend`: `generate_cached` hands it the cache misses and commits
each completion as its batch comes back, in the driver, whichever worker made it. So exactly
once holds as on one process (the cache is the only writer's, and an index delivered twice is
delivered once), and a killed run re-pays at most the batches in flight (one per worker). Each
replica is the model's own batch backend (`make_backend`: transformers on CPU threads, vLLM on
the GPU `gpus_per_worker` gives it), loaded once per actor, and the pool lives for the step's
`ray_cluster` block (compute/pools.py): a step's chunks of answers and a judge's batches of
games reuse it, and it is released when the step ends. A greedy answer does not depend on which
batch a request lands in (`test_transformers_backend`), so the answers are the local engine's.

OpenAI-compatible models stay HTTP calls, fanned out from the workers (`RayHTTPFanout`): each
actor is an HTTP client (the backend built in the driver, so a missing key fails there, as
locally) answering its batch with `spec.concurrency` requests in flight. A worker never raises
a backend's error through Ray: it returns what it answered and the error, the driver commits
the answers, then raises the error itself, so a dead server reads as it does locally.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Sequence

from arena_dagster.backends.base import Backend, BackendError, ChatRequest, Completion, ModelSpec, OnCompletion
from arena_dagster.backends.generation import PartialBatchError
from arena_dagster.compute.capacity import Demand
from arena_dagster.compute.cluster import actor_options, ray_cluster
from arena_dagster.compute.pools import ReplicaPool, block_pool, drop_pool, losing_workers
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


@dataclass
class Answered:
    """A worker's answers to one batch: `completions[i]` answers request `indices[i]` (None: not answered),
    and the error that stopped the batch, if any."""

    indices: list[int]
    completions: list[Completion | None]
    failure: ArenaError | None = None


def answer_batch(backend: Backend, indices: list[int], requests: list[ChatRequest]) -> Answered:
    """A worker's answers to one batch of requests, and the error that stopped it, if any."""
    try:
        return Answered(indices, list(backend.generate(requests)))
    except PartialBatchError as exc:
        return Answered(indices, list(exc.completed), _portable(exc))
    except ArenaError as exc:
        return Answered(indices, [None] * len(requests), exc)


def deliver(answered: Answered, delivered: set[int], on_completion: OnCompletion) -> None:
    """Hand a returned batch's answers to `on_completion`, each index once; then raise the worker's error."""
    for index, completion in zip(answered.indices, answered.completions):
        if completion is not None and index not in delivered:
            delivered.add(index)
            on_completion(index, completion)
    if answered.failure is not None:
        raise answered.failure


class _Replica:
    """One model replica (one actor): loads the backend once, answers batches for the pool's life."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import torch

        from arena_dagster.backends.registry import make_backend

        torch.set_num_threads(max(1, threads))
        self.backend = make_backend(spec)

    def answer(self, indices: list[int], requests: list[ChatRequest]) -> Answered:
        return answer_batch(self.backend, indices, requests)


class _HTTPClient:
    """One HTTP client (one actor): the driver's backend, its own bounded concurrency and retries."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def answer(self, indices: list[int], requests: list[ChatRequest]) -> Answered:
        return answer_batch(self.backend, indices, requests)


class RayReplicas:
    """`workers` replicas of `spec`'s backend on the Ray cluster of `settings`: one pool per `ray_cluster` block
    (a step), started on the first call and kept for the next ones."""

    def __init__(self, spec: ModelSpec, settings: ComputeSettings, *, batch_size: int | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.batch_size = batch_size or int(spec.options.get("batch_size", 8))

    def _actors(self) -> tuple[type, dict, dict]:
        """(actor class, its constructor's arguments, its resources)."""
        return _Replica, {"spec": self.spec, "threads": int(self.settings.cpus_per_worker)}, actor_options(self.settings)

    def _pool_key(self) -> tuple:
        return type(self).__name__, pickle.dumps(self.spec), self.settings.model_dump_json()

    def _demand(self) -> Demand:
        _, _, resources = self._actors()
        return Demand.of_actors(self.settings.workers, resources)

    def _start_pool(self) -> ReplicaPool:
        actor, arguments, resources = self._actors()
        return ReplicaPool(self.spec.name, actor, arguments, resources, self.settings.workers)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        answers: list[Completion | None] = [None] * len(requests)

        def keep(index: int, completion: Completion) -> None:
            answers[index] = completion

        self.generate_streaming(requests, keep)
        return [answer for answer in answers if answer is not None]

    def generate_streaming(self, requests: Sequence[ChatRequest], on_completion: OnCompletion) -> None:
        if not requests:
            return
        # Every worker gets a share of a small call; a large one goes in batches of `batch_size`.
        size = min(self.batch_size, -(-len(requests) // self.settings.workers))
        batches = [list(range(start, min(start + size, len(requests)))) for start in range(0, len(requests), size)]
        key = self._pool_key()
        with ray_cluster(self.settings), losing_workers(f"model {self.spec.name}"):
            pool = block_pool(key, self._start_pool, self._demand())
            delivered: set[int] = set()
            try:
                for answered in pool.map_unordered(
                        lambda actor, batch: actor.answer.remote(batch, [requests[i] for i in batch]), batches):
                    deliver(answered, delivered, on_completion)
            except BaseException:
                drop_pool(key)
                raise


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

    def _actors(self) -> tuple[type, dict, dict]:
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
