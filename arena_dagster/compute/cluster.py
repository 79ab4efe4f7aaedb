"""The seam between a heavy step and Ray: one context manager that makes a cluster reachable.

A step asks `ray_cluster(settings)`; inside, `ray` is initialized: an already connected driver
(a test's session cluster, the cluster a Dagster run keeps for all its steps: defs/compute.py) is
used as it is, otherwise the cluster at `settings.address` is joined, or, with no address, a local
cluster of `workers x cpus_per_worker` CPUs is started, and left (shut down) when the block ends.
The actor pools started inside the block (model replicas, pools.py) live until it ends; a block
inside a block is the outer one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

from arena_dagster.compute.capacity import ClusterError
from arena_dagster.compute.pools import in_block, pools_block
from arena_dagster.compute.settings import ComputeSettings

Connect = Callable[[], None]


@contextlib.contextmanager
def ray_cluster(settings: ComputeSettings, connect: Connect | None = None) -> Iterator[None]:
    """Ray initialized for the block. `connect`: how to connect instead of `ray.init` (dagster-ray's resource)."""
    if in_block():  # inside a step's block already: its cluster and its pools
        yield
        return
    with _connected(settings, connect), pools_block():
        yield


@contextlib.contextmanager
def _connected(settings: ComputeSettings, connect: Connect | None) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    join(settings, connect)
    try:
        yield
    finally:
        ray.shutdown()


def join(settings: ComputeSettings, connect: Connect | None = None) -> None:
    """Initialize `ray` for the settings' cluster (through `connect` where given); one that cannot be reached or
    started is a ClusterError that names the address."""
    import ray

    try:
        if settings.address is None:
            own_agent_port()
        if connect is not None:
            connect()
        else:
            ray.init(address=settings.address, logging_level=logging.WARNING, log_to_driver=False,
                     **settings.ray_init_options())
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = settings.address or "a new local cluster"
        raise ClusterError(f"no Ray cluster ({where}: {err}): start one (`ray start --head`), or leave out "
                           "--ray-address / compute.address to start a local cluster for the run") from err


def own_agent_port() -> None:
    """Local clusters started by this process give their dashboard agent a free port, not Ray's fixed 52365.

    Every local cluster's agent asks for 52365 and `ray.init` has no argument to change it (`ray start` has
    --dashboard-agent-listen-port): on a machine where another cluster runs (a second flywheel, the tests'), the
    new cluster has no job agent, and a training step's Ray job waits for one that never comes ("No available
    agent to submit job"). So the parameter object `ray.init` builds gets the free port it cannot be given."""
    import socket

    import ray._private.parameter as parameter

    init = parameter.RayParams.__init__
    if getattr(init, "own_agent_port", False):
        return

    def with_free_agent_port(self, *args, **kwargs):
        if kwargs.get("dashboard_agent_listen_port") in (None, parameter.ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                kwargs["dashboard_agent_listen_port"] = probe.getsockname()[1]
        init(self, *args, **kwargs)

    with_free_agent_port.own_agent_port = True
    parameter.RayParams.__init__ = with_free_agent_port


def actor_options(settings: ComputeSettings) -> dict:
    """An actor's resources: its worker's share of CPUs and GPUs."""
    options: dict = {"num_cpus": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        options["num_gpus"] = settings.gpus_per_worker
    return options
