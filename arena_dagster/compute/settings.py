"""The compute settings (the profile's `compute` section, defined with the other sections)."""

from arena_dagster.profile_schema.compute import ENGINES, WORKER_ENV, ComputeSettings

__all__ = ["ENGINES", "WORKER_ENV", "ComputeSettings"]
