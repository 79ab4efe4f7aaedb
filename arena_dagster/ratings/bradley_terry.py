"""Bradley-Terry maximum likelihood ratings with bootstrap confidence intervals.

The model: P(i beats j) = 1 / (1 + base ** ((r_j - r_i) / scale)), base 10 and scale 400
as on the LMSYS Chatbot Arena; a tie counts as half a win for each side. Ratings are fitted
on the (pair, outcome) cell counts of `battles.encode_battles`, never on single battles,
so the cost of a fit does not grow with the number of battles.

Internally a model's strength is theta = r * ln(base) / scale (natural-log odds units).
The point estimate comes from a damped Newton method on the per-pair battle counts and
scores. Bootstrap replicates are fitted as one batch: their cell counts are drawn at once,
and every replicate starts at the point estimate and iterates with the point estimate's
inverted Hessian (a chord iteration: a gradient and a matrix product per step); the rare
replicate that does not settle that way gets the full Newton method.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from arena_dagster.ratings.battles import BattleCells, encode_battles
from arena_dagster.ratings.errors import DisconnectedComparisonsError, RatingsError, RatingsWarning

BASE = 10.0
SCALE = 400.0
INIT_RATING = 1000.0
BOOTSTRAP_UNITS = ("battle", "prompt")
# A ridge this small moves ratings of any real arena by far less than 1e-3 Elo, yet keeps
# the optimum finite when the maximum likelihood estimate does not exist (a model that
# never lost): the same device as choix's `alpha`.
RIDGE = 1e-6
# Newton converges quadratically: after a step this short the error left is of the order
# of its square, 1e-12 in theta units (2e-10 Elo).
_STEP_TOLERANCE = 1e-6
_DECREMENT_TOLERANCE = 1e-20  # log-likelihood units
# The chord iteration converges linearly at a rate below 1/2 (else Newton takes over), so
# the error left after a step is at most the step itself.
_CHORD_TOLERANCE = 1e-8  # theta units: 1.7e-6 Elo
_CHORD_ITERATIONS = 40
_MAX_STEP = 2.0  # Newton steps are capped at 2 natural-log odds (350 Elo) per model
_TRUSTED_STEP = 0.25  # shorter steps skip the line search: Newton is in its quadratic regime
_MAX_ITERATIONS = 200
# Working memory of a batch of replicates (their pair arrays; Newton's (models, models) matrices).
_BATCH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class BradleyTerryFit:
    """Strengths (natural-log odds, mean 0) of the point estimate and of every bootstrap replicate."""

    models: list[str]
    strength: np.ndarray  # (models,)
    bootstrap_strength: np.ndarray  # (rounds, models); zero rows without bootstrap
    battles_per_model: np.ndarray
    n_battles: int

    def index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise RatingsError(f"model {model!r} has no battles; models rated: {self.models}") from None


def parse_anchor(anchor: tuple[str, float] | str | None) -> tuple[str, float] | None:
    """`"MODEL=RATING"` or `(model, rating)` -> (model, rating); None stays None."""
    if anchor is None:
        return None
    if isinstance(anchor, str):
        model, sep, value = anchor.rpartition("=")
        if not sep or not model.strip():
            raise RatingsError(f"anchor {anchor!r} is not of the form MODEL=RATING")
        try:
            return model.strip(), float(value)
        except ValueError:
            raise RatingsError(f"anchor {anchor!r}: rating {value!r} is not a number") from None
    if isinstance(anchor, (tuple, list)) and len(anchor) == 2 and isinstance(anchor[0], str):
        try:
            rating = float(anchor[1])
        except (TypeError, ValueError):
            raise RatingsError(f"anchor {anchor!r}: rating {anchor[1]!r} is not a number") from None
        return anchor[0], rating
    raise RatingsError(f"anchor must be 'MODEL=RATING' or (model, rating), got {anchor!r}")


class _Pairs:
    """The compared pairs (lo < hi), the pair of every cell, and their incidence matrices."""

    def __init__(self, cells: BattleCells):
        from scipy import sparse

        pairs, of_cell = np.unique(cells.pair_lo * cells.n_models + cells.pair_hi, return_inverse=True)
        self.lo, self.hi = np.divmod(pairs, cells.n_models)
        self.of_cell = of_cell.ravel()
        self.n_models = cells.n_models
        n = len(pairs)
        rows = np.concatenate([self.lo, self.hi])
        cols = np.concatenate([np.arange(n), np.arange(n)])
        shape = (self.n_models, n)
        # (models x pairs): +1 at lo and -1 at hi (gradients), +1 at both (Hessian diagonals)
        self.signed = sparse.csr_matrix((np.r_[np.ones(n), -np.ones(n)], (rows, cols)), shape=shape)
        self.both = sparse.csr_matrix((np.ones(2 * n), (rows, cols)), shape=shape)

    def __len__(self) -> int:
        return len(self.lo)

    def totals(self, cells: BattleCells, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rounds, cells) counts -> battles and lo's score (wins + ties / 2) per pair, (rounds, pairs)."""
        by_outcome = np.zeros((counts.shape[0], len(self), 3))
        # (pair, outcome) is unique per cell, so a plain fancy assignment places every count
        by_outcome.reshape(counts.shape[0], -1)[:, self.of_cell * 3 + cells.outcome] = counts
        played = by_outcome.sum(axis=2)
        score = by_outcome[:, :, 2] + 0.5 * by_outcome[:, :, 1]
        return played, score


