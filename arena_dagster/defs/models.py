"""models group: the arena's competitors and the initial target, built (or declared) once per home."""


import dagster as dg
from dagster_duckdb import DuckDBResource

from arena_dagster.backends.models import declared_models, declared_revision, prepare_model_config
from arena_dagster.defs.common import OWNERS
from arena_dagster.defs.resources import ArenaHome
from arena_dagster.profile_schema.models import resolved_skills
from arena_dagster.registry import register_model
from arena_dagster.warehouse import read_table


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "competitor_models",
            group_name="models",
            kinds={"pytorch", "huggingface"},
            owners=OWNERS,
            deps=["arena_testset"],
            description=(
                "The competitor models of the arena, built once per home (embedded default: tiny Llamas trained "
                "locally, each strong on some task families; declared profiles: served or recorded models); none "
                "has seen an arena test prompt. Every round battles and evaluates against them."
            ),
        ),
        dg.AssetSpec(
            "initial_target_model",
            group_name="models",
            kinds={"pytorch", "huggingface"},
            owners=OWNERS,
            deps=["arena_testset"],
            description="The target model before any flywheel round: round 1 battles with it unless the baseline says otherwise.",
        ),
    ]
)
def base_models(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource):
    declared = arena.settings().models.source == "declared"
    if declared:
        yield from _register_declared_models(arena, duckdb)
        return
    from arena_dagster.training.base_models import build_base_models

    with duckdb.get_connection() as conn:
        excluded = read_table(conn, "arena_testset")["prompt"].to_list()
    built = build_base_models(arena.folder("models"), arena.settings().models, exclude_prompts=excluded, log=context.log.info)
    manifests = built["manifests"]
    target_name = resolved_skills(arena.settings().models).initial_target.name
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
            **arena.provenance(),
            "models": dg.MetadataValue.json({k: str(v) for k, v in built["competitors"].items()}),
            "tokenizer": dg.MetadataValue.path(built["tokenizer"]),
            "wall_s": dg.MetadataValue.json({k: manifests[k].get("wall_s") for k in built["competitors"]}),
        },
    )
    yield dg.MaterializeResult(
        asset_key="initial_target_model",
        metadata={
            **arena.provenance(),
            "model": target_name,
            "path": dg.MetadataValue.path(str(built["initial_target"])),
            "manifest": dg.MetadataValue.json(manifests[target_name]),
        },
    )


def _register_declared_models(arena: ArenaHome, duckdb: DuckDBResource):
    # `{home}` paths resolved, GGUF weights converted once to an HF folder (servable and trainable).
    entries = [(name, kind, prepare_model_config(config, arena.root))
               for name, kind, config in declared_models(arena.settings().models)]
    with duckdb.get_connection() as conn:
        for name, kind, config in entries:
            register_model(
                conn, model=name, kind=kind, round_key=0, path=str(config.get("path") or config.get("model") or ""),
                revision=str(config.get("revision") or declared_revision(config)), manifest={"declared": config},
            )
    competitors = {name: config.get("backend") for name, kind, config in entries if kind == "competitor"}
    target = next(name for name, kind, _ in entries if kind == "initial")
    yield dg.MaterializeResult(asset_key="competitor_models",
                               metadata={**arena.provenance(), "declared": dg.MetadataValue.json(competitors)})
    yield dg.MaterializeResult(asset_key="initial_target_model", metadata={**arena.provenance(), "model": target, "declared": True})
