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


def test_current_target_follows_promotions():
    conn = duckdb.connect(":memory:")
    with pytest.raises(RegistryError):
        current_target(conn, 1)
    register_model(conn, model="target-I0", kind="initial", round_key=0, path="/m0", revision="r0")
    register_model(conn, model="DPO-I1", kind="dpo", round_key=1, path="/m1", revision="r1", parent="SFT-I1")
    register_model(conn, model="DPO-I2", kind="dpo", round_key=2, path="/m2", revision="r2", parent="SFT-I2")
    assert current_target(conn, 1)["model"] == "target-I0"
    record_promotion(conn, 1, {"candidate": "DPO-I1", "incumbent": "target-I0", "promoted": True, "new_target": "DPO-I1", "reason": "x"})
    record_promotion(conn, 2, {"candidate": "DPO-I2", "incumbent": "DPO-I1", "promoted": False, "new_target": "DPO-I1", "reason": "x"})
    assert current_target(conn, 2)["model"] == "DPO-I1"
    assert current_target(conn, 3)["model"] == "DPO-I1"


def test_promotion_gate():
    board = pl.DataFrame({"model": ["new", "old", "c"], "rating": [1050.0, 1000.0, 990.0]})
    assert decide_promotion(board, candidate="new", incumbent="old")["promoted"] is True
    assert decide_promotion(board, candidate="new", incumbent="old", margin=60)["new_target"] == "old"
    assert decide_promotion(board, candidate="c", incumbent="old")["promoted"] is False
    with pytest.raises(ValueError, match="not on the leaderboard"):
        decide_promotion(board, candidate="missing", incumbent="old")


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
