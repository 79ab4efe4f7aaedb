"""Consistency with a human leaderboard as the Arena Learning paper measures it: the arena-bench
grades against the human Chatbot Arena (the command), the share of pairs in the same order, and
the asset check on a home's baseline leaderboard when the profile names a reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from arena_dagster.ratings import alignment

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ARENA = SHARED / "arena-bench-v1"
HUMAN = SHARED / "human-arena-bt-2024-03-29.csv"


def test_pairs_in_the_same_order_counts_every_pair():
    ours = pl.DataFrame({"model": ["a", "b", "c", "d"], "rating": [4.0, 3.0, 2.0, 2.0]})
    reference = pl.DataFrame({"model": ["a", "b", "c", "d"], "rating": [3.0, 4.0, 1.0, 1.0]})
    # a-b swapped; c-d equal on both (the same order); the other four pairs agree
    assert alignment(ours, reference)["pairs_same_order"] == pytest.approx(5 / 6)


@pytest.mark.skipif(not (ARENA / "model_judgment").is_dir() or not HUMAN.is_file(),
                    reason=f"shared data absent: needs {ARENA}/model_judgment and {HUMAN}")
@pytest.mark.parametrize("ci", ["bootstrap", "sandwich"])
def test_arena_bench_grades_against_the_human_arena(ci):
    command = [sys.executable, "-m", "arena_dagster.cli", "leaderboard", "--battles",
               *map(str, sorted((ARENA / "model_judgment").glob("*.jsonl"))), "--input-format", "grades",
               "--rename", str(ARENA / "model_names.csv"), "--reference", str(HUMAN), "--bootstrap-unit", "prompt",
               "--ci", ci, "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["alignment"]
    assert result["n_common"] == 11
    assert result["spearman"] == pytest.approx(0.781818, abs=1e-6)
    assert result["kendall"] == pytest.approx(0.6)
    assert result["pairs_same_order"] == pytest.approx(44 / 55)  # no ties: (1 + kendall) / 2
    assert result["agreement_ci"] == pytest.approx(43 / 51)  # of the 51 pairs humans separate
    assert result["separability"] == pytest.approx(41 / 55)  # the same with either interval


def _home_with_reference(smoke_home: Path, tmp_path: Path, reference: str) -> Path:
    home = tmp_path / "home"
    shutil.copytree(smoke_home, home, symlinks=True)
    (home / "reference.csv").write_text(reference)
    profile = home / "with-reference.yaml"
    profile.write_text("extends: skills_smoke\nname: with-reference\nevaluation:\n  reference: reference.csv\n")
    record = json.loads((home / "arena.json").read_text())
    (home / "arena.json").write_text(json.dumps({**record, "profile": str(profile)}))
    return home


def _reference_check(home: Path):
    from arena_dagster.defs import build_definitions

    return [c for c in build_definitions(home).asset_checks
            if any(key.name == "agreement_with_reference" for key in c.check_keys)]


def test_baseline_leaderboard_check_against_a_configured_reference(smoke_home, tmp_path):
    from arena_dagster.defs.resources import warehouse_resource

    assert _reference_check(smoke_home) == []  # no reference configured: no check
    home = _home_with_reference(smoke_home, tmp_path, "model,rating,rating_q025,rating_q975\n"
                                "letters,1100,1090,1110\nnumbers,1000,990,1010\ntarget-I0,900,890,910\n,5,4,6\n")
    [check] = _reference_check(home)
    [key] = check.check_keys
    assert key.asset_key.path == ["baseline_leaderboard"]
    result = check(duckdb=warehouse_resource(home))
    assert result.passed and "over 3 models in common" in result.description
    figures = {name: value.value for name, value in result.metadata.items() if name != "reference_rejected"}
    assert set(figures) == {"spearman", "kendall", "pairs_same_order", "agreement_ci", "separability", "n_common"}
    assert result.metadata["reference_rejected"].value == {"missing_model": 1}
    (home / "reference.csv").write_text("model,rating\ngpt-4,1250\nclaude-1,1150\n")
    failed = check(duckdb=warehouse_resource(home))
    assert not failed.passed and "only 0 model(s) in common" in failed.description
