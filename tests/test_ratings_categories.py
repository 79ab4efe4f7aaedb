"""Per-category leaderboards: from imported MT-Bench-style judgments with a question file (the
command), the gate's no-regression rule, and the boards a home's leaderboard asset stores."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from arena_dagster.promotion import PromotionError, decide_promotion
from arena_dagster.commands import leaderboard as cli
from arena_dagster.ratings import rate
from arena_dagster.ratings.categories import categories_of_testset, read_question_categories, with_categories

REPO = Path(__file__).resolve().parents[1]
MT_BENCH_QUESTIONS = REPO.parent / "shared" / "data" / "mt-bench" / "question.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def mt_bench_pairs(questions: list[dict], seed: int = 0) -> list[dict]:
    """FastChat pairwise judgments of three models on every question and turn: a beats b beats c,
    except in `math`, where c is strongest."""
    rng = np.random.default_rng(seed)
    strength = {"a": 1.0, "b": 0.3, "c": -0.5}
    rows = []
    for question in questions:
        for (m1, m2), turn in itertools.product(itertools.combinations("abc", 2), (1, 2)):
            gap = strength[m1] - strength[m2]
            gap = -3 * gap if question["category"] == "math" else gap
            p = 1 / (1 + math.exp(-gap))
            verdict = rng.choice(["model_1", "model_2", "tie"], p=[0.85 * p, 0.85 * (1 - p), 0.15])
            rows.append({"question_id": question["question_id"], "model_1": m1, "model_2": m2, "g1_winner": verdict,
                         "g2_winner": verdict, "turn": turn, "judge": ["gpt-4", "pair-v2"]})
    return rows


def parser():
    p = argparse.ArgumentParser(prog="arena-dagster leaderboard")
    p.add_argument("--json", action="store_true")
    cli.add_arguments(p)
    return p


@pytest.fixture()
def judged(tmp_path):
    questions = [{"question_id": 81 + k, "category": ["writing", "math", "coding"][k % 3], "turns": ["?"]}
                 for k in range(30)]
    question_file = write_jsonl(tmp_path / "question.jsonl", [
        *questions,
        {"question_id": 200, "turns": ["no category"]},
        {"question_id": 81, "category": "roleplay"},  # listed again with another category: the first is kept
        "{not json",
    ])
    extra = [{"question_id": 999, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_1",
              "turn": 1}]  # a question the file does not list
    judgments = write_jsonl(tmp_path / "gpt-4_pair.jsonl", mt_bench_pairs(questions) + extra)
    return judgments, question_file


def test_command_prints_one_board_per_question_category(judged, capsys):
    judgments, question_file = judged
    args = ["--battles", str(judgments), "--input-format", "mt-bench-pair", "--by", "category",
            "--questions", str(question_file), "--bootstrap", "20"]
    assert cli.run(parser().parse_args([*args, "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["by_category"]) == ["coding", "math", "writing"]
    assert report["by_category_battles"] == {"coding": 60, "math": 60, "writing": 60}
    assert report["uncategorized_battles"] == 1
    assert report["questions_rejected"] == {"conflicting_category": 1, "invalid_json": 1, "missing_category": 1}
    # each board is the board of that category's battles alone, with the same options
    categories, _ = read_question_categories(question_file)
    from arena_dagster.ratings.judgments import read_mt_bench_pairs

    battles, _ = with_categories(read_mt_bench_pairs(judgments)[0], categories)
    math_board = rate(battles.filter(pl.col("category") == "math"), bootstrap=20)
    assert report["by_category"]["math"] == json.loads(json.dumps(math_board.board.to_dicts()))
    assert [row["model"] for row in report["by_category"]["math"]] == ["c", "b", "a"]
    assert report["by_category"]["writing"][0]["model"] == "a"
    assert cli.run(parser().parse_args(args)) == 0
    text = capsys.readouterr().out
    assert "category math (60 battles)" in text and "1 battle(s) have no category" in text


def test_by_category_bad_inputs_are_one_line_errors(judged, tmp_path, capsys):
    judgments, question_file = judged
    base = ["--battles", str(judgments), "--input-format", "mt-bench-pair", "--bootstrap", "0"]
    unrelated = write_jsonl(tmp_path / "other.jsonl", [{"question_id": "x1", "category": "writing"}])
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"question_id": 81}])
    cases = {
        (*base, "--by", "category"): "--by category needs each battle's category and these battles carry none",
        (*base, "--questions", str(question_file)): "--questions does not apply without --by category",
        (*base, "--by", "category", "--questions", str(unrelated)): "none of the 181 battles' question_ids is in",
        (*base, "--by", "category", "--questions", str(empty)): "no question with a category in",
    }
    for argv, message in cases.items():
        assert cli.run(parser().parse_args(argv)) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("arena-dagster: ") and message in err[0], err
    from arena_dagster.ratings.errors import RatingsError
    from arena_dagster.ratings.home_categories import print_home_categories

    with pytest.raises(RatingsError, match="--plot does not apply to --by category"):
        print_home_categories(tmp_path, False, "out.png")


@pytest.mark.skipif(not MT_BENCH_QUESTIONS.is_file(), reason=f"shared data absent: needs {MT_BENCH_QUESTIONS}")
def test_real_mt_bench_question_file_gives_its_eight_categories(tmp_path, capsys):
    questions = [json.loads(line) for line in MT_BENCH_QUESTIONS.read_text().splitlines()]
    judgments = write_jsonl(tmp_path / "gpt-4_pair.jsonl", mt_bench_pairs(questions))
    command = [sys.executable, "-m", "arena_dagster.cli", "leaderboard", "--battles", str(judgments), "--input-format",
               "mt-bench-pair", "--by", "category", "--questions", str(MT_BENCH_QUESTIONS), "--ci", "sandwich",
               "--bootstrap-unit", "prompt", "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(report["by_category"]) == ["coding", "extraction", "humanities", "math", "reasoning", "roleplay",
                                             "stem", "writing"]
    assert all(len(rows) == 3 for rows in report["by_category"].values())
    assert report["by_category"]["math"][0]["model"] == "c" and report["models"][0]["model"] == "a"
    assert "uncategorized_battles" not in report and report["ci"] == "sandwich"


def test_categories_of_testset_are_families_else_clusters():
    skills = pl.DataFrame({"prompt_id": ["p1", "p2", "p3"], "family": ["add", "add", ""]})
    assert categories_of_testset(skills) == {"p1": "add", "p2": "add"}
    clustered = pl.DataFrame({"prompt_id": ["p1", "p2"], "family": ["", None], "cluster": [0, 3]})
    assert categories_of_testset(clustered) == {"p1": "cluster 0", "p2": "cluster 3"}


# --- the gate: no regression in a category ------------------------------------------------


def skills_arena(right_share: dict[str, dict[str, float]], prompts: int, seed: int) -> pl.DataFrame:
    """Battles of models answering each prompt of each category right (with that category's
    share) or wrong; right beats wrong, equal answers tie."""
    rng = np.random.default_rng(seed)
    frames = []
    for category in next(iter(right_share.values())):
        ids = [f"{category}-{k}" for k in range(prompts)]
        right = {model: rng.random(prompts) < shares[category] for model, shares in right_share.items()}
        for a, b in itertools.combinations(right_share, 2):
            winner = np.where(right[a] == right[b], "tie", np.where(right[a], "model_a", "model_b"))
            frames.append(pl.DataFrame({"model_a": a, "model_b": b, "winner": winner, "question_id": ids,
                                        "category": category}))
    return pl.concat(frames)


def test_gate_refuses_a_candidate_that_loses_significantly_in_a_category():
    battles = skills_arena({"target": {"add": 0.5, "acronym": 0.9, "sort": 0.3},
                            "SFT-I1": {"add": 0.95, "acronym": 0.3, "sort": 0.95},
                            "rival": {"add": 0.5, "acronym": 0.5, "sort": 0.5}}, prompts=80, seed=0)
    options = dict(incumbent="target", candidates=["SFT-I1"], rule="last", bootstrap=100)
    plain = decide_promotion(battles, **options)
    assert plain["promoted"] and "categories" not in plain
    guarded = decide_promotion(battles, **options, no_regression=["acronym", "add"])
    assert not guarded["promoted"] and guarded["new_target"] == "target"
    by_category = {row["category"]: row for row in guarded["categories"]}
    assert by_category["acronym"]["ci_high"] < 0 < by_category["add"]["ci_low"]
    assert "loses significantly in acronym" in guarded["reason"]
    sandwich = decide_promotion(battles, **options, no_regression=["acronym"], ci="sandwich")
    assert not sandwich["promoted"] and sandwich["ci_method"] == "sandwich" and "sandwich" in sandwich["gate"]
    with pytest.raises(PromotionError, match=r"categories without arena battles: \['acronyms'\]"):
        decide_promotion(battles, **options, no_regression=["acronyms"])


# --- a home's leaderboard asset ------------------------------------------------------------


def test_home_leaderboard_stores_one_board_per_task_family(smoke_home, tmp_path):
    import dagster as dg

    from arena_dagster.defs import build_definitions
    from arena_dagster.defs.evaluation import leaderboard
    from arena_dagster.warehouse import open_readonly, read_table

    home = tmp_path / "home"
    shutil.copytree(smoke_home, home, symlinks=True)
    command = [sys.executable, "-m", "arena_dagster.cli", "leaderboard", "--home", str(home), "--by", "category"]
    env = {"PYTHONPATH": str(REPO), "PATH": "", "HF_HUB_OFFLINE": "1"}
    before = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if before.returncode == 2:  # a home built before per-category boards: a one-line refusal
        assert before.stderr.count("\n") == 1 and "leaderboard_by_category is absent" in before.stderr
    defs = build_definitions(home)
    result = dg.materialize([leaderboard], partition_key="2", instance=dg.DagsterInstance.from_config(str(home / "dagster")),
                            resources=defs.resources)
    assert result.success
    metadata = result.asset_materializations_for_node("leaderboard")[0].metadata
    with open_readonly(home) as conn:
        families = sorted(read_table(conn, "arena_testset")["family"].unique().to_list())
        models = read_table(conn, "leaderboard", round_key=2)["model"].to_list()
    assert metadata["categories"].value == len(families)
    table = metadata["leaderboard_by_category"].value
    assert sorted({record.data["category"] for record in table.records}) == families
    done = subprocess.run([*command, "--json"], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    by_category = json.loads(done.stdout)["by_category"]
    assert sorted(by_category) == families
    for rows in by_category.values():
        assert sorted(row["model"] for row in rows if row["round"] == 2) == sorted(models)
    text = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env).stdout
    assert f"category {families[0]}" in text


def _home_with_profile(smoke_home: Path, tmp_path: Path, settings: str) -> Path:
    home = tmp_path / "home"
    shutil.copytree(smoke_home, home, symlinks=True)
    profile = home / "changed.yaml"
    profile.write_text(f"extends: skills_smoke\nname: changed\n{settings}")
    record = json.loads((home / "arena.json").read_text())
    (home / "arena.json").write_text(json.dumps({**record, "profile": str(profile)}))
    return home


def test_the_gate_asset_checks_every_named_family_with_sandwich_intervals(smoke_home, tmp_path):
    import dagster as dg
    import duckdb

    from arena_dagster.defs import build_definitions
    from arena_dagster.defs.gate import promotion_gate

    home = _home_with_profile(smoke_home, tmp_path, "evaluation: {ci: sandwich}\npromotion: {no_regression: [add, acronym]}\n")
    defs = build_definitions(home)
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    result = dg.materialize([promotion_gate], partition_key="2", instance=instance, resources=defs.resources)
    assert result.success
    with duckdb.connect(str(home / "warehouse.duckdb")) as conn:
        ci_method, categories, reason = conn.execute(
            "SELECT ci_method, categories, reason FROM promotions WHERE round = 2").fetchone()
    assert ci_method == "sandwich"
    assert [row["category"] for row in json.loads(categories)] == ["add", "acronym"]
    for row in json.loads(categories):  # a family whose prompts all fell in the selection part is not measured
        assert (row["diff"] is not None and row["ci_low"] <= row["diff"] <= row["ci_high"]) or (
            row["battles"] == 0 and row["reason"] and row["category"] in reason.split("not measured in ")[1])
    [metadata] = [event.materialization.metadata for event in result.get_asset_materialization_events()
                  if event.materialization.asset_key == dg.AssetKey("target_model")]
    assert [row["category"] for row in metadata["no_regression"].value] == ["add", "acronym"]

    typo = _home_with_profile(smoke_home, tmp_path / "typo", "promotion: {no_regression: [adding]}\n")
    failed = dg.materialize([promotion_gate], partition_key="2", resources=build_definitions(typo).resources,
                            instance=dg.DagsterInstance.from_config(str(typo / "dagster")), raise_on_error=False)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "promotion.no_regression names categories without arena battles: ['adding']" in str(failure.event_specific_data.error)
