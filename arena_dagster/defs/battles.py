"""Per training stage (groups sft, dpo, rl): the stage's target and every competitor answer the stage's part of
round r's slice, and the judge plays two games per battle."""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.backends.answering import RESPONSE_SCHEMA, answer_into
from arena_dagster.backends.models import generation_spec
from arena_dagster.defs.common import OWNERS, round_answers, round_inputs, table_check_specs, table_result
from arena_dagster.defs.compute import ArenaCompute
from arena_dagster.defs.resources import ArenaHome, round_of, round_partitions
from arena_dagster.judging.battles import JUDGMENT_SCHEMA, judge_in_chunks, plan_target_battles
from arena_dagster.judging.judges import make_judge
from arena_dagster.registry import models_of_kind, stage_battle_target
from arena_dagster.training.schedule import PREVIOUS_STAGE, STAGES, battle_prompts, stage_plan
from arena_dagster.shards import RoundWriter
from arena_dagster.warehouse import read_table

# The asset that trains a stage's battle target (the round's target comes from the previous round).
# An asset names its nearest upstream step; what that step depends on (the competitors, the
# baseline) is upstream of it too, and Dagster's staleness follows the whole lineage. The
# collapsed graph then reads as the flywheel's chain of steps.
_TARGET_ASSETS = {None: ["round_target"], "sft": ["sft_checkpoint"], "dpo": ["dpo_checkpoint"]}


def stage_battle_assets(stage: str) -> list[dg.AssetsDefinition]:
    responses_table, judgments_table = f"{stage}_responses", f"{stage}_judgments"
    previous = PREVIOUS_STAGE[stage]
    target_text = f"this round's {previous.upper()} checkpoint" if previous else "the round's target (the last promoted checkpoint)"

    @dg.asset(
        name=responses_table,
        group_name=stage,
        kinds={"python", "duckdb"},
        owners=OWNERS,
        partitions_def=round_partitions,
        deps=["prompt_pool", *_TARGET_ASSETS[previous]],
        check_specs=table_check_specs(responses_table),
        description=(
            f"Round r, stage {stage}: answers of {target_text} and of every competitor to the `{stage}` part of round "
            "r's prompt slice; cached by content hash, so reruns never generate twice."
        ),
    )
    def stage_responses(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource,
                        compute: ArenaCompute) -> dg.MaterializeResult:
        round_key = round_of(context)
        settings = arena.settings()
        plan = stage_plan(settings.schedule, stage, round_key)
        with duckdb.get_connection() as conn:
            prompts = battle_prompts(read_table(conn, "prompt_pool"), plan)
            target = stage_battle_target(conn, plan)
            competitors = models_of_kind(conn, "competitor").to_dicts()
        if prompts.is_empty():
            raise dg.Failure(f"round {round_key} has no prompts for stage {stage} in prompt_pool (profile prompts.rounds)")
        stats = []
        with RoundWriter(arena.root, responses_table, round_key, RESPONSE_SCHEMA) as shards:
            with compute.session(context):
                for row, role in [(target, "target")] + [(c, "competitor") for c in competitors]:
                    stat = answer_into(
                        shards.write, generation_spec(row, settings.generation), prompts, arena.cache_path,
                        round_key=round_key, role=role, log=context.log.info, compute=compute.settings(),
                    )
                    stats.append(stat.as_dict())
            with duckdb.get_connection() as conn:
                shards.commit(conn)
        with duckdb.get_connection() as conn:
            return table_result(
                conn,
                responses_table,
                round_key,
                {
                    **arena.provenance(),
                    "stage": stage,
                    "slice": plan.slice,
                    "prompts": prompts.height,
                    "target": target["model"],
                    "target_parent": target.get("parent") or "",
                    "cache_hits": sum(s["cache_hits"] for s in stats),
                    "cache_misses": sum(s["cache_misses"] for s in stats),
                    "per_model": dg.MetadataValue.json(stats),
                },
            )

    @dg.asset(
        name=judgments_table,
        group_name=stage,
        kinds={"python", "duckdb"},
        owners=OWNERS,
        partitions_def=round_partitions,
        deps=[responses_table, "prompt_pool"],
        check_specs=table_check_specs(judgments_table),
        description=(
            f"Round r, stage {stage}: the judge's raw text and parsed 1-10 scores for every (target, competitor) "
            "battle of the stage's prompts, in both orders (the two-game setup against position bias)."
        ),
    )
    def stage_judgments(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource,
                        compute: ArenaCompute) -> dg.MaterializeResult:
        round_key = round_of(context)
        judge = make_judge(arena.settings().judge, cache_path=arena.cache_path, home=arena.root, compute=compute.settings())
        with duckdb.get_connection() as conn:
            answered = round_answers(conn, responses_table, round_key)
            prompt_ids = read_table(conn, "prompt_pool", columns="prompt_id", where_params=[round_key],
                                    where=f"prompt_id IN (SELECT prompt_id FROM {responses_table} WHERE round = ?)")
        target = answered.filter(pl.col("role") == "target")["model"].unique().to_list()
        competitors = answered.filter(pl.col("role") == "competitor")["model"].unique().sort().to_list()
        if len(target) != 1:
            raise dg.Failure(f"round {round_key} stage {stage}: expected one target in {responses_table}, found {target}")
        battles = plan_target_battles(round_key, prompt_ids["prompt_id"].sort().to_list(), target[0], competitors)
        with compute.session(context), RoundWriter(arena.root, judgments_table, round_key, JUDGMENT_SCHEMA) as shards:
            counts = judge_in_chunks(battles, round_inputs(duckdb, responses_table, "prompt_pool", round_key), judge,
                                     shards.write, log=context.log.info)
            with duckdb.get_connection() as conn:
                shards.commit(conn)
        with duckdb.get_connection() as conn:
            return table_result(
                conn,
                judgments_table,
                round_key,
                {
                    **arena.provenance(),
                    "stage": stage,
                    "judge": judge.name,
                    "judge_version": judge.version,
                    "battles": battles.height,
                    "parse_failures": counts["parse_failures"],
                },
            )

    return [stage_responses, stage_judgments]


def stage_battles() -> list[dg.AssetsDefinition]:
    return [asset for stage in STAGES for asset in stage_battle_assets(stage)]
