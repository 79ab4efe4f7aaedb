"""Bootstrap draws: how many times each cell (or battle) appears in a resample.

Two units: `battle` resamples battles (rows of the battles table) with replacement, a
multinomial draw over the cells that group them; `prompt` resamples question_ids with
replacement and keeps all battles of a prompt together (a cluster bootstrap).
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_UNITS = ("battle", "prompt")


def categorical(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
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


def multinomial(rng: np.random.Generator, n: int, counts: np.ndarray, rounds: int) -> np.ndarray:
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
    category = categorical(rng, p, int(missing.sum()))
    row = np.repeat(np.arange(rounds), missing)
    drawn += np.bincount(row * len(p) + category, minlength=rounds * len(p)).reshape(rounds, len(p))
    return drawn


def draw_counts(
    count: np.ndarray, question_cells, rounds: int, unit: str, rng: np.random.Generator
) -> np.ndarray:
    """Cell counts of `rounds` bootstrap resamples, (rounds, cells).

    `count[k]`: the battles in cell k; `question_cells`: a (questions x cells) sparse matrix
    of the same counts split by prompt (needed for the prompt unit).
    """
    if unit == "prompt":
        n_questions = question_cells.shape[0]
        chosen = rng.integers(0, n_questions, size=(rounds, n_questions))
        offsets = (np.arange(rounds) * n_questions)[:, None]
        multiplicity = np.bincount((chosen + offsets).ravel(), minlength=rounds * n_questions)
        return np.asarray((question_cells.T @ multiplicity.reshape(rounds, n_questions).T).T)
    n, n_cells = int(count.sum()), len(count)
    if n >= 6 * n_cells:  # a Poisson draw per cell costs about as much as six resampled battles
        return multinomial(rng, n, count, rounds).astype(np.float64)
    cell_of_battle = np.repeat(np.arange(n_cells, dtype=np.int32), count)
    return np.stack(
        [np.bincount(cell_of_battle[rng.integers(0, n, n)], minlength=n_cells) for _ in range(rounds)]
    ).astype(np.float64)
