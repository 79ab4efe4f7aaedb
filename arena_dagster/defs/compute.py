"""The compute engine as a resource: the profile's `compute` section, the run's overrides, the Ray cluster.

The cluster itself is a dagster-ray resource: `LocalRay` starts a local cluster of `workers` CPUs
(address null), `JoinedRay` joins one that runs already (`auto`, `ray://host:10001`); on
Kubernetes `cluster=kuberay_cluster(...)` (defs/kuberay.py: dagster-ray's `KubeRayCluster`) takes
their place (README, "Scale-out on Ray"). The cluster is reached
only when a heavy step asks for it (`ArenaCompute.connector`), so a run whose steps are all
light never starts one. A local (with its job server, for the training steps' Ray jobs) or joined
cluster, once reached, is kept for the run's later steps
(the run's steps share one process: the in-process executor) and left when the run ends: starting
a local cluster and stopping it cost more than a small step's work.
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any, Callable, Iterator

import dagster as dg
from dagster_ray import LocalRay, Lifecycle, RayResource
from pydantic import PrivateAttr

from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.profile_schema import Profile


class JoinedRay(RayResource):
    """A Ray cluster that runs already: `auto` (this machine's) or `ray://head:10001` (Ray Client)."""

    address: str

    @property
    def host(self) -> str:
        return self.address.removeprefix("ray://").rsplit(":", 1)[0]

    @property
    def ray_address(self) -> str:  # type: ignore[override]
        return self.address

    @property
    def name(self) -> str:
        return f"Ray cluster at {self.address}"

    @property
    def created(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return True


def ray_resource_for(settings: ComputeSettings, dashboard: bool = False) -> RayResource:
    """dagster-ray's resource for the settings' cluster; it connects when a heavy step asks, not at run start.
    `dashboard`: a local cluster started with its job server (a training step submits a Ray job to it)."""
    lifecycle = Lifecycle(connect=False, cleanup="never")
    options = settings.ray_init_options(dashboard=dashboard)
    if settings.address is None:
        return LocalRay(lifecycle=lifecycle, ray_init_options=options)
    return JoinedRay(address=settings.address, lifecycle=lifecycle, ray_init_options=options)


class ArenaCompute(dg.ConfigurableResource):
    """Where heavy steps run. `settings_json`: the profile's compute section; a run's `arena/engine`,
    `arena/workers` and `arena/ray_address` tags (set by `flywheel --engine ...`) override it."""

    settings_json: str = "{}"
    # A dagster-ray cluster resource that replaces the one `settings` names (KubeRay: defs/kuberay.py).
    cluster: RayResource | None = None

    _settings: ComputeSettings | None = PrivateAttr(default=None)
    # Whether this resource reached a cluster for the run's steps (it leaves it when the run ends).
    _kept: bool = PrivateAttr(default=False)

    @classmethod
    def from_profile(cls, profile: Profile) -> "ArenaCompute":
        """The typed profile's `compute` section (the local engine where it has none)."""
        return cls(settings_json=(profile.compute or ComputeSettings()).model_dump_json())

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        base = ComputeSettings.model_validate(json.loads(self.settings_json))
        run = context.dagster_run
        self._settings = ComputeSettings.from_run_tags(base, dict(run.tags)) if run is not None else base
        if run is not None and context.instance is not None:
            missing = {key: value for key, value in self._settings.run_tags().items() if key not in run.tags}
            if missing:
                context.instance.add_run_tags(run.run_id, missing)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._kept:
            import ray

            ray.shutdown()
            self._kept = False

    def settings(self) -> ComputeSettings:
        return self._settings or ComputeSettings.model_validate(json.loads(self.settings_json))

    def curation(self, context: Any) -> Callable[..., Any]:
        """`curate` on this run's engine (`prompts.curation_ray.curate_with`), for `pools.curated_pool`."""
        from arena_dagster.compute.progress import progress_sink
        from arena_dagster.prompts.curation_ray import curate_with

        settings = self.settings()
        context.log.info(f"curation on engine {settings.engine}" + (f" ({settings.workers} workers)" if settings.engine == "ray" else ""))
        curate = functools.partial(curate_with, settings, progress=progress_sink(context.log.info))

        def curate_rows(*args: Any, **kwargs: Any) -> Any:
            with self.session(context):
                return curate(*args, **kwargs)

        return curate_rows

    def session(self, context: Any, dashboard: bool = False) -> contextlib.AbstractContextManager:
        """The cluster for a block of heavy work (nothing on the local engine), through the one seam."""
        from arena_dagster.compute.cluster import ray_cluster

        settings = self.settings()
        if settings.engine != "ray":
            return contextlib.nullcontext()
        connect = self.connector(context, dashboard=dashboard)
        if self.cluster is None:
            self._keep(context, settings)
        return ray_cluster(settings, connect)

    def _keep(self, context: Any, settings: ComputeSettings) -> None:
        """Reach the run's cluster once, for this step and the later ones. A local one starts with its job server (the
        dashboard): a training step submits its Ray job there, and a job server started minutes before it is up by
        then (one started for the step may take minutes on a loaded machine before it takes a job)."""
        import ray

        from arena_dagster.compute.cluster import join

        if self._kept or ray.is_initialized():  # a driver this resource did not start (a test's session cluster): as it is
            return
        join(settings, self.connector(context, dashboard=True))
        self._kept = True
        where = f"the cluster at {settings.address}" if settings.address is not None else (
            f"a local cluster of {settings.ray_init_options()['num_cpus']} CPU(s) with its job server")
        context.log.info(f"Ray: {where}, kept for this run's steps")

    @contextlib.contextmanager
    def training(self, context: Any) -> Iterator[dict[str, Any] | None]:
        """The `compute` a training spec carries (None on the local engine): these settings, with the address of the
        cluster this step reaches, whose job server runs the training's driver as a Ray job (defs/training_jobs.py)."""
        settings = self.settings()
        if settings.engine != "ray":
            yield None
            return
        with self.session(context, dashboard=True):
            import ray

            # A cluster started for the run has no address of its own in the settings: its GCS address is it. A cluster
            # resource (KubeRay) knows the address a process outside the cluster reaches; `auto` would only find a local one.
            address = (self.cluster.ray_address if self.cluster is not None else None) or settings.address
            yield {**settings.model_dump(), "address": address or ray.get_runtime_context().gcs_address}

    def connector(self, context: Any, dashboard: bool = False) -> Callable[[], None]:
        """How the seam (`compute.cluster.ray_cluster`) connects: through dagster-ray's resource, with the step's log."""
        return functools.partial((self.cluster or ray_resource_for(self.settings(), dashboard)).connect, context)
