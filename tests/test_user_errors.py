"""Every user error of the command line is one line, `arena-dagster: what (input): fix`, exit 2; --debug shows the traceback."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from arena_dagster import cli
from conftest import REPO, flywheel_env


def _one_line(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("arena-dagster: ") and err.count("\n") == 1, err
    return err


def test_an_unknown_profile_lists_the_known_ones(tmp_path, capsys):
    err = _one_line(capsys, ["flywheel", "--profile", "skils", "--home", str(tmp_path / "h"), "--rounds", "1"])
    assert "unknown profile 'skils'" in err and "skills_smoke" in err
    assert not (tmp_path / "h" / "warehouse.duckdb").exists()


def test_more_rounds_than_the_pool_has_slices(tmp_path, capsys):
    err = _one_line(capsys, ["flywheel", "--profile", "skills_smoke", "--home", str(tmp_path / "h"), "--rounds", "5"])
    assert "slices its prompt pool into 2 rounds" in err and "--rounds 5" in err


def test_a_damaged_warehouse_is_one_line(tmp_path, capsys):
    (tmp_path / "warehouse.duckdb").write_bytes(b"this is not a DuckDB file at all" * 100)
    err = _one_line(capsys, ["leaderboard", "--home", str(tmp_path)])
    assert "warehouse" in err


def test_a_home_without_a_warehouse_is_one_line(tmp_path, capsys):
    err = _one_line(capsys, ["leaderboard", "--home", str(tmp_path)])
    assert "no warehouse in this home yet" in err and "arena-dagster flywheel" in err


def test_a_warehouse_locked_by_a_writer_is_one_line(tmp_path, capsys, monkeypatch):
    from arena_dagster import warehouse

    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "c.execute('CREATE TABLE leaderboard (x INT)'); print('ok', flush=True); time.sleep(60)",
         str(tmp_path / "warehouse.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        original = warehouse.open_readonly
        monkeypatch.setattr(warehouse, "open_readonly", lambda home, timeout_s=15.0: original(home, timeout_s=1))
        err = _one_line(capsys, ["leaderboard", "--home", str(tmp_path)])
        assert "the warehouse is being written by" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_home_that_is_a_file_is_one_line(tmp_path, capsys):
    home = tmp_path / "home"
    home.write_text("not a folder")
    _one_line(capsys, ["flywheel", "--profile", "skills_smoke", "--home", str(home), "--rounds", "1"])


def test_non_utf8_battle_rows_are_counted_not_a_crash(tmp_path, capsys):
    path = tmp_path / "battles.jsonl"
    good = b'{"model_a": "a", "model_b": "b", "winner": "model_a", "question_id": "q1"}\n'
    path.write_bytes(good * 3 + b'{"model_a": "\xff\xfe", "model_b": "b", "winner": "tie"}\n' + good.replace(b"q1", b"q2"))
    assert cli.main(["leaderboard", "--battles", str(path), "--json", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert '"rejected"' in out and "utf" in out.lower()


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "arena_dagster.cli", "--debug", "leaderboard", "--home", str(tmp_path)],
                          cwd=REPO, env=flywheel_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@pytest.mark.parametrize("argv", [["leaderboard", "--battles", "/nonexistent/battles.jsonl"],
                                  ["trace", "SFT-I1", "--home", "/nonexistent/home"]])
def test_missing_inputs_are_one_line(argv, capsys):
    _one_line(capsys, argv)


def test_duckdb_errors_from_anywhere_become_one_line():
    from arena_dagster.user_errors import as_user_error

    error = as_user_error(duckdb.IOException('IO Error: Could not set lock on file "w.duckdb": Conflicting lock'))
    assert error is not None and "locked by another process" in str(error)
    assert as_user_error(KeyError("a bug")) is None  # bugs keep their traceback
