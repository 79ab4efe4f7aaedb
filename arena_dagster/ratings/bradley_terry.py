"""Bradley-Terry maximum likelihood strengths with bootstrap replicates.

The model: P(i beats j) = 1 / (1 + base ** ((r_j - r_i) / scale)), base 10 and scale 400
as on the LMSYS Chatbot Arena; a tie counts as half a win for each side, and a battle of
weight w counts w times. Strengths are fitted on the per-pair totals of
`battles.encode_battles`, never on single battles, so the cost of a fit does not grow with
the number of battles. Internally a model's strength is theta = r * ln(base) / scale
(natural-log odds units, mean 0); `board` turns strengths into a leaderboard.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl

from arena_dagster.ratings.battles import BattleCells, encode_battles
from arena_dagster.ratings.errors import DisconnectedComparisonsError, RatingsError, RatingsWarning
from arena_dagster.ratings.resampling import BOOTSTRAP_UNITS, draw_counts
from arena_dagster.ratings.sandwich import pair_observations, robust_covariance
from arena_dagster.ratings.solver import RIDGE, Design, fit_point, fit_replicates, inverse_hessian

# Working memory of a batch of replicates (their pair arrays; Newton's (models, models) matrices).
BATCH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class BradleyTerryFit:
    """Strengths (natural-log odds, mean 0) of the point estimate and of every bootstrap replicate.

    `unbounded`: the models whose rating the data do not bound (see `unbounded_models`).
    """

    models: list[str]
    strength: np.ndarray  # (models,)
    bootstrap_strength: np.ndarray  # (rounds, models); no rows without bootstrap
    battles_per_model: np.ndarray
    n_battles: int
    total_weight: float
    unbounded: list[str]
    covariance: np.ndarray | None = None  # with `sandwich`: the strengths' robust covariance (sandwich.py)


class PairTotals:
    """The compared pairs of some cells (a design without covariates) and the maps from cell
    counts to per-pair battle weight and score."""

    def __init__(self, cells: BattleCells):
        from scipy import sparse

        pairs, of_cell = np.unique(cells.pair_lo * cells.n_models + cells.pair_hi, return_inverse=True)
        lo, hi = np.divmod(pairs, cells.n_models)
        self.design = Design(lo, hi, cells.n_models)
        shape = (len(cells.count), len(pairs))
        rows, cols = np.arange(len(cells.count)), of_cell.ravel()
        # (cells x pairs): what one battle of the cell adds to its pair's weight and to lo's score
        self._played = sparse.csr_matrix((cells.weight, (rows, cols)), shape=shape)
        self._score = sparse.csr_matrix((cells.weight * cells.outcome / 2.0, (rows, cols)), shape=shape)

    def totals(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rounds, cells) battle counts -> battle weight and lo's score per pair, (rounds, pairs)."""
        transposed = np.ascontiguousarray(counts.T)
        return np.asarray((self._played.T @ transposed).T), np.asarray((self._score.T @ transposed).T)


def unbounded_models(models: list[str], lo, hi, played, score) -> tuple[list[str], str]:
    """The models whose rating the data do not bound, and why ("" when every rating is bounded).

    Draw i -> j when i won or tied against j at least once. The maximum likelihood ratings
    exist (are finite) exactly when every model reaches every other along such edges; else
    the gaps between the strongly connected groups of this graph grow without limit (held
    finite only by the solver's ridge). The ratings inside the largest group stay measured;
    every model outside it is unbounded (all models when no group is the largest).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(models)
    lo_scored, hi_scored = score > 0, score < played
    beats = coo_matrix(
        (np.ones(int(lo_scored.sum() + hi_scored.sum())),
         (np.concatenate([lo[lo_scored], hi[hi_scored]]), np.concatenate([hi[lo_scored], lo[hi_scored]]))),
        shape=(m, m),
    )
    n_parts, label = connected_components(beats, directed=True, connection="strong")
    if n_parts == 1:
        return [], ""
    sizes = np.bincount(label, minlength=n_parts)
    largest = np.flatnonzero(sizes == sizes.max())
    flagged = np.ones(m, dtype=bool) if len(largest) > 1 else label != largest[0]
    out_deg = np.bincount(beats.row, minlength=m)
    in_deg = np.bincount(beats.col, minlength=m)
    detail = []
    if never_lost := [models[i] for i in np.flatnonzero(in_deg == 0)]:
        detail.append(f"never lost or tied: {never_lost}")
    if never_won := [models[i] for i in np.flatnonzero(out_deg == 0)]:
        detail.append(f"never won or tied: {never_won}")
    groups = [sorted(models[i] for i in np.flatnonzero(label == part)) for part in range(n_parts)]
    reason = (
        "the maximum likelihood ratings do not exist (some models are unbeaten by some others: "
        + ("; ".join(detail) + "; " if detail else "")
        + f"groups {groups}); the gaps between these groups are held finite only by a ridge "
        f"of {RIDGE:g} and are not measured by the data"
    )
    return [models[i] for i in np.flatnonzero(flagged)], reason


def check_connected(models: list[str], lo, hi) -> None:
    """Raise when some models were never compared with the rest (lo[k], hi[k]: compared pairs)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(models)
    graph = coo_matrix((np.ones(len(lo)), (lo, hi)), shape=(m, m))
    n_parts, label = connected_components(graph, directed=False)
    if n_parts > 1:
        groups = [sorted(models[i] for i in np.flatnonzero(label == part)) for part in range(n_parts)]
        raise DisconnectedComparisonsError(sorted(groups, key=lambda g: (-len(g), g)))


