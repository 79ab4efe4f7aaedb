"""DuckDB warehouse helpers: idempotent per-round writes and reads as polars frames.

Every table that belongs to a flywheel round carries a `round` column; writing a round
replaces exactly that round's rows inside one transaction, so a rerun or a run killed
half-way never duplicates or half-writes a round.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import polars as pl

from arena_dagster.errors import ArenaError
from arena_dagster.locks import describe_holder, writer_lock
from arena_dagster.shards import check_table, check_view, connection_config, shard_views

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

WAREHOUSE = "warehouse.duckdb"  # the file under the home


class WarehouseError(ArenaError, RuntimeError):
    pass


@contextlib.contextmanager
def open_readonly(home: Path, *, timeout_s: float = 15.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to a home's warehouse; while a run writes it, retry, then say who holds it.

    DuckDB lets one process write a file and no other process open it meanwhile, not even to read.
    Its shard views read this home's Parquet files (shards.connection_config), wherever the home was copied.
    """
    path = Path(home) / WAREHOUSE
    if not path.exists():
        raise WarehouseError("no warehouse in this home yet", str(path), "run `arena-dagster flywheel` first")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = duckdb.connect(str(path), read_only=True, config=connection_config(home))
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise WarehouseError("the warehouse cannot be opened", str(path), str(exc).splitlines()[0]) from exc
            if time.monotonic() >= deadline:
                holder = writer_lock(home).holder()
                raise WarehouseError(
                    f"the warehouse is being written by pid {(holder or {}).get('pid', '?')} ({describe_holder(holder)})",
                    str(path), f"retry when that run ends (waited {timeout_s:.0f} s)",
                ) from None
            time.sleep(0.5)
    try:
        for table in shard_views(conn):  # a damaged home says so here, not with fewer rows
            check_table(home, table)
        yield conn
    finally:
        conn.close()


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
            _add_new_columns(conn, table, view)
            conn.execute(f"DELETE FROM {name} WHERE round = ?", [round_key])
            conn.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {view}")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.unregister(view)
    return frame.height


def _add_new_columns(conn: duckdb.DuckDBPyConnection, table: str, source: str) -> None:
    """Columns a newer version of the code writes are added to a home's existing table (older rounds get NULL)."""
    existing = column_schema(conn, table)
    for column, kind, *_ in conn.execute(f"DESCRIBE SELECT * FROM {source}").fetchall():
        if column not in existing:
            conn.execute(f"ALTER TABLE {quote_ident(table)} ADD COLUMN {quote_ident(column)} {kind}")


def read_frame(conn: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] | None = None) -> pl.DataFrame:
    return conn.execute(sql, list(params or [])).pl()


def read_table(
    conn: duckdb.DuckDBPyConnection, table: str, *, round_key: int | None = None, where: str = "",
    where_params: Iterable[Any] = (), columns: str = "*",
) -> pl.DataFrame:
    if not table_exists(conn, table):
        raise WarehouseError(f"table {table!r} does not exist yet: materialize it first")
    check_view(conn, table)
    clauses = []
    params: list[Any] = []
    if round_key is not None:
        clauses.append("round = ?")
        params.append(round_key)
    if where:
        clauses.append(where)
        params.extend(where_params)
    sql = f"SELECT {columns} FROM {quote_ident(table)}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return read_frame(conn, sql, params)


def column_schema(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = conn.execute(f"DESCRIBE {quote_ident(table)}").fetchall()
    return {r[0]: r[1] for r in rows}


# Columns that say when or where a row was made, not what it holds: a resumed run, a rerun or
# another home writes other values there and the same data everywhere else.
VOLATILE_COLUMNS = {
    "registered_at", "decided_at",   # wall-clock times of registry and gate rows
    "cached",                        # responses tables of homes made before it became run metadata (cache_hits)
    "manifest",                      # training manifests carry wall times; revision and dataset_hash carry identity
    "path", "model_path",            # folders under the home
}


def table_fingerprints(
    conn: duckdb.DuckDBPyConnection, *, exclude: set[str] = VOLATILE_COLUMNS, through_round: int | None = None
) -> dict[str, str]:
    """An order-independent hash of every table's rows (volatile columns left out): equal homes, equal hashes.

    Tables are the file's tables and the views over Parquet shards (shards.py), not the SQL views.

    `through_round`: only the rows of rounds up to it in the tables a round partitions (a `round` column),
    so a home built for fewer rounds compares with the first rounds of a longer one.
    """
    import hashlib

    tables = sorted([r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
    ).fetchall()] + shard_views(conn))
    out = {}
    for table in tables:
        schema = column_schema(conn, table)
        columns = [c for c in schema if c not in exclude]
        if not columns:
            continue
        listed = ", ".join(quote_ident(c) for c in columns)
        where = " WHERE round <= ?" if through_round is not None and "round" in schema else ""
        # Hash each row, then combine the sorted row hashes: independent of row order, sensitive to duplicates.
        rows = conn.execute(f"SELECT md5(CAST(ROW({listed}) AS VARCHAR)) AS h FROM {quote_ident(table)}{where} ORDER BY h",
                            [through_round] if where else []).fetchall()
        digest = hashlib.sha256()
        for (row_hash,) in rows:
            digest.update(row_hash.encode())
        out[table] = f"{len(rows)}:{digest.hexdigest()[:16]}"
    return out
