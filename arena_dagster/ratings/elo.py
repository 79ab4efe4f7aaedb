"""Online Elo, observed pairwise win rates, and win rates predicted by ratings."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from arena_dagster.ratings.battles import encode_battles
from arena_dagster.ratings.errors import RatingsError


def online_elo(
    battles: pl.DataFrame, k: float = 4, base: float = 10, scale: float = 400, init: float = 1000
) -> dict[str, float]:
    """Classic sequential Elo over the battles in row order (FastChat's `compute_elo`).

    Unlike Bradley-Terry it depends on the order of battles and weighs recent ones more;
    it is here for comparison with older leaderboards. A tie scores half a point.
    """
    cells = encode_battles(battles)  # validates the table; also gives the sorted model list
    names = pl.Enum(cells.models)
    winner = battles.get_column("winner").cast(pl.String)
    a = battles.get_column("model_a").cast(pl.String).cast(names).to_physical().to_list()
    b = battles.get_column("model_b").cast(pl.String).cast(names).to_physical().to_list()
    score_a = ((winner == "model_a").cast(pl.Float64) + 0.5 * winner.is_in(["tie", "tie (bothbad)"])).to_list()
    rating = [float(init)] * len(cells.models)
    for i, j, s in zip(a, b, score_a):
        expected = 1.0 / (1.0 + base ** ((rating[j] - rating[i]) / scale))
        update = k * (s - expected)
        rating[i] += update
        rating[j] -= update
    return dict(zip(cells.models, rating))


def win_rate_matrix(battles: pl.DataFrame, *, order: list[str] | None = None) -> pl.DataFrame:
    """Observed share of points the row model took from the column model (a tie is half a point).

    One row per model: column `model`, then one column per opponent, in `order` (default:
    by mean win rate over the opponents met, best first). Pairs that never met, and the
    diagonal, are null.
    """
    cells = encode_battles(battles)
    m = cells.n_models
    played = np.zeros((m, m))
    points = np.zeros((m, m))
    lo_points = cells.count * (cells.outcome / 2.0)
    np.add.at(played, (cells.pair_lo, cells.pair_hi), cells.count)
    np.add.at(points, (cells.pair_lo, cells.pair_hi), lo_points)
    np.add.at(points, (cells.pair_hi, cells.pair_lo), cells.count - lo_points)
    played = played + played.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(played > 0, points / played, np.nan)
    if order is None:
        mean = np.nanmean(np.where(np.eye(m, dtype=bool), np.nan, rate), axis=1)
        order = [cells.models[i] for i in sorted(range(m), key=lambda i: (-mean[i], cells.models[i]))]
    unknown = sorted(set(order) - set(cells.models))
    if unknown:
        raise RatingsError(f"order names models without battles: {unknown}")
    index = [cells.models.index(name) for name in order]
    rate = rate[np.ix_(index, index)]
    columns = {"model": order}
    for position, name in enumerate(order):
        columns[name] = [None if np.isnan(x) else float(x) for x in rate[:, position]]
    schema = {"model": pl.String, **{name: pl.Float64 for name in order}}
    return pl.DataFrame(columns, schema=schema)


def predicted_win_rate(ratings: Mapping[str, float], *, base: float = 10, scale: float = 400) -> pl.DataFrame:
    """P(row model beats column model) = 1 / (1 + base ** ((r_col - r_row) / scale)).

    `ratings` maps model -> rating (e.g. `dict(zip(board["model"], board["rating"]))`).
    One row per model in descending rating order: column `model`, then one column per
    opponent in the same order; the diagonal is 0.5.
    """
    if not ratings:
        raise RatingsError("no ratings given")
    order = sorted(ratings, key=lambda name: (-ratings[name], name))
    value = np.array([float(ratings[name]) for name in order])
    rate = 1.0 / (1.0 + base ** ((value[None, :] - value[:, None]) / scale))
    columns = {"model": order, **{name: rate[:, i] for i, name in enumerate(order)}}
    return pl.DataFrame(columns, schema={"model": pl.String, **{name: pl.Float64 for name in order}})
