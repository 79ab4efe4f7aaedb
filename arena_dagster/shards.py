"""Big tables as round-partitioned Parquet shards under the home, read through DuckDB views.

A table with one row per prompt x model or per battle (`{stage}_responses`, `{stage}_judgments`,
`arena_responses`, `arena_judgments`) may hold millions of rows a round. The step that makes
one writes it a chunk at a time, each chunk one Parquet file (a shard), and the warehouse holds
a VIEW of the same name over the files: SQL models, checks, trace and readers see a table as before.

Layout under the home:

    tables/<table>/round=<r>                        a relative symbolic link to the round's version
    tables/<table>/.round=<r>.<version>/part-<n>.parquet
    tables/<table>/.round=<r>.<version>/_manifest.json    each shard's name, rows and bytes

Replacing a round never shows half a round and never loses the old one when killed: the new
round is written whole into a fresh hidden version folder (each shard as `.part-<n>.parquet.tmp`,
then renamed, so a shard is there whole or not at all), its manifest last; one rename(2) of a new
link over `round=<r>` then swaps it in (atomic on POSIX, so readers see the old round or the new
one, never neither), and only then is the old version deleted. A version no link names (a write
killed before its swap) is deleted by the next write of that round.

A home is copied or moved whole (`cp -a`), so a view names no absolute path, and a relative path
would resolve against the process's working directory (another home, perhaps). Every connection
this package opens sets DuckDB's `file_search_path` to its home (`connection_config`); a view joins
that setting to its shards' pattern and refuses to run without it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Self

import duckdb
import polars as pl

from arena_dagster.errors import ArenaError
from arena_dagster.paths import check_name, inside, remove_tree

TABLES = "tables"
MANIFEST = "_manifest.json"
# The comment every shard view carries: how the fingerprints and checks tell them from SQL views.
VIEW_COMMENT = "Parquet shards under <home>/tables/"


class ShardError(ArenaError, RuntimeError):
    pass


def connection_config(home: str | os.PathLike[str]) -> dict[str, str]:
    """DuckDB settings of a connection to `home`'s warehouse: its shard views read this home's files."""
    return {"file_search_path": str(Path(home).expanduser().resolve())}


def table_root(home: str | os.PathLike[str], table: str) -> Path:
    return inside(home, Path(home) / TABLES / check_name(table, "table"), "shard folder")


def view_sql(table: str) -> str:
    setting = "current_setting('file_search_path')"
    refuse = (f"error('{table} reads Parquet shards under its home: open the warehouse with file_search_path "
              "set to the home (arena_dagster.shards.connection_config)')")
    pattern = f"/{TABLES}/{check_name(table, 'table')}/round=*/part-*.parquet"
    return (f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM read_parquet('
            f"CASE WHEN {setting} = '' THEN {refuse} ELSE {setting} || '{pattern}' END, "
            "hive_partitioning = false, union_by_name = true)")


def shard_views(conn: duckdb.DuckDBPyConnection) -> list[str]:
    rows = conn.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal AND comment = ? ORDER BY view_name",
                        [VIEW_COMMENT]).fetchall()
    return [r[0] for r in rows]


def _table_type(conn: duckdb.DuckDBPyConnection, table: str) -> str | None:
    row = conn.execute("SELECT table_type FROM information_schema.tables WHERE table_name = ? "
                       "AND table_schema = 'main'", [table]).fetchone()
    return row[0] if row else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RoundWriter:
    """One round of a shard table, written a frame at a time and swapped in whole by `commit`.

    Use it as a context manager: leaving it by an exception before `commit` deletes what it wrote.
    """

    def __init__(self, home: str | os.PathLike[str], table: str, round_key: int,
                 schema: Mapping[str, pl.DataType]) -> None:
        self.home = Path(home).expanduser().resolve()
        self.table, self.round_key, self.schema = table, int(round_key), dict(schema)
        self.root = table_root(self.home, table)
        self.version = inside(self.home, self.root / f".round={self.round_key}.{uuid.uuid4().hex[:12]}", "shard folder")
        self.shards: list[dict[str, int | str]] = []
        self.committed = False

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.committed or not self.version.exists():
            return
        link = self.root / f"round={self.round_key}"
        if link.is_symlink() and os.readlink(link) == self.version.name:
            return  # interrupted after the swap, before the flag: this version is the round now
        remove_tree(self.home, self.version)

    def write(self, frame: pl.DataFrame) -> None:
        """One shard of the round: `.part-<n>.parquet.tmp` written and synced, then renamed."""
        if "round" not in frame.columns:
            frame = frame.with_columns(pl.lit(self.round_key, dtype=pl.Int64).alias("round"))
        stray = frame.filter(pl.col("round") != self.round_key).height
        if stray:
            raise ShardError(f"{self.table}: {stray} rows belong to another round than {self.round_key}")
        self.version.mkdir(parents=True, exist_ok=True)
        name = f"part-{len(self.shards):05d}.parquet"
        final, partial = self.version / name, self.version / f".{name}.tmp"
        frame.write_parquet(partial)
        _fsync(partial)
        os.replace(partial, final)
        self.shards.append({"name": name, "rows": frame.height, "bytes": final.stat().st_size})

    def write_all(self, frames: Iterable[pl.DataFrame]) -> None:
        for frame in frames:
            self.write(frame)

    def commit(self, conn: duckdb.DuckDBPyConnection) -> int:
        """Swap the round in (an empty round is one zero-row shard of `schema`), then the view; returns its rows."""
        _migrate_table(conn, self.home, self.table, self.schema, skip_round=self.round_key)
        self.link()
        publish_view(conn, self.table)
        return self.rows

    def link(self) -> None:
        """The manifest, then the round's link swapped to this version in one rename; then the old version goes."""
        if not self.shards:
            self.write(pl.DataFrame(schema=self.schema))
        manifest = self.version / MANIFEST
        partial = self.version / f".{MANIFEST}.tmp"
        partial.write_text(json.dumps({"table": self.table, "round": self.round_key, "shards": self.shards}))
        _fsync(partial)
        os.replace(partial, manifest)
        link, new_link = self.root / f"round={self.round_key}", self.root / f".round={self.round_key}.link"
        if new_link.is_symlink():
            new_link.unlink()
        os.symlink(self.version.name, new_link)
        if link.exists() and not link.is_symlink():  # a copy that followed the links: set the folder aside
            os.rename(link, self.root / f".round={self.round_key}.{uuid.uuid4().hex[:12]}")
        os.replace(new_link, link)
        self.committed = True
        self._delete_unlinked()

    def _delete_unlinked(self) -> None:
        current = os.readlink(self.root / f"round={self.round_key}")
        for folder in self.root.glob(f".round={self.round_key}.*"):
            if folder.name != current:
                remove_tree(self.home, folder)


