"""evaluation group: the round's models on the fixed arena test set, judged pairwise, and the leaderboard.

Round r's arena holds every stage checkpoint of round r (SFT-Ir, DPO-Ir, RL-Ir: the gate's
candidates), the round's target (the incumbent), the initial target and the competitors, all
on the same test prompts and judged by the same judge, so one Bradley-Terry fit ranks them
and ratings of different rounds are comparable (the same competitor anchors every round).
The baseline (`baseline_leaderboard`, group `baseline`) is the same evaluation before any
training: the initial target and the competitors.
"""


from typing import Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.backends.answering import RESPONSE_SCHEMA, answer_into, answers_recorded
from arena_dagster.backends.models import generation_spec
from arena_dagster.defs.common import OWNERS, round_answers, round_inputs, table_check_results, table_check_specs, table_result
from arena_dagster.defs.compute import ArenaCompute
from arena_dagster.defs.leaderboards import leaderboard_metadata, rate_categories
from arena_dagster.defs.resources import ArenaHome, round_of, round_partitions
from arena_dagster.judging.battles import JUDGMENT_SCHEMA, judge_in_chunks
from arena_dagster.judging.judges import make_judge, plan_arena
from arena_dagster.profile_schema.sections import EvaluationSettings
from arena_dagster.registry import current_target, models_of_kind, record_promotion, round_checkpoints
from arena_dagster.shards import RoundWriter
from arena_dagster.sql_models import load_models, run_model
from arena_dagster.warehouse import read_table, write_table


def arena_models(conn, round_key: int) -> list[tuple[dict[str, Any], str, str]]:
    """(registry row, role, kind) of every model on round `round_key`'s leaderboard.

    kind: `candidate` (a stage checkpoint of the round), `incumbent` (the round's target),
    `initial` (the initial target, kept in every round as the fixed reference of the lift),
    `competitor`. role: `target` for the target's lineage, `competitor` otherwise.
    """
    initial = models_of_kind(conn, "initial").row(0, named=True)
    if round_key == 0:
        chosen = [(initial, "target", "initial")]
    else:
        incumbent = current_target(conn, round_key)
        chosen = [(row, "target", "candidate") for row in round_checkpoints(conn, round_key)]
        seen = {row["model"] for row, _, _ in chosen}
        if incumbent["model"] not in seen:
            chosen.append((incumbent, "target", "incumbent"))
            seen.add(incumbent["model"])
        if initial["model"] not in seen:
            chosen.append((initial, "target", "initial"))
    chosen += [(row, "competitor", "competitor") for row in models_of_kind(conn, "competitor").to_dicts()]
    return chosen


def answer_arena(context, arena: ArenaHome, duckdb: DuckDBResource, compute: ArenaCompute, round_key: int) -> dict[str, Any]:
    """Every arena model answers the test set (cached; on the run's engine); writes round `round_key` of arena_responses."""
    generation = arena.settings().generation
    with duckdb.get_connection() as conn:
        testset = read_table(conn, "arena_testset")
        models = arena_models(conn, round_key)
    stats, specs = [], [generation_spec(row, generation) for row, _, _ in models]
    with compute.session(context), RoundWriter(arena.root, "arena_responses", round_key, RESPONSE_SCHEMA) as shards:
        for spec, (_row, role, _kind) in zip(specs, models):
            stat = answer_into(shards.write, spec, testset, arena.cache_path, round_key=round_key, role=role,
                               log=context.log.info, compute=compute.settings())
            stats.append(stat.as_dict())
        with duckdb.get_connection() as conn:
            shards.commit(conn)
    # Models known only through a recorded judge's verdicts answer nothing (NULL answers).
    unrecorded = [spec.name for spec in specs if not answers_recorded(spec) and testset.height]
    return {
        "models": [row["model"] for row, _, _ in models],
        **({"models_without_answers": ", ".join(unrecorded)} if unrecorded else {}),
        "testset_version": testset["testset_version"][0],
        "cache_hits": sum(s["cache_hits"] for s in stats),
        "cache_misses": sum(s["cache_misses"] for s in stats),
        "per_model": dg.MetadataValue.json(stats),
    }


def judge_arena(context, arena: ArenaHome, duckdb: DuckDBResource, compute: ArenaCompute, round_key: int) -> dict[str, Any]:
    """Two games for every pair of arena models on every test prompt (a recorded judge: the pairs its files
    hold); writes round `round_key` of arena_judgments."""
    judge = make_judge(arena.settings().judge, cache_path=arena.cache_path, home=arena.root, compute=compute.settings())
    with duckdb.get_connection() as conn:
        answered = round_answers(conn, "arena_responses", round_key)
        testset = read_table(conn, "arena_testset", columns="prompt_id")
    battles = plan_arena(judge, round_key, testset["prompt_id"].to_list(), answered["model"].unique().to_list())
    with compute.session(context), RoundWriter(arena.root, "arena_judgments", round_key, JUDGMENT_SCHEMA) as shards:
        counts = judge_in_chunks(battles, round_inputs(duckdb, "arena_responses", "arena_testset", round_key), judge,
                                 shards.write, log=context.log.info)
        with duckdb.get_connection() as conn:
            shards.commit(conn)
    rejected = dict(getattr(judge, "rejected", None) or {})  # a recorded judge's unusable file rows
    return {"judge": judge.name, "battles": battles.height, "parse_failures": counts["parse_failures"],
            **({"recorded_rows_rejected": dg.MetadataValue.json(rejected)} if rejected else {})}


