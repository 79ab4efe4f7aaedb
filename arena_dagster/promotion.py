"""The promotion gate: does the round's checkpoint replace the current target?"""

from __future__ import annotations

from typing import Any

import polars as pl


def decide_promotion(leaderboard: pl.DataFrame, *, candidate: str, incumbent: str, margin: float = 0.0) -> dict[str, Any]:
    """Promote when the candidate's rating beats the incumbent's by more than `margin` Elo."""
    ratings = dict(zip(leaderboard["model"].to_list(), leaderboard["rating"].to_list()))
    for name in (candidate, incumbent):
        if name not in ratings:
            raise ValueError(f"{name!r} is not on the leaderboard; cannot decide the promotion")
    if candidate == incumbent:
        return {
            "candidate": candidate,
            "incumbent": incumbent,
            "promoted": True,
            "new_target": candidate,
            "candidate_rating": ratings[candidate],
            "incumbent_rating": ratings[incumbent],
            "reason": "baseline: the initial target",
        }
    diff = ratings[candidate] - ratings[incumbent]
    promoted = diff > margin
    return {
        "candidate": candidate,
        "incumbent": incumbent,
        "promoted": promoted,
        "new_target": candidate if promoted else incumbent,
        "candidate_rating": ratings[candidate],
        "incumbent_rating": ratings[incumbent],
        "reason": f"rating difference {diff:+.1f} {'>' if promoted else '<='} margin {margin:.1f}",
    }
