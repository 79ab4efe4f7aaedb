"""Big tables as Parquet shards under the home (arena_dagster/shards.py): atomic shards and round swaps,
copied homes, empty rounds, schema evolution, homes built before shards, damaged shards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import polars as pl
import pytest

from arena_dagster import shards
from arena_dagster.paths import UnsafePathError
from arena_dagster.warehouse import (
    WAREHOUSE,
    open_readonly,
    read_table,
    table_fingerprints,
    write_table,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {"round": pl.Int64, "id": pl.Utf8, "v": pl.Int64}
OLD = pl.DataFrame({"round": [1, 1], "id": ["a", "b"], "v": [1, 2]}, schema=SCHEMA)
NEW = pl.DataFrame({"round": [1, 1, 1], "id": ["x", "y", "z"], "v": [7, 8, 9]}, schema=SCHEMA)


def connect(home: Path) -> duckdb.DuckDBPyConnection:
    home.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(home / WAREHOUSE), config=shards.connection_config(home))


def write_round(home: Path, table: str, round_key: int, *frames: pl.DataFrame, schema=SCHEMA) -> int:
    with connect(home) as conn, shards.RoundWriter(home, table, round_key, schema) as writer:
        for frame in frames:
            writer.write(frame)
        return writer.commit(conn)


def rows(home: Path, table: str = "t") -> list[tuple]:
    with open_readonly(home) as conn:
        return sorted(read_table(conn, table).rows())


def hidden_leftovers(home: Path, table: str = "t") -> list[str]:
    root = home / "tables" / table
    linked = {p.readlink().name for p in root.glob("round=*")}
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and p.name not in linked)


def test_rounds_are_shards_under_the_home_read_through_a_view(tmp_path):
    assert write_round(tmp_path, "t", 1, OLD[:1], OLD[1:]) == 2
    assert write_round(tmp_path, "t", 2, OLD.with_columns(pl.lit(2, dtype=pl.Int64).alias("round"))) == 2
    root = tmp_path / "tables" / "t"
    assert (root / "round=1").is_symlink() and sorted(p.name for p in (root / "round=1").iterdir()) == [
        "_manifest.json", "part-00000.parquet", "part-00001.parquet"]
    assert rows(tmp_path) == sorted(OLD.rows() + [(2, "a", 1), (2, "b", 2)])
    with open_readonly(tmp_path) as conn:
        assert shards.shard_views(conn) == ["t"]
        assert [r[:2] for r in conn.execute("DESCRIBE t").fetchall()] == [("round", "BIGINT"), ("id", "VARCHAR"),
                                                                          ("v", "BIGINT")]
        assert table_fingerprints(conn)["t"].startswith("4:")
    # A rewrite of round 1 replaces it whole, leaves round 2 alone and no old version behind.
    write_round(tmp_path, "t", 1, NEW)
    assert rows(tmp_path) == sorted(NEW.rows() + [(2, "a", 1), (2, "b", 2)])
    assert hidden_leftovers(tmp_path) == []


def test_fingerprints_of_a_shard_view_equal_those_of_the_same_rows_in_a_table(tmp_path):
    table_home, shard_home = tmp_path / "table", tmp_path / "shards"
    table_home.mkdir()
    with duckdb.connect(str(table_home / WAREHOUSE)) as conn:
        write_table(conn, "t", OLD, round_key=1)
        expected = table_fingerprints(conn)
    write_round(shard_home, "t", 1, OLD[1:], OLD[:1])
    with open_readonly(shard_home) as conn:
        assert table_fingerprints(conn) == expected


def test_an_empty_round_is_a_zero_row_shard_with_the_schema(tmp_path):
    assert write_round(tmp_path, "t", 1) == 0
    with open_readonly(tmp_path) as conn:
        assert read_table(conn, "t").schema == pl.Schema(SCHEMA)
        assert read_table(conn, "t").height == 0


def test_newer_columns_read_as_null_in_older_rounds(tmp_path):
    write_round(tmp_path, "t", 1, OLD)
    newer = {**SCHEMA, "w": pl.Utf8}
    write_round(tmp_path, "t", 2, pl.DataFrame({"round": [2], "id": ["n"], "v": [3], "w": ["new"]}, schema=newer),
                schema=newer)
    with open_readonly(tmp_path) as conn:
        frame = read_table(conn, "t").sort("round", "id")
    assert frame.columns == ["round", "id", "v", "w"]
    assert frame["w"].to_list() == [None, None, "new"]


def test_a_round_of_another_round_key_is_refused(tmp_path):
    with shards.RoundWriter(tmp_path, "t", 2, SCHEMA) as writer, pytest.raises(shards.ShardError, match="another round"):
        writer.write(OLD)
    assert not list((tmp_path / "tables" / "t").glob(".round=2.*"))  # what it wrote went with it


def test_a_table_name_cannot_lead_outside_the_home(tmp_path):
    with pytest.raises(UnsafePathError):
        shards.RoundWriter(tmp_path, "../escape", 1, SCHEMA)


def test_a_copied_home_reads_its_own_shards(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    write_round(original, "t", 1, OLD)
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    write_round(copy, "t", 1, NEW)
    assert rows(original) == sorted(OLD.rows())
    assert rows(copy) == sorted(NEW.rows())
    shutil.rmtree(original)
    assert rows(copy) == sorted(NEW.rows())
    # A connection that does not say which home it reads is refused, whatever its working directory.
    with duckdb.connect(str(copy / WAREHOUSE), read_only=True) as raw, pytest.raises(duckdb.Error, match="file_search_path"):
        raw.execute("SELECT * FROM t").fetchall()


def test_a_copy_that_followed_the_links_still_takes_new_rounds(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    write_round(original, "t", 1, OLD)
    shutil.copytree(original, copy)  # symlinks=False: round=1 becomes a plain folder
    assert not (copy / "tables" / "t" / "round=1").is_symlink()
    write_round(copy, "t", 1, NEW)
    assert rows(copy) == sorted(NEW.rows()) and hidden_leftovers(copy) == []


def test_a_home_built_before_shards_moves_its_table_into_shards(tmp_path):
    with duckdb.connect(str(tmp_path / WAREHOUSE)) as conn:
        write_table(conn, "t", OLD, round_key=1)
        write_table(conn, "t", OLD.with_columns(pl.lit(2, dtype=pl.Int64).alias("round")), round_key=2)
        before = table_fingerprints(conn, through_round=1)
    write_round(tmp_path, "t", 2, NEW.with_columns(pl.lit(2, dtype=pl.Int64).alias("round")))
    with open_readonly(tmp_path) as conn:
        assert shards.shard_views(conn) == ["t"]
        assert table_fingerprints(conn, through_round=1) == before
        assert sorted(read_table(conn, "t", round_key=1).rows()) == sorted(OLD.rows())
        assert read_table(conn, "t", round_key=2)["id"].sort().to_list() == ["x", "y", "z"]


def test_a_missing_or_damaged_shard_is_named(tmp_path):
    write_round(tmp_path, "t", 1, OLD[:1], OLD[1:])
    shard = tmp_path / "tables" / "t" / "round=1" / "part-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(shards.ShardError, match="damaged") as damaged, open_readonly(tmp_path):
        pass
    assert str(shard) in str(damaged.value) and "materialize t for round 1 again" in str(damaged.value)
    shard.unlink()
    with connect(tmp_path) as conn, pytest.raises(shards.ShardError, match="missing") as missing:
        read_table(conn, "t")  # a step of a run reads it: the step fails naming the file
    assert str(shard) in str(missing.value)
    write_round(tmp_path, "t", 1, OLD)  # a rerun of the round rebuilds it
    assert rows(tmp_path) == sorted(OLD.rows())


# Where a writer is killed (-9) while replacing round 1: the n-th call of a step, and which round
# the home then holds. Every kill leaves the old round or the new one whole, never a mix or nothing.
_KILLS = [
    ("write_parquet", 2, "old"),    # the second shard half-written (a .tmp file)
    ("replace", 1, "old"),          # the first shard written, not yet renamed
    ("replace", 3, "old"),          # every shard there, the manifest not yet renamed
    ("symlink", 1, "old"),          # the new version complete, its link not yet made
    ("replace", 4, "old"),          # the new link made, not yet swapped in
    ("remove_tree", 1, "new"),      # swapped in, the old version not yet deleted
    ("publish_view", 1, "new"),     # the files done, the view not yet (re)created
]

_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import duckdb, polars as pl
    from arena_dagster import shards
    home, step, nth = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    schema = {"round": pl.Int64, "id": pl.Utf8, "v": pl.Int64}
    new = pl.DataFrame({"round": [1, 1, 1], "id": ["x", "y", "z"], "v": [7, 8, 9]}, schema=schema)
    targets = {"write_parquet": (pl.DataFrame, "write_parquet"), "replace": (os, "replace"),
               "symlink": (os, "symlink"), "remove_tree": (shards, "remove_tree"),
               "publish_view": (shards, "publish_view")}
    owner, name = targets[step]
    real, calls = getattr(owner, name), [0]
    def killed(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            if step == "write_parquet":  # a shard half-written when the kill comes
                Path(args[1]).write_bytes(b"PAR1 half a shard")
            os._exit(9)
        return real(*args, **kwargs)
    setattr(owner, name, killed)
    with duckdb.connect(str(home / "warehouse.duckdb"), config=shards.connection_config(home)) as conn:
        with shards.RoundWriter(home, "t", 1, schema) as writer:
            writer.write(new[:2])
            writer.write(new[2:])
            writer.commit(conn)
""")


