"""The round's training steps: SFT-Ir (group sft), DPO-Ir (group dpo), the reward model RM-Ir and RL-Ir (group rl).

Each trains in a subprocess from the previous stage's checkpoint on its stage's preference data of round r
(or of rounds 1..r where the schedule accumulates); a stage with no data is recorded as its parent. With
`compute.engine: ray` that process is a Ray job on the step's cluster, the driver of a Ray Train run
(defs/training_jobs.py, training/ray_train.py)."""


import json
from typing import Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.common import OWNERS
from arena_dagster.defs.compute import ArenaCompute
from arena_dagster.defs.resources import ArenaHome, round_of, round_partitions
from arena_dagster.defs.training_jobs import launch_training
from arena_dagster.preferences.export import (
    export_dataset,
    preference_training_rows,
    prompt_training_rows,
    sft_training_rows,
)
from arena_dagster.profile_schema.models import resolved_skills
from arena_dagster.registry import current_target, get_model, register_model, resolve_skipped, round_checkpoint
from arena_dagster.training.schedule import battle_prompts, checkpoint_name, stage_plan
from arena_dagster.training.stages import stage_training_spec
from arena_dagster.warehouse import read_table


# Which rows each training stage learns from, how they become training files, and whose data
# schedule (accumulation over rounds) applies: the reward model learns from the rl slice.
_STAGE_DATA = {
    "sft": ("sft_examples", sft_training_rows, "sft"),
    "dpo": ("dpo_pairs", preference_training_rows, "dpo"),
    "reward": ("reward_pairs", preference_training_rows, "rl"),
}


def _register_skipped(conn, *, stage: str, round_key: int, parent: dict[str, Any], reason: str,
                      provenance: dict[str, Any]) -> dg.MaterializeResult:
    # Nothing to learn: the stage's checkpoint is its parent, recorded as such (the next stage
    # battles and trains from the parent, and the leaderboard leaves the stage out).
    name = checkpoint_name(stage, round_key)
    register_model(
        conn, model=name, kind=stage, round_key=round_key, path=parent["path"], revision=parent["revision"],
        parent=parent["model"], manifest={"skipped": reason},
    )
    return dg.MaterializeResult(metadata={**provenance, "model": name, "skipped": reason, "parent": parent["model"]})


