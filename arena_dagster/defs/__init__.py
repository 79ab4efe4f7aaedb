"""The Dagster code location: one Definitions object over the flywheel's assets."""


import os

import dagster as dg

from arena_dagster.config import DEFAULT_PROFILE, resolve_home
from arena_dagster.defs import battles, evaluation, prompts, training
from arena_dagster.defs.checks import checkpoint_asset_checks
from arena_dagster.defs.common import ArenaHome, warehouse_resource
from arena_dagster.defs.jobs import baseline_evaluation_job, flywheel_round_job, flywheel_setup_job, nightly_flywheel
from arena_dagster.defs.sql import sql_assets


def build_definitions(home: str | None = None, profile: str | None = None) -> dg.Definitions:
    root = resolve_home(home)
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules([prompts, training, evaluation]),
            *battles.stage_battles,
            *sql_assets,
        ],
        asset_checks=checkpoint_asset_checks,
        jobs=[flywheel_setup_job, flywheel_round_job, baseline_evaluation_job],
        schedules=[nightly_flywheel],
        resources={
            "arena": ArenaHome(home=str(root), profile=profile or os.environ.get("ARENA_PROFILE", DEFAULT_PROFILE)),
            "duckdb": warehouse_resource(root),
        },
        # One process per run: DuckDB takes one writing process per file, and the steps of a
        # round run in order anyway. Training steps start their own subprocesses.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
