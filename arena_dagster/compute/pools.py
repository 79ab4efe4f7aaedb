"""Actor pools that live for a block of heavy work (a step), not for one call.

A model's replicas load the model when they start, which costs more than answering a batch of
a tiny model. A step answers in many calls (a 4096-prompt chunk of answers, a judge's batch of
256 games), so `ray_cluster` (cluster.py) keeps the pools a block starts, one per key (a model
and its options), and releases them when the block ends, normally or not: their actors are
killed and their CPUs and GPUs go back to the cluster. A local cluster is sized for one model's
pool (`workers x cpus_per_worker`), and a step answers its models one after the other, so a pool
that does not fit next to the block's others releases them first (on a larger cluster an
ensemble's judges keep a pool each). Outside a block each call is a block of its own.

`ActorPool` is Ray's own (`ray.util.ActorPool`): one batch in flight per actor, the others
waiting in the driver, so a killed run re-pays at most `workers` batches.

An actor whose process dies (killed for memory, its node preempted) is started again and the call
it held runs again on it, up to `RESTARTS` times: a long step rides out a lost worker instead of
failing with what it did. The calls are pure (a batch's answers, a block's features) and the
driver commits each answer once, so a call that runs twice changes nothing. Past that, the step
fails with `WorkerLost`: a worker that dies each time (a model too large for its memory) is named.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from arena_dagster.compute.capacity import Demand, check_capacity, wait_logged
from arena_dagster.errors import ArenaError

# Actors started per pool name in this process: what a step's model loads cost (the tests count them).
actors_started: Counter[str] = Counter()

RESTARTS = 3  # an actor's restarts (and a call's reruns on it) before its pool's step fails


class WorkerLost(ArenaError):
    """A pool's actor died more often than it may be restarted; the message names the pool and Ray's reason."""


@contextlib.contextmanager
def losing_workers(pool: str) -> Iterator[None]:
    """Ray's error for an actor that died past its restarts, as a `WorkerLost` that names `pool`."""
    from ray.exceptions import RayActorError

    try:
        yield
    except RayActorError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # Ray colours the actor's name
        reason = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
        raise WorkerLost(f"a Ray worker of {pool} died (it is started again up to {RESTARTS} times)", reason[:300],
                         "see its log (`ray logs`, the dashboard); out of memory: fewer workers, a smaller batch_size, "
                         "or more memory a worker") from err


class ReplicaPool:
    """`workers` actors of `actor_class(**arguments)`, each holding `resources`, fed batches through Ray's ActorPool."""

    def __init__(self, name: str, actor_class: type, arguments: dict, resources: dict, workers: int) -> None:
        """A cluster that can never hold the actors is a ClusterError; one that holds them later (its autoscaler adds
        nodes, other work ends) is waited for, logged (capacity.py)."""
        import ray
        from ray.util import ActorPool

        demand = Demand.of_actors(workers, resources)
        verdict = check_capacity(demand)
        remote = ray.remote(actor_class).options(**resources, max_restarts=RESTARTS, max_task_retries=RESTARTS)
        self.actors = [remote.remote(**arguments) for _ in range(workers)]
        self._arguments = arguments  # a restarted actor is built from them again: their object refs must stay alive
        actors_started[name] += workers
        if verdict == "wait":
            wait_logged([actor.__ray_ready__.remote() for actor in self.actors], demand)
        self._pool = ActorPool(self.actors)

    def map_unordered(self, call: Callable[[Any, Any], Any], batches: Iterable[Any]) -> Iterator[Any]:
        """`call(actor, batch)` (an actor method's `.remote(...)`) for every batch; the results as they finish."""
        return self._pool.map_unordered(call, list(batches))

    def finished(self, method: str, arguments: Sequence[tuple], num_returns: int = 1) -> Iterator[tuple[int, Any]]:
        """`actor.method.remote(*args)` for every argument tuple, each on whichever actor is free first (one call in
        flight an actor, so that the actors end together): (the call's position, its ref or refs) as each finishes.
        A call's refs stay in the object store: they can be passed on to later calls unread."""
        import ray

        waiting, free, running = list(enumerate(arguments))[::-1], list(self.actors), {}
        while waiting or running:
            while free and waiting:
                position, args = waiting.pop()
                actor = free.pop()
                refs = getattr(actor, method).options(num_returns=num_returns).remote(*args)
                running[refs[0] if num_returns > 1 else refs] = (position, refs, actor)
            [done], _ = ray.wait(list(running), num_returns=1)
            position, refs, actor = running.pop(done)
            free.append(actor)
            yield position, refs

    def in_order(self, method: str, arguments: Sequence[tuple], num_returns: int = 1) -> list:
        """`finished`'s refs in the calls' order, once every call has finished."""
        refs: list = [None] * len(arguments)
        for position, ref in self.finished(method, arguments, num_returns):
            refs[position] = ref
        return refs

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


_block_pools: ContextVar[dict[Hashable, ReplicaPool] | None] = ContextVar("arena_block_pools", default=None)


def in_block() -> bool:
    return _block_pools.get() is not None


@contextlib.contextmanager
def pools_block() -> Iterator[None]:
    """The pools started inside the block live until it ends, then are released, whatever ended it."""
    pools: dict[Hashable, ReplicaPool] = {}
    token = _block_pools.set(pools)
    try:
        yield
    finally:
        _block_pools.reset(token)
        release(pools)


def release(pools: dict[Hashable, ReplicaPool]) -> None:
    while pools:
        pools.popitem()[1].close()


def block_pool(key: Hashable, start: Callable[[], ReplicaPool], demand: Demand) -> ReplicaPool:
    """The block's pool for `key`, started on first use. `demand`: the resources its actors hold; where the
    cluster has not that much free, the block's other pools are released first."""
    pools = _block_pools.get()
    if pools is None:
        raise RuntimeError("block_pool outside a ray_cluster block")
    if key not in pools:
        if pools and not fits(demand):
            release(pools)
        pools[key] = start()
    return pools[key]


def fits(demand: Demand) -> bool:
    """Whether the cluster has `demand` free now (an ensemble's judges keep a pool each where they fit)."""
    import ray

    return not demand.above(ray.available_resources())


def drop_pool(key: Hashable) -> None:
    """Release `key`'s pool now: a call that failed left batches in flight on it, so the next call starts afresh."""
    pools = _block_pools.get()
    if pools is not None and key in pools:
        pools.pop(key).close()
