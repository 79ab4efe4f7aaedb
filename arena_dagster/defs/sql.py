"""Assets built from dbt_like_sql/: one asset per SELECT, deps read from its refs."""


import hashlib
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.common import OWNERS, ArenaHome, round_of, round_partitions, table_check_specs, table_result
from arena_dagster.quality.suites import judge_health_suite
from arena_dagster.sql_models import SqlModel, load_models, run_model


def sql_variables(profile: dict[str, Any]) -> dict[str, Any]:
    return dict(profile.get("sql_vars", {}))


def _sql_asset(model: SqlModel) -> dg.AssetsDefinition:
    @dg.asset(
        name=model.name,
        group_name=model.group,
        kinds={"sql", "duckdb"},
        owners=OWNERS,
        partitions_def=round_partitions,
        deps=list(model.refs),
        check_specs=table_check_specs(model.name),
        description=f"{model.description} (SQL: dbt_like_sql/{model.path.name})",
        code_version=hashlib.sha256(model.sql.encode()).hexdigest()[:12],
    )
    def _build(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
        round_key = round_of(context)
        profile = arena.settings()
        # Judge-health limits are the profile's to move (a weak judge is expected to be noisy).
        suite = judge_health_suite(model.name, profile.get("judge_health")) if model.path.stem == "judge_health" else None
        with duckdb.get_connection() as conn:
            run_model(conn, model, round_key=round_key, variables=sql_variables(profile))
            return table_result(
                conn, model.name, round_key, {"sql_file": f"dbt_like_sql/{model.path.name}", "refs": list(model.refs)},
                suite=suite,
            )

    return _build


sql_assets = [_sql_asset(model) for model in load_models().values()]
