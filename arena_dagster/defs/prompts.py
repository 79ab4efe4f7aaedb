"""prompts group: the raw pool, the arena test set, and the curated pool sliced into rounds (with its quarantine).

All three are built once per home (unpartitioned) and shared by every round: round r reads
its slice of `prompt_pool`; the arena test set is the same in every round, so ratings of
different rounds are comparable.""" 

import contextlib

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.common import OWNERS, table_check_specs, table_metadata, table_result
from arena_dagster.defs.compute import ArenaCompute
from arena_dagster.defs.resources import ArenaHome
from arena_dagster.profile_schema.constants import REAL_SOURCES
from arena_dagster.prompts.pools import curated_pool, frozen_rounds, raw_prompt_frame, slice_sizes, testset_with_stats
from arena_dagster.prompts.real_sources import source_metadata, write_recorded_answers
from arena_dagster.warehouse import read_table, table_exists, write_table


@dg.asset(
    group_name="prompts",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    check_specs=table_check_specs("raw_prompts"),
    description="Instruction prompts as ingested from the profile's source, duplicates and junk included.",
)
def raw_prompts(arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    settings = arena.settings()
    frame = raw_prompt_frame(settings)
    counts = source_metadata(settings.prompts)
    with duckdb.get_connection() as conn:
        write_table(conn, "raw_prompts", frame)
        return table_result(
            conn, "raw_prompts", None,
            {**arena.provenance(), "source": settings.prompts.source, **({"ingest": dg.MetadataValue.json(counts)} if counts else {})},
        )


@dg.asset(
    group_name="prompts",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    check_specs=table_check_specs("arena_testset"),
    description=(
        "The fixed offline arena (WizardArena-style): a diverse part spread across clusters/families "
        "and a hard part; versioned by a hash of its prompts."
    ),
)
def arena_testset(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource,
                  compute: ArenaCompute) -> dg.MaterializeResult:
    from arena_dagster.judging.judges import make_judge

    with contextlib.ExitStack() as on_engine:

        def judge_factory():
            # The cluster only when a judge is asked for (a difficulty judge of real sources): on Ray its replicas
            # load once for the step, like the battles' judge.
            on_engine.enter_context(compute.session(context))
            return make_judge(arena.settings().judge, cache_path=arena.cache_path, home=arena.root,
                              compute=compute.settings())

        frame, build = testset_with_stats(arena.settings(), judge_factory=judge_factory, log=context.log.info)
    with duckdb.get_connection() as conn:
        write_table(conn, "arena_testset", frame)
        counts = frame.group_by("subset").len().to_dicts()
        return table_result(
            conn,
            "arena_testset",
            None,
            {
                **arena.provenance(),
                "testset_version": frame["testset_version"][0],
                "subsets": dg.MetadataValue.json({c["subset"]: c["len"] for c in counts}),
                **({"build": dg.MetadataValue.json(build)} if build else {}),
            },
        )


def started_rounds(conn) -> pl.DataFrame | None:
    """Pool rows of every round whose battles have started: a rebuilt pool keeps them in place."""
    if not (table_exists(conn, "prompt_pool") and table_exists(conn, "sft_responses")):
        return None
    last = conn.execute("SELECT max(round) FROM sft_responses").fetchone()[0]
    if last is None:
        return None
    return read_table(conn, "prompt_pool", where=f"round <= {int(last)}")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "prompt_pool",
            group_name="prompts",
            kinds={"python", "duckdb"},
            owners=OWNERS,
            deps=[raw_prompts, arena_testset],
            description=(
                "The curated pool, cut into one slice per training round (and each slice into the stages' parts "
                "sft/dpo/rl). Built once per home: normalized, short instructions dropped, exact and near duplicates "
                "removed, decontaminated against the arena test set. A prompt's round and stage come from a seeded "
                "hash of its id, so a rebuild never moves one; rounds whose battles started keep their prompts, and "
                "new prompts are deduplicated against them. Round r's slice is what round r battles on."
            ),
        ),
        dg.AssetSpec(
            "prompt_quarantine",
            group_name="prompts",
            kinds={"python", "duckdb"},
            owners=OWNERS,
            deps=[raw_prompts, arena_testset],
            description="Every raw prompt the curation removed, with the step that removed it (too short, duplicate, contaminated ...).",
        ),
    ],
    check_specs=table_check_specs("prompt_pool"),
)
def prompt_pool(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource, compute: ArenaCompute):
    settings = arena.settings()
    with duckdb.get_connection() as conn:
        raw = read_table(conn, "raw_prompts")
        testset = read_table(conn, "arena_testset")
        frozen = started_rounds(conn)
        pool, removed, quarantine = curated_pool(raw, testset, settings, frozen=frozen,
                                                   curate_rows=compute.curation(context))
        write_table(conn, "prompt_pool", pool)
        write_table(conn, "prompt_quarantine", quarantine)
        per_round = pool.group_by("round").len().sort("round")
        recorded = {}
        if settings.prompts.source in REAL_SOURCES:
            # The recorded competitor answers by prompt id, from the pool's and the test set's rows.
            recorded = write_recorded_answers(pool, testset, arena.folder("recorded"))
        pool_result = table_result(
            conn,
            "prompt_pool",
            None,
            {
                **arena.provenance(),
                "input_rows": raw.height,
                "frozen_rounds": frozen_rounds(frozen),
                "kept_rows": pool.height,
                # The number of round slices: the `round` partitions the sensor (or the CLI) adds.
                "rounds": int(pool["round"].max() or 0) if pool.height else 0,
                "removed_by_step": dg.MetadataValue.json(removed),
                **{f"removed/{step}": count for step, count in removed.items()},
                "rows_per_round": dg.MetadataValue.json({str(r): n for r, n in per_round.iter_rows()}),
                "slices": dg.MetadataValue.json(slice_sizes(pool)),
                **({"recorded_answers": dg.MetadataValue.json(recorded)} if recorded else {}),
            },
        )
        quarantine_metadata = table_metadata(conn, "prompt_quarantine", None)
    yield dg.MaterializeResult(asset_key="prompt_pool", metadata=pool_result.metadata, check_results=pool_result.check_results)
    yield dg.MaterializeResult(
        asset_key="prompt_quarantine",
        metadata={**arena.provenance(), **quarantine_metadata, **{f"removed/{step}": count for step, count in removed.items()}},
    )
