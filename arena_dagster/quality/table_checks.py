"""Row-level expectations for warehouse tables, computed in SQL on one round at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import duckdb

from arena_dagster.warehouse import quote_ident, table_exists


@dataclass(frozen=True)
class TableExpectation:
    """What a table promises; the Dagster layer turns each into an asset check."""

    key: tuple[str, ...] = ()
    not_null: tuple[str, ...] = ()
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    min_rows: int = 1
    blocking: bool = False
    # Ranges whose violation is reported but never blocks (checks named `warn_<column>`).
    warn_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any]
    blocking: bool = False


def _scope(round_key: int | None) -> tuple[str, list[Any]]:
    return ("WHERE round = ?", [round_key]) if round_key is not None else ("", [])


def run_expectations(
    conn: duckdb.DuckDBPyConnection, table: str, expectation: TableExpectation, *, round_key: int | None
) -> list[CheckOutcome]:
    if not table_exists(conn, table):
        return [CheckOutcome("rows", False, f"table {table} was not written", {}, expectation.blocking)]
    name = quote_ident(table)
    where, params = _scope(round_key)
    rows = conn.execute(f"SELECT count(*) FROM {name} {where}", params).fetchone()[0]
    outcomes = [
        CheckOutcome(
            "rows",
            rows >= expectation.min_rows,
            f"at least {expectation.min_rows} rows",
            {"rows": int(rows)},
            expectation.blocking,
        )
    ]
    if expectation.key:
        cols = ", ".join(quote_ident(c) for c in expectation.key)
        dupes = conn.execute(
            f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {name} {where} GROUP BY {cols})", params
        ).fetchone()[0]
        outcomes.append(
            CheckOutcome(
                "unique_key",
                dupes == 0,
                f"({', '.join(expectation.key)}) identifies each row",
                {"duplicate_rows": int(dupes)},
                expectation.blocking,
            )
        )
    for column in expectation.not_null:
        nulls = conn.execute(
            f"SELECT count(*) FROM {name} {where} {'AND' if where else 'WHERE'} {quote_ident(column)} IS NULL", params
        ).fetchone()[0]
        outcomes.append(
            CheckOutcome(f"not_null_{column}", nulls == 0, f"{column} is never null", {"null_rows": int(nulls)}, expectation.blocking)
        )
    for column, (low, high) in expectation.ranges.items():
        outside = conn.execute(
            f"SELECT count(*) FROM {name} {where} {'AND' if where else 'WHERE'} "
            f"({quote_ident(column)} < ? OR {quote_ident(column)} > ?)",
            params + [low, high],
        ).fetchone()[0]
        outcomes.append(
            CheckOutcome(
                f"range_{column}",
                outside == 0,
                f"{column} within [{low}, {high}]",
                {"rows_outside": int(outside)},
                expectation.blocking,
            )
        )
    for column, (low, high) in expectation.warn_ranges.items():
        values = conn.execute(
            f"SELECT {quote_ident(column)} FROM {name} {where} {'AND' if where else 'WHERE'} "
            f"({quote_ident(column)} < ? OR {quote_ident(column)} > ?)",
            params + [low, high],
        ).fetchall()
        outcomes.append(
            CheckOutcome(
                f"warn_{column}",
                not values,
                f"{column} within [{low}, {high}] (a warning only)",
                {"rows_outside": len(values), "values_outside": [float(v[0]) for v in values[:10]]},
                False,
            )
        )
    return outcomes


def expectation_check_names(expectation: TableExpectation) -> Sequence[str]:
    names = ["rows"]
    if expectation.key:
        names.append("unique_key")
    names += [f"not_null_{c}" for c in expectation.not_null]
    names += [f"range_{c}" for c in expectation.ranges]
    names += [f"warn_{c}" for c in expectation.warn_ranges]
    return names


def is_blocking(expectation: TableExpectation, check_name: str) -> bool:
    return expectation.blocking and not check_name.startswith("warn_")