def _log_likelihood(theta, pairs: _Pairs, played, score, ridge):
    from scipy.special import log_expit

    gap = theta[:, pairs.lo] - theta[:, pairs.hi]
    # score * log s(g) + (played - score) * log s(-g), with log s(-g) = log s(g) - g
    fitted = (played * log_expit(gap) - (played - score) * gap).sum(axis=1)
    return fitted - 0.5 * ridge * (theta * theta).sum(axis=1)


def _gradient(theta, pairs: _Pairs, played, score, ridge):
    """Gradient of the penalised log-likelihood, (rounds, models), and P(lo beats hi) per pair."""
    prob = theta[:, pairs.hi] - theta[:, pairs.lo]
    # 1 / (1 + exp(-gap)) in place: twice as fast as scipy's expit, to the same last bit;
    # exp overflowing to inf gives the right limit 0
    with np.errstate(over="ignore"):
        np.exp(prob, out=prob)
    prob += 1.0
    np.reciprocal(prob, out=prob)
    residual = score - played * prob
    return (pairs.signed @ np.ascontiguousarray(residual.T)).T - ridge * theta, prob


def _hessian(pairs: _Pairs, played, prob, ridge):
    """Minus the Hessian, (rounds, models, models), plus (c/m) 1 1^T.

    A Bradley-Terry likelihood is flat along the all-ones direction (adding a constant to
    every strength changes nothing); the added term leaves the Newton step of a mean-zero
    problem unchanged and makes the system well conditioned.
    """
    m = pairs.n_models
    curvature = played * prob * (1.0 - prob)
    hessian = np.zeros((len(played), m * m))
    hessian[:, pairs.lo * m + pairs.hi] = -curvature
    hessian[:, pairs.hi * m + pairs.lo] = -curvature
    diagonal = np.arange(m) * (m + 1)
    hessian[:, diagonal] = (pairs.both @ curvature.T).T + ridge
    hessian += hessian[:, diagonal].mean(axis=1, keepdims=True) / m
    return hessian.reshape(-1, m, m)