@pytest.mark.parametrize("step,nth,holds", _KILLS)
def test_a_writer_killed_while_replacing_a_round_leaves_the_old_or_the_new_round_whole(tmp_path, step, nth, holds):
    write_round(tmp_path, "t", 1, OLD)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), step, str(nth)], cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert rows(tmp_path) == sorted((OLD if holds == "old" else NEW).rows())
    write_round(tmp_path, "t", 1, NEW)  # the rerun of the round
    assert rows(tmp_path) == sorted(NEW.rows()) and hidden_leftovers(tmp_path) == []


def test_an_interrupt_right_after_the_swap_keeps_the_new_round(tmp_path, monkeypatch):
    """A cancel (Dagster raises it inside the step) that lands between the link's rename and the writer's own
    bookkeeping: the link already names the new version, so leaving the block must not delete it."""
    write_round(tmp_path, "t", 1, OLD)
    real_replace = os.replace

    def replace_then_interrupt(source, target):
        real_replace(source, target)
        if Path(target).name == "round=1":
            raise KeyboardInterrupt

    monkeypatch.setattr(shards.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_round(tmp_path, "t", 1, NEW)
    monkeypatch.setattr(shards.os, "replace", real_replace)
    assert rows(tmp_path) == sorted(NEW.rows())
    write_round(tmp_path, "t", 1, NEW)  # the next write clears what the interrupted one left
    assert rows(tmp_path) == sorted(NEW.rows()) and hidden_leftovers(tmp_path) == []


def test_a_round_written_while_a_migration_was_interrupted_keeps_its_new_rows(tmp_path, monkeypatch):
    """Killed after the new round is linked but before the old table is dropped: the next write migrates the
    table's other rounds, never the stale copy of the round already linked."""
    def round_of(key: int, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.lit(key, dtype=pl.Int64).alias("round"))

    with duckdb.connect(str(tmp_path / WAREHOUSE)) as conn:
        write_table(conn, "t", OLD, round_key=1)
        write_table(conn, "t", round_of(2, OLD), round_key=2)

    def interrupted(conn, table):
        raise KeyboardInterrupt

    real_publish = shards.publish_view
    monkeypatch.setattr(shards, "publish_view", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_round(tmp_path, "t", 2, round_of(2, NEW))
    monkeypatch.setattr(shards, "publish_view", real_publish)
    write_round(tmp_path, "t", 3, round_of(3, OLD))
    with open_readonly(tmp_path) as conn:
        assert read_table(conn, "t", round_key=2)["id"].sort().to_list() == ["x", "y", "z"]
        assert sorted(read_table(conn, "t", round_key=1).rows()) == sorted(OLD.rows())
