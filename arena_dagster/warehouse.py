"""DuckDB warehouse helpers: idempotent per-round writes and reads as polars frames.

Every table that belongs to a flywheel round carries a `round` column; writing a round
replaces exactly that round's rows inside one transaction, so a rerun or a run killed
half-way never duplicates or half-writes a round.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import duckdb
import polars as pl

from arena_dagster.errors import ArenaError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WarehouseError(RuntimeError):
    pass


def quote_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise WarehouseError(f"not a valid table or column name: {name!r}")
    return f'"{name}"'


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()
    return bool(row and row[0])


def write_table(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    frame: pl.DataFrame,
    *,
    round_key: int | None = None,
) -> int:
    """Replace a table (round_key None) or one round of it with `frame`; returns rows written.

    An empty frame still creates the table with its schema, so downstream SQL always finds it.
    """
    name = quote_ident(table)
    if round_key is not None:
        if "round" not in frame.columns:
            frame = frame.with_columns(pl.lit(round_key, dtype=pl.Int64).alias("round"))
        bad = frame.filter(pl.col("round") != round_key).height
        if bad:
            raise WarehouseError(f"{table}: {bad} rows belong to another round than {round_key}")
    view = f"_incoming_{table}"
    conn.register(view, frame.to_arrow())
    try:
        conn.execute("BEGIN TRANSACTION")
        if round_key is None:
            conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {view}")
        else:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM {view} LIMIT 0")
            conn.execute(f"DELETE FROM {name} WHERE round = ?", [round_key])
            conn.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {view}")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.unregister(view)
    return frame.height


def read_frame(conn: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] | None = None) -> pl.DataFrame:
    return conn.execute(sql, list(params or [])).pl()


def read_table(
    conn: duckdb.DuckDBPyConnection, table: str, *, round_key: int | None = None, where: str = ""
) -> pl.DataFrame:
    if not table_exists(conn, table):
        raise WarehouseError(f"table {table!r} does not exist yet: materialize it first")
    clauses = []
    params: list[Any] = []
    if round_key is not None:
        clauses.append("round = ?")
        params.append(round_key)
    if where:
        clauses.append(where)
    sql = f"SELECT * FROM {quote_ident(table)}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return read_frame(conn, sql, params)


def column_schema(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = conn.execute(f"DESCRIBE {quote_ident(table)}").fetchall()
    return {r[0]: r[1] for r in rows}


class WarehouseUnavailable(ArenaError, RuntimeError):
    """No warehouse in the home yet, or one a running writer holds."""


def open_read_only(home: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the home's warehouse, for commands that only look (trace, plots)."""
    path = Path(home) / "warehouse.duckdb"
    if not path.is_file():
        raise WarehouseUnavailable("no warehouse", str(path), "run `arena-dagster flywheel` first, or pass --home")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as error:
        raise WarehouseUnavailable(
            "the warehouse cannot be opened for reading", str(path),
            f"a run is writing it; retry when it finishes ({str(error).splitlines()[0]})",
        ) from None
