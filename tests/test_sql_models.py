"""The SQL models run in DuckDB on small hand-made tables with known outcomes."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest

from arena_dagster.judging.battles import JUDGMENT_SCHEMA
from arena_dagster.preferences.export import preference_training_rows, sft_training_rows
from arena_dagster.sql_models import SqlModelError, load_models, render, run_model
from arena_dagster.warehouse import read_table, write_table

VARS = {
    "tie_margin": 1.0,
    "sft_min_margin": 2.0,
    "sft_min_winner_score": 9,
    "dpo_min_margin": 2.0,
    "dpo_min_winner_score": 9,
    "rm_min_margin": 2.0,
}
STAGES = ("sft", "dpo", "rl")


def judgment(battle, game, prompt, x, y, score_x, score_y, parse_ok=True):
    a, b = (x, y) if game == 1 else (y, x)
    sa, sb = (score_x, score_y) if game == 1 else (score_y, score_x)
    return {
        "round": 1, "judgment_id": f"{battle}-{game}", "battle_id": battle, "game": game, "prompt_id": prompt,
        "model_x": x, "model_y": y, "model_a": a, "model_b": b,
        "response_a_id": f"{prompt}-{a}", "response_b_id": f"{prompt}-{b}",
        "score_a": sa if parse_ok else None, "score_b": sb if parse_ok else None, "parse_ok": parse_ok,
        "explanation": "", "raw": "raw", "error": "", "attempts": 1, "judge": "verifier", "judge_version": "v1",
    }


@pytest.fixture()
def conn():
    conn = duckdb.connect(":memory:")
    rows = [
        # p1: target T loses clearly to C1 (2 vs 10) and to C2 (2 vs 9): SFT picks C1 (higher score).
        judgment("b1", 1, "p1", "T", "C1", 2, 10), judgment("b1", 2, "p1", "T", "C1", 2, 10),
        judgment("b2", 1, "p1", "T", "C2", 2, 9), judgment("b2", 2, "p1", "T", "C2", 2, 9),
        # p2: the games disagree (position bias): averages 6 vs 6 -> tie, inconsistent.
        judgment("b3", 1, "p2", "T", "C1", 8, 4), judgment("b3", 2, "p2", "T", "C1", 4, 8),
        # p3: T wins by 10 vs 3: a DPO pair with T's answer chosen, no SFT row.
        judgment("b4", 1, "p3", "T", "C1", 10, 3), judgment("b4", 2, "p3", "T", "C1", 10, 3),
        # p4: game 2 failed to parse: the battle is excluded from outcomes.
        judgment("b5", 1, "p4", "T", "C1", 1, 10), judgment("b5", 2, "p4", "T", "C1", 0, 0, parse_ok=False),
        # p5: T loses by 1.5 only (8.5 vs 10 on average): below K=2, no SFT and no DPO row.
        judgment("b6", 1, "p5", "T", "C1", 8, 10), judgment("b6", 2, "p5", "T", "C1", 9, 10),
    ]
    # Every stage battles the same hand-made slice here, so each stage's tables can be checked alike.
    for stage in STAGES:
        write_table(conn, f"{stage}_judgments", pl.DataFrame(rows, schema=JUDGMENT_SCHEMA), round_key=1)
    responses = [
        {"round": 1, "prompt_id": p, "model": m, "response_id": f"{p}-{m}", "response": f"answer of {m} to {p}" + ("!" * (m == "C1"))}
        for p in ("p1", "p2", "p3", "p4", "p5") for m in ("T", "C1", "C2")
    ]
    for stage in STAGES:
        write_table(conn, f"{stage}_responses", pl.DataFrame(responses), round_key=1)
    history = [{"role": "user", "content": "first turn"}, {"role": "assistant", "content": "first answer"}]
    pool = [
        {"prompt_id": p, "prompt": f"prompt {p}", "round": 1,
         "messages": json.dumps([*(history if p == "p1" else []), {"role": "user", "content": f"prompt {p}"}])}
        for p in ("p1", "p2", "p3", "p4", "p5")
    ]
    write_table(conn, "prompt_pool", pl.DataFrame(pool))
    yield conn
    conn.close()


def build(conn, name):
    models = load_models()
    return run_model(conn, models[name], round_key=1, variables=VARS)


def test_refs_are_read_from_the_jinja_ast():
    models = load_models()
    assert models["sft_battle_outcomes"].refs == ("sft_judgments",)
    assert set(models["sft_examples"].refs) == {"sft_battle_outcomes", "prompt_pool", "sft_responses"}
    assert set(models["dpo_pairs"].refs) == {"dpo_battle_outcomes", "prompt_pool", "dpo_responses"}
    assert set(models["reward_pairs"].refs) == {"rl_battle_outcomes", "prompt_pool", "rl_responses"}
    # Groups follow the flywheel's steps: a stage's models are in the stage's group.
    assert (models["sft_examples"].group, models["dpo_pairs"].group, models["rl_battle_outcomes"].group) == ("sft", "dpo", "rl")
    assert dict(models["sft_examples"].columns)["example_id"].startswith("the SFT row's id")
    assert "var" not in models["sft_battle_outcomes"].refs


def test_staged_models_get_one_copy_per_stage():
    models = load_models()
    for table in ("battle_outcomes", "judge_health"):
        assert table not in models
        for stage in STAGES:
            model = models[f"{stage}_{table}"]
            assert model.stage == stage and all(ref.startswith(f"{stage}_") for ref in model.refs)
    sql = render(models["dpo_judge_health"], round_key=1, variables=VARS)
    assert '"dpo_judgments"' in sql and '"sft_judgments"' not in sql


def test_two_game_combination(conn):
    result = build(conn, "sft_battle_outcomes")
    assert result.rows == 5 and result.duplicate_keys == 0
    out = {r["battle_id"]: r for r in read_table(conn, "sft_battle_outcomes", round_key=1).iter_rows(named=True)}
    assert "b5" not in out  # one game unparsed
    assert out["b1"]["winner"] == "model_b" and out["b1"]["winner_model"] == "C1" and out["b1"]["margin"] == 8
    assert out["b3"]["winner"] == "tie" and out["b3"]["inconsistent"] is True
    assert out["b4"]["winner"] == "model_a" and out["b4"]["loser_model"] == "C1"
    assert out["b6"]["score_a"] == 8.5 and out["b6"]["winner"] == "model_b" and out["b6"]["inconsistent"] is False


def test_a_battle_with_an_unparsed_game_is_incomplete_never_a_win(conn):
    """b5: game 1 says C1 beat T 10 to 1, game 2 never parsed. The battle is resolved for neither
    side: in no outcome table, no SFT row, DPO pair or reward pair, and counted by judge health."""
    for stage in STAGES:
        build(conn, f"{stage}_battle_outcomes")
        build(conn, f"{stage}_judge_health")
        outcomes = read_table(conn, f"{stage}_battle_outcomes", round_key=1)
        assert "b5" not in outcomes["battle_id"].to_list()
        assert read_table(conn, f"{stage}_judge_health", round_key=1)["incomplete_battles"].to_list() == [1]
    for table in ("sft_examples", "dpo_pairs", "reward_pairs"):
        build(conn, table)
        rows = read_table(conn, table, round_key=1)
        assert "b5" not in rows["battle_id"].to_list() and "p4" not in rows["prompt_id"].to_list(), table
    # Both games unparsed is one incomplete battle too, not two.
    conn.execute("UPDATE sft_judgments SET parse_ok = false, score_a = NULL, score_b = NULL WHERE battle_id = 'b5'")
    build(conn, "sft_battle_outcomes")
    build(conn, "sft_judge_health")
    assert read_table(conn, "sft_judge_health", round_key=1)["incomplete_battles"].to_list() == [1]


def test_sft_and_dpo_selection_keep_lineage(conn):
    build(conn, "sft_battle_outcomes")
    build(conn, "sft_examples")
    sft = read_table(conn, "sft_examples", round_key=1)
    assert sft["prompt_id"].to_list() == ["p1"]
    row = sft.row(0, named=True)
    assert row["winner_model"] == "C1" and row["response"] == "answer of C1 to p1!"
    assert row["battle_id"] == "b1" and row["judgment_1_id"] == "b1-1" and row["judgment_2_id"] == "b1-2"
    build(conn, "dpo_battle_outcomes")
    build(conn, "dpo_pairs")
    dpo = {r["prompt_id"]: r for r in read_table(conn, "dpo_pairs", round_key=1).iter_rows(named=True)}
    assert set(dpo) == {"p1", "p3"}
    assert dpo["p1"]["chosen_model"] == "C1" and dpo["p1"]["rejected"] == "answer of T to p1"
    assert dpo["p3"]["chosen_model"] == "T" and dpo["p3"]["rejected_model"] == "C1"


def test_rebuilding_a_round_replaces_it(conn):
    build(conn, "sft_battle_outcomes")
    build(conn, "sft_battle_outcomes")
    assert read_table(conn, "sft_battle_outcomes").height == 5


def test_judge_health(conn):
    build(conn, "sft_battle_outcomes")
    build(conn, "sft_judge_health")
    health = read_table(conn, "sft_judge_health", round_key=1).row(0, named=True)
    assert health["judgments"] == 12 and health["battles"] == 5 and health["incomplete_battles"] == 1
    assert health["parse_failure_rate"] == pytest.approx(1 / 12)
    assert health["flip_rate"] == pytest.approx(1 / 5)
    assert health["tie_rate"] == pytest.approx(1 / 5)


def test_missing_upstream_and_missing_var_are_clear_errors():
    models = load_models()
    empty = duckdb.connect(":memory:")
    with pytest.raises(SqlModelError, match="upstream tables missing: sft_judgments"):
        run_model(empty, models["sft_battle_outcomes"], round_key=1, variables=VARS)
    with pytest.raises(SqlModelError, match="tie_margin"):
        render(models["sft_battle_outcomes"], round_key=1, variables={})


def test_reward_pairs_take_every_decided_battle(conn):
    build(conn, "rl_battle_outcomes")
    build(conn, "reward_pairs")
    pairs = read_table(conn, "reward_pairs", round_key=1)
    # b1 (C1 over T), b2 (C2 over T), b4 (T over C1); b3 tie, b5 unparsed, b6 below the margin.
    assert sorted(pairs["battle_id"].to_list()) == ["b1", "b2", "b4"]
    assert pairs["pair_id"].n_unique() == 3
    b2 = pairs.filter(pl.col("battle_id") == "b2").row(0, named=True)
    assert b2["chosen_model"] == "C2" and b2["rejected"] == "answer of T to p1"


def test_training_rows_keep_the_conversation_history(conn):
    build(conn, "sft_battle_outcomes")
    build(conn, "sft_examples")
    (row,) = sft_training_rows(read_table(conn, "sft_examples", round_key=1))
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert row["messages"][0]["content"] == "first turn" and row["messages"][-1]["content"] == "answer of C1 to p1!"
    build(conn, "dpo_battle_outcomes")
    build(conn, "dpo_pairs")
    rows = {r["prompt"][-1]["content"]: r for r in preference_training_rows(read_table(conn, "dpo_pairs", round_key=1))}
    assert len(rows["prompt p1"]["prompt"]) == 3 and len(rows["prompt p3"]["prompt"]) == 1
    assert rows["prompt p3"]["chosen"] == [{"role": "assistant", "content": "answer of T to p3"}]


def test_arena_judge_health_reports_unknown_lengths_as_null(conn):
    """The arena's judge health is the stages' SQL on the arena tables; answers that were not recorded
    (a replay) leave the length bias unknown (NULL), never a guess."""
    models = load_models()
    assert models["arena_judge_health"].refs == ("arena_judgments", "arena_responses", "arena_battles")
    judgments = read_table(conn, "sft_judgments", round_key=1).with_columns(pl.lit(0).alias("round"))
    write_table(conn, "arena_judgments", judgments, round_key=0)
    responses = read_table(conn, "sft_responses", round_key=1).with_columns(
        pl.lit(0).alias("round"), pl.lit(None, dtype=pl.Utf8).alias("response"))
    write_table(conn, "arena_responses", responses, round_key=0)
    for name in ("arena_battles", "arena_judge_health"):
        run_model(conn, models[name], round_key=0, variables=VARS)
    arena = read_table(conn, "arena_judge_health", round_key=0).row(0, named=True)
    build(conn, "sft_battle_outcomes")
    build(conn, "sft_judge_health")
    stage = read_table(conn, "sft_judge_health", round_key=1).row(0, named=True)
    for column in ("judgments", "battles", "incomplete_battles", "parse_failure_rate", "flip_rate", "tie_rate",
                   "first_position_win_rate"):
        assert arena[column] == stage[column], column
    assert stage["longer_answer_win_rate"] is not None and arena["longer_answer_win_rate"] is None