def _train(
    context: dg.AssetExecutionContext,
    arena: ArenaHome,
    duckdb: DuckDBResource,
    pipes: dg.PipesSubprocessClient,
    compute: ArenaCompute,
    *,
    stage: str,
    parent: dict[str, Any],
    rows: pl.DataFrame,
    training_rows: list[dict],
    reward_model: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dg.MaterializeResult:
    round_key = round_of(context)
    models = arena.settings().models
    name = checkpoint_name(stage, round_key)
    export = export_dataset(rows, training_rows, arena.folder("datasets", f"round-{round_key}", stage))
    locally_built = models.source != "declared"
    replay = None
    if locally_built:
        initial = resolved_skills(models).initial_target.name
        replay_path = arena.root / "models" / "data" / f"{initial}.jsonl"
        replay = replay_path if replay_path.is_file() else None
    output_dir = str(arena.folder("checkpoints") / name)
    spec = stage_training_spec(
        stage,
        round_key=round_key,
        base_model=parent["path"],
        dataset=export["train_path"],
        output_dir=output_dir,
        models=models,
        locally_built=locally_built,
        replay_dataset=replay,
        reward_model=reward_model["path"] if reward_model else None,
    )
    with compute.training(context) as engine:
        manifest, reported = launch_training(context, spec, pipes, engine)
    with duckdb.get_connection() as conn:
        register_model(
            conn, model=name, kind=stage, round_key=round_key, path=output_dir,
            revision=manifest["spec_hash"], parent=parent["model"], dataset_hash=manifest["dataset_hash"], manifest=manifest,
        )
    return dg.MaterializeResult(
        metadata={
            **reported,
            **arena.provenance(),
            "model": name,
            "parent": parent["model"],
            "dataset_rows": export["rows"],
            "dataset_hash": manifest["dataset_hash"],
            "dataset_export": dg.MetadataValue.path(export["hf_path"]),
            "hyperparams": dg.MetadataValue.json(manifest.get("hyperparams", {})),
            "metrics": dg.MetadataValue.json(manifest.get("metrics", {})),
            "wall_s": manifest.get("wall_s", 0.0),
            "path": dg.MetadataValue.path(output_dir),
            **(extra or {}),
        }
    )


def _train_on_table(context, arena: ArenaHome, duckdb: DuckDBResource, pipes: dg.PipesSubprocessClient,
                    compute: ArenaCompute, *, stage: str, parent: dict[str, Any]) -> dg.MaterializeResult:
    round_key = round_of(context)
    table, to_rows, schedule_stage = _STAGE_DATA[stage]
    plan = stage_plan(arena.settings().schedule, schedule_stage, round_key)
    rounds = ", ".join(str(r) for r in plan.data_rounds)
    with duckdb.get_connection() as conn:
        rows = read_table(conn, table, where=f"round IN ({rounds})")
        if rows.is_empty():
            return _register_skipped(conn, stage=stage, round_key=round_key, parent=parent,
                                     reason=f"{table} has no rows for rounds {rounds}", provenance=arena.provenance())
        if stage == "reward" and rows["prompt_id"].n_unique() < 2:
            # Held-out accuracy needs prompts the model never saw: one prompt cannot be split.
            return _register_skipped(conn, stage=stage, round_key=round_key, parent=parent,
                                     reason=f"{table} has pairs of {rows['prompt_id'].n_unique()} prompt(s) for rounds {rounds}; "
                                            "a reward model needs at least 2 (one held out)", provenance=arena.provenance())
    return _train(context, arena, duckdb, pipes, compute, stage=stage, parent=parent, rows=rows, training_rows=to_rows(rows),
                  extra={"data_rounds": list(plan.data_rounds), "table": table})


@dg.asset(
    group_name="sft",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["sft_examples", "sft_judge_health"],
    description="Round r: SFT-I{r}, TRL SFTTrainer on the sft slice's winning answers, from the round's target (in a subprocess).",
)
def sft_checkpoint(
    context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource, pipes: dg.PipesSubprocessClient,
    compute: ArenaCompute,
) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        parent = current_target(conn, round_of(context))
    return _train_on_table(context, arena, duckdb, pipes, compute, stage="sft", parent=parent)


@dg.asset(
    group_name="dpo",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[sft_checkpoint, "dpo_pairs", "dpo_judge_health"],
    description="Round r: DPO-I{r}, TRL DPOTrainer on the dpo slice's (winner, loser) pairs, from SFT-I{r} (its frozen copy is the reference).",
)
def dpo_checkpoint(
    context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource, pipes: dg.PipesSubprocessClient,
    compute: ArenaCompute,
) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        parent = resolve_skipped(conn, round_checkpoint(conn, "sft", round_of(context)))
    return _train_on_table(context, arena, duckdb, pipes, compute, stage="dpo", parent=parent)


def _reward_accuracy_floor(arena: ArenaHome) -> float:
    return arena.settings().reward_model.min_eval_accuracy


@dg.asset(
    group_name="rl",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[dpo_checkpoint, "reward_pairs", "rl_judge_health"],
    check_specs=[
        dg.AssetCheckSpec(
            name="held_out_pair_accuracy",
            asset="reward_model",
            description="The reward model ranks held-out (chosen, rejected) pairs above the profile's floor.",
        )
    ],
    description=(
        "Round r: RM-I{r}, TRL RewardTrainer on the rl slice's (chosen, rejected) battle pairs, initialised from DPO-I{r}; "
        "held-out pair accuracy (pairs of prompts it never saw) as metadata and as an asset check."
    ),
)
def reward_model(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource,
                 pipes: dg.PipesSubprocessClient, compute: ArenaCompute):
    round_key = round_of(context)
    with duckdb.get_connection() as conn:
        parent = resolve_skipped(conn, round_checkpoint(conn, "dpo", round_key))
    result = _train_on_table(context, arena, duckdb, pipes, compute, stage="reward", parent=parent)
    floor = _reward_accuracy_floor(arena)
    with duckdb.get_connection() as conn:
        row = get_model(conn, checkpoint_name("reward", round_key))
    manifest = json.loads(row["manifest"] or "{}")
    metrics = manifest.get("metrics", {})
    accuracy = metrics.get("eval_accuracy")
    yield result
    yield dg.AssetCheckResult(
        check_name="held_out_pair_accuracy",
        passed=accuracy is not None and accuracy >= floor,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"held-out pair accuracy {accuracy:.3f} on {metrics.get('eval_pairs')} pairs (floor {floor})"
            if accuracy is not None else f"no reward model this round: {manifest.get('skipped', 'no metrics')}"
        ),
        metadata={"eval_accuracy": accuracy if accuracy is not None else -1.0, "floor": floor,
                  "eval_pairs": int(metrics.get("eval_pairs") or 0)},
    )


@dg.asset(
    group_name="rl",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[reward_model, "prompt_pool"],
    description=(
        "Round r: RL-I{r}, TRL RLOOTrainer on the rl slice's prompts, rewarded by RM-I{r}, with a KL penalty to DPO-I{r} "
        "(the policy it starts from). Skipped, and DPO-I{r} stands in, when the reward model is below its accuracy floor."
    ),
)
def rl_checkpoint(
    context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource, pipes: dg.PipesSubprocessClient,
    compute: ArenaCompute,
) -> dg.MaterializeResult:
    round_key = round_of(context)
    plan = stage_plan(arena.settings().schedule, "rl", round_key)
    floor = _reward_accuracy_floor(arena)
    with duckdb.get_connection() as conn:
        parent = resolve_skipped(conn, round_checkpoint(conn, "dpo", round_key))
        reward = round_checkpoint(conn, "reward", round_key)
        pool = read_table(conn, "prompt_pool")
        metrics = json.loads(reward["manifest"] or "{}").get("metrics", {})
        accuracy = metrics.get("eval_accuracy")
        if json.loads(reward["manifest"] or "{}").get("skipped") or accuracy is None:
            return _register_skipped(conn, stage="rl", round_key=round_key, parent=parent, reason="no reward model this round", provenance=arena.provenance())
        if accuracy < floor:
            return _register_skipped(conn, stage="rl", round_key=round_key, parent=parent,
                                     reason=f"reward model held-out accuracy {accuracy:.3f} < floor {floor}", provenance=arena.provenance())
    prompts = pl.concat([battle_prompts(pool, stage_plan(arena.settings().schedule, "rl", r)) for r in plan.data_rounds])
    return _train(context, arena, duckdb, pipes, compute, stage="rl", parent=parent, rows=prompts, training_rows=prompt_training_rows(prompts),
                  reward_model=reward, extra={"reward_model": reward["model"], "reward_eval_accuracy": accuracy,
                                              "data_rounds": list(plan.data_rounds)})
