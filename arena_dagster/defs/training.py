"""training group: base models, SFT then DPO checkpoints, and the promoted target."""


from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.common import OWNERS, ArenaHome, round_of, round_partitions
from arena_dagster.models import declared_models, declared_revision, prepare_model_config, trained_models_settings
from arena_dagster.preferences.export import dpo_training_rows, export_dataset, sft_training_rows
from arena_dagster.promotion import decide_promotion
from arena_dagster.registry import (
    current_target,
    get_model,
    record_promotion,
    register_model,
    round_checkpoint,
)
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


def _train_stage(
    context: dg.AssetExecutionContext,
    arena: ArenaHome,
    duckdb: DuckDBResource,
    *,
    stage: str,
    table: str,
    parent: dict[str, Any],
) -> dg.MaterializeResult:
    from arena_dagster.training.base_models import resolve_profile, round_training_specs
    from arena_dagster.training.runner import run_training

    round_key = round_of(context)
    profile = arena.settings()
    accumulate = bool(profile.get("preferences", {}).get(f"accumulate_{stage}_rounds", False))
    with duckdb.get_connection() as conn:
        rows = read_table(conn, table, where=f"round {'<=' if accumulate else '='} {round_key}")
    name = f"{stage.upper()}-I{round_key}"
    if rows.is_empty():
        # Nothing to learn this round: the stage's checkpoint is its parent, recorded as such.
        with duckdb.get_connection() as conn:
            register_model(
                conn, model=name, kind=stage, round_key=round_key, path=parent["path"], revision=parent["revision"],
                parent=parent["model"], manifest={"skipped": f"{table} has no rows for round {round_key}"},
            )
        return dg.MaterializeResult(metadata={"model": name, "skipped": True, "parent": parent["model"]})
    to_rows = sft_training_rows if stage == "sft" else dpo_training_rows
    export = export_dataset(rows, to_rows(rows), arena.folder("datasets", f"round-{round_key}", table))
    models = resolve_profile(trained_models_settings(profile))
    replay = arena.root / "models" / "data" / f"{models['initial_target']['name']}.jsonl"
    sft_spec, dpo_spec = round_training_specs(
        round_key=round_key,
        target_model=parent["path"],
        sft_dataset=export["train_path"],
        dpo_dataset=export["train_path"],
        output_root=arena.folder("checkpoints"),
        replay_dataset=replay if replay.is_file() else None,
        profile=trained_models_settings(profile),
    )
    spec = sft_spec if stage == "sft" else {**dpo_spec, "base_model": parent["path"]}
    output_dir = str(arena.folder("checkpoints") / name)
    spec = {**spec, "name": name, "output_dir": output_dir}
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
            "metrics": dg.MetadataValue.json(manifest.get("metrics", {})),
            "wall_s": manifest.get("wall_s", 0.0),
            "path": dg.MetadataValue.path(output_dir),
        }
    )


@dg.asset(
    group_name="training",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["sft_examples", "judge_health"],
    description="TRL SFTTrainer on the round's SFT examples, starting from the round's target (run in a subprocess).",
)
def sft_checkpoint(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        parent = current_target(conn, round_of(context))
    return _train_stage(context, arena, duckdb, stage="sft", table="sft_examples", parent=parent)


@dg.asset(
    group_name="training",
    kinds={"pytorch", "trl"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[sft_checkpoint, "dpo_pairs"],
    description="TRL DPOTrainer on the round's (winner, loser) pairs, starting from the round's SFT checkpoint.",
)
def dpo_checkpoint(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        parent = round_checkpoint(conn, "sft", round_of(context))
    return _train_stage(context, arena, duckdb, stage="dpo", table="dpo_pairs", parent=parent)


def round_candidate(conn, round_key: int) -> dict[str, Any]:
    """The checkpoint a round produced (round 0: the initial target, evaluated before any training)."""
    if round_key == 0:
        return current_target(conn, 0)
    return round_checkpoint(conn, "dpo", round_key)


@dg.asset(
    group_name="training",
    kinds={"python"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["leaderboard"],
    description=(
        "The promotion decision: the round's checkpoint becomes the next round's target only if its "
        "arena rating beats the current target's."
    ),
)
def target_model(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    margin = float(arena.settings().get("promotion", {}).get("margin", 0.0))
    with duckdb.get_connection() as conn:
        board = read_table(conn, "leaderboard", round_key=round_key)
        candidate = round_candidate(conn, round_key)
        incumbent = current_target(conn, round_key)
        decision = decide_promotion(board, candidate=candidate["model"], incumbent=incumbent["model"], margin=margin)
        record_promotion(conn, round_key, decision)
        target = get_model(conn, decision["new_target"])
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in decision.items() if v is not None},
            "next_round_target": target["model"],
            "next_round_target_path": dg.MetadataValue.path(target["path"]),
        }
    )
