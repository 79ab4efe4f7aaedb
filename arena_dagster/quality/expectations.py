"""What every warehouse table promises; each line becomes asset checks in the Dagster layer."""

from __future__ import annotations

from arena_dagster.quality.table_checks import TableExpectation
from arena_dagster.training.schedule import STAGES

SCORE = (1, 10)

# Judge health limits per stage and round: past a `block` limit the stage's training does not
# run; past a `warn` limit the check warns. A profile may move the limits (`judge_health:`
# {block: {...}, warn: {...}}), not add columns. A well-behaved judge flips the two games
# rarely, favours neither position nor the longer answer, and decides most battles.
JUDGE_HEALTH_LIMITS: dict[str, dict[str, tuple[float, float]]] = {
    "block": {"parse_failure_rate": (0.0, 0.1), "flip_rate": (0.0, 0.6), "first_position_win_rate": (0.1, 0.9)},
    "warn": {
        "flip_rate": (0.0, 0.35),
        "first_position_win_rate": (0.35, 0.65),
        "longer_answer_win_rate": (0.25, 0.75),
        "tie_rate": (0.0, 0.6),
    },
}


def judge_health_expectation(overrides: dict | None = None) -> TableExpectation:
    limits = {level: dict(values) for level, values in JUDGE_HEALTH_LIMITS.items()}
    for level, values in (overrides or {}).items():
        if level not in limits:
            raise ValueError(f"judge_health: unknown level {level!r} (block or warn)")
        for column, bounds in (values or {}).items():
            if column not in limits[level]:
                raise ValueError(f"judge_health.{level}: no limit named {column!r} (known: {sorted(limits[level])})")
            low, high = (float(b) for b in bounds)
            limits[level][column] = (low, high)
    return TableExpectation(key=("judge",), ranges=limits["block"], warn_ranges=limits["warn"], blocking=True)


# The battle tables each training stage has its own copy of (`sft_responses`, `dpo_judgments`, ...).
STAGE_BATTLE_EXPECTATIONS: dict[str, TableExpectation] = {
    "responses": TableExpectation(key=("prompt_id", "model"), not_null=("response_id", "response"), blocking=True),
    "judgments": TableExpectation(
        key=("battle_id", "game"), not_null=("judge", "raw"), ranges={"score_a": SCORE, "score_b": SCORE}, blocking=True
    ),
    "battle_outcomes": TableExpectation(
        key=("battle_id",), not_null=("winner",), ranges={"score_a": SCORE, "score_b": SCORE}, blocking=True
    ),
    "judge_health": judge_health_expectation(),
}

TABLE_EXPECTATIONS: dict[str, TableExpectation] = {
    "raw_prompts": TableExpectation(key=("source_id",), not_null=("prompt",)),
    "arena_testset": TableExpectation(key=("prompt_id",), not_null=("prompt", "subset"), blocking=True),
    "prompt_pool": TableExpectation(key=("prompt_id",), not_null=("prompt", "round"), blocking=True),
    **{f"{stage}_{table}": expectation for stage in STAGES for table, expectation in STAGE_BATTLE_EXPECTATIONS.items()},
    "sft_examples": TableExpectation(
        key=("prompt_id",), not_null=("prompt", "response", "battle_id"), ranges={"winner_score": SCORE}, min_rows=0
    ),
    "dpo_pairs": TableExpectation(
        key=("prompt_id",), not_null=("prompt", "chosen", "rejected", "battle_id"), min_rows=0
    ),
    "reward_pairs": TableExpectation(
        key=("pair_id",), not_null=("prompt", "chosen", "rejected", "battle_id"), min_rows=0
    ),
    "arena_responses": TableExpectation(key=("prompt_id", "model"), not_null=("response_id", "response"), blocking=True),
    "arena_judgments": TableExpectation(
        key=("battle_id", "game"), not_null=("judge", "raw"), ranges={"score_a": SCORE, "score_b": SCORE}, blocking=True
    ),
    "arena_battles": TableExpectation(key=("battle_id",), not_null=("winner",), blocking=True),
    "leaderboard": TableExpectation(key=("model",), not_null=("rating", "ci_low", "ci_high"), blocking=True),
}