def arena_battles_for_rating(conn, round_key: int, settings: EvaluationSettings) -> tuple[pl.DataFrame, dict[str, int]]:
    """The round's arena battles as the ratings take them, and the games left out by reason.

    `evaluation.rate`: battles, the two-game battles of arena_battles.sql; games, every judged
    game one battle of the verdict's weight (judging.recorded.judgment_battles, as arena-hard
    scores), from arena_judgments. With the answers' style features for style control."""
    from arena_dagster.judging.recorded import judgment_battles
    from arena_dagster.ratings import with_style_features

    if settings.rate == "games":
        battles, dropped = judgment_battles(read_table(conn, "arena_judgments", round_key=round_key),
                                            strong_weight=settings.strong_weight)
    else:
        battles, dropped = read_table(conn, "arena_battles", round_key=round_key).select(
            "model_a", "model_b", "winner", pl.col("prompt_id").alias("question_id")), {}
    if not settings.style_control:
        return battles, dropped
    answers = read_table(conn, "arena_responses", round_key=round_key).select(
        pl.col("prompt_id").alias("question_id"), "model", pl.col("response").alias("answer"))
    return with_style_features(battles, answers), dropped


def fit_arena(context, arena: ArenaHome, duckdb: DuckDBResource, round_key: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The round's Bradley-Terry leaderboard; writes round `round_key` of `leaderboard`."""
    from arena_dagster.ratings import rate
    from arena_dagster.ratings.sandwich import interval_description

    settings = arena.settings().evaluation
    style_control = settings.style_control
    with duckdb.get_connection() as conn:
        battles, dropped = arena_battles_for_rating(conn, round_key, settings)
        testset = read_table(conn, "arena_testset")
        testset_version = testset["testset_version"][0]
        models = arena_models(conn, round_key)
    anchor = settings.anchor or f"{sorted(r['model'] for r, _, k in models if k == 'competitor')[0]}=1000"
    baseline = settings.baseline
    result = rate(
        battles, anchor=anchor, baseline=baseline, bootstrap=settings.bootstrap,
        bootstrap_unit=settings.bootstrap_unit, seed=settings.seed,
        style_control=style_control, ci=settings.ci,
    )
    roles = pl.DataFrame(
        [{"model": row["model"], "role": role, "kind": kind, "stage": row["kind"], "model_path": row["path"]}
         for row, role, kind in models]
    )
    board = result.board.join(roles, on="model", how="left").with_columns(
        pl.lit(round_key, dtype=pl.Int64).alias("round"),
        pl.lit(testset_version).alias("testset_version"),
        pl.lit(anchor).alias("anchor"),
    )
    by_category = rate_categories(battles, testset, dict(
        anchor=anchor, baseline=baseline, bootstrap=settings.bootstrap,
        bootstrap_unit=settings.bootstrap_unit, seed=settings.seed,
        style_control=style_control, ci=settings.ci))
    with duckdb.get_connection() as conn:
        write_table(conn, "leaderboard", board, round_key=round_key)
        write_table(conn, "leaderboard_by_category", by_category["table"], round_key=round_key)
    context.log.info(f"round {round_key}: leaderboard of {board.height} models on {battles.height} battles")
    if result.unbounded:
        context.log.warning(f"round {round_key}: {result.unbounded_reason}")
    extra: dict[str, Any] = {
        "anchor": anchor, "battles": battles.height, "testset_version": testset_version,
        "rated": settings.rate,
        **({"battle_weight": float(battles["weight"].sum())} if "weight" in battles.columns else {}),
        **({"games_left_out": dg.MetadataValue.json(dropped)} if dropped else {}),
        "unbounded_models": ", ".join(result.unbounded) or "none",
        "ci_method": settings.ci,
        **by_category["metadata"],
        **leaderboard_metadata(board, battles, round_key, arena.folder("plots"),
                               interval_description(settings.ci, settings.bootstrap_unit)),
    }
    if result.style_coefficients is not None:
        extra["style_coefficients"] = dg.MetadataValue.table(
            [dg.TableRecord({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
             for row in result.style_coefficients.iter_rows(named=True)],
            schema=dg.TableSchema(columns=[dg.TableColumn(c) for c in result.style_coefficients.columns]),
        )
    return board, extra


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["rl_checkpoint"],  # after SFT-Ir and DPO-Ir; the test set and the competitors are further upstream
    check_specs=table_check_specs("arena_responses"),
    description=(
        "Round r: answers of round r's stage checkpoints (SFT-Ir, DPO-Ir, RL-Ir), the round's target, the initial "
        "target and every competitor to the arena test set (cached by content hash)."
    ),
)
def arena_responses(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource,
                    compute: ArenaCompute) -> dg.MaterializeResult:
    round_key = round_of(context)
    extra = answer_arena(context, arena, duckdb, compute, round_key)
    with duckdb.get_connection() as conn:
        return table_result(conn, "arena_responses", round_key, {**arena.provenance(), **extra})


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=[arena_responses],
    check_specs=table_check_specs("arena_judgments"),
    description="Round r: the judge's two games (both orders) for every pair of round r's arena models on every test prompt.",
)
def arena_judgments(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource,
                    compute: ArenaCompute) -> dg.MaterializeResult:
    round_key = round_of(context)
    extra = judge_arena(context, arena, duckdb, compute, round_key)
    with duckdb.get_connection() as conn:
        return table_result(conn, "arena_judgments", round_key, {**arena.provenance(), **extra})


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["arena_battles"],
    check_specs=table_check_specs("leaderboard"),
    description=(
        "Round r's Bradley-Terry leaderboard (base 10, scale 400, tie = half a win) of round r's arena battles, "
        "with 95% prompt-bootstrap intervals; anchored on a fixed competitor, so rounds are comparable. Plots "
        "across rounds: rating/sft, rating/dpo, rating/rl (the round's stage checkpoints), rating/best_candidate "
        "(the best of them), rating/initial (the initial target) and rating/<competitor> (every competitor but the "
        "anchor, whose rating is fixed); the round's incumbent is another model each round, so it is charted as "
        "the gate's rating/target on target_model."
    ),
)
def leaderboard(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    _board, extra = fit_arena(context, arena, duckdb, round_key)
    with duckdb.get_connection() as conn:
        return table_result(conn, "leaderboard", round_key, {**arena.provenance(), **extra})


@dg.asset(
    group_name="baseline",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    deps=["competitor_models", "initial_target_model"],  # both built after the arena test set
    check_specs=[dg.AssetCheckSpec(name=spec.name, asset="baseline_leaderboard", blocking=spec.blocking,
                                   description=spec.description) for spec in table_check_specs("leaderboard")],
    description=(
        "Round 0, before any training: the initial target and the competitors on the arena test set (answers, "
        "two-game judgments, battles, judge health and the leaderboard are written as round 0 of arena_responses, "
        "arena_judgments, arena_battles, arena_judge_health and leaderboard), and the baseline gate record that "
        "makes the initial target round 1's target."
    ),
)
def baseline_leaderboard(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource,
                         compute: ArenaCompute) -> dg.MaterializeResult:
    from arena_dagster.defs.sql import sql_variables
    from arena_dagster.quality.suites import table_suite
    from arena_dagster.quality.validation import validate_suite
    from arena_dagster.sql_models import create_views

    answered = answer_arena(context, arena, duckdb, compute, 0)
    judged = judge_arena(context, arena, duckdb, compute, 0)
    sql = load_models()
    with duckdb.get_connection() as conn:
        for name in ("arena_battles", "arena_judge_health"):
            run_model(conn, sql[name], round_key=0, variables=sql_variables(arena.settings().sql_vars))
        health = read_table(conn, "arena_judge_health", round_key=0).drop("round").to_dicts()
        # Round 0 is no partition of arena_judge_health: its checks are reported here.
        health_problems = [f"{o.name}: {o.description}" for o in validate_suite(conn, table_suite("arena_judge_health"), 0)
                           if not o.passed]
    board, extra = fit_arena(context, arena, duckdb, 0)
    initial = board.filter(pl.col("kind") == "initial").row(0, named=True)
    with duckdb.get_connection() as conn:
        record_promotion(conn, 0, {
            "candidate": initial["model"], "incumbent": initial["model"], "promoted": True,
            "new_target": initial["model"], "candidate_rating": initial["rating"], "incumbent_rating": initial["rating"],
            "reason": "baseline: the initial target",
        })
        create_views(conn)
        metadata = {**arena.provenance(), **extra, "cache_hits": answered["cache_hits"],
                    "cache_misses": answered["cache_misses"], "judge": judged["judge"],
                    "parse_failures": judged["parse_failures"], "initial_target": initial["model"],
                    "judge_health": dg.MetadataValue.json(health),
                    "judge_health_checks": "; ".join(health_problems) or "all passed",
                    **{k: answered[k] for k in ("models_without_answers",) if k in answered},
                    **{k: judged[k] for k in ("recorded_rows_rejected",) if k in judged}}
        checks = [
            dg.AssetCheckResult(asset_key="baseline_leaderboard", check_name=result.check_name, passed=result.passed,
                                severity=result.severity, description=result.description, metadata=result.metadata)
            for result in table_check_results(conn, "leaderboard", 0)
        ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
