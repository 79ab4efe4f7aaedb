"""Sandwich (robust) intervals of a Bradley-Terry fit: the covariance H^-1 S H^-1.

H is minus the Hessian of the log-likelihood at the optimum and S the sum of the outer
products of the score (the gradient of one battle's log-likelihood), so the covariance
holds whether or not the model's outcome probabilities are right: ties, judge noise, or
any misfit widen S, not the fit. LMArena's `arena-rank` (BradleyTerry, ci_method
"sandwich") defines it the same way: a tie is half a win, the score of a battle of weight
w is w (y - p) (e_a - e_b), S sums them per battle (unscaled), and the covariance is that
of the strengths measured against the average of all models (H and S are both flat along
the all-ones direction). Two differences, both documented in the README: arena-rank adds
1e-5 x (number of battles) to H's diagonal (it narrows its intervals by about that much
relative to H's eigenvalues, 0.3% at 60 models); here H is exact. And with the `prompt`
unit S sums the score over each prompt first (a cluster-robust covariance, the analogue of
the prompt bootstrap), so battles on one prompt are not counted as independent.

Intervals are normal: estimate +- z * standard error with z the 97.5% normal quantile, for
ratings, for paired differences (ranks, the gate) and for win rates against a baseline
(the interval of the rating gap, mapped through the monotone win-rate curve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.solver import Design, gradient, inverse_hessian

CI_METHODS = ("bootstrap", "sandwich")
# as board.RANK_TOLERANCE: a difference of models with identical results is the solver's tolerance, not a rank
RANK_TOLERANCE = 1e-6
# the 97.5% quantile of the standard normal: the bootstrap's 2.5 and 97.5 percentiles
Z_95 = 1.959963984540054


def interval_description(ci: str, unit: str) -> str:
    """How a board's 95% intervals were made, in words: the UI's interval column and the plot's axis say it."""
    units = {"prompt": "test prompts", "battle": "battles"}.get(unit, unit)
    if ci == "sandwich":
        return f"95% sandwich (robust covariance) interval, {units} as the independent units"
    return f"95% bootstrap interval over {units}"


def check_ci(ci: str) -> None:
    if ci not in CI_METHODS:
        raise RatingsError(f"ci must be one of {CI_METHODS}, got {ci!r}")


@dataclass(frozen=True)
class Observations:
    """Groups of identical battles for the meat S: group k has `count[k]` battles, each of
    weight `weight[k]` and outcome `y[k]` seen from the design row `row[k]`'s lo model
    (1 won, 0.5 tie, 0 lost). `clusters`: None (every battle its own unit) or a
    (units x groups) sparse matrix of how many of group k's battles belong to unit q."""

    row: np.ndarray
    weight: np.ndarray
    y: np.ndarray
    count: np.ndarray
    clusters: Any = None


def robust_covariance(design: Design, point: np.ndarray, played: np.ndarray, score: np.ndarray,
                      observations: Observations) -> np.ndarray:
    """H^-1 S H^-1 at `point` (params,), natural-log odds units; `played`, `score`: the design
    rows' totals the point was fitted on. The strengths' block is that of strengths
    measured against their mean."""
    _, prob = gradient(point[None, :], design, played[None, :], score[None, :])
    residual = observations.weight * (observations.y - prob[0, observations.row])
    # one column per observation group: its battle's score vector (e_lo - e_hi, features) times the residual
    signed = design.signed[:, observations.row]
    if observations.clusters is None:
        root = np.sqrt(observations.count) * residual
        per_unit = signed.multiply(root[None, :]).tocsr()
        features = design.features[observations.row] * root[:, None]
    else:
        clusters = observations.clusters.tocsr()
        per_unit = (signed.multiply(residual[None, :]) @ clusters.T).tocsr()
        features = clusters @ (design.features[observations.row] * residual[:, None])
    features = np.asarray(features)
    # blocks of S: the strengths' from the sparse scores (a model's battles touch few pairs), the covariates' dense
    meat = np.zeros((design.n_params, design.n_params))
    m = design.n_models
    meat[:m, :m] = (per_unit @ per_unit.T).toarray()
    if design.n_features:
        cross = np.asarray(per_unit @ features)
        meat[:m, m:], meat[m:, :m], meat[m:, m:] = cross, cross.T, features.T @ features
    inverse = inverse_hessian(design, point, played, score)
    covariance = inverse @ meat @ inverse
    return (covariance + covariance.T) / 2.0


def pair_observations(design: Design, pair_lo, pair_hi, outcome, count, weight, question_cells=None) -> Observations:
    """Observations of battle cells (pair, outcome 2/1/0 from lo, count, weight) on a design
    whose rows are the compared pairs."""
    n = design.n_models
    codes = design.lo * n + design.hi
    order = np.argsort(codes)
    row = order[np.searchsorted(codes[order], np.asarray(pair_lo) * n + np.asarray(pair_hi))]
    return Observations(row, np.asarray(weight, dtype=float), np.asarray(outcome) / 2.0,
                        np.asarray(count, dtype=float), question_cells)


def standard_errors(covariance: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(np.diag(covariance), 0.0, None))


def difference_sd(covariance: np.ndarray, i: int, j: int) -> float:
    return float(np.sqrt(max(0.0, covariance[i, i] + covariance[j, j] - 2.0 * covariance[i, j])))


def paired_ranks(point: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """1 + the number of models whose difference with this one lies above 0 at 95%
    (difference - z * its standard error > 0), as `board.paired_ranks` on replicates."""
    variance = np.diag(covariance)
    gap_sd = np.sqrt(np.clip(variance[:, None] + variance[None, :] - 2.0 * covariance, 0.0, None))
    above = (point[:, None] - point[None, :]) - Z_95 * gap_sd > RANK_TOLERANCE
    return 1 + above.sum(axis=0)


def board_columns(models: list[str], strength: np.ndarray, covariance: np.ndarray, *, per_unit: float,
                  offset: float, baseline: int | None, win_rate: Callable[[np.ndarray], np.ndarray],
                  suffix: str = "") -> dict[str, Any]:
    """The per-model columns of `board._Scale.columns` from a covariance instead of replicates.

    `covariance`: of the strengths (natural-log odds), `per_unit` Elo per strength unit,
    `offset` the rating of strength 0, `baseline` the baseline's index (or None)."""
    half = Z_95 * standard_errors(covariance) * per_unit
    rating = strength * per_unit + offset
    out: dict[str, Any] = {f"rating{suffix}": rating, f"ci_low{suffix}": rating - half,
                           f"ci_high{suffix}": rating + half,
                           f"rank{suffix}": paired_ranks(strength, covariance).astype(np.int64)}
    if baseline is not None:
        gap = (strength - strength[baseline]) * per_unit
        gap_half = Z_95 * per_unit * np.array([difference_sd(covariance, i, baseline) for i in range(len(models))])
        out[f"win_rate{suffix}"] = win_rate(gap)
        out[f"win_rate_low{suffix}"], out[f"win_rate_high{suffix}"] = win_rate(gap - gap_half), win_rate(gap + gap_half)
    return out


def difference_interval(strength: np.ndarray, covariance: np.ndarray, x: int, y: int,
                        per_unit: float) -> tuple[float, float, float]:
    """(diff, low, high) of rating x - rating y in Elo, the normal 95% interval."""
    diff = float((strength[x] - strength[y]) * per_unit)
    half = Z_95 * difference_sd(covariance, x, y) * per_unit
    return diff, diff - half, diff + half