def _newton(theta, pairs: _Pairs, played, score, ridge=RIDGE):
    """Maximise the penalised log-likelihood of each replicate; theta, played, score are (rounds, ...).

    Long steps are capped and halved until the objective does not decrease, so the method
    converges from a cold start and when a strength runs off towards its ridge-held limit;
    short ones (Newton's quadratic regime) are taken as they are.
    """
    theta = theta - theta.mean(axis=1, keepdims=True)
    active = np.arange(theta.shape[0])
    for _ in range(_MAX_ITERATIONS):
        th, n, s = theta[active], played[active], score[active]
        gradient, prob = _gradient(th, pairs, n, s, ridge)
        step = np.linalg.solve(_hessian(pairs, n, prob, ridge), gradient[:, :, None])[:, :, 0]
        step -= step.mean(axis=1, keepdims=True)
        # g' H^-1 g: twice the gain a full step promises. Along directions the data leave
        # almost flat (a model held only by the ridge) rounding keeps steps above the step
        # tolerance, but this gain is then far below anything a rating could show.
        decrement = (gradient * step).sum(axis=1)
        largest = np.abs(step).max(axis=1)
        step *= np.minimum(1.0, _MAX_STEP / np.maximum(largest, 1e-300))[:, None]
        length = np.ones(len(active))
        long = np.flatnonzero(largest > _TRUSTED_STEP)
        if len(long):
            before = _log_likelihood(th[long], pairs, n[long], s[long], ridge)
            for _ in range(60):
                after = _log_likelihood(th[long] + length[long, None] * step[long], pairs, n[long], s[long], ridge)
                worse = after < before - 1e-12 * np.abs(before)
                if not worse.any():
                    break
                length[long[worse]] *= 0.5
        moved = length[:, None] * step
        theta[active] = th + moved
        active = active[(np.abs(moved).max(axis=1) > _STEP_TOLERANCE) & (decrement > _DECREMENT_TOLERANCE)]
        if len(active) == 0:
            return theta - theta.mean(axis=1, keepdims=True)
    raise RatingsError(
        f"Bradley-Terry fit did not converge in {_MAX_ITERATIONS} Newton steps for "
        f"{len(active)} of {theta.shape[0]} replicate(s); please report this input"
    )


def _chord(theta, pairs: _Pairs, played, score, inverse, ridge=RIDGE):
    """Simplified Newton for bootstrap replicates: all reuse one inverted Hessian.

    Replicates start at the point estimate, whose Hessian is close to theirs, so each
    iteration costs a gradient and a product with `inverse` (that Hessian's inverse)
    instead of forming and solving a Hessian per replicate; the fixed point is the exact
    optimum whatever matrix is used. The convergence is linear; a replicate whose steps
    do not at least halve each time, or that moves far, is returned in `unsettled` for
    the full Newton method.
    """
    theta = theta.copy()
    index = np.arange(len(theta))  # the replicates still iterating, and their arrays below
    th, n, s = theta, played, score
    previous = np.full(len(theta), np.inf)
    unsettled = []
    for _ in range(_CHORD_ITERATIONS):
        gradient, _ = _gradient(th, pairs, n, s, ridge)
        step = gradient @ inverse
        step -= step.mean(axis=1, keepdims=True)
        size = np.abs(step).max(axis=1)
        th = th + step
        done = (size <= _CHORD_TOLERANCE) | ((gradient * step).sum(axis=1) <= _DECREMENT_TOLERANCE)
        failing = ~done & ((size > 0.5 * previous) | (size > _TRUSTED_STEP))
        unsettled.append(index[failing])
        previous = size
        stopped = done | failing
        if stopped.any():
            # compact only when the active set shrinks: copying the pair arrays costs
            # as much as an iteration
            theta[index[stopped]] = th[stopped]
            keep = ~stopped
            index, th, n, s, previous = index[keep], th[keep], n[keep], s[keep], previous[keep]
        if len(index) == 0:
            break
    theta[index] = th
    unsettled.append(index)
    return theta, np.concatenate(unsettled)


