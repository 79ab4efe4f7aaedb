"""battles group: every model answers the round's slice, the judge plays two games per battle."""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.answering import RESPONSE_SCHEMA, answer_prompts
from arena_dagster.defs.common import OWNERS, ArenaHome, round_of, round_partitions, table_check_specs, table_result
from arena_dagster.judging.battles import judge_battles, plan_target_battles
from arena_dagster.judging.judges import make_judge
from arena_dagster.models import generation_spec
from arena_dagster.registry import current_target, models_of_kind
from arena_dagster.warehouse import read_table, write_table


@dg.asset(
    group_name="battles",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["prompt_pool", "competitor_models", "initial_target_model"],
    check_specs=table_check_specs("responses"),
    description=(
        "Answers of the round's target (the last promoted checkpoint) and of every competitor to the "
        "round's prompt slice; cached by content hash, so reruns never generate twice."
    ),
)
def responses(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    profile = arena.settings()
    with duckdb.get_connection() as conn:
        prompts = read_table(conn, "prompt_pool", round_key=round_key)
        target = current_target(conn, round_key)
        competitors = models_of_kind(conn, "competitor").to_dicts()
    if prompts.is_empty():
        raise dg.Failure(f"round {round_key} has no prompts in prompt_pool (slices: profile prompts.rounds)")
    frames, stats = [], []
    for row, role in [(target, "target")] + [(c, "competitor") for c in competitors]:
        frame, stat = answer_prompts(
            generation_spec(row, profile), prompts, arena.cache_path, round_key=round_key, role=role, log=context.log.info
        )
        frames.append(frame)
        stats.append(stat.as_dict())
    with duckdb.get_connection() as conn:
        write_table(conn, "responses", pl.concat(frames) if frames else pl.DataFrame(schema=RESPONSE_SCHEMA), round_key=round_key)
        return table_result(
            conn,
            "responses",
            round_key,
            {
                "target": target["model"],
                "target_parent": target.get("parent") or "",
                "cache_hits": sum(s["cache_hits"] for s in stats),
                "cache_misses": sum(s["cache_misses"] for s in stats),
                "per_model": dg.MetadataValue.json(stats),
            },
        )


@dg.asset(
    group_name="battles",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[responses, "prompt_pool"],
    check_specs=table_check_specs("judgments"),
    description=(
        "The judge's raw text and parsed 1-10 scores for every (target, competitor) battle of the round, "
        "in both orders (the two-game setup against position bias)."
    ),
)
def judgments(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    judge = make_judge(arena.settings()["judge"], cache_path=arena.cache_path, home=arena.root)
    with duckdb.get_connection() as conn:
        answers = read_table(conn, "responses", round_key=round_key)
        prompts = read_table(conn, "prompt_pool", round_key=round_key)
    target = answers.filter(pl.col("role") == "target")["model"].unique().to_list()
    competitors = answers.filter(pl.col("role") == "competitor")["model"].unique().sort().to_list()
    if len(target) != 1:
        raise dg.Failure(f"round {round_key}: expected one target in responses, found {target}")
    battles = plan_target_battles(round_key, prompts["prompt_id"].to_list(), target[0], competitors)
    frame = judge_battles(battles, answers, prompts, judge, log=context.log.debug)
    with duckdb.get_connection() as conn:
        write_table(conn, "judgments", frame, round_key=round_key)
        return table_result(
            conn,
            "judgments",
            round_key,
            {
                "judge": judge.name,
                "judge_version": judge.version,
                "battles": battles.height,
                "parse_failures": int((~frame["parse_ok"]).sum()),
            },
        )
