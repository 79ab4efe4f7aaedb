"""training group: base models, the round's SFT, DPO, reward-model and RL checkpoints, and the promoted target."""


import json
from typing import Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.common import OWNERS, ArenaHome, round_of, round_partitions
from arena_dagster.models import declared_models, declared_revision, prepare_model_config, trained_models_settings
from arena_dagster.preferences.export import (
    export_dataset,
    preference_training_rows,
    prompt_training_rows,
    sft_training_rows,
)
from arena_dagster.promotion import decide_promotion
from arena_dagster.registry import current_target, get_model, record_promotion, register_model, resolve_skipped, round_checkpoint
from arena_dagster.sql_models import create_views
from arena_dagster.training.schedule import battle_prompts, checkpoint_name, stage_plan
from arena_dagster.training.stages import round_candidate, stage_training_spec
from arena_dagster.warehouse import read_table


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "competitor_models",
            group_name="training",
            kinds={"pytorch", "huggingface"},
            owners=OWNERS,
            deps=["arena_testset"],
            description=(
                "The competitor models of the arena (embedded default: tiny Llamas trained locally, each "
                "strong on some task families); none has seen an arena test prompt."
            ),
        ),
        dg.AssetSpec(
            "initial_target_model",
            group_name="training",
            kinds={"pytorch", "huggingface"},
            owners=OWNERS,
            deps=["arena_testset"],
            description="The target model before any flywheel round (round 0's target).",
        ),
    ]
)
def base_models(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource):
    declared = arena.settings().get("models", {}).get("source") == "declared"
    if declared:
        yield from _register_declared_models(arena, duckdb)
        return
    from arena_dagster.training.base_models import build_base_models, resolve_profile

    models = resolve_profile(trained_models_settings(arena.settings()))
    with duckdb.get_connection() as conn:
        excluded = read_table(conn, "arena_testset")["prompt"].to_list()
    built = build_base_models(arena.folder("models"), models, exclude_prompts=excluded, log=context.log.info)
    manifests = built["manifests"]
    target_name = models["initial_target"]["name"]
    with duckdb.get_connection() as conn:
        for name, path in [*built["competitors"].items(), (target_name, built["initial_target"])]:
            manifest = manifests[name]
            register_model(
                conn, model=name, kind="initial" if name == target_name else "competitor", round_key=0,
                path=str(path), revision=manifest["spec_hash"], dataset_hash=manifest.get("dataset_hash"),
                manifest=manifest,
            )
    yield dg.MaterializeResult(
        asset_key="competitor_models",
        metadata={
            "models": dg.MetadataValue.json({k: str(v) for k, v in built["competitors"].items()}),
            "tokenizer": dg.MetadataValue.path(built["tokenizer"]),
            "wall_s": dg.MetadataValue.json({k: manifests[k].get("wall_s") for k in built["competitors"]}),
        },
    )
    yield dg.MaterializeResult(
        asset_key="initial_target_model",
        metadata={
            "model": target_name,
            "path": dg.MetadataValue.path(str(built["initial_target"])),
            "manifest": dg.MetadataValue.json(manifests[target_name]),
        },
    )


def _register_declared_models(arena: ArenaHome, duckdb: DuckDBResource):
    # `{home}` paths resolved, GGUF weights converted once to an HF folder (servable and trainable).
    entries = [(name, kind, prepare_model_config(config, arena.root))
               for name, kind, config in declared_models(arena.settings()["models"])]
    with duckdb.get_connection() as conn:
        for name, kind, config in entries:
            register_model(
                conn, model=name, kind=kind, round_key=0, path=str(config.get("path") or config.get("model")),
                revision=str(config.get("revision") or declared_revision(config)), manifest={"declared": config},
            )
    competitors = {name: config.get("backend") for name, kind, config in entries if kind == "competitor"}
    target = next(name for name, kind, _ in entries if kind == "initial")
    yield dg.MaterializeResult(asset_key="competitor_models", metadata={"declared": dg.MetadataValue.json(competitors)})
    yield dg.MaterializeResult(asset_key="initial_target_model", metadata={"model": target, "declared": True})


# Which rows each training stage learns from, how they become training files, and whose data
# schedule (accumulation over rounds) applies: the reward model learns from the rl slice.
_STAGE_DATA = {
    "sft": ("sft_examples", sft_training_rows, "sft"),
    "dpo": ("dpo_pairs", preference_training_rows, "dpo"),
    "reward": ("reward_pairs", preference_training_rows, "rl"),
}


