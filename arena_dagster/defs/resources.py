"""Resources of the code location: the flywheel home (profile, folders, the writer lock) and the warehouse."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import PrivateAttr

from arena_dagster.config import profile_hash, resolve_home, settings_of
from arena_dagster.home import profile_settings
from arena_dagster.locks import HomeLock, describe_holder, writer_lock
from arena_dagster.warehouse import WAREHOUSE
from arena_dagster.paths import inside
from arena_dagster.shards import connection_config
from arena_dagster.profile_schema import Profile

# Training rounds 1, 2, ...: one key per slice of the prompt pool (added when the pool has the slice).
round_partitions = dg.DynamicPartitionsDefinition(name="round")

# Dagster's own tags that say who launched a run; the UI adds `dagster/from_ui` to every run it launches.
_LAUNCHERS = (("dagster/from_ui", "ui"), ("dagster/backfill", "backfill"), ("dagster/schedule_name", "schedule"),
              ("dagster/sensor_name", "sensor"))


def missing_run_tags(tags: Mapping[str, str], home_tags: Mapping[str, str]) -> dict[str, str]:
    """The arena tags a run lacks: its round (the partition), who started it, and the home's profile tags.

    The CLI, the schedule and the sensor set their own; a run launched another way (the UI's Materialize
    dialog, a backfill, `dagster asset materialize`) gets them here, so filtering runs by round finds it.
    """
    wanted = dict(home_tags)
    if tags.get("dagster/partition"):
        wanted["arena/round"] = tags["dagster/partition"]
    launcher = next((who for tag, who in _LAUNCHERS if tags.get(tag) not in (None, "", "false")), None)
    wanted["arena/started_by"] = launcher or "dagster"
    added = {key: value for key, value in wanted.items() if key not in tags}
    # A re-execution copies its parent's tags: its own launcher (the UI's Re-execute) says who started it.
    if launcher and "dagster/parent_run_id" in tags and tags.get("arena/started_by") != launcher:
        added["arena/started_by"] = launcher
    return added


@lru_cache(maxsize=8)
def _settings(profile: str, seed: int | None) -> dict[str, Any]:
    return profile_settings(profile, seed)


@lru_cache(maxsize=8)
def _typed_settings(profile: str, seed: int | None) -> Profile:
    return settings_of(_settings(profile, seed))  # validated once per process (the models are frozen)


class ArenaHome(dg.ConfigurableResource):
    """The flywheel home a run works on and the profile it runs (the one the home was built with).

    A run holds the home's writer lock from its start to its end, so two runs on one home (two
    UIs, a CLI beside a schedule) take turns instead of colliding on DuckDB's file lock.
    """

    home: str
    profile: str = "skills"
    seed: int | None = None

    _lock: HomeLock | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None and context.instance is not None:
            added = missing_run_tags(run.tags, self.run_tags())
            if added:
                context.instance.add_run_tags(run.run_id, added)
        lock = writer_lock(self.root)
        about = {"run_id": context.run_id or "", "job": run.job_name if run else "",
                 "round": (run.tags.get("dagster/partition") if run else "") or ""}

        def waiting(holder: dict[str, Any] | None) -> None:
            if context.log:
                context.log.info(f"waiting for the home's writer lock, held by pid {(holder or {}).get('pid')} "
                                 f"({describe_holder(holder)})")

        lock.acquire(wait=True, on_wait=waiting, **about)
        self._lock = lock

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def settings(self) -> Profile:
        """The profile's typed settings, which every step reads."""
        return _typed_settings(self.profile, self.seed)

    def plain_settings(self) -> dict[str, Any]:
        """The profile in its plain form: what the home records and `profile_hash` hashes."""
        return _settings(self.profile, self.seed)

    def profile_hash(self) -> str:
        return profile_hash(self.plain_settings())

    def run_tags(self) -> dict[str, str]:
        """The tags the flywheel's jobs put on every run (profile, profile hash, home)."""
        return {"arena/profile": self.profile, "arena/profile_hash": self.profile_hash(), "arena/home": str(self.root)}

    def provenance(self) -> dict[str, Any]:
        """Metadata every materialization carries: which profile (and seed) made it."""
        return {"arena/profile": self.profile, "arena/profile_hash": self.profile_hash(),
                # Text, not a number: the Plots tab would draw a constant as a flat line on every asset.
                "arena/seed": str(self.settings().seed)}

    @property
    def root(self) -> Path:
        return resolve_home(self.home)

    @property
    def cache_path(self) -> Path:
        return self.root / "cache" / "completions.sqlite"

    def folder(self, *parts: str) -> Path:
        """A folder under the home (created); a part that would lead outside it is refused."""
        path = inside(self.root, self.root.joinpath(*parts), "folder")
        path.mkdir(parents=True, exist_ok=True)
        return path


def warehouse_resource(home: Path) -> DuckDBResource:
    # No folder is created here: loading the definitions has no side effects; the first run creates the home.
    # Its shard views read this home's Parquet files (shards.py), wherever the home was copied.
    return DuckDBResource(database=str(Path(home) / WAREHOUSE), connection_config=connection_config(home))


def round_of(context: dg.AssetExecutionContext) -> int:
    try:
        round_key = int(context.partition_key)
    except ValueError as exc:
        raise dg.Failure(f"round partitions are positive integers, got {context.partition_key!r}") from exc
    if round_key < 1:
        raise dg.Failure(f"round partitions start at 1 (the baseline is its own asset), got {round_key}")
    return round_key
