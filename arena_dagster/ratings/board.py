"""The leaderboard of a battles table: ratings, intervals and ranks that do not depend on the
anchor, the win rate against a baseline, unbounded ratings flagged, style control beside.

What the numbers mean:
- rating: the maximum likelihood Bradley-Terry rating (base 10, scale 400). The scale's
  origin is a convention: `anchor` ("MODEL=RATING") puts that model at that rating, else
  the models average `init_rating`. The anchor only shifts every number by one constant.
- ci_low, ci_high: the 2.5 and 97.5 percentiles of the model's rating over the bootstrap
  replicates, each replicate measured against the average of all models and shifted by
  the same constant as the point estimate. They say how well the battles place this model
  among all the others; the anchor's own interval is a real interval like any other.
- rank: 1 + the number of models that are above this one, where i is above j when the
  95% bootstrap interval of the paired difference r_i - r_j (both from the same
  replicate) lies above 0. Without bootstrap, when r_i > r_j.
- win_rate (with `baseline`): the predicted probability of beating the baseline,
  1 / (1 + base ** ((r_baseline - r) / scale)), as arena-hard scores; win_rate_low and
  win_rate_high its 2.5 and 97.5 percentiles over the same replicates.
- unbounded: the battles do not bound this model's rating (it never lost, or never won,
  against some group of models); the number shown is held finite only by the solver's ridge.
- *_sc (with `style_control`): the same columns for the style-controlled ratings
  (`style.py`); `Ratings.style_coefficients` holds the fitted style coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl

from arena_dagster.ratings import sandwich
from arena_dagster.ratings.bradley_terry import fit
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.style import fit_style, style_features_of

BASE = 10.0
SCALE = 400.0
INIT_RATING = 1000.0
_CHUNK_VALUES = 1 << 23  # paired differences formed at once when ranking (64 MiB)
# A difference must clear this (natural-log odds, 2e-4 Elo) to rank one model above another: models the
# battles cannot tell apart (identical results) differ only by the solver's tolerance in each replicate.
RANK_TOLERANCE = 1e-6


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


def _model_index(models: list[str], name: str, role: str) -> int:
    if name not in models:
        raise RatingsError(f"{role} model {name!r} has no battles; models rated: {models}")
    return models.index(name)


def paired_ranks(point: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """1 + the number of models whose paired bootstrap difference with this one lies above 0."""
    m = len(point)
    if len(replicates) == 0:
        above = point[:, None] - point[None, :] > RANK_TOLERANCE
    else:
        above = np.zeros((m, m), dtype=bool)
        step = max(1, _CHUNK_VALUES // (len(replicates) * m))
        for first in range(0, m, step):
            diff = replicates[:, first : first + step, None] - replicates[:, None, :]
            above[first : first + step] = np.percentile(diff, 2.5, axis=0) > RANK_TOLERANCE
    return 1 + above.sum(axis=0)


@dataclass(frozen=True)
class _Scale:
    base: float
    scale: float
    init_rating: float
    anchor: tuple[str, float] | None
    baseline: str | None

    def columns(self, models: list[str], strength: np.ndarray, replicates: np.ndarray, suffix: str = "") -> dict:
        """The per-model columns of one fit (strengths and replicates in natural-log odds, mean 0)."""
        per_unit = self.scale / math.log(self.base)
        offset = self.init_rating
        if self.anchor is not None:
            offset = self.anchor[1] - strength[_model_index(models, self.anchor[0], "anchor")] * per_unit
        rating = strength * per_unit + offset
        out: dict[str, Any] = {f"rating{suffix}": rating}
        if len(replicates):
            low, high = np.percentile(replicates * per_unit + offset, [2.5, 97.5], axis=0)
            out[f"ci_low{suffix}"], out[f"ci_high{suffix}"] = low, high
        else:
            out[f"ci_low{suffix}"] = out[f"ci_high{suffix}"] = [None] * len(models)
        out[f"rank{suffix}"] = paired_ranks(strength, replicates).astype(np.int64)
        if self.baseline is not None:
            b = _model_index(models, self.baseline, "baseline")
            out[f"win_rate{suffix}"] = self.win_rate((strength - strength[b]) * per_unit)
            if len(replicates):
                rates = self.win_rate((replicates - replicates[:, [b]]) * per_unit)
                out[f"win_rate_low{suffix}"], out[f"win_rate_high{suffix}"] = np.percentile(rates, [2.5, 97.5], axis=0)
            else:
                out[f"win_rate_low{suffix}"] = out[f"win_rate_high{suffix}"] = [None] * len(models)
        return out

    def win_rate(self, gap: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + self.base ** (-gap / self.scale))

    def sandwich_columns(self, models: list[str], strength: np.ndarray, covariance: np.ndarray, suffix: str = "") -> dict:
        """The same columns from the strengths' sandwich covariance (normal intervals, see sandwich.py)."""
        per_unit = self.scale / math.log(self.base)
        offset = self.init_rating
        if self.anchor is not None:
            offset = self.anchor[1] - strength[_model_index(models, self.anchor[0], "anchor")] * per_unit
        baseline = None if self.baseline is None else _model_index(models, self.baseline, "baseline")
        return sandwich.board_columns(models, strength, covariance, per_unit=per_unit, offset=offset,
                                      baseline=baseline, win_rate=self.win_rate, suffix=suffix)


