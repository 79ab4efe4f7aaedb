"""Assets built from dbt_like_sql/: one asset per SELECT, deps read from its refs, columns from its header."""


import hashlib
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.common import OWNERS, table_check_specs, table_result
from arena_dagster.defs.resources import ArenaHome, round_of, round_partitions
from arena_dagster.profile_schema.sections import SqlVars
from arena_dagster.quality.suites import judge_health_suite
from arena_dagster.sql_models import SqlModel, load_models, model_column_lineage, run_model


def sql_variables(settings: SqlVars) -> dict[str, Any]:
    """The `{{ var(...) }}` values of the SQL models (every one is set: the schema requires them)."""
    return settings.model_dump()


def _lineage_metadata(conn, model: SqlModel, round_key: int, variables: dict[str, Any]) -> dict[str, Any]:
    """`dagster/column_lineage` of the round's SELECT: which upstream columns each output column comes from."""
    traced = model_column_lineage(conn, model, variables, round_key)
    if not traced:
        return {}
    return {"dagster/column_lineage": dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=dg.AssetKey(table), column_name=name) for table, name in deps]
        for column, deps in traced.items()
    })}


def _definition_metadata(model: SqlModel) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "sql_file": f"dbt_like_sql/{model.path.name}",
        "dagster/code_references": dg.CodeReferencesMetadataValue(
            code_references=[dg.LocalFileCodeReference(file_path=str(model.path.resolve()), line_number=1,
                                                       label=f"SQL model {model.path.name}")]
        ),
    }
    if model.columns:
        metadata["dagster/column_schema"] = dg.TableSchema(
            columns=[dg.TableColumn(name, description=text) for name, text in model.columns]
        )
    return metadata


def _sql_asset(model: SqlModel) -> dg.AssetsDefinition:
    @dg.asset(
        name=model.name,
        group_name=model.group,
        kinds={"sql", "duckdb"},
        owners=OWNERS,
        partitions_def=round_partitions,
        deps=list(model.refs),
        check_specs=table_check_specs(model.name),
        description=f"Round r: {model.description} (SQL: dbt_like_sql/{model.path.name})",
        metadata=_definition_metadata(model),
        code_version=hashlib.sha256(model.sql.encode()).hexdigest()[:12],
    )
    def _build(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
        round_key = round_of(context)
        settings = arena.typed_settings()
        variables = sql_variables(settings.sql_vars)
        # Judge-health limits are the profile's to move (a weak judge is expected to be noisy).
        suite = judge_health_suite(model.name, settings.judge_health) if model.path.stem == "judge_health" else None
        with duckdb.get_connection() as conn:
            run_model(conn, model, round_key=round_key, variables=variables)
            extra = {**arena.provenance(), "sql_file": f"dbt_like_sql/{model.path.name}", "refs": list(model.refs),
                     **_lineage_metadata(conn, model, round_key, variables)}
            return table_result(conn, model.name, round_key, extra, suite=suite)

    return _build


def sql_assets() -> list[dg.AssetsDefinition]:
    return [_sql_asset(model) for model in load_models().values()]