def publish_view(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    """The view over the table's shards, replacing the table an older version of the code kept in the file."""
    conn.execute("BEGIN TRANSACTION")
    try:
        if _table_type(conn, table) == "BASE TABLE":
            conn.execute(f'DROP TABLE "{table}"')
        conn.execute(view_sql(table))
        conn.execute(f"COMMENT ON VIEW \"{table}\" IS '{VIEW_COMMENT}'")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def _migrate_table(conn: duckdb.DuckDBPyConnection, home: Path, table: str, schema: Mapping[str, pl.DataType],
                   *, skip_round: int) -> None:
    """A home built before shards keeps the table in the DuckDB file: each of its rounds becomes shards.

    The table is dropped by `publish_view` after every round is linked: killed before that, the
    table still answers and the next write migrates again.
    """
    if _table_type(conn, table) != "BASE TABLE":
        return
    rounds = [r[0] for r in conn.execute(f'SELECT DISTINCT round FROM "{table}" ORDER BY round').fetchall()]
    for round_key in rounds:
        # A round already linked holds what a later write (or an interrupted migration) put there: never overwrite it.
        if round_key == skip_round or (table_root(home, table) / f"round={round_key}").is_symlink():
            continue
        with RoundWriter(home, table, round_key, schema) as writer:
            batches = conn.execute(f'SELECT * FROM "{table}" WHERE round = ?', [round_key]).fetch_record_batch()
            for batch in batches:
                writer.write(pl.from_arrow(batch))
            writer.link()


def check_table(home: str | os.PathLike[str], table: str) -> None:
    """Every shard a round's manifest names is there with the size it was written with; ShardError naming it if not."""
    root = table_root(home, table)
    for link in sorted(root.glob("round=*")):
        round_text = link.name.partition("=")[2]
        fix = (f"materialize {table} for round {round_text} again (the asset's partition {round_text} in the UI): "
               "it rewrites the round's shards from the completion cache")
        manifest = link / MANIFEST
        if not manifest.is_file():
            raise ShardError(f"{table} round {round_text} has no shard manifest", str(manifest), fix)
        for shard in json.loads(manifest.read_text())["shards"]:
            path = link / str(shard["name"])
            if not path.is_file():
                raise ShardError(f"a Parquet shard of {table} round {round_text} is missing", str(path), fix)
            if path.stat().st_size != shard["bytes"]:
                raise ShardError(f"a Parquet shard of {table} round {round_text} is damaged "
                                 f"({path.stat().st_size} bytes, {shard['bytes']} written)", str(path), fix)


def check_view(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    """`check_table` for a shard view of the home this connection reads (no-op for any other table)."""
    if table in shard_views(conn):
        home = conn.execute("SELECT current_setting('file_search_path')").fetchone()[0]
        if home:
            check_table(home, table)
