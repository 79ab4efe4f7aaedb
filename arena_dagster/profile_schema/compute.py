"""The profile's `compute` section: which engine runs the heavy steps, and on what cluster.

The engine changes where the work runs, never what it produces, so the section is left out of
the profile's identity (`config.profile_hash`); runs say which engine they used in the tag
`arena/engine`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from arena_dagster.profile_schema.base import PositiveInt, Section

ENGINES = ("local", "ray")
# What every Ray worker needs whatever the profile says: models come from installed packages or
# the home, never from a hub (the machines of a cluster may have no way out).
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class ComputeSettings(Section):
    engine: Literal[ENGINES] = "local"
    # Model replicas / map workers a heavy step uses; with `address: null`, also the CPUs of the
    # local cluster started for the run (workers x cpus_per_worker).
    workers: PositiveInt = 2
    # null: start a local cluster for the run's life; `auto`: join the cluster this machine belongs
    # to; `ray://host:10001`: join a remote cluster through Ray Client.
    address: str | None = None
    cpus_per_worker: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    gpus_per_worker: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    # Ray's runtime_env for the workers (env_vars, pip, py_modules, working_dir...).
    runtime_env: dict[str, Any] = Field(default_factory=dict)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and not value.startswith("ray://") and ":" not in value:
            raise ValueError(f"address must be null, 'auto', 'ray://host:10001' or 'host:port', got {value!r}")
        return value

    def overridden(self, engine: str | None = None, workers: int | None = None,
                   address: str | None = None) -> "ComputeSettings":
        """These settings with the command line's `--engine/--workers/--ray-address` (None: keep)."""
        changes = {key: value for key, value in (("engine", engine), ("workers", workers), ("address", address))
                   if value is not None}
        return type(self).model_validate({**self.model_dump(), **changes}) if changes else self

    def worker_env(self) -> dict[str, Any]:
        """The runtime_env every worker gets: the profile's, with the offline variables added."""
        runtime_env = dict(self.runtime_env)
        runtime_env["env_vars"] = {**WORKER_ENV, **dict(runtime_env.get("env_vars") or {})}
        return runtime_env

    def ray_init_options(self, dashboard: bool = False) -> dict[str, Any]:
        """Keyword arguments of `ray.init` (also dagster-ray's `ray_init_options`) without the address.
        `dashboard`: a local cluster with its dashboard, the job server a training's Ray job is submitted to."""
        options: dict[str, Any] = {"runtime_env": self.worker_env(), "include_dashboard": dashboard}
        if self.address is None:
            options["num_cpus"] = max(1, round(self.workers * self.cpus_per_worker))
            if self.gpus_per_worker:
                options["num_gpus"] = self.workers * self.gpus_per_worker
        return options

    def run_tags(self) -> dict[str, str]:
        tags = {"arena/engine": self.engine}
        if self.engine == "ray":
            tags.update({"arena/workers": str(self.workers), "arena/ray_address": self.address or "local"})
        return tags

    @classmethod
    def from_run_tags(cls, base: "ComputeSettings", tags: dict[str, str]) -> "ComputeSettings":
        """`base` with the engine a run was launched with (`flywheel --engine ...` puts it in the run's tags)."""
        changes: dict[str, Any] = {}
        if tags.get("arena/engine"):
            changes["engine"] = tags["arena/engine"]
        if tags.get("arena/workers"):
            changes["workers"] = int(tags["arena/workers"])
        if tags.get("arena/ray_address"):
            changes["address"] = None if tags["arena/ray_address"] == "local" else tags["arena/ray_address"]
        return cls.model_validate({**base.model_dump(), **changes}) if changes else base
