"""The promotion gate: does the round's candidate replace the current target?

A paired test on the arena test set: candidate and incumbent answered the same prompts and
met the same opponents, so the Bradley-Terry rating difference is bootstrapped over prompts
with both ratings taken from the same replicate. The candidate is promoted only when the
lower bound of the 95% interval of (candidate - incumbent) is above `margin` Elo: a
candidate that is merely not worse, or better by noise, keeps the incumbent in place.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from arena_dagster.ratings import rating_difference

GATE = "paired prompt bootstrap, lower bound of the rating difference > margin"


def decide_promotion(
    battles: pl.DataFrame,
    *,
    candidate: str,
    incumbent: str,
    margin: float = 0.0,
    bootstrap: int = 200,
    seed: int = 0,
    ratings: dict[str, float] | None = None,
    baseline: bool = False,
) -> dict[str, Any]:
    """The decision as a dict: promoted, new_target, diff, ci_low, ci_high, reason, ...

    `battles`: the round's arena battles (model_a, model_b, winner, question_id).
    `ratings`: the leaderboard's ratings, recorded beside the decision for the history.
    `baseline`: round 0, where the initial target is both candidate and incumbent.
    """
    ratings = ratings or {}
    decision = {
        "candidate": candidate,
        "incumbent": incumbent,
        "candidate_rating": ratings.get(candidate),
        "incumbent_rating": ratings.get(incumbent),
        "margin": float(margin),
        "gate": GATE,
    }
    if candidate == incumbent:
        return {**decision, "promoted": True, "new_target": incumbent, "diff": None, "ci_low": None, "ci_high": None,
                "reason": "baseline: the initial target" if baseline else "no new checkpoint this round: the target stays"}
    models = set(battles["model_a"].to_list()) | set(battles["model_b"].to_list())
    for name in (candidate, incumbent):
        if name not in models:
            raise ValueError(f"{name!r} has no arena battles this round; cannot decide the promotion")
    if bootstrap < 20:
        raise ValueError(f"the gate needs a bootstrap of at least 20 replicates for its interval, got {bootstrap}")
    result = rating_difference(battles, candidate, incumbent, bootstrap=bootstrap, bootstrap_unit="prompt", seed=seed)
    promoted = result["ci_low"] > margin
    reason = (
        f"{candidate} - {incumbent} = {result['diff']:+.1f} Elo, 95% CI [{result['ci_low']:+.1f}, {result['ci_high']:+.1f}]; "
        f"lower bound {'>' if promoted else '<='} margin {margin:.1f}"
    )
    return {
        **decision,
        "promoted": promoted,
        "new_target": candidate if promoted else incumbent,
        "diff": result["diff"],
        "ci_low": result["ci_low"],
        "ci_high": result["ci_high"],
        "reason": reason,
    }
