"""The Bradley-Terry likelihood and its solvers, for many bootstrap replicates at once.

A design is a list of comparisons (rows): row k opposes model lo[k] and model hi[k], with
optional covariates features[k] (style differences); the parameters are the models'
strengths theta (natural-log odds, mean 0) followed by the covariates' coefficients beta:

    P(lo beats hi) = expit(theta_lo - theta_hi + features . beta)

Every replicate weighs the rows differently: `played` (rounds, rows) is the weight of the
row's battles in that replicate and `score` (rounds, rows) the part of it lo won (a tie is
half). Without covariates the rows are the compared pairs, whatever the number of battles.

The point estimate comes from a damped Newton method. Bootstrap replicates start at the
point estimate and iterate with the point estimate's inverted Hessian (a chord iteration:
a gradient and a matrix product per step); the rare replicate that does not settle that
way gets the full Newton method.
"""

from __future__ import annotations

import numpy as np

from arena_dagster.ratings.errors import RatingsError

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
_MAX_STEP = 2.0  # Newton steps are capped at 2 natural-log odds (350 Elo) per parameter
_TRUSTED_STEP = 0.25  # shorter steps skip the line search: Newton is in its quadratic regime
_MAX_ITERATIONS = 200


class Design:
    """The rows the likelihood sums over, their incidence matrices and covariates."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, n_models: int, features: np.ndarray | None = None):
        from scipy import sparse

        self.lo, self.hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
        self.n_models = n_models
        n = len(self.lo)
        self.features = np.zeros((n, 0)) if features is None else np.ascontiguousarray(features, dtype=np.float64)
        self.n_params = n_models + self.features.shape[1]
        rows = np.concatenate([self.lo, self.hi])
        cols = np.concatenate([np.arange(n), np.arange(n)])
        shape = (n_models, n)
        # (models x rows): +1 at lo and -1 at hi (gradients), +1 at both (Hessian diagonals)
        self.signed = sparse.csr_matrix((np.r_[np.ones(n), -np.ones(n)], (rows, cols)), shape=shape)
        self.both = sparse.csr_matrix((np.ones(2 * n), (rows, cols)), shape=shape)
        # the Hessian's off-diagonal model entries are per pair: rows of one pair are summed
        pairs, of_row = np.unique(self.lo * n_models + self.hi, return_inverse=True)
        self.pair_lo, self.pair_hi = np.divmod(pairs, n_models)
        self.pair_of_row = of_row.ravel()
        self.to_pairs = None
        if len(pairs) < n:
            self.to_pairs = sparse.csr_matrix((np.ones(n), (np.arange(n), self.pair_of_row)), shape=(n, len(pairs)))

    def __len__(self) -> int:
        return len(self.lo)

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def hi_minus_lo(self, theta: np.ndarray) -> np.ndarray:
        """Minus the logit of P(lo beats hi), (rounds, rows)."""
        gap = theta[:, self.hi] - theta[:, self.lo]
        if self.n_features:
            gap -= theta[:, self.n_models :] @ self.features.T
        return gap


def centre(theta: np.ndarray, n_models: int) -> np.ndarray:
    """Strengths shifted to mean 0 per replicate (the likelihood is flat along that shift)."""
    theta = theta.copy()
    theta[:, :n_models] -= theta[:, :n_models].mean(axis=1, keepdims=True)
    return theta


def _log_likelihood(theta, design: Design, played, score, ridge):
    from scipy.special import log_expit

    gap = -design.hi_minus_lo(theta)
    # score * log s(g) + (played - score) * log s(-g), with log s(-g) = log s(g) - g
    fitted = (played * log_expit(gap) - (played - score) * gap).sum(axis=1)
    return fitted - 0.5 * ridge * (theta * theta).sum(axis=1)


def gradient(theta, design: Design, played, score, ridge=RIDGE):
    """Gradient of the penalised log-likelihood, (rounds, params), and P(lo beats hi) per row."""
    prob = design.hi_minus_lo(theta)
    # 1 / (1 + exp(-gap)) in place: twice as fast as scipy's expit, to the same last bit;
    # exp overflowing to inf gives the right limit 0
    with np.errstate(over="ignore"):
        np.exp(prob, out=prob)
    prob += 1.0
    np.reciprocal(prob, out=prob)
    residual = score - played * prob
    grad = (design.signed @ np.ascontiguousarray(residual.T)).T
    if design.n_features:
        grad = np.concatenate([grad, residual @ design.features], axis=1)
    return grad - ridge * theta, prob


def hessian(design: Design, played, prob, ridge=RIDGE):
    """Minus the Hessian, (rounds, params, params), plus (c/m) 1 1^T on the strengths.

    A Bradley-Terry likelihood is flat along the all-ones direction of the strengths
    (adding a constant to every strength changes nothing); the added term leaves the
    Newton step of a mean-zero problem unchanged and makes the system well conditioned.
    """
    m, p = design.n_models, design.n_params
    curvature = played * prob * (1.0 - prob)
    per_pair = curvature if design.to_pairs is None else np.asarray((design.to_pairs.T @ curvature.T).T)
    matrix = np.zeros((len(played), p * p))
    matrix[:, design.pair_lo * p + design.pair_hi] = -per_pair
    matrix[:, design.pair_hi * p + design.pair_lo] = -per_pair
    diagonal = np.arange(m) * (p + 1)
    matrix[:, diagonal] = (design.both @ curvature.T).T + ridge
    level = matrix[:, diagonal].mean(axis=1) / m
    matrix = matrix.reshape(-1, p, p)
    matrix[:, :m, :m] += level[:, None, None]
    if design.n_features:
        f = design.features
        cross = np.stack([(design.signed @ (curvature * f[:, k]).T).T for k in range(f.shape[1])], axis=2)
        matrix[:, :m, m:] = cross
        matrix[:, m:, :m] = cross.transpose(0, 2, 1)
        matrix[:, m:, m:] = np.einsum("rn,nk,nl->rkl", curvature, f, f)
        matrix[:, np.arange(m, p), np.arange(m, p)] += ridge
    return matrix


def newton(theta, design: Design, played, score, ridge=RIDGE):
    """Maximise the penalised log-likelihood of each replicate; theta, played, score are (rounds, ...).

    Long steps are capped and halved until the objective does not decrease, so the method
    converges from a cold start and when a strength runs off towards its ridge-held limit;
    short ones (Newton's quadratic regime) are taken as they are.
    """
    m = design.n_models
    theta = centre(theta, m)
    active = np.arange(theta.shape[0])
    for _ in range(_MAX_ITERATIONS):
        th, n, s = theta[active], played[active], score[active]
        grad, prob = gradient(th, design, n, s, ridge)
        step = np.linalg.solve(hessian(design, n, prob, ridge), grad[:, :, None])[:, :, 0]
        step[:, :m] -= step[:, :m].mean(axis=1, keepdims=True)
        # g' H^-1 g: twice the gain a full step promises. Along directions the data leave
        # almost flat (a model held only by the ridge) rounding keeps steps above the step
        # tolerance, but this gain is then far below anything a rating could show.
        decrement = (grad * step).sum(axis=1)
        largest = np.abs(step).max(axis=1)
        step *= np.minimum(1.0, _MAX_STEP / np.maximum(largest, 1e-300))[:, None]
        length = np.ones(len(active))
        long = np.flatnonzero(largest > _TRUSTED_STEP)
        if len(long):
            before = _log_likelihood(th[long], design, n[long], s[long], ridge)
            for _ in range(60):
                after = _log_likelihood(th[long] + length[long, None] * step[long], design, n[long], s[long], ridge)
                worse = after < before - 1e-12 * np.abs(before)
                if not worse.any():
                    break
                length[long[worse]] *= 0.5
        moved = length[:, None] * step
        theta[active] = th + moved
        active = active[(np.abs(moved).max(axis=1) > _STEP_TOLERANCE) & (decrement > _DECREMENT_TOLERANCE)]
        if len(active) == 0:
            return centre(theta, m)
    raise RatingsError(
        f"Bradley-Terry fit did not converge in {_MAX_ITERATIONS} Newton steps for "
        f"{len(active)} of {theta.shape[0]} replicate(s); please report this input"
    )


def chord(theta, design: Design, played, score, inverse, ridge=RIDGE):
    """Simplified Newton for bootstrap replicates: all reuse one inverted Hessian.

    Replicates start at the point estimate, whose Hessian is close to theirs, so each
    iteration costs a gradient and a product with `inverse` (that Hessian's inverse)
    instead of forming and solving a Hessian per replicate; the fixed point is the exact
    optimum whatever matrix is used. The convergence is linear; a replicate whose steps
    do not at least halve each time, or that moves far, is returned in `unsettled` for
    the full Newton method.
    """
    m = design.n_models
    theta = theta.copy()
    index = np.arange(len(theta))  # the replicates still iterating, and their arrays below
    th, n, s = theta, played, score
    previous = np.full(len(theta), np.inf)
    unsettled = []
    for _ in range(_CHORD_ITERATIONS):
        grad, _ = gradient(th, design, n, s, ridge)
        step = grad @ inverse
        step[:, :m] -= step[:, :m].mean(axis=1, keepdims=True)
        size = np.abs(step).max(axis=1)
        th = th + step
        done = (size <= _CHORD_TOLERANCE) | ((grad * step).sum(axis=1) <= _DECREMENT_TOLERANCE)
        failing = ~done & ((size > 0.5 * previous) | (size > _TRUSTED_STEP))
        unsettled.append(index[failing])
        previous = size
        stopped = done | failing
        if stopped.any():
            # compact only when the active set shrinks: copying the row arrays costs
            # as much as an iteration
            theta[index[stopped]] = th[stopped]
            keep = ~stopped
            index, th, n, s, previous = index[keep], th[keep], n[keep], s[keep], previous[keep]
        if len(index) == 0:
            break
    theta[index] = th
    unsettled.append(index)
    return theta, np.concatenate(unsettled)


def fit_point(design: Design, played, score):
    """The optimum of one weighting of the rows, (params,)."""
    return newton(np.zeros((1, design.n_params)), design, played[None, :], score[None, :])[0]


def inverse_hessian(design: Design, point, played, score):
    """The inverse of minus the Hessian at `point` (symmetric), for the chord iteration."""
    _, prob = gradient(point[None, :], design, played[None, :], score[None, :])
    return np.linalg.inv(hessian(design, played[None, :], prob)[0])


def fit_replicates(design: Design, point, inverse, played, score, newton_batch: int):
    """Every replicate's optimum, (rounds, params): the chord iteration from `point`, and
    the full Newton method, `newton_batch` replicates at a time, where it stalls."""
    warm = np.repeat(point[None, :], len(played), axis=0)
    theta, unsettled = chord(warm, design, played, score, inverse)
    for first in range(0, len(unsettled), newton_batch):
        chosen = unsettled[first : first + newton_batch]
        theta[chosen] = newton(warm[chosen], design, played[chosen], score[chosen])
    return centre(theta, design.n_models)
