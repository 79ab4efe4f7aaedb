"""How well a leaderboard agrees with a reference leaderboard (e.g. the human Chatbot Arena)."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import polars as pl

from arena_dagster.ratings.errors import RatingsError

# Interval columns accepted on either side, in order of preference.
_INTERVALS = (("ci_low", "ci_high"), ("rating_q025", "rating_q975"))


def _intervals(board: pl.DataFrame) -> tuple[str, str] | None:
    for low, high in _INTERVALS:
        if low in board.columns and high in board.columns:
            return low, high
    return None


def _separated(low: list[float], high: list[float], i: int, j: int) -> bool:
    return low[i] > high[j] or low[j] > high[i]


def alignment(ours: pl.DataFrame, reference: pl.DataFrame) -> dict[str, Any]:
    """Agreement of `ours` with `reference` over the models both contain.

    Both frames have `model` and `rating`; intervals come from `ci_low`/`ci_high` or
    `rating_q025`/`rating_q975` when present. Returns:
    - spearman, kendall (tau-b): rank correlation of the two ratings;
    - agreement_ci: of the model pairs the reference separates (intervals that do not
      overlap), the share that our ratings order the same way (None when the reference
      has no intervals or separates no pair);
    - separability: share of model pairs whose intervals on our leaderboard do not overlap
      (None without our intervals);
    - pairs_same_order: share of all model pairs the two leaderboards order the same way
      (a pair equal on both counts as the same order);
    - n_common: the number of models compared.
    Raises RatingsError when fewer than two models are in common (a naming mismatch,
    usually: see `apply_rename`).
    """
    for name, board in (("ours", ours), ("reference", reference)):
        missing = {"model", "rating"} - set(board.columns)
        if missing:
            raise RatingsError(f"{name} leaderboard lacks column(s) {sorted(missing)}")
        duplicated = board.get_column("model").filter(board.get_column("model").is_duplicated()).unique().to_list()
        if duplicated:
            raise RatingsError(f"{name} leaderboard lists model(s) more than once: {sorted(duplicated)}")
    our_ci, reference_ci = _intervals(ours), _intervals(reference)
    left = ours.select("model", "rating", *(pl.col(c).alias(a) for c, a in zip(our_ci or (), ("low", "high"))))
    right = reference.select(
        "model",
        pl.col("rating").alias("rating_ref"),
        *(pl.col(c).alias(a) for c, a in zip(reference_ci or (), ("low_ref", "high_ref"))),
    )
    common = left.join(right, on="model", how="inner").sort("model")
    if common.height < 2:
        raise RatingsError(
            f"only {common.height} model(s) in common between the leaderboards: ours has "
            f"{sorted(ours['model'].to_list())}, the reference has {reference.height} models "
            f"(e.g. {reference['model'].head(5).to_list()}). Map names with a rename CSV."
        )
    from scipy import stats

    rating, reference_rating = common["rating"].to_list(), common["rating_ref"].to_list()
    spearman = stats.spearmanr(rating, reference_rating).statistic
    kendall = stats.kendalltau(rating, reference_rating).statistic
    pairs = list(combinations(range(common.height), 2))

    agreement_ci = None
    if reference_ci:
        low, high = common["low_ref"].to_list(), common["high_ref"].to_list()
        separated = [(i, j) for i, j in pairs if _separated(low, high, i, j)]
        if separated:
            same = sum(
                (reference_rating[i] - reference_rating[j]) * (rating[i] - rating[j]) > 0 for i, j in separated
            )
            agreement_ci = same / len(separated)

    separability = None
    if our_ci and common["low"].null_count() == 0:
        low, high = common["low"].to_list(), common["high"].to_list()
        separability = sum(_separated(low, high, i, j) for i, j in pairs) / len(pairs)

    same_order = sum(
        math.copysign(1, rating[i] - rating[j]) * (rating[i] != rating[j])
        == math.copysign(1, reference_rating[i] - reference_rating[j]) * (reference_rating[i] != reference_rating[j])
        for i, j in pairs
    )
    return {
        "spearman": float(spearman),
        "pairs_same_order": same_order / len(pairs),
        "kendall": float(kendall),
        "agreement_ci": agreement_ci,
        "separability": separability,
        "n_common": common.height,
    }
