"""evaluation group: every model on the fixed arena test set, judged pairwise, and the leaderboard."""


from typing import Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.answering import answer_prompts
from arena_dagster.defs.common import OWNERS, ArenaHome, round_of, round_partitions, table_check_specs, table_result
from arena_dagster.judging.battles import judge_battles, plan_round_robin
from arena_dagster.judging.judges import make_judge
from arena_dagster.models import generation_spec
from arena_dagster.registry import current_target, models_of_kind
from arena_dagster.training.stages import round_candidate, round_checkpoints
from arena_dagster.warehouse import read_table, write_table


def arena_models(conn, round_key: int) -> list[tuple[dict[str, Any], str, str]]:
    """(registry row, role, kind) of every model on the round's leaderboard.

    The round's candidate (its last stage's checkpoint), the round's other stage checkpoints
    (so the leaderboard shows what each stage reached), the current target and the competitors.
    """
    candidate = round_candidate(conn, round_key)
    incumbent = current_target(conn, round_key)
    chosen = [(candidate, "target", "candidate" if round_key else "initial")]
    chosen += [(row, "competitor", "stage") for row in round_checkpoints(conn, round_key) if row["model"] != candidate["model"]]
    if incumbent["model"] != candidate["model"]:
        chosen.append((incumbent, "competitor", "incumbent"))
    chosen += [(row, "competitor", "competitor") for row in models_of_kind(conn, "competitor").to_dicts()]
    return chosen


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["arena_testset", "sft_checkpoint", "dpo_checkpoint", "rl_checkpoint", "competitor_models", "initial_target_model"],
    check_specs=table_check_specs("arena_responses"),
    description=(
        "Answers of the round's stage checkpoints (SFT, DPO, RL), the current target and every competitor to the "
        "arena test set (cached)."
    ),
)
def arena_responses(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    profile = arena.settings()
    with duckdb.get_connection() as conn:
        testset = read_table(conn, "arena_testset")
        models = arena_models(conn, round_key)
    frames, stats = [], []
    for row, role, _kind in models:
        frame, stat = answer_prompts(
            generation_spec(row, profile), testset, arena.cache_path, round_key=round_key, role=role, log=context.log.info
        )
        frames.append(frame)
        stats.append(stat.as_dict())
    with duckdb.get_connection() as conn:
        write_table(conn, "arena_responses", pl.concat(frames), round_key=round_key)
        return table_result(
            conn,
            "arena_responses",
            round_key,
            {
                "models": [row["model"] for row, _, _ in models],
                "testset_version": testset["testset_version"][0],
                "cache_hits": sum(s["cache_hits"] for s in stats),
                "cache_misses": sum(s["cache_misses"] for s in stats),
                "per_model": dg.MetadataValue.json(stats),
            },
        )


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[arena_responses],
    check_specs=table_check_specs("arena_judgments"),
    description="Pairwise judgments of every pair of arena models on every test prompt, in both orders.",
)
def arena_judgments(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    judge = make_judge(arena.settings()["judge"], cache_path=arena.cache_path, home=arena.root)
    with duckdb.get_connection() as conn:
        answers = read_table(conn, "arena_responses", round_key=round_key)
        testset = read_table(conn, "arena_testset")
    battles = plan_round_robin(round_key, testset["prompt_id"].to_list(), answers["model"].unique().to_list())
    frame = judge_battles(battles, answers, testset, judge, log=context.log.debug)
    with duckdb.get_connection() as conn:
        write_table(conn, "arena_judgments", frame, round_key=round_key)
        return table_result(
            conn, "arena_judgments", round_key,
            {"judge": judge.name, "battles": battles.height, "parse_failures": int((~frame["parse_ok"]).sum())},
        )


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["arena_battles"],
    check_specs=table_check_specs("leaderboard"),
    description=(
        "Bradley-Terry leaderboard (base 10, scale 400, tie = half a win) of the round's arena battles with "
        "95% bootstrap intervals; rows of all rounds form the leaderboard history."
    ),
)
def leaderboard(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    from arena_dagster.ratings import leaderboard as fit_leaderboard

    round_key = round_of(context)
    settings = arena.settings().get("evaluation", {})
    with duckdb.get_connection() as conn:
        battles = read_table(conn, "arena_battles", round_key=round_key)
        testset_version = read_table(conn, "arena_testset")["testset_version"][0]
        models = arena_models(conn, round_key)
    anchor = settings.get("anchor") or f"{sorted(r['model'] for r, _, k in models if k == 'competitor')[0]}=1000"
    board = fit_leaderboard(
        battles.select("model_a", "model_b", "winner", pl.col("prompt_id").alias("question_id")),
        anchor=anchor,
        bootstrap=int(settings.get("bootstrap", 200)),
        bootstrap_unit=settings.get("bootstrap_unit", "prompt"),
        seed=int(settings.get("seed", 0)),
    )
    roles = pl.DataFrame(
        [{"model": row["model"], "role": role, "kind": kind, "stage": row["kind"], "model_path": row["path"]}
         for row, role, kind in models]
    )
    board = board.join(roles, on="model", how="left").with_columns(
        pl.lit(round_key, dtype=pl.Int64).alias("round"),
        pl.lit(testset_version).alias("testset_version"),
        pl.lit(anchor).alias("anchor"),
    )
    with duckdb.get_connection() as conn:
        write_table(conn, "leaderboard", board, round_key=round_key)
        table = "\n".join(
            f"{r['rank']:>3} {r['model']:<24} {r['rating']:8.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}] {r['kind']}"
            for r in board.sort("rating", descending=True).iter_rows(named=True)
        )
        context.log.info(f"round {round_key} leaderboard\n{table}")
        return table_result(
            conn, "leaderboard", round_key,
            {"anchor": anchor, "battles": battles.height, "testset_version": testset_version,
             "leaderboard": dg.MetadataValue.md(f"```\n{table}\n```")},
        )
