"""The paper's stage schedule: each round trains SFT, then DPO, then a reward model and RL.

Every stage battles its own sub-slice of the round's prompts (the paper's D_i split into
three), and each stage's battles use the previous stage's checkpoint as the target:

    sft  battles slice `sft` with the round's target (the last promoted model), trains SFT-I{r}
    dpo  battles slice `dpo` with SFT-I{r},                                     trains DPO-I{r}
    rl   battles slice `rl`  with DPO-I{r}, trains the reward model RM-I{r}, then RL-I{r}

A stage may train on the union of its data over all rounds so far (`accumulate_rounds`), as
the paper does for later rounds. The profile's `schedule:` section overrides DEFAULT_SCHEDULE;
the pool's sub-slices come from `prompts.stage_fractions`. A pool without stage labels lets
every stage battle the whole round slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from arena_dagster.errors import ArenaError
from arena_dagster.profile_schema.sections import ScheduleSettings

STAGES = ("sft", "dpo", "rl")

# The stage whose checkpoint is a stage's battle target (None: the round's target).
PREVIOUS_STAGE = {"sft": None, "dpo": "sft", "rl": "dpo"}



class ScheduleError(ArenaError, ValueError):
    pass


@dataclass(frozen=True)
class StagePlan:
    stage: str
    round: int
    slice: str                      # the prompt_pool `stage` label this stage battles on
    battle_target_stage: str | None  # None: the round's target; else this round's checkpoint of that stage
    data_rounds: tuple[int, ...]     # rounds whose preference rows the stage trains on

    @property
    def checkpoint(self) -> str:
        return checkpoint_name(self.stage, self.round)


def checkpoint_name(stage: str, round_key: int) -> str:
    """SFT-I1, DPO-I1, RL-I1 (the paper's naming), RM-I1 for the reward model."""
    label = {"sft": "SFT", "dpo": "DPO", "rl": "RL", "reward": "RM"}.get(stage)
    if label is None:
        raise ScheduleError(f"unknown stage {stage!r}")
    return f"{label}-I{round_key}"


def stage_plan(schedule: ScheduleSettings | None, stage: str, round_key: int) -> StagePlan:
    """`schedule`: the profile's `schedule:` section (None: the paper's, DEFAULT_SCHEDULE)."""
    if stage not in STAGES:
        raise ScheduleError(f"unknown stage {stage!r} (stages are {STAGES})")
    if round_key < 1:
        raise ScheduleError(f"stages run in rounds >= 1 (round 0 is the baseline evaluation), got {round_key}")
    settings = (schedule or ScheduleSettings()).of(stage)
    rounds = tuple(range(1, round_key + 1)) if settings.accumulate_rounds else (round_key,)
    return StagePlan(
        stage=stage,
        round=round_key,
        slice=settings.slice,
        battle_target_stage=PREVIOUS_STAGE[stage],
        data_rounds=rounds,
    )


def battle_prompts(pool: pl.DataFrame, plan: StagePlan) -> pl.DataFrame:
    """The prompts a stage battles on: its round's rows, restricted to its slice when the pool has stages."""
    rows = pool.filter(pl.col("round") == plan.round)
    if "stage" not in rows.columns or rows["stage"].null_count() == rows.height:
        return rows
    labels = set(rows["stage"].drop_nulls().unique().to_list())
    if plan.slice not in labels:
        raise ScheduleError(
            f"round {plan.round}: no prompts labelled {plan.slice!r} for stage {plan.stage} "
            f"(labels {sorted(labels)}; set prompts.stage_fractions)"
        )
    return rows.filter(pl.col("stage") == plan.slice)
