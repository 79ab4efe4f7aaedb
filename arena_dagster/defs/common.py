"""Shared pieces of the Dagster layer: table checks and table metadata."""


from typing import Any

import dagster as dg
import duckdb

from arena_dagster.quality.expectations import TABLE_EXPECTATIONS
from arena_dagster.quality.table_checks import TableExpectation, expectation_check_names, is_blocking, run_expectations
from arena_dagster.warehouse import column_schema, quote_ident, table_exists

OWNERS = ["team:post-training"]


def table_check_specs(table: str) -> list[dg.AssetCheckSpec]:
    expectation = TABLE_EXPECTATIONS[table]
    return [
        dg.AssetCheckSpec(name=name, asset=table, blocking=is_blocking(expectation, name), description=f"{table}: {name}")
        for name in expectation_check_names(expectation)
    ]


def table_check_results(
    conn: duckdb.DuckDBPyConnection, table: str, round_key: int | None, expectation: TableExpectation | None = None
) -> list[dg.AssetCheckResult]:
    expected = expectation or TABLE_EXPECTATIONS[table]
    if list(expectation_check_names(expected)) != list(expectation_check_names(TABLE_EXPECTATIONS[table])):
        raise ValueError(f"{table}: a profile may change the limits of its checks, not which checks exist")
    outcomes = run_expectations(conn, table, expected, round_key=round_key)
    return [
        dg.AssetCheckResult(
            asset_key=table,
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
            description=outcome.description,
            metadata=outcome.metadata,
        )
        for outcome in outcomes
    ]


def table_metadata(conn: duckdb.DuckDBPyConnection, table: str, round_key: int | None, preview_rows: int = 5) -> dict[str, Any]:
    if not table_exists(conn, table):
        return {}
    name = quote_ident(table)
    where, params = ("WHERE round = ?", [round_key]) if round_key is not None else ("", [])
    rows = conn.execute(f"SELECT count(*) FROM {name} {where}", params).fetchone()[0]
    schema = column_schema(conn, table)
    preview = conn.execute(f"SELECT * FROM {name} {where} LIMIT {preview_rows}", params).pl()
    text_cols = [c for c, t in schema.items() if t == "VARCHAR"]
    preview = preview.with_columns([preview[c].str.slice(0, 60) for c in text_cols if c in preview.columns])
    return {
        "dagster/row_count": dg.MetadataValue.int(int(rows)),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=c, type=t) for c, t in schema.items()]
        ),
        "preview": dg.MetadataValue.md(_markdown_table(preview)),
        "table": dg.MetadataValue.text(table),
    }


def _markdown_table(frame) -> str:
    if frame.is_empty():
        return "(no rows)"
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *body])


def table_result(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    round_key: int | None,
    extra: dict[str, Any] | None = None,
    expectation: TableExpectation | None = None,
) -> dg.MaterializeResult:
    metadata = table_metadata(conn, table, round_key)
    metadata.update(extra or {})
    return dg.MaterializeResult(metadata=metadata, check_results=table_check_results(conn, table, round_key, expectation))