@dataclass(frozen=True)
class Ratings:
    """A leaderboard and what belongs beside it.

    board: one row per model (see the module docstring for the columns).
    unbounded: the models whose rating the battles do not bound (also the board's
      `unbounded` column), and unbounded_reason the explanation ("" when none).
    style_coefficients: with style control, one row per feature: feature, coefficient
      (log-odds per root mean square of the normalised difference; null for a feature that
      never varies), ci_low, ci_high (bootstrap percentiles), rms.
    """

    board: pl.DataFrame
    unbounded: list[str]
    unbounded_reason: str
    n_battles: int
    total_weight: float
    style_coefficients: pl.DataFrame | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What to show beside the board (JSON-ready): for `--json` and asset metadata."""
        out: dict[str, Any] = {
            "battles": self.n_battles,
            "total_weight": self.total_weight,
            "unbounded": self.unbounded,
            "unbounded_reason": self.unbounded_reason or None,
            **self.settings,
        }
        if self.style_coefficients is not None:
            out["style_coefficients"] = self.style_coefficients.to_dicts()
        return out


_SCHEMA = {"model": pl.String, "rating": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "rank": pl.Int64,
           "battles": pl.Int64, "unbounded": pl.Boolean, "win_rate": pl.Float64, "win_rate_low": pl.Float64,
           "win_rate_high": pl.Float64}


def rate(
    battles: pl.DataFrame,
    *,
    anchor: tuple[str, float] | str | None = None,
    baseline: str | None = None,
    bootstrap: int = 100,
    bootstrap_unit: str = "battle",
    seed: int = 0,
    style_control: bool | str | Sequence[str] = False,
    base: float = BASE,
    scale: float = SCALE,
    init_rating: float = INIT_RATING,
    ci: str = "bootstrap",
) -> Ratings:
    """Bradley-Terry leaderboard of a battles table, with what belongs beside it.

    `battles` has columns model_a, model_b, winner (one of "model_a", "model_b", "tie",
    "tie (bothbad)"), optionally weight (a number > 0: how many battles the row counts
    for), question_id (needed for `bootstrap_unit="prompt"`), and the style columns
    `<feature>_a`, `<feature>_b` for `style_control` (True or "style": length, headers,
    lists, bold; "length"; "markdown"; or a list of features).

    `bootstrap` rounds resample battles (`"battle"`, a weighted row stays one battle) or
    whole prompts (`"prompt"`); the same seed gives the same board. Columns: model,
    rating, ci_low, ci_high, rank, battles (rows of the table), unbounded; with
    `baseline`, win_rate, win_rate_low, win_rate_high; with style control, rating_sc,
    ci_low_sc, ci_high_sc, rank_sc (and win_rate_sc, win_rate_low_sc, win_rate_high_sc).
    See the module docstring for what each means. Sorted by rating, best first.
    `ci="sandwich"`: the intervals, ranks and win-rate intervals come from the robust
    covariance of the fit instead (`sandwich.py`; `bootstrap_unit` says which unit's scores
    are independent, `bootstrap` and `seed` are not used).

    Raises DisconnectedComparisonsError (a ValueError) when some models were never
    compared with the rest, and BattlesInputError naming the row of any malformed battle.
    """
    scaling = _Scale(base, scale, init_rating, parse_anchor(anchor), baseline)
    features = style_features_of(style_control)  # a bad setting fails before the bootstrap is paid for
    sandwich.check_ci(ci)
    robust = bootstrap_unit if ci == "sandwich" else None
    if robust:
        bootstrap = 0
    result = fit(battles, bootstrap=bootstrap, bootstrap_unit=bootstrap_unit, seed=seed, sandwich=robust)
    columns: dict[str, Any] = {"model": result.models}
    if robust:
        raw = scaling.sandwich_columns(result.models, result.strength, result.covariance)
    else:
        raw = scaling.columns(result.models, result.strength, result.bootstrap_strength)
    columns.update({k: raw.pop(k) for k in ("rating", "ci_low", "ci_high", "rank")})
    columns["battles"] = result.battles_per_model.astype(np.int64)
    columns["unbounded"] = [name in result.unbounded for name in result.models]
    columns.update(raw)
    coefficients = None
    if features:
        styled = fit_style(battles, features, bootstrap=bootstrap, bootstrap_unit=bootstrap_unit, seed=seed,
                           sandwich=robust)
        if robust:
            columns.update(scaling.sandwich_columns(styled.models, styled.strength, styled.covariance, suffix="_sc"))
        else:
            columns.update(scaling.columns(styled.models, styled.strength, styled.bootstrap_strength, suffix="_sc"))
        coefficients = _coefficient_table(styled)
    schema = {name: _SCHEMA.get(name.removesuffix("_sc"), pl.Float64) for name in columns}
    board = pl.DataFrame(columns, schema=schema).sort(["rating", "model"], descending=[True, False])
    settings = {"anchor": anchor if anchor is None or isinstance(anchor, str) else f"{anchor[0]}={anchor[1]}",
                "baseline": baseline, "bootstrap": bootstrap, "bootstrap_unit": bootstrap_unit, "seed": seed,
                "style_control": list(features) or None, "ci": ci}
    unbounded_reason = ""
    if result.unbounded:
        unbounded_reason = (f"the battles do not bound the ratings of {result.unbounded}: each never lost, or never "
                            "won, against some group of models, so its rating is held finite only by the solver's ridge")
    return Ratings(board, result.unbounded, unbounded_reason, result.n_battles, result.total_weight, coefficients, settings)


def _coefficient_table(styled) -> pl.DataFrame:
    coefficient = [None if np.isnan(c) else float(c) for c in styled.coefficients]
    low = high = [None] * len(styled.features)
    if styled.coefficient_sd is not None:
        low, high = ([None if np.isnan(c) else float(c + sign * sandwich.Z_95 * sd)
                      for c, sd in zip(styled.coefficients, styled.coefficient_sd)] for sign in (-1, 1))
    elif len(styled.bootstrap_coefficients):
        with np.errstate(invalid="ignore"):
            bounds = np.percentile(styled.bootstrap_coefficients, [2.5, 97.5], axis=0)
        low, high = ([None if np.isnan(x) else float(x) for x in row] for row in bounds)
    return pl.DataFrame(
        {"feature": list(styled.features), "coefficient": coefficient, "ci_low": low, "ci_high": high,
         "rms": styled.feature_rms.tolist()},
        schema={"feature": pl.String, "coefficient": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
                "rms": pl.Float64},
    )


def leaderboard(battles: pl.DataFrame, **options: Any) -> pl.DataFrame:
    """The board of `rate(battles, **options)`: see `rate` for the options and the columns."""
    return rate(battles, **options).board


def rating_difference(
    battles: pl.DataFrame,
    model_x: str,
    model_y: str,
    *,
    bootstrap: int = 200,
    bootstrap_unit: str = "prompt",
    seed: int = 0,
    style_control: bool | str | Sequence[str] = False,
    base: float = BASE,
    scale: float = SCALE,
    ci: str = "bootstrap",
) -> dict[str, Any]:
    """rating(model_x) - rating(model_y) with a paired bootstrap 95% interval.

    Both ratings come from the same replicate in every round, so the interval reflects the
    uncertainty of the difference itself (much narrower than the two separate intervals
    when the models faced the same prompts). With `style_control`, the difference of the
    style-controlled ratings. Returns {diff, ci_low, ci_high, n_bootstrap, unbounded,
    style_control}: the bounds are None when bootstrap=0; unbounded is True when the
    battles do not bound either rating (the difference then says nothing).
    `ci="sandwich"`: the interval from the robust covariance of the fit (its standard error
    in `sd`; n_bootstrap 0), with `bootstrap_unit` the independent unit.
    """
    features = style_features_of(style_control)
    sandwich.check_ci(ci)
    robust = bootstrap_unit if ci == "sandwich" else None
    if robust:
        bootstrap = 0
    if features:
        result = fit_style(battles, features, bootstrap=bootstrap, bootstrap_unit=bootstrap_unit, seed=seed,
                           sandwich=robust)
    else:
        result = fit(battles, bootstrap=bootstrap, bootstrap_unit=bootstrap_unit, seed=seed, warn=False,
                     sandwich=robust)
    x, y = (_model_index(result.models, name, "compared") for name in (model_x, model_y))
    per_unit = scale / math.log(base)
    out = {
        "diff": float((result.strength[x] - result.strength[y]) * per_unit),
        "ci_low": None,
        "ci_high": None,
        "n_bootstrap": bootstrap,
        "unbounded": model_x in result.unbounded or model_y in result.unbounded,
        "style_control": list(features) or None,
        "ci": ci,
    }
    if robust:
        _, low, high = sandwich.difference_interval(result.strength, result.covariance, x, y, per_unit)
        out.update(ci_low=low, ci_high=high, sd=sandwich.difference_sd(result.covariance, x, y) * per_unit)
    elif bootstrap:
        replicate = (result.bootstrap_strength[:, x] - result.bootstrap_strength[:, y]) * per_unit
        low, high = np.percentile(replicate, [2.5, 97.5])
        out.update(ci_low=float(low), ci_high=float(high))
    return out
