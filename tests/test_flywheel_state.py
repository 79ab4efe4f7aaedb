"""Warehouse writes, the model registry, promotion and battle planning."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from arena_dagster.judging.battles import (
    JudgeItem,
    JudgeResult,
    MissingResponseError,
    judge_battles,
    judge_in_chunks,
    plan_round_robin,
    plan_target_battles,
)
from arena_dagster.promotion import decide_promotion
from arena_dagster.registry import RegistryError, current_target, record_promotion, register_model
from arena_dagster.warehouse import WarehouseError, read_table, write_table


def test_round_writes_are_idempotent_and_keep_other_rounds():
    conn = duckdb.connect(":memory:")
    write_table(conn, "t", pl.DataFrame({"round": [1, 1], "x": ["a", "b"]}), round_key=1)
    write_table(conn, "t", pl.DataFrame({"round": [2], "x": ["c"]}), round_key=2)
    write_table(conn, "t", pl.DataFrame({"round": [1], "x": ["z"]}), round_key=1)
    assert sorted(read_table(conn, "t")["x"].to_list()) == ["c", "z"]
    with pytest.raises(WarehouseError, match="another round"):
        write_table(conn, "t", pl.DataFrame({"round": [3], "x": ["q"]}), round_key=1)


def test_empty_frames_still_create_the_table():
    conn = duckdb.connect(":memory:")
    write_table(conn, "empty", pl.DataFrame(schema={"round": pl.Int64, "x": pl.Utf8}), round_key=4)
    assert read_table(conn, "empty").columns == ["round", "x"]


def test_current_target_is_exactly_the_previous_rounds_gate_decision():
    conn = duckdb.connect(":memory:")
    register_model(conn, model="target-I0", kind="initial", round_key=0, path="/m0", revision="r0")
    register_model(conn, model="DPO-I1", kind="dpo", round_key=1, path="/m1", revision="r1", parent="SFT-I1")
    register_model(conn, model="DPO-I2", kind="dpo", round_key=2, path="/m2", revision="r2", parent="SFT-I2")
    assert current_target(conn, 0)["model"] == "target-I0"
    with pytest.raises(RegistryError, match="round 1 cannot start: the baseline"):
        current_target(conn, 1)
    record_promotion(conn, 0, {"candidate": "target-I0", "incumbent": "target-I0", "promoted": True,
                               "new_target": "target-I0", "reason": "baseline"})
    assert current_target(conn, 1)["model"] == "target-I0"
    record_promotion(conn, 1, {"candidate": "DPO-I1", "incumbent": "target-I0", "promoted": True, "new_target": "DPO-I1", "reason": "x"})
    assert current_target(conn, 2)["model"] == "DPO-I1"
    # Round 3 must not battle round 1's target while round 2's gate is missing (a failed night).
    with pytest.raises(RegistryError, match="round 3 cannot start: round 2's gate decision is not recorded"):
        current_target(conn, 3)
    record_promotion(conn, 2, {"candidate": "DPO-I2", "incumbent": "DPO-I1", "promoted": False, "new_target": "DPO-I1", "reason": "x"})
    assert current_target(conn, 3)["model"] == "DPO-I1"


def arena_battles(candidate_wins: float, prompts: int = 120, seed: int = 0) -> pl.DataFrame:
    """Round-robin battles of cand, inc, c1, c2: cand beats inc on `candidate_wins` of the prompts."""
    import random

    rng = random.Random(seed)
    rows = []
    for k in range(prompts):
        q = f"q{k}"
        rows.append({"model_a": "cand", "model_b": "inc", "winner": "model_a" if rng.random() < candidate_wins else "model_b", "question_id": q})
        for x, y in (("cand", "c1"), ("inc", "c1"), ("cand", "c2"), ("inc", "c2"), ("c1", "c2")):
            rows.append({"model_a": x, "model_b": y, "winner": rng.choice(["model_a", "model_b", "tie"]), "question_id": q})
    return pl.DataFrame(rows)


def test_promotion_gate_promotes_a_clearly_better_candidate():
    decision = decide_promotion(arena_battles(0.8), candidates=["cand"], incumbent="inc", bootstrap=100)
    assert decision["promoted"] is True and decision["new_target"] == "cand"
    assert decision["ci_low"] > 0 and decision["ci_low"] <= decision["diff"] <= decision["ci_high"]
    # The same evidence does not clear a margin above its lower bound.
    strict = decide_promotion(arena_battles(0.8), candidates=["cand"], incumbent="inc", bootstrap=100, margin=decision["ci_low"] + 1)
    assert strict["promoted"] is False and strict["new_target"] == "inc"


def test_promotion_gate_rejects_a_worse_or_indistinguishable_candidate():
    worse = decide_promotion(arena_battles(0.2), candidates=["cand"], incumbent="inc", bootstrap=100)
    assert worse["promoted"] is False and worse["new_target"] == "inc" and worse["ci_high"] < 0
    # Even odds: the point estimate may favour the candidate, the interval straddles zero.
    even = decide_promotion(arena_battles(0.5, seed=3), candidates=["cand"], incumbent="inc", bootstrap=100)
    assert even["ci_low"] < 0 < even["ci_high"] and even["promoted"] is False
    assert "lower bound" in even["reason"]


def test_promotion_gate_baseline_and_bad_input():
    battles = arena_battles(0.5)
    baseline = decide_promotion(battles, candidates=["inc"], incumbent="inc", baseline=True)
    assert baseline["promoted"] is True and baseline["reason"].startswith("baseline")
    with pytest.raises(ValueError, match="no arena battles"):
        decide_promotion(battles, candidates=["missing"], incumbent="inc")
    with pytest.raises(ValueError, match="at least 20"):
        decide_promotion(battles, candidates=["cand"], incumbent="inc", bootstrap=5)


def test_promotions_keep_the_gate_figures():
    conn = duckdb.connect(":memory:")
    decision = decide_promotion(arena_battles(0.8), candidates=["cand"], incumbent="inc", bootstrap=50)
    record_promotion(conn, 1, decision)
    row = conn.execute("SELECT promoted, diff, ci_low, ci_high, margin, gate FROM promotions").fetchone()
    assert row[0] is True and row[1] == pytest.approx(decision["diff"]) and row[2] == pytest.approx(decision["ci_low"])
    assert row[4] == 0.0 and "bootstrap" in row[5]


def test_battle_plans():
    target = plan_target_battles(1, ["p1", "p2"], "T", ["C1", "C2", "T"])
    assert target.height == 4 and set(target["model_y"]) == {"C1", "C2"}
    arena = plan_round_robin(0, ["p1"], ["b", "a", "c", "a"])
    assert arena.height == 3 and target["battle_id"].n_unique() == 4


class ScriptedJudge:
    """Prefers the longer answer, so the test can see which answer sat in which position."""

    name, version = "scripted", "1"

    def __init__(self):
        self.seen: list[JudgeItem] = []

    def judge(self, items):
        self.seen.extend(items)
        return [
            JudgeResult(score_a=min(10, len(i.answer_a)), score_b=min(10, len(i.answer_b)), explanation="len", raw="raw", parse_ok=True)
            for i in items
        ]


def test_judge_battles_plays_both_orders():
    battles = plan_target_battles(1, ["p1"], "T", ["C"])
    responses = pl.DataFrame(
        {"prompt_id": ["p1", "p1"], "model": ["T", "C"], "response_id": ["rt", "rc"], "response": ["ab", "abcdef"]}
    )
    prompts = pl.DataFrame({"prompt_id": ["p1"], "prompt": ["q"], "family": ["f"], "reference": ["r"]})
    judge = ScriptedJudge()
    out = judge_battles(battles, responses, prompts, judge)
    assert [(i.answer_a, i.answer_b) for i in judge.seen] == [("ab", "abcdef"), ("abcdef", "ab")]
    assert out["game"].to_list() == [1, 2]
    assert out["model_a"].to_list() == ["T", "C"] and out["response_a_id"].to_list() == ["rt", "rc"]
    assert out["judgment_id"].n_unique() == 2
    with pytest.raises(MissingResponseError, match="no response of model 'C'"):
        judge_battles(battles, responses.filter(pl.col("model") == "T"), prompts, judge)


def test_judging_in_chunks_judges_what_one_piece_does_reading_only_each_chunks_prompts():
    battles = plan_target_battles(1, ["p1", "p2", "p3"], "T", ["C", "D"])
    responses = pl.DataFrame({"prompt_id": [p for p in ("p1", "p2", "p3") for _ in "TCD"], "model": list("TCD") * 3,
                              "response_id": [f"r{i}" for i in range(9)], "response": ["a" * (i + 1) for i in range(9)]})
    prompts = pl.DataFrame({"prompt_id": ["p1", "p2", "p3"], "prompt": ["q"] * 3, "family": ["f"] * 3, "reference": ["r"] * 3})
    whole = judge_battles(battles, responses, prompts, ScriptedJudge())
    written, asked = [], []

    def inputs(prompt_ids):
        asked.append(prompt_ids)
        return (responses.filter(pl.col("prompt_id").is_in(prompt_ids)), prompts.filter(pl.col("prompt_id").is_in(prompt_ids)))

    counts = judge_in_chunks(battles, inputs, ScriptedJudge(), written.append, chunk_battles=4)
    assert [frame.height for frame in written] == [8, 4] and asked == [["p1", "p2"], ["p3"]]
    assert pl.concat(written).equals(whole) and counts == {"games": 12, "parse_failures": 0}


def test_a_home_made_by_older_code_gains_the_new_columns():
    conn = duckdb.connect(":memory:")
    write_table(conn, "leaderboard", pl.DataFrame({"round": [1], "model": ["a"]}), round_key=1)
    write_table(conn, "leaderboard", pl.DataFrame({"round": [2], "model": ["b"], "unbounded": [True]}), round_key=2)
    rows = read_table(conn, "leaderboard").sort("round").to_dicts()
    assert rows == [{"round": 1, "model": "a", "unbounded": None}, {"round": 2, "model": "b", "unbounded": True}]