def _batch_size(n_models: int, n_pairs: int, n_cells: int) -> int:
    """Replicates per batch, so that their working arrays stay near BATCH_BYTES."""
    per_replicate = 8 * (8 * n_pairs + 3 * n_cells + 4 * n_models)
    return int(max(1, BATCH_BYTES // per_replicate))


def check_bootstrap(bootstrap: int, bootstrap_unit: str) -> None:
    if bootstrap_unit not in BOOTSTRAP_UNITS:
        raise RatingsError(f"bootstrap_unit must be one of {BOOTSTRAP_UNITS}, got {bootstrap_unit!r}")
    if not isinstance(bootstrap, (int, np.integer)) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise RatingsError(f"bootstrap must be a whole number >= 0, got {bootstrap!r}")


def fit(
    battles: pl.DataFrame | BattleCells,
    *,
    bootstrap: int = 0,
    bootstrap_unit: str = "battle",
    seed: int = 0,
    warn: bool = True,
    sandwich: str | None = None,
) -> BradleyTerryFit:
    """Point estimate and `bootstrap` resampled estimates of every model's strength.

    `bootstrap_unit="battle"` resamples battles (rows of the table, each with its weight);
    `"prompt"` resamples question_ids with replacement and keeps all battles of a prompt
    together (a cluster bootstrap). The same seed gives the same replicates. With
    `warn`, a RatingsWarning names the models whose rating the data do not bound.
    `sandwich` ("battle" or "prompt", the unit whose scores are independent): also the
    robust covariance of the strengths (`sandwich.robust_covariance`).
    """
    check_bootstrap(bootstrap, bootstrap_unit)
    if sandwich is not None:
        check_bootstrap(0, sandwich)
    by_question = (bool(bootstrap) and bootstrap_unit == "prompt") or sandwich == "prompt"
    if isinstance(battles, BattleCells):
        cells = battles
        if by_question and cells.question_cells is None:
            raise RatingsError("a prompt bootstrap needs cells encoded with by_question=True")
    else:
        cells = encode_battles(battles, by_question=by_question)
    if sandwich == "prompt" and cells.question_cells is None:
        raise RatingsError("a prompt sandwich needs cells encoded with by_question=True")
    if cells.n_models < 2:
        raise RatingsError(f"need battles between at least two models, got {cells.models}")

    pairs = PairTotals(cells)
    design = pairs.design
    played, score = pairs.totals(cells.count[None, :].astype(np.float64))
    check_connected(cells.models, design.lo, design.hi)
    unbounded, reason = unbounded_models(cells.models, design.lo, design.hi, played[0], score[0])
    if warn and unbounded:
        warnings.warn(reason, RatingsWarning, stacklevel=2)
    point = fit_point(design, played[0], score[0])

    replicates = np.empty((bootstrap, cells.n_models))
    if bootstrap:
        inverse = inverse_hessian(design, point, played[0], score[0])
        rng = np.random.default_rng(seed)
        batch = _batch_size(cells.n_models, len(design), len(cells.count))
        newton_batch = max(1, BATCH_BYTES // (8 * 4 * cells.n_models**2))
        for start in range(0, bootstrap, batch):
            size = min(batch, bootstrap - start)
            drawn = draw_counts(cells.count, cells.question_cells, size, bootstrap_unit, rng)
            played_b, score_b = pairs.totals(drawn)
            replicates[start : start + size] = fit_replicates(design, point, inverse, played_b, score_b, newton_batch)
    covariance = None
    if sandwich is not None:
        observations = pair_observations(design, cells.pair_lo, cells.pair_hi, cells.outcome, cells.count,
                                         cells.weight, cells.question_cells if sandwich == "prompt" else None)
        covariance = robust_covariance(design, point, played[0], score[0], observations)[: cells.n_models, : cells.n_models]
    return BradleyTerryFit(
        models=cells.models,
        strength=point,
        bootstrap_strength=replicates,
        battles_per_model=cells.battles_per_model,
        n_battles=cells.n_battles,
        total_weight=cells.total_weight,
        unbounded=unbounded,
        covariance=covariance,
    )
