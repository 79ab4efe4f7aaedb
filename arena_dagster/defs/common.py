"""Shared pieces of the Dagster layer: table checks (Great Expectations suites) and table metadata."""


import warnings
from typing import Any

import dagster as dg
import duckdb

from arena_dagster.defs.resources import round_partitions
from arena_dagster.quality.suites import Suite, table_suite
from arena_dagster.quality.validation import validate_suite
from arena_dagster.warehouse import column_schema, quote_ident, read_table, table_exists

OWNERS = ["team:post-training"]

def table_check_specs(table: str) -> list[dg.AssetCheckSpec]:
    """One asset check per check of the table's GX suite (assets/expectations/), bound to the round partition
    when the suite is round-scoped (the asset is then round-partitioned too)."""
    suite = table_suite(table)
    with warnings.catch_warnings():
        # Partitioned asset checks are a preview in Dagster 1.13; the warning would repeat on every load.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name=check.name,
                asset=table,
                blocking=check.blocking,
                description=suite.describe(check),
                partitions_def=round_partitions if suite.round_scoped else None,
            )
            for check in suite.checks
        ]


def table_check_results(
    conn: duckdb.DuckDBPyConnection, table: str, round_key: int | None, suite: Suite | None = None
) -> list[dg.AssetCheckResult]:
    """The table's suite validated by Great Expectations on the round's rows; `suite` is the table's suite
    with a profile's limits (judge health), which must keep the checks the specs declare."""
    declared = table_suite(table)
    suite = suite or declared
    if suite.check_names() != declared.check_names():
        raise ValueError(f"{table}: a profile may change the limits of its checks, not which checks exist")
    return [
        dg.AssetCheckResult(
            asset_key=table,
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
            description=outcome.description,
            metadata=outcome.metadata,
        )
        for outcome in validate_suite(conn, suite, round_key)
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
    suite: Suite | None = None,
) -> dg.MaterializeResult:
    metadata = table_metadata(conn, table, round_key)
    metadata.update(extra or {})
    return dg.MaterializeResult(metadata=metadata, check_results=table_check_results(conn, table, round_key, suite))


def round_answers(conn: duckdb.DuckDBPyConnection, responses_table: str, round_key: int):
    """The (model, role) pairs that answered round `round_key` of a responses table."""
    return read_table(conn, responses_table, round_key=round_key, columns="DISTINCT model, role")


def round_inputs(warehouse, responses_table: str, prompts_table: str, round_key: int):
    """`judge_in_chunks`'s inputs: the round's answers to some prompts, and those prompts, read when a chunk needs them."""
    def inputs(prompt_ids: list[str]):
        with warehouse.get_connection() as conn:
            where = "prompt_id IN (SELECT unnest(?))"
            return (read_table(conn, responses_table, round_key=round_key, where=where, where_params=[prompt_ids]),
                    read_table(conn, prompts_table, where=where, where_params=[prompt_ids]))
    return inputs