def _register_skipped(conn, *, stage: str, round_key: int, parent: dict[str, Any], reason: str) -> dg.MaterializeResult:
    # Nothing to learn: the stage's checkpoint is its parent, recorded as such (the next stage
    # battles and trains from the parent, and the leaderboard leaves the stage out).
    name = checkpoint_name(stage, round_key)
    register_model(
        conn, model=name, kind=stage, round_key=round_key, path=parent["path"], revision=parent["revision"],
        parent=parent["model"], manifest={"skipped": reason},
    )
    return dg.MaterializeResult(metadata={"model": name, "skipped": reason, "parent": parent["model"]})


def _train(
    context: dg.AssetExecutionContext,
    arena: ArenaHome,
    duckdb: DuckDBResource,
    *,
    stage: str,
    parent: dict[str, Any],
    rows: pl.DataFrame,
    training_rows: list[dict],
    reward_model: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dg.MaterializeResult:
    from arena_dagster.training.runner import run_training

    round_key = round_of(context)
    profile = arena.settings()
    name = checkpoint_name(stage, round_key)
    export = export_dataset(rows, training_rows, arena.folder("datasets", f"round-{round_key}", stage))
    models_settings = trained_models_settings(profile)
    locally_built = profile.get("models", {}).get("source") != "declared"
    replay = None
    if locally_built:
        from arena_dagster.training.base_models import resolve_profile

        initial = resolve_profile(models_settings)["initial_target"]["name"]
        replay_path = arena.root / "models" / "data" / f"{initial}.jsonl"
        replay = replay_path if replay_path.is_file() else None
    output_dir = str(arena.folder("checkpoints") / name)
    spec = stage_training_spec(
        stage,
        round_key=round_key,
        base_model=parent["path"],
        dataset=export["train_path"],
        output_dir=output_dir,
        models_settings=models_settings,
        locally_built=locally_built,
        replay_dataset=replay,
        reward_model=reward_model["path"] if reward_model else None,
    )
    manifest = run_training(spec, log=context.log.info)
    with duckdb.get_connection() as conn:
        register_model(
            conn, model=name, kind=stage, round_key=round_key, path=output_dir,
            revision=manifest["spec_hash"], parent=parent["model"], dataset_hash=manifest["dataset_hash"], manifest=manifest,
        )
    return dg.MaterializeResult(
        metadata={
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


def _train_on_table(context, arena: ArenaHome, duckdb: DuckDBResource, *, stage: str, parent: dict[str, Any]) -> dg.MaterializeResult:
    round_key = round_of(context)
    table, to_rows, schedule_stage = _STAGE_DATA[stage]
    plan = stage_plan(arena.settings(), schedule_stage, round_key)
    rounds = ", ".join(str(r) for r in plan.data_rounds)
    with duckdb.get_connection() as conn:
        rows = read_table(conn, table, where=f"round IN ({rounds})")
        if rows.is_empty():
            return _register_skipped(conn, stage=stage, round_key=round_key, parent=parent,
                                     reason=f"{table} has no rows for rounds {rounds}")
        if stage == "reward" and rows["prompt_id"].n_unique() < 2:
            # Held-out accuracy needs prompts the model never saw: one prompt cannot be split.
            return _register_skipped(conn, stage=stage, round_key=round_key, parent=parent,
                                     reason=f"{table} has pairs of {rows['prompt_id'].n_unique()} prompt(s) for rounds {rounds}; "
                                            "a reward model needs at least 2 (one held out)")
    return _train(context, arena, duckdb, stage=stage, parent=parent, rows=rows, training_rows=to_rows(rows),
                  extra={"data_rounds": list(plan.data_rounds), "table": table})


@dg.asset(
    group_name="training",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["sft_examples", "sft_judge_health"],
    description="SFT-I{r}: TRL SFTTrainer on the sft slice's winning answers, from the round's target (in a subprocess).",
)
def sft_checkpoint(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        parent = current_target(conn, round_of(context))
    return _train_on_table(context, arena, duckdb, stage="sft", parent=parent)


@dg.asset(
    group_name="training",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[sft_checkpoint, "dpo_pairs", "dpo_judge_health"],
    description="DPO-I{r}: TRL DPOTrainer on the dpo slice's (winner, loser) pairs, from SFT-I{r} (its frozen copy is the reference).",
)
def dpo_checkpoint(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        parent = resolve_skipped(conn, round_checkpoint(conn, "sft", round_of(context)))
    return _train_on_table(context, arena, duckdb, stage="dpo", parent=parent)


def _reward_accuracy_floor(arena: ArenaHome) -> float:
    return float(arena.settings().get("reward_model", {}).get("min_eval_accuracy", 0.6))


@dg.asset(
    group_name="training",
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
        "RM-I{r}: TRL RewardTrainer on the rl slice's (chosen, rejected) battle pairs, initialised from DPO-I{r}; "
        "held-out pair accuracy (pairs of prompts it never saw) as metadata and as an asset check."
    ),
)
def reward_model(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource):
    round_key = round_of(context)
    with duckdb.get_connection() as conn:
        parent = resolve_skipped(conn, round_checkpoint(conn, "dpo", round_key))
    result = _train_on_table(context, arena, duckdb, stage="reward", parent=parent)
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
    group_name="training",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[reward_model, dpo_checkpoint, "prompt_pool"],
    description=(
        "RL-I{r}: TRL RLOOTrainer on the rl slice's prompts, rewarded by RM-I{r}, with a KL penalty to DPO-I{r} "
        "(the policy it starts from). Skipped, and DPO-I{r} stands in, when the reward model is below its accuracy floor."
    ),
)
def rl_checkpoint(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    plan = stage_plan(arena.settings(), "rl", round_key)
    floor = _reward_accuracy_floor(arena)
    with duckdb.get_connection() as conn:
        parent = resolve_skipped(conn, round_checkpoint(conn, "dpo", round_key))
        reward = round_checkpoint(conn, "reward", round_key)
        pool = read_table(conn, "prompt_pool")
        metrics = json.loads(reward["manifest"] or "{}").get("metrics", {})
        accuracy = metrics.get("eval_accuracy")
        if json.loads(reward["manifest"] or "{}").get("skipped") or accuracy is None:
            return _register_skipped(conn, stage="rl", round_key=round_key, parent=parent, reason="no reward model this round")
        if accuracy < floor:
            return _register_skipped(conn, stage="rl", round_key=round_key, parent=parent,
                                     reason=f"reward model held-out accuracy {accuracy:.3f} < floor {floor}")
    prompts = pl.concat([battle_prompts(pool, stage_plan(arena.settings(), "rl", r)) for r in plan.data_rounds])
    return _train(context, arena, duckdb, stage="rl", parent=parent, rows=prompts, training_rows=prompt_training_rows(prompts),
                  reward_model=reward, extra={"reward_model": reward["model"], "reward_eval_accuracy": accuracy,
                                              "data_rounds": list(plan.data_rounds)})


@dg.asset(
    group_name="training",
    kinds={"python"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["leaderboard"],
    description=(
        "The promotion gate: the round's candidate (its last stage's checkpoint) becomes the next round's target "
        "only if the lower bound of the paired prompt-bootstrap interval of (candidate - target) Elo on the arena "
        "test set is above the margin."
    ),
)
def target_model(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    settings = arena.settings()
    gate = settings.get("promotion", {})
    evaluation = settings.get("evaluation", {})
    with duckdb.get_connection() as conn:
        board = read_table(conn, "leaderboard", round_key=round_key)
        battles = read_table(conn, "arena_battles", round_key=round_key)
        candidate = round_candidate(conn, round_key)
        incumbent = current_target(conn, round_key)
        decision = decide_promotion(
            battles.select("model_a", "model_b", "winner", pl.col("prompt_id").alias("question_id")),
            candidate=candidate["model"],
            incumbent=incumbent["model"],
            margin=float(gate.get("margin", 0.0)),
            bootstrap=int(gate.get("bootstrap", evaluation.get("bootstrap", 200))),
            seed=int(evaluation.get("seed", 0)),
            ratings=dict(zip(board["model"].to_list(), board["rating"].to_list())),
            baseline=round_key == 0,
        )
        record_promotion(conn, round_key, decision)
        create_views(conn)
        target = get_model(conn, decision["new_target"])
    context.log.info(f"round {round_key}: {decision['reason']} -> next target {target['model']}")
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in decision.items() if v is not None},
            "next_round_target": target["model"],
            "next_round_target_path": dg.MetadataValue.path(target["path"]),
        }
    )
