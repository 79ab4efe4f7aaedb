"""Style control: Bradley-Terry with the answers' style as covariates, as the LMSYS arena and
arena-hard do.

Judges (and people) prefer long, formatted answers. Style control fits

    logit P(a beats b) = theta_a - theta_b + sum_k beta_k * f_k(a, b)

where f_k is a normalised difference of a style feature of the two answers: the answer
length (tokens), and the markdown headers, list items and bold spans it contains. As in
FastChat's `rating_systems.preprocess_for_style` (the LMSYS leaderboard), every feature's
difference is divided by the sum plus one, (x_a - x_b) / (x_a + x_b + 1). Each is then
divided by its root mean square over the battles, so beta_k is the change in log-odds of
winning per typical style gap. (FastChat also subtracts the mean, which makes the fit
depend on which model of a battle is listed as model_a; the root mean square alone does
not.) The strengths theta are the style-controlled ratings: what a model wins beyond what
its style buys. The fit is unpenalised apart from the solver's ridge (FastChat adds an L2
penalty of 0.5, arena-hard's v0.1 sklearn fit one of C=1).

A battles table carries the features as columns `<feature>_a` and `<feature>_b`
(e.g. `length_a`, `length_b`); `answer_style` and `with_style_features` compute them from
answer texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from arena_dagster.ratings.battles import (
    BATTLE_COLUMNS,
    battle_weights,
    check_columns,
    code_battles,
    question_index,
)
from arena_dagster.ratings.bradley_terry import BATCH_BYTES, check_bootstrap, check_connected, unbounded_models
from arena_dagster.ratings.errors import BattlesInputError, RatingsError
from arena_dagster.ratings.resampling import draw_counts
from arena_dagster.ratings.sandwich import Observations, robust_covariance
from arena_dagster.ratings.solver import Design, fit_point, fit_replicates, inverse_hessian

STYLE_FEATURES = ("length", "header_count", "list_count", "bold_count")
STYLE_PRESETS = {
    "style": STYLE_FEATURES,
    "length": ("length",),
    "markdown": ("header_count", "list_count", "bold_count"),
}
# arena-hard's utils/add_markdown_info.py: code blocks removed, then line-start headers,
# ordered and unordered list items, and bold spans counted
_CODE_BLOCK = re.compile(r"```[^`]*```")
_HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)
_LIST_ITEM = re.compile(r"^\s*(?:\d+\.|[-*+])\s", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
# words, numbers and single punctuation marks: proportional to BPE tokens without a tokenizer
_TOKEN = re.compile(r"\w+|[^\w\s]")


def answer_style(text: str) -> dict[str, int]:
    """The style features of one answer: length (word and punctuation tokens) and the
    markdown headers, list items and bold spans outside code blocks."""
    text = text or ""
    prose = _CODE_BLOCK.sub("", text)
    return {
        "length": len(_TOKEN.findall(text)),
        "header_count": len(_HEADER.findall(prose)),
        "list_count": len(_LIST_ITEM.findall(prose)),
        "bold_count": len(_BOLD.findall(prose)),
    }


def with_style_features(
    battles: pl.DataFrame, answers: pl.DataFrame, *, answer_column: str = "answer"
) -> pl.DataFrame:
    """`battles` with the style columns of both answers, from an answers table of
    question_id, model and `answer_column`. BattlesInputError names a battle whose answer is
    missing."""
    styled = answers.select(
        "question_id",
        "model",
        pl.col(answer_column).map_elements(answer_style, return_dtype=pl.Struct({f: pl.Int64 for f in STYLE_FEATURES}))
        .alias("_style"),
    ).unnest("_style")
    out = battles
    for side in ("a", "b"):
        renamed = styled.rename({"model": f"model_{side}", **{f: f"{f}_{side}" for f in STYLE_FEATURES}})
        out = out.join(renamed, on=["question_id", f"model_{side}"], how="left", coalesce=True)
    missing = out.filter(pl.any_horizontal(pl.col(f"length_{s}").is_null() for s in ("a", "b")))
    if missing.height:
        row = missing.row(0, named=True)
        raise BattlesInputError(
            f"{missing.height} battle(s) have no answer to measure style on, e.g. question "
            f"{row['question_id']!r}: {row['model_a']!r} vs {row['model_b']!r}"
        )
    return out


def style_features_of(style_control: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The features an option value asks for: False/None none, True or "style" all four,
    "length", "markdown", or a list of names from STYLE_FEATURES."""
    if style_control is None or style_control is False:
        return ()
    if style_control is True:
        return STYLE_FEATURES
    if isinstance(style_control, str):
        if style_control not in STYLE_PRESETS:
            raise RatingsError(f"style_control must be one of {sorted(STYLE_PRESETS)} or a list of features, "
                               f"got {style_control!r}")
        return STYLE_PRESETS[style_control]
    chosen = tuple(style_control)
    unknown = [f for f in chosen if f not in STYLE_FEATURES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise RatingsError(f"style features must be distinct names from {list(STYLE_FEATURES)}, got {list(chosen)}")
    return chosen


def normalised_differences(battles: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
    """(x_a - x_b) / (x_a + x_b + 1) of every feature, (battles, features); BattlesInputError
    for a missing column or a value that is null, negative or not a number."""
    columns = [f"{f}_{s}" for f in features for s in ("a", "b")]
    missing = [c for c in columns if c not in battles.columns]
    if missing:
        raise BattlesInputError(
            f"style control needs columns {missing} (the answers' style features): add them with "
            "with_style_features(battles, answers), or leave style control off"
        )
    out = np.empty((battles.height, len(features)))
    for k, feature in enumerate(features):
        pair = []
        for side in ("a", "b"):
            column = battles.get_column(f"{feature}_{side}")
            values = column.cast(pl.Float64, strict=False).to_numpy() if column.dtype.is_numeric() else None
            if values is None:
                raise BattlesInputError(f"style column {feature}_{side} must hold numbers, got {column.dtype}")
            bad = ~(np.isfinite(values) & (values >= 0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise BattlesInputError(f"row {row}: style feature {feature}_{side} is {column[row]!r}, "
                                        "not a count >= 0")
            pair.append(values)
        out[:, k] = (pair[0] - pair[1]) / (pair[0] + pair[1] + 1.0)
    return out


@dataclass(frozen=True)
class StyleFit:
    """Style-controlled strengths (natural-log odds, mean 0) and style coefficients (log-odds
    per root mean square of the normalised difference; NaN for a feature with no variation),
    for the point estimate and every bootstrap replicate."""

    models: list[str]
    features: tuple[str, ...]
    strength: np.ndarray
    coefficients: np.ndarray
    bootstrap_strength: np.ndarray
    bootstrap_coefficients: np.ndarray
    feature_rms: np.ndarray
    unbounded: list[str]
    covariance: np.ndarray | None = None  # with `sandwich`: the strengths' robust covariance
    coefficient_sd: np.ndarray | None = None  # with `sandwich`: the coefficients' standard errors (NaN: never varies)


def fit_style(
    battles: pl.DataFrame,
    style_control: bool | str | Sequence[str] = True,
    *,
    bootstrap: int = 0,
    bootstrap_unit: str = "battle",
    seed: int = 0,
    sandwich: str | None = None,
) -> StyleFit:
    """Style-controlled Bradley-Terry fit of a battles table with style columns (weights
    and both bootstrap units as in `bradley_terry.fit`); `sandwich` ("battle" or "prompt"):
    also the robust covariance, as `bradley_terry.fit`."""
    features = style_features_of(style_control)
    if not features:
        raise RatingsError("fit_style needs at least one style feature")
    check_bootstrap(bootstrap, bootstrap_unit)
    if sandwich is not None:
        check_bootstrap(0, sandwich)
    by_question = (bool(bootstrap) and bootstrap_unit == "prompt") or sandwich == "prompt"
    check_columns(battles, BATTLE_COLUMNS + (("question_id",) if by_question else ()))
    weight = battle_weights(battles)
    weight = np.ones(battles.height) if weight is None else weight
    names, a, b, outcome = code_battles(battles)
    models = names.to_list()
    raw = normalised_differences(battles, features)
    rms = np.sqrt((raw * raw).mean(axis=0))
    varied = rms > 0
    covariates = raw[:, varied] / rms[varied]

    # every battle seen from its lower-indexed model, so rows of one pair share an orientation
    flip = a > b
    lo, hi = np.where(flip, b, a), np.where(flip, a, b)
    covariates[flip] *= -1
    lo_score = np.where(flip, 2 - outcome, outcome) / 2.0
    design = Design(lo, hi, len(models), covariates)
    check_connected(models, design.pair_lo, design.pair_hi)
    per_pair_played = np.bincount(design.pair_of_row, weights=weight)
    per_pair_score = np.bincount(design.pair_of_row, weights=weight * lo_score)
    unbounded, _ = unbounded_models(models, design.pair_lo, design.pair_hi, per_pair_played, per_pair_score)
    point = fit_point(design, weight, weight * lo_score)

    m, k = len(models), covariates.shape[1]
    replicates = np.empty((bootstrap, m + k))
    if bootstrap:
        inverse = inverse_hessian(design, point, weight, weight * lo_score)
        question_cells = None
        if by_question:
            from scipy import sparse

            q, n_questions = question_index(battles.get_column("question_id"))
            question_cells = sparse.csr_matrix((np.ones(len(q)), (q, np.arange(len(q)))), shape=(n_questions, len(q)))
        rng = np.random.default_rng(seed)
        batch = max(1, BATCH_BYTES // (8 * 8 * len(design)))
        newton_batch = max(1, BATCH_BYTES // (8 * 4 * (m + k) ** 2 + 8 * 8 * len(design)))
        ones = np.ones(len(design), dtype=np.int64)
        for start in range(0, bootstrap, batch):
            size = min(batch, bootstrap - start)
            played = draw_counts(ones, question_cells, size, bootstrap_unit, rng) * weight
            replicates[start : start + size] = fit_replicates(design, point, inverse, played, played * lo_score,
                                                              newton_batch)
    covariance = coefficient_sd = None
    if sandwich is not None:
        clusters = None
        if sandwich == "prompt":
            from scipy import sparse

            q, n_questions = question_index(battles.get_column("question_id"))
            clusters = sparse.csr_matrix((np.ones(len(q)), (q, np.arange(len(q)))), shape=(n_questions, len(q)))
        rows = np.arange(len(design))
        robust = robust_covariance(design, point, weight, weight * lo_score,
                                   Observations(rows, weight, lo_score, np.ones(len(rows)), clusters))
        covariance = robust[:m, :m]
        coefficient_sd = np.full(len(features), np.nan)
        coefficient_sd[varied] = np.sqrt(np.clip(np.diag(robust)[m:], 0.0, None))
    coefficients = np.full(len(features), np.nan)
    coefficients[varied] = point[m:]
    boot_coefficients = np.full((bootstrap, len(features)), np.nan)
    boot_coefficients[:, varied] = replicates[:, m:]
    return StyleFit(
        models=models,
        features=features,
        strength=point[:m],
        coefficients=coefficients,
        bootstrap_strength=replicates[:, :m],
        bootstrap_coefficients=boot_coefficients,
        feature_rms=rms,
        unbounded=unbounded,
        covariance=covariance,
        coefficient_sd=coefficient_sd,
    )

