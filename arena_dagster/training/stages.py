"""A round's training stages: the settings and the training spec each stage trains with.

Plain functions over the profile; the Dagster layer calls them. Who each stage battles with
is the registry's (registry.stage_battle_target). Training specs are built here and run by
`training.runner` in subprocesses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arena_dagster.profile_schema.flywheel import stage_settings
from arena_dagster.profile_schema.models import SKILLS_DEFAULTS, DeclaredModels, SkillsModels
from arena_dagster.training.schedule import checkpoint_name

TRAINING_STAGES = ("sft", "dpo", "reward", "rl")


def stage_training_spec(
    stage: str,
    *,
    round_key: int,
    base_model: str | Path,
    dataset: str | Path,
    output_dir: str | Path,
    models: SkillsModels | DeclaredModels | None,
    locally_built: bool,
    replay_dataset: str | Path | None = None,
    reward_model: str | Path | None = None,
) -> dict[str, Any]:
    """The training spec of one stage of one round (see training.entrypoint for the keys)."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"unknown training stage {stage!r} (stages are {TRAINING_STAGES})")
    models = models if models is not None else SkillsModels()
    settings = stage_settings(models.flywheel, stage, locally_built=locally_built)
    seed = models.seed + round_key
    spec: dict[str, Any] = {
        "stage": stage,
        "round": round_key,
        "name": checkpoint_name(stage, round_key),
        "output_dir": str(output_dir),
        "base_model": str(base_model),
        "dataset_path": str(dataset),
        "hyperparams": {"seed": seed, **settings.hyperparams},
    }
    # Only what the profile sets goes into the spec (its hash is the checkpoint's identity).
    threads = models.round_threads or models.threads_per_process
    if locally_built and not threads:
        threads = SKILLS_DEFAULTS.round_threads
    if threads:
        spec["threads"] = threads
    if models.device:
        spec["device"] = models.device
    launch = models.launch.model_dump(exclude_unset=True) if models.launch is not None else {}
    if launch:
        spec["launch"] = launch
    replay_rows = settings.replay_rows
    if stage == "sft" and replay_dataset and replay_rows:
        spec["replay"] = {"dataset_path": str(replay_dataset), "rows": replay_rows, "seed": seed}
    if stage == "rl":
        if not reward_model:
            raise ValueError("the rl stage needs the round's reward model")
        spec["reward_model"] = str(reward_model)
    return spec