def _check_connected(cells: BattleCells, lo, hi, played, score, *, warn: bool) -> None:
    """Raise when some models were never compared with the rest; warn when the maximum
    likelihood estimate does not exist (the ridge then decides some gaps)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = cells.n_models
    graph = coo_matrix((np.ones(len(lo)), (lo, hi)), shape=(m, m))
    n_parts, label = connected_components(graph, directed=False)
    if n_parts > 1:
        groups = [sorted(cells.models[i] for i in np.flatnonzero(label == part)) for part in range(n_parts)]
        raise DisconnectedComparisonsError(sorted(groups, key=lambda g: (-len(g), g)))
    # i -> j when i won or tied against j at least once; the maximum likelihood estimate
    # exists (is finite) exactly when every model can reach every other along such edges
    lo_scored, hi_scored = score > 0, score < played
    beats = coo_matrix(
        (np.ones(int(lo_scored.sum() + hi_scored.sum())),
         (np.concatenate([lo[lo_scored], hi[hi_scored]]), np.concatenate([hi[lo_scored], lo[hi_scored]]))),
        shape=(m, m),
    )
    n_parts, label = connected_components(beats, directed=True, connection="strong")
    if warn and n_parts > 1:
        out_deg = np.bincount(beats.row, minlength=m)
        in_deg = np.bincount(beats.col, minlength=m)
        never_lost = [cells.models[i] for i in np.flatnonzero(in_deg == 0)]
        never_won = [cells.models[i] for i in np.flatnonzero(out_deg == 0)]
        detail = []
        if never_lost:
            detail.append(f"never lost or tied: {never_lost}")
        if never_won:
            detail.append(f"never won or tied: {never_won}")
        groups = [sorted(cells.models[i] for i in np.flatnonzero(label == part)) for part in range(n_parts)]
        warnings.warn(
            "the maximum likelihood ratings do not exist (some models are unbeaten by some others: "
            + ("; ".join(detail) + "; " if detail else "")
            + f"groups {groups}); the gaps between these groups are held finite only by a ridge "
            f"of {RIDGE:g} and are not measured by the data",
            RatingsWarning,
            stacklevel=3,
        )


def _batch_size(n_models: int, n_pairs: int, n_cells: int) -> int:
    """Replicates per batch, so that their working arrays stay near _BATCH_BYTES."""
    per_replicate = 8 * (8 * n_pairs + 3 * n_cells + 4 * n_models)
    return int(max(1, _BATCH_BYTES // per_replicate))


def _categorical(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """`size` draws of category k with probability p[k] (inversion with a guide table)."""
    cumulative = np.cumsum(p)
    cumulative[-1] = 1.0
    # guide[j]: the first category whose cumulative probability exceeds j / len(p); the
    # answer for u lies at or after guide[floor(u * len(p))], on average within one step
    guide = np.searchsorted(cumulative, np.arange(len(p)) / len(p), side="right")
    u = rng.random(size)
    category = guide[(u * len(p)).astype(np.intp)]
    behind = np.flatnonzero(cumulative[category] <= u)
    while behind.size:
        category[behind] += 1
        behind = behind[cumulative[category[behind]] <= u[behind]]
    return category


def _multinomial(rng: np.random.Generator, n: int, counts: np.ndarray, rounds: int) -> np.ndarray:
    """`rounds` exact draws of Multinomial(n, counts / n), as a (rounds, cells) array.

    Independent Poisson(lam * p_k) counts, given their total t, are Multinomial(t, p) for
    any lam. With lam = n - 2 sqrt(n) the total rarely exceeds n; such rows are drawn again
    (conditioning on t <= n keeps the multinomial law), and the n - t missing items are
    added as fresh categorical draws, which gives exactly Multinomial(n, p). That costs
    one fast Poisson draw per cell and a few per sqrt(n) items, instead of the conditional
    binomials of `Generator.multinomial`.
    """
    p = counts / counts.sum()
    lam = max(0.0, n - 2.0 * math.sqrt(n)) * p
    drawn = rng.poisson(lam, size=(rounds, len(p)))
    total = drawn.sum(axis=1)
    while (over := np.flatnonzero(total > n)).size:
        drawn[over] = rng.poisson(lam, size=(len(over), len(p)))
        total[over] = drawn[over].sum(axis=1)
    missing = n - total
    category = _categorical(rng, p, int(missing.sum()))
    row = np.repeat(np.arange(rounds), missing)
    drawn += np.bincount(row * len(p) + category, minlength=rounds * len(p)).reshape(rounds, len(p))
    return drawn


def _draw_counts(cells: BattleCells, rounds: int, unit: str, rng: np.random.Generator) -> np.ndarray:
    """Cell counts of `rounds` bootstrap resamples, (rounds, cells)."""
    if unit == "prompt":
        per_question = cells.question_cells
        n_questions = per_question.shape[0]
        chosen = rng.integers(0, n_questions, size=(rounds, n_questions))
        offsets = (np.arange(rounds) * n_questions)[:, None]
        multiplicity = np.bincount((chosen + offsets).ravel(), minlength=rounds * n_questions)
        return np.asarray((per_question.T @ multiplicity.reshape(rounds, n_questions).T).T)
    n, n_cells = cells.n_battles, len(cells.count)
    if n >= 6 * n_cells:  # a Poisson draw per cell costs about as much as six resampled battles
        return _multinomial(rng, n, cells.count, rounds).astype(np.float64)
    cell_of_battle = np.repeat(np.arange(n_cells, dtype=np.int32), cells.count)
    return np.stack(
        [np.bincount(cell_of_battle[rng.integers(0, n, n)], minlength=n_cells) for _ in range(rounds)]
    ).astype(np.float64)


def fit(
    battles: pl.DataFrame | BattleCells,
    *,
    bootstrap: int = 0,
    bootstrap_unit: str = "battle",
    seed: int = 0,
    warn: bool = True,
) -> BradleyTerryFit:
    """Point estimate and `bootstrap` resampled estimates of every model's strength.

    `bootstrap_unit="battle"` resamples battles (a multinomial draw over the cells);
    `"prompt"` resamples question_ids with replacement and keeps all battles of a prompt
    together (a cluster bootstrap). The same seed gives the same replicates.
    """
    if bootstrap_unit not in BOOTSTRAP_UNITS:
        raise RatingsError(f"bootstrap_unit must be one of {BOOTSTRAP_UNITS}, got {bootstrap_unit!r}")
    if not isinstance(bootstrap, (int, np.integer)) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise RatingsError(f"bootstrap must be a whole number >= 0, got {bootstrap!r}")
    by_question = bool(bootstrap) and bootstrap_unit == "prompt"
    if isinstance(battles, BattleCells):
        cells = battles
        if by_question and cells.question_cells is None:
            raise RatingsError("a prompt bootstrap needs cells encoded with by_question=True")
    else:
        cells = encode_battles(battles, by_question=by_question)
    if cells.n_models < 2:
        raise RatingsError(f"need battles between at least two models, got {cells.models}")

    pairs = _Pairs(cells)
    played, score = pairs.totals(cells, cells.count[None, :].astype(np.float64))
    _check_connected(cells, pairs.lo, pairs.hi, played[0], score[0], warn=warn)
    point = _newton(np.zeros((1, cells.n_models)), pairs, played, score)[0]

    replicates = np.empty((bootstrap, cells.n_models))
    if bootstrap:
        _, prob = _gradient(point[None, :], pairs, played, score, RIDGE)
        inverse = np.linalg.inv(_hessian(pairs, played, prob, RIDGE)[0])  # symmetric
        rng = np.random.default_rng(seed)
        batch = _batch_size(cells.n_models, len(pairs), len(cells.count))
        for start in range(0, bootstrap, batch):
            size = min(batch, bootstrap - start)
            played_b, score_b = pairs.totals(cells, _draw_counts(cells, size, bootstrap_unit, rng))
            warm = np.repeat(point[None, :], size, axis=0)
            theta, unsettled = _chord(warm, pairs, played_b, score_b, inverse)
            step = max(1, _BATCH_BYTES // (8 * 4 * cells.n_models**2))
            for first in range(0, len(unsettled), step):
                chosen = unsettled[first : first + step]
                theta[chosen] = _newton(warm[chosen], pairs, played_b[chosen], score_b[chosen])
            replicates[start : start + size] = theta - theta.mean(axis=1, keepdims=True)
    return BradleyTerryFit(
        models=cells.models,
        strength=point,
        bootstrap_strength=replicates,
        battles_per_model=cells.battles_per_model,
        n_battles=cells.n_battles,
    )


def to_ratings(
    strength: np.ndarray,
    models: list[str],
    *,
    anchor: tuple[str, float] | None = None,
    base: float = BASE,
    scale: float = SCALE,
    init_rating: float = INIT_RATING,
) -> np.ndarray:
    """Strengths (..., models) -> Elo-scale ratings, anchored per row or centred on init_rating."""
    ratings = strength * (scale / math.log(base))
    if anchor is None:
        return ratings - ratings.mean(axis=-1, keepdims=True) + init_rating
    name, value = anchor
    if name not in models:
        raise RatingsError(f"anchor model {name!r} has no battles; models rated: {models}")
    where = models.index(name)
    return ratings - ratings[..., [where]] + value


def leaderboard(
    battles: pl.DataFrame,
    *,
    anchor: tuple[str, float] | str | None = None,
    bootstrap: int = 100,
    bootstrap_unit: str = "battle",
    seed: int = 0,
    base: float = BASE,
    scale: float = SCALE,
    init_rating: float = INIT_RATING,
) -> pl.DataFrame:
    """Bradley-Terry leaderboard of a battles table.

    `battles` has columns model_a, model_b, winner (one of "model_a", "model_b", "tie",
    "tie (bothbad)") and, for `bootstrap_unit="prompt"`, question_id. Returns one row per
    model, sorted by rating (descending), with columns model, rating (maximum likelihood,
    anchored at `anchor` = "MODEL=RATING" / (model, rating), else mean `init_rating`),
    ci_low and ci_high (2.5 and 97.5 percentiles of `bootstrap` replicates; null when
    bootstrap=0), rank (1 + number of models whose ci_low is above this model's ci_high;
    with bootstrap=0, point ratings stand in for both bounds) and battles.

    Every replicate is anchored like the point estimate, as FastChat does: with an anchor
    the intervals measure uncertainty relative to the anchor model (whose own interval is
    a single point); without one, relative to the mean of all models.

    Raises DisconnectedComparisonsError (a ValueError) when some models were never
    compared with the rest, and BattlesInputError naming the row of any malformed battle.
    """
    anchor_pair = parse_anchor(anchor)
    result = fit(battles, bootstrap=bootstrap, bootstrap_unit=bootstrap_unit, seed=seed)
    scaling = {"anchor": anchor_pair, "base": base, "scale": scale, "init_rating": init_rating}
    rating = to_ratings(result.strength, result.models, **scaling)
    if bootstrap:
        replicate_ratings = to_ratings(result.bootstrap_strength, result.models, **scaling)
        low, high = np.percentile(replicate_ratings, [2.5, 97.5], axis=0)
        ci_low, ci_high = low.tolist(), high.tolist()
    else:
        low = high = rating
        ci_low = ci_high = [None] * len(rating)
    rank = 1 + (low[None, :] > high[:, None]).sum(axis=1)
    board = pl.DataFrame(
        {
            "model": result.models,
            "rating": rating,
            "ci_low": ci_low,
            "ci_high": ci_high,
            "rank": rank.astype(np.int64),
            "battles": result.battles_per_model.astype(np.int64),
        },
        schema={
            "model": pl.String,
            "rating": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
            "rank": pl.Int64,
            "battles": pl.Int64,
        },
    )
    return board.sort(["rating", "model"], descending=[True, False])


def rating_difference(
    battles: pl.DataFrame,
    model_x: str,
    model_y: str,
    *,
    bootstrap: int = 200,
    bootstrap_unit: str = "prompt",
    seed: int = 0,
    base: float = BASE,
    scale: float = SCALE,
) -> dict[str, Any]:
    """rating(model_x) - rating(model_y) with a paired bootstrap 95% interval.

    Both ratings come from the same replicate in every round, so the interval reflects the
    uncertainty of the difference itself (much narrower than the two separate intervals
    when the models faced the same prompts). Returns {diff, ci_low, ci_high, n_bootstrap};
    the bounds are None when bootstrap=0.
    """
    result = fit(battles, bootstrap=bootstrap, bootstrap_unit=bootstrap_unit, seed=seed, warn=False)
    x, y = result.index(model_x), result.index(model_y)
    per_unit = scale / math.log(base)
    diff = float((result.strength[x] - result.strength[y]) * per_unit)
    if not bootstrap:
        return {"diff": diff, "ci_low": None, "ci_high": None, "n_bootstrap": 0}
    replicate = (result.bootstrap_strength[:, x] - result.bootstrap_strength[:, y]) * per_unit
    low, high = np.percentile(replicate, [2.5, 97.5])
    return {"diff": diff, "ci_low": float(low), "ci_high": float(high), "n_bootstrap": bootstrap}
