"""A round's training stages over the registry: who each stage battles with, what it trains from.

Plain functions over a DuckDB connection and the profile; the Dagster layer calls them.
Training specs are built here and run by `training.runner` in subprocesses.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import duckdb

from arena_dagster.registry import current_target, resolve_skipped, round_checkpoint
from arena_dagster.training.schedule import STAGES, StagePlan, checkpoint_name

TRAINING_STAGES = ("sft", "dpo", "reward", "rl")


def stage_battle_target(conn: duckdb.DuckDBPyConnection, plan: StagePlan) -> dict[str, Any]:
    """The model a stage battles with: the round's target, or this round's previous-stage checkpoint.

    A stage skipped for lack of data stands for its parent, so the next stage battles the parent.
    """
    if plan.battle_target_stage is None:
        return current_target(conn, plan.round)
    return resolve_skipped(conn, round_checkpoint(conn, plan.battle_target_stage, plan.round))


def round_candidate(conn: duckdb.DuckDBPyConnection, round_key: int) -> dict[str, Any]:
    """The model a round offers for promotion: its last stage's checkpoint (round 0: the initial target)."""
    if round_key == 0:
        return current_target(conn, 0)
    return resolve_skipped(conn, round_checkpoint(conn, STAGES[-1], round_key))


def round_checkpoints(conn: duckdb.DuckDBPyConnection, round_key: int) -> list[dict[str, Any]]:
    """The round's trained policy checkpoints in stage order, skipped stages left out."""
    if round_key == 0:
        return []
    out = []
    for stage in STAGES:
        row = round_checkpoint(conn, stage, round_key)
        if resolve_skipped(conn, row)["model"] == row["model"]:
            out.append(row)
    return out


def stage_settings(models_settings: dict[str, Any], stage: str, *, locally_built: bool) -> dict[str, Any]:
    """`models.flywheel.<stage>` of the profile.

    The embedded default's models are tiny, so their stage settings start from the small-model
    values in DEFAULT_SKILLS_MODELS; declared (real) models start from the entry point's
    defaults, which are the paper's hyperparameters.
    """
    from arena_dagster.training.base_models import DEFAULT_SKILLS_MODELS

    base = copy.deepcopy(DEFAULT_SKILLS_MODELS["flywheel"].get(stage, {})) if locally_built else {}
    override = (models_settings.get("flywheel") or {}).get(stage) or {}
    merged = {**base, **{k: v for k, v in override.items() if k != "hyperparams"}}
    merged["hyperparams"] = {**base.get("hyperparams", {}), **override.get("hyperparams", {})}
    return merged


def stage_training_spec(
    stage: str,
    *,
    round_key: int,
    base_model: str | Path,
    dataset: str | Path,
    output_dir: str | Path,
    models_settings: dict[str, Any],
    locally_built: bool,
    replay_dataset: str | Path | None = None,
    reward_model: str | Path | None = None,
) -> dict[str, Any]:
    """The training spec of one stage of one round (see training.entrypoint for the keys)."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"unknown training stage {stage!r} (stages are {TRAINING_STAGES})")
    settings = stage_settings(models_settings, stage, locally_built=locally_built)
    seed = int(models_settings.get("seed", 0)) + round_key
    spec: dict[str, Any] = {
        "stage": stage,
        "round": round_key,
        "name": checkpoint_name(stage, round_key),
        "output_dir": str(output_dir),
        "base_model": str(base_model),
        "dataset_path": str(dataset),
        "hyperparams": {"seed": seed, **settings["hyperparams"]},
    }
    threads = models_settings.get("round_threads") or models_settings.get("threads_per_process")
    if locally_built and not threads:
        from arena_dagster.training.base_models import DEFAULT_SKILLS_MODELS

        threads = DEFAULT_SKILLS_MODELS["round_threads"]
    if threads:
        spec["threads"] = int(threads)
    for key in ("device", "launch"):
        if models_settings.get(key):
            spec[key] = copy.deepcopy(models_settings[key])
    replay_rows = int(settings.get("replay_rows", 0) or 0)
    if stage == "sft" and replay_dataset and replay_rows:
        spec["replay"] = {"dataset_path": str(replay_dataset), "rows": replay_rows, "seed": seed}
    if stage == "rl":
        if not reward_model:
            raise ValueError("the rl stage needs the round's reward model")
        spec["reward_model"] = str(reward_model)
    return spec

