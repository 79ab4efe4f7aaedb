"""The `evaluation:` (the arena's leaderboards) and `promotion:` (the gate) sections of a profile."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from arena_dagster.profile_schema.base import Finite, Name, OpenFraction, PositiveFloat, Section, Seed, Text

MIN_BOOTSTRAP = 20  # the gate's paired interval needs at least this many replicates, and so does every leaderboard


class EvaluationSettings(Section):
    bootstrap: Annotated[int, Field(ge=MIN_BOOTSTRAP)] = 200
    bootstrap_unit: Literal["prompt", "battle"] = "prompt"
    seed: Seed = None
    anchor: Annotated[str, Field(pattern=r"^[^=]+=-?[0-9]+(\.[0-9]+)?$")] | None = None
    style_control: bool = False
    baseline: Name | None = None
    # battles: the two-game battles (arena_battles.sql); games: every judged game a battle, a strong
    # verdict weighing strong_weight (arena-hard's own scoring; needs a recorded judge's verdict labels)
    rate: Literal["battles", "games"] = "battles"
    strong_weight: PositiveFloat = 3.0
    # bootstrap: `bootstrap` resamples of `bootstrap_unit`; sandwich: the fit's robust covariance (ratings/sandwich.py),
    # cluster-robust by prompt with bootstrap_unit prompt; the gate's paired differences follow it
    ci: Literal["bootstrap", "sandwich"] = "bootstrap"
    # a reference leaderboard CSV (model, rating[, rating_q025, rating_q975]): the baseline leaderboard's agreement with it
    reference: str | None = None


class PromotionSettings(Section):
    margin: Finite = 0.0
    bootstrap: Annotated[int, Field(ge=MIN_BOOTSTRAP)] = None
    seed: Seed = None
    candidate: Literal["best", "last"] = "best"
    selection_fraction: OpenFraction = 0.5
    style_control: bool = False  # compare style-controlled ratings (length and markdown held equal)
    # categories of test prompts (families) in which the candidate must not lose significantly (95% interval below 0)
    no_regression: list[Text] = None
