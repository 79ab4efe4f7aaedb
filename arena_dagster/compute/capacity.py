"""Whether a joined Ray cluster can hold what a step asks for, before the step waits on it.

Ray queues actors and placement groups that do not fit and waits for them without end, saying
nothing to the driver: on a cluster someone else started (`address: auto`, `ray://...`) that is
too small, a step would hang silently. `check_capacity` is asked before a pool's actors
(pools.py) or a training's workers (training/ray_train.py) are requested:

- the demand is above the cluster's maximum (the cluster config an autoscaler reports, which Ray
  Train reads for the same check), or above its current total with no autoscaler to be seen: it
  can never fit, a ClusterError that names what the cluster has, the demand and the fix;
- it is above the total but an autoscaler runs (KubeRay's, `ray up`'s), or above what is free
  now (other jobs hold the rest): it waits, and says so (`waiting_line`), since nodes may come.

An autoscaler is seen when the GCS has its cluster config, or runs autoscaler v2, or autoscaler
v1's report names node types of its config: a cluster of `ray start` nodes runs the v1 monitor
too, but read-only, with a node type per node (`node_<node id>`). These are Ray 2.60's internal
stores (Ray has no public API for them: ray-project/ray#52033), read by a zero-CPU task on the
cluster so that a `ray://` client reads them too; where they cannot be read, the autoscaler is
unknown and the step waits, logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger(__name__)
Log = Callable[[str], None]

# What a demand is checked for: the resources a pool's actors and a training's workers ask for.
CHECKED = ("CPU", "GPU")
# How long a cluster's first autoscaler report is waited for (Ray's monitor writes one every 5 s).
STATUS_WAIT_S = 12
# How often a step that waits for the cluster says so.
WAIT_LOG_S = 30.0


class ClusterError(RuntimeError):
    """The Ray cluster could not be reached or started, or cannot hold the demand; the message names the address."""


@dataclass(frozen=True)
class Capacity:
    """A cluster's CPUs and GPUs: in all now, free now, at most (None: unknown), and whether an autoscaler runs
    (None: unknown)."""

    total: dict[str, float]
    free: dict[str, float]
    maximum: dict[str, float] | None = None
    autoscaler: bool | None = None


@dataclass(frozen=True)
class Demand:
    """`workers` workers of `per_worker` resources each ({"CPU": 1, "GPU": 0})."""

    workers: int
    per_worker: dict[str, float]

    @classmethod
    def of_actors(cls, workers: int, options: dict) -> "Demand":
        """From an actor's options (`num_cpus`, `num_gpus`)."""
        return cls(workers, {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0)})

    def amount(self, name: str) -> float:
        return self.workers * float(self.per_worker.get(name, 0) or 0)

    def above(self, resources: dict[str, float]) -> bool:
        return any(self.amount(name) > resources.get(name, 0) for name in CHECKED)

    def describe(self) -> str:
        asked = [name for name in CHECKED if self.amount(name)]
        each = ", ".join(f"{_number(self.per_worker[name])} {name}" for name in asked) or "nothing"
        return f"{self.workers} worker(s) x {each} ask for " + ", ".join(_count(self.amount(name), name) for name in asked)


def verdict(demand: Demand, capacity: Capacity) -> str:
    """'fits' (free now), 'wait' (nodes may come, or other jobs hold what it needs) or 'never'."""
    if capacity.maximum is not None and demand.above(capacity.maximum):
        return "never"
    if demand.above(capacity.total):
        return "never" if capacity.autoscaler is False else "wait"
    return "wait" if demand.above(capacity.free) else "fits"


def too_small(where: str, demand: Demand, capacity: Capacity) -> str:
    shape = capacity.maximum if capacity.maximum is not None else capacity.total
    has = ", ".join(_count(shape.get(name, 0), name) for name in CHECKED)
    return (f"the Ray cluster at {where} has {'at most ' if capacity.maximum is not None else ''}{has}; "
            f"{demand.describe()}: lower --workers / compute.workers or cpus_per_worker / gpus_per_worker, "
            "or join a larger cluster")


def waiting_line(where: str, demand: Demand, capacity: Capacity) -> str:
    free = ", ".join(f"{_number(capacity.free.get(name, 0))} of {_count(capacity.total.get(name, 0), name)}"
                     for name in CHECKED if demand.amount(name))
    why = "an autoscaler may add nodes" if demand.above(capacity.total) else "other work holds the rest"
    return f"waiting for the Ray cluster at {where}: {demand.describe()}, it has {free} free ({why})"


def check_capacity(demand: Demand, log: Log | None = None) -> str:
    """Raise a ClusterError where the connected cluster can never hold `demand`; else its verdict ('fits' or 'wait'),
    a 'wait' said to `log` (default: a warning on stderr, the CLI's or a Dagster step's captured output)."""
    import ray

    capacity = Capacity(total=ray.cluster_resources(), free=ray.available_resources())
    if verdict(demand, capacity) == "fits":
        return "fits"
    if demand.above(capacity.total):
        capacity = Capacity(capacity.total, capacity.free, *_autoscaling())
    where = cluster_address()
    decided = verdict(demand, capacity)
    if decided == "never":
        raise ClusterError(too_small(where, demand, capacity))
    (log or logger.warning)(waiting_line(where, demand, capacity))
    return decided


def wait_logged(refs: list, demand: Demand, log: Log | None = None) -> None:
    """Wait for `refs` (actors' readiness), saying every WAIT_LOG_S seconds what it waits for and what is free."""
    import ray

    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_LOG_S)
        if pending:
            capacity = Capacity(total=ray.cluster_resources(), free=ray.available_resources())
            (log or logger.warning)(waiting_line(cluster_address(), demand, capacity))


def cluster_address() -> str:
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # a Ray client's context has no GCS address
        return "the joined address"


def _autoscaling() -> tuple[dict[str, float] | None, bool | None]:
    """(the cluster's maximum, whether an autoscaler runs), read on the cluster; (None, None) where unreadable."""
    import ray

    try:
        return ray.get(ray.remote(num_cpus=0)(_read_autoscaling).remote(), timeout=60)
    except Exception as err:  # noqa: BLE001 - Ray's internal stores: unknown, so the step waits (logged)
        logger.info(f"the Ray cluster's autoscaler could not be read ({err}): taken as unknown")
        return None, None


def _read_autoscaling() -> tuple[dict[str, float] | None, bool | None]:
    import json
    import time

    import ray._private.state
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    maximum = ray._private.state.state.get_max_resources_from_cluster_config()
    if maximum:
        return {name: float(value) for name, value in maximum.items()}, True
    if is_autoscaler_v2(fetch_from_server=True):
        return None, True
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    for _ in range(STATUS_WAIT_S):  # a cluster started seconds ago: its monitor reports every 5 s
        if status:
            break
        time.sleep(1)
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not status:
        return None, None
    report = json.loads(status).get("autoscaler_report") or {}
    mirrored = {format_readonly_node_type(node) for node in report.get("node_type_mapping") or {}}
    types = set((report.get("node_type_mapping") or {}).values()) | set(report.get("pending_launches") or {})
    return None, bool(types - mirrored)


def _number(value: float) -> str:
    return f"{value:g}"


def _count(value: float, name: str) -> str:
    return f"{_number(value)} {name}" + ("" if value == 1 else "s")
