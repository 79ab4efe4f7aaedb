"""The Dagster code location: one Definitions object over the flywheel's assets, built on demand.

Importing this package has no side effects: `defs()` (found by Dagster through `@dg.definitions`)
reads $ARENA_HOME and the profile the home was built with when the code location loads, and
creates nothing; the first run creates the home's folders.
"""

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from arena_dagster.config import resolve_home, settings_of

# The profile sections each group of assets reads: an edit of one shows exactly those assets as
# changed (a new code version) in the UI, so it says what is stale.
SECTIONS_BY_GROUP = {
    "prompts": ("seed", "prompts", "testset", "judge"),
    "models": ("seed", "models"),
    "baseline": ("seed", "models", "generation", "judge", "sql_vars", "evaluation"),
    "round": (),
    "sft": ("prompts", "schedule", "generation", "judge", "sql_vars", "judge_health", "models"),
    "dpo": ("prompts", "schedule", "generation", "judge", "sql_vars", "judge_health", "models"),
    "rl": ("prompts", "schedule", "generation", "judge", "sql_vars", "judge_health", "models", "reward_model"),
    "evaluation": ("generation", "judge", "sql_vars", "evaluation"),
    "gate": ("evaluation", "promotion"),
}


def _assets() -> list[Any]:
    from arena_dagster.defs import battles, evaluation, gate, models, prompts, training
    from arena_dagster.defs.sql import sql_assets

    # Code references are a beta API; their warnings are for this code's authors, not for the UI's users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        python_assets = dg.with_source_code_references(
            [*dg.load_assets_from_modules([prompts, models, training, evaluation, gate]), *battles.stage_battles()]
        )
        return [*python_assets, *sql_assets()]


def _versioned(assets: list[Any], settings: dict[str, Any]) -> list[Any]:
    def version(spec: dg.AssetSpec) -> dg.AssetSpec:
        sections = {key: settings.get(key) for key in SECTIONS_BY_GROUP.get(spec.group_name or "", ())}
        blob = json.dumps([spec.code_version, sections], sort_keys=True, default=str).encode()
        return spec.replace_attributes(code_version=hashlib.sha256(blob).hexdigest()[:12])

    return dg.map_asset_specs(version, assets)


def build_definitions(home: str | Path | None = None, profile: str | None = None, seed: int | None = None) -> dg.Definitions:
    """The code location for `home` ($ARENA_HOME, else ./.arena), running the profile the home was built with.

    `profile`/`seed` are for a home that no run has started yet (tests, the CLI's first run);
    a home that remembers another profile refuses them (home.HomeProfileMismatch).
    """
    from arena_dagster.defs.automation import (
        failed_round_sensor_for,
        flywheel_jobs,
        next_round_sensor,
        nightly_flywheel,
        round_partitions_sensor,
    )
    from arena_dagster.defs.checks import checkpoint_asset_checks
    from arena_dagster.defs.compute import ArenaCompute
    from arena_dagster.defs.reference import reference_checks
    from arena_dagster.defs.resources import ArenaHome, warehouse_resource
    from arena_dagster.home import home_profile

    root = resolve_home(home)
    name, seed, settings = home_profile(root, profile, seed)
    arena = ArenaHome(home=str(root), profile=name, seed=seed)
    typed = settings_of(settings)
    return dg.Definitions(
        assets=_versioned(_assets(), settings),
        asset_checks=[*checkpoint_asset_checks(), *reference_checks(typed.evaluation)],
        jobs=flywheel_jobs(arena.run_tags()),
        schedules=[nightly_flywheel],
        sensors=[round_partitions_sensor, next_round_sensor, failed_round_sensor_for(root)],
        resources={
            "arena": arena,
            "duckdb": warehouse_resource(root),
            # Where heavy steps run (the profile's `compute` section; `flywheel --engine` overrides it per run).
            "compute": ArenaCompute.from_profile(typed),
            # Training steps run as Pipes subprocesses; a cluster swaps in another Pipes client (README).
            "pipes": dg.PipesSubprocessClient(),
        },
        # One process per run: DuckDB takes one writing process per file, and the steps of a
        # round run in order anyway. Training steps start their own subprocesses.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
