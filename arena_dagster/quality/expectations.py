"""What every warehouse table promises; each line becomes asset checks in the Dagster layer."""

from __future__ import annotations

from arena_dagster.quality.table_checks import TableExpectation

SCORE = (1, 10)

TABLE_EXPECTATIONS: dict[str, TableExpectation] = {
    "raw_prompts": TableExpectation(key=("source_id",), not_null=("prompt",)),
    "arena_testset": TableExpectation(key=("prompt_id",), not_null=("prompt", "subset"), blocking=True),
    "prompt_pool": TableExpectation(key=("prompt_id",), not_null=("prompt", "round"), blocking=True),
    "responses": TableExpectation(key=("prompt_id", "model"), not_null=("response_id", "response"), blocking=True),
    "judgments": TableExpectation(
        key=("battle_id", "game"), not_null=("judge", "raw"), ranges={"score_a": SCORE, "score_b": SCORE}, blocking=True
    ),
    "battle_outcomes": TableExpectation(
        key=("battle_id",), not_null=("winner",), ranges={"score_a": SCORE, "score_b": SCORE}, blocking=True
    ),
    "judge_health": TableExpectation(key=("judge",), ranges={"parse_failure_rate": (0.0, 0.1)}, blocking=True),
    "sft_examples": TableExpectation(
        key=("prompt_id",), not_null=("prompt", "response", "battle_id"), ranges={"winner_score": SCORE}, min_rows=0
    ),
    "dpo_pairs": TableExpectation(
        key=("prompt_id",), not_null=("prompt", "chosen", "rejected", "battle_id"), min_rows=0
    ),
    "arena_responses": TableExpectation(key=("prompt_id", "model"), not_null=("response_id", "response"), blocking=True),
    "arena_judgments": TableExpectation(
        key=("battle_id", "game"), not_null=("judge", "raw"), ranges={"score_a": SCORE, "score_b": SCORE}, blocking=True
    ),
    "arena_battles": TableExpectation(key=("battle_id",), not_null=("winner",), blocking=True),
    "leaderboard": TableExpectation(key=("model",), not_null=("rating", "ci_low", "ci_high"), blocking=True),
}
