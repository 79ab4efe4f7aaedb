"""The warehouse's Great Expectations suites on a small hand-made round: a clean round passes every
check, and each kind of fault (types, nulls, keys, value sets, ranges, row counts, referential
integrity) fails the check that names it, with the failing rows in its metadata."""

import ast
import json
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource
from pydantic import ValidationError

from arena_dagster.backends.answering import RESPONSE_SCHEMA
from arena_dagster.judging.battles import JUDGMENT_SCHEMA, stable_id
from arena_dagster.profile_schema.sections import JudgeHealthSettings
from arena_dagster.quality.suites import (
    EXPECTATIONS_DIR,
    SuiteError,
    judge_health_limits,
    judge_health_suite,
    load_suites,
    parse_suites,
    table_suite,
)
from arena_dagster.quality.validation import validate_suite
from arena_dagster.sql_models import load_models, run_model
from arena_dagster.warehouse import write_table

VARS = {"tie_margin": 1.0, "sft_min_margin": 2.0, "sft_min_winner_score": 6, "dpo_min_margin": 2.0,
        "dpo_min_winner_score": 6, "rm_min_margin": 2.0}
PROMPTS = ("p1", "p2", "p3", "p4")
MODELS = ("T", "C1", "C2")
# (prompt, competitor): (target score, competitor score), the same in both games (a consistent judge).
SCORES = {("p1", "C1"): (2, 10), ("p1", "C2"): (3, 9), ("p2", "C1"): (10, 3), ("p2", "C2"): (6, 6),
          ("p3", "C1"): (4, 9), ("p3", "C2"): (9, 2), ("p4", "C1"): (8, 8), ("p4", "C2"): (2, 8)}
ANSWER = {"T": "answer", "C1": "a longer answer", "C2": "ans"}


def judgment(stage_round, battle, game, prompt, x, y, score_x, score_y):
    a, b = (x, y) if game == 1 else (y, x)
    sa, sb = (score_x, score_y) if game == 1 else (score_y, score_x)
    return {
        "round": stage_round, "judgment_id": f"{battle}-{game}", "battle_id": battle, "game": game, "prompt_id": prompt,
        "model_x": x, "model_y": y, "model_a": a, "model_b": b,
        "response_a_id": f"{prompt}-{a}", "response_b_id": f"{prompt}-{b}",
        "score_a": sa, "score_b": sb, "parse_ok": True, "explanation": "", "raw": f"A: {sa} B: {sb}", "error": None,
        "attempts": 1, "judge": "verifier", "judge_version": "v1",
    }


def response(prompt, model, role=None):
    return {"round": 1, "prompt_id": prompt, "model": model, "role": role or ("target" if model == "T" else "competitor"),
            "response_id": f"{prompt}-{model}", "response": f"{ANSWER[model]} to {prompt}", "tokens_in": 5,
            "tokens_out": 3, "finish_reason": "stop"}


def build_round(conn) -> None:
    """Setup tables and one complete round (every stage and the arena) of a consistent flywheel."""
    raw = [{"source_id": f"s{i}", "prompt": f"prompt {p}", "family": "add", "reference": "r", "difficulty": 3}
           for i, p in enumerate([*PROMPTS, "p1"])]
    write_table(conn, "raw_prompts", pl.DataFrame(raw))
    pool = [{"source_id": f"s{i}", "prompt": f"prompt {p}", "family": "add", "reference": "r", "difficulty": 3,
             "round": 1, "stage": "sft", "prompt_id": p, "messages": json.dumps([{"role": "user", "content": f"prompt {p}"}])}
            for i, p in enumerate(PROMPTS)]
    write_table(conn, "prompt_pool", pl.DataFrame(pool))
    testset = [{"prompt_id": t, "prompt": f"test {t}", "family": "add", "reference": "r", "difficulty": 3,
                "subset": subset, "testset_version": "v1"} for t, subset in (("t1", "diverse"), ("t2", "hard"))]
    write_table(conn, "arena_testset", pl.DataFrame(testset))
    models = load_models()
    for stage in ("sft", "dpo", "rl"):
        write_table(conn, f"{stage}_responses", pl.DataFrame([response(p, m) for p in PROMPTS for m in MODELS],
                                                             schema=RESPONSE_SCHEMA), round_key=1)
        rows = [judgment(1, stable_id(p, c), g, p, "T", c, *SCORES[(p, c)]) for (p, c) in SCORES for g in (1, 2)]
        write_table(conn, f"{stage}_judgments", pl.DataFrame(rows, schema=JUDGMENT_SCHEMA), round_key=1)
        for table in ("battle_outcomes", "judge_health"):
            run_model(conn, models[f"{stage}_{table}"], round_key=1, variables=VARS)
    for table in ("sft_examples", "dpo_pairs", "reward_pairs"):
        run_model(conn, models[table], round_key=1, variables=VARS)
    arena = [{**response(t, m), "response_id": f"{t}-{m}"} for t in ("t1", "t2") for m in MODELS]
    write_table(conn, "arena_responses", pl.DataFrame(arena, schema=RESPONSE_SCHEMA), round_key=1)
    pairs = [("T", "C1"), ("T", "C2"), ("C1", "C2")]
    games = [judgment(1, stable_id(t, x, y), g, t, x, y, 7 if x == "C1" else 4, 5) for t in ("t1", "t2") for x, y in pairs for g in (1, 2)]
    write_table(conn, "arena_judgments", pl.DataFrame(games, schema=JUDGMENT_SCHEMA), round_key=1)
    for table in ("arena_battles", "arena_judge_health"):
        run_model(conn, models[table], round_key=1, variables=VARS)
    board = [{"model": m, "rating": r, "ci_low": r - 50, "ci_high": r + 50, "rank": k, "battles": 8, "role": role,
              "kind": "stage", "round": 1} for m, r, k, role in (("C1", 1100.0, 1, "competitor"), ("C2", 1000.0, 2, "competitor"),
                                                                 ("T", 900.0, 3, "target"))]
    write_table(conn, "leaderboard", pl.DataFrame(board), round_key=1)


@pytest.fixture()
def conn():
    conn = duckdb.connect(":memory:")
    build_round(conn)
    yield conn
    conn.close()


def outcomes(conn, table, round_key=1):
    suite = table_suite(table)
    return {o.name: o for o in validate_suite(conn, suite, round_key if suite.round_scoped else None)}


def failed(conn, table):
    return {name for name, o in outcomes(conn, table).items() if not o.passed}


# ---------------------------------------------------------------- the suite files


def test_every_suite_file_loads_and_builds_a_gx_suite():
    from arena_dagster.quality.validation import gx_suite

    suites = load_suites()
    files = {p.stem for p in EXPECTATIONS_DIR.glob("*.yaml")}
    assert files == {s.path.stem for s in suites.values()}
    for table, suite in suites.items():
        built = gx_suite(suite)  # unknown expectation types or arguments fail here
        assert len(built.expectations) == sum(len(c.expectations) for c in suite.checks), table
        assert suite.description and all(c.why for c in suite.checks), table
        assert {c.blocking for c in suite.checks if c.name in ("unique_key", "not_null", "row_count")} <= {True, False}


def test_every_warehouse_table_asset_has_a_suite():
    tables = {"raw_prompts", "arena_testset", "prompt_pool", "sft_examples", "dpo_pairs", "reward_pairs",
              "arena_responses", "arena_judgments", "arena_battles", "arena_judge_health", "leaderboard"}
    tables |= {f"{s}_{t}" for s in ("sft", "dpo", "rl") for t in ("responses", "judgments", "battle_outcomes", "judge_health")}
    assert set(load_suites()) == tables
    # Round-scoped suites are exactly the round-partitioned assets.
    assert {t for t, s in load_suites().items() if not s.round_scoped} == {"raw_prompts", "arena_testset", "prompt_pool"}


def test_blocking_follows_the_tables_as_before_gx():
    suites = load_suites()
    for table in ("sft_examples", "dpo_pairs", "reward_pairs", "raw_prompts"):
        assert not any(c.blocking for c in suites[table].checks), table
    for table in ("sft_responses", "rl_judgments", "dpo_battle_outcomes", "arena_battles", "prompt_pool"):
        assert suites[table].check("unique_key").blocking and suites[table].check("not_null").blocking
    health = suites["sft_judge_health"]
    assert health.check("block_flip_rate").blocking and not health.check("warn_flip_rate").blocking


def test_descriptions_state_the_limit_and_why_it_blocks_or_warns():
    suite = table_suite("sft_judgments")
    text = suite.describe(suite.check("scores"))
    assert text.startswith("score_a in [1, 10]; score_b in [1, 10]") and "Blocks the round's downstream steps" in text
    assert "judgments.yaml" in text
    rows = suite.describe(suite.check("row_count"))
    assert "2 games x (answers - prompts)" in rows
    warn = table_suite("sft_judge_health")
    assert "Warns only" in warn.describe(warn.check("warn_tie_rate")) and "tie_rate in [0.0, 0.6]" in warn.describe(warn.check("warn_tie_rate"))


@pytest.mark.parametrize("text, error", [
    ("checks:\n  keys:\n    why: x\n    expect: [{not_an_expectation: {}}]\n", "not a GX expectation type"),
    ("checks:\n  rows:\n    why: x\n    expect: [{expect_table_row_count_to_equal: {value: {$PARAMETER: n}}}]\n",
     "undefined parameters"),
    ("chekcs: {}\n", "non-empty `checks:`"),
    ("checks: {a: {why: x, expect: [{expect_column_values_to_not_be_null: {column: c}}]}}\ncolumns: 1\n", "unknown keys"),
    ("checks: {a: {expect: [{expect_column_values_to_not_be_null: {column: c}}]}}\n", "needs `why`"),
    ("checks: [oops\n", "cannot read the suite"),
    ("checks:\n  a: {why: x, expect: [{expect_column_values_to_not_be_null: {column: c}}]}\n"
     "  a: {why: y, expect: [{expect_column_values_to_not_be_null: {column: d}}]}\n", "'a' appears twice"),
])
def test_a_broken_suite_file_is_a_clear_error(tmp_path, text, error):
    bad = tmp_path / "t.yaml"
    bad.write_text(text)
    with pytest.raises(SuiteError, match=error) as raised:
        parse_suites(bad)
    assert "(assets/expectations/t.yaml)" in str(raised.value)


def test_the_quality_package_does_not_import_dagster():
    for path in (Path(__file__).resolve().parents[1] / "arena_dagster" / "quality").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(n.split(".")[0].startswith("dagster") for n in names), path.name


# ---------------------------------------------------------------- a clean round passes


def test_a_clean_round_passes_every_check(conn):
    for table, suite in load_suites().items():
        results = validate_suite(conn, suite, 1 if suite.round_scoped else None)
        assert [(o.name, o.description) for o in results if not o.passed] == [], table
    # The hand-made round exercises what the checks are about: lost battles, decided pairs.
    assert conn.execute("SELECT count(*) FROM sft_examples").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM dpo_pairs").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM reward_pairs").fetchone()[0] == 6


def test_observed_values_are_plain_metadata(conn):
    result = outcomes(conn, "sft_judgments")
    rows = result["row_count"].metadata
    assert rows["parameter expected_games"] == 16 and rows["rows = expected_games: observed"] == 16
    assert result["scores"].metadata["score_a in [1, 10]: unexpected rows"] == 0
    for outcome in result.values():
        assert all(isinstance(v, (int, float, str)) for v in outcome.metadata.values()), outcome.metadata


# ---------------------------------------------------------------- each kind of fault fails its check


def test_wrong_column_type_fails_column_types(conn):
    conn.execute("ALTER TABLE sft_judgments ALTER score_a TYPE VARCHAR")
    result = outcomes(conn, "sft_judgments")
    assert not result["column_types"].passed and result["column_types"].blocking
    assert result["column_types"].metadata["score_a is int64: observed"] == "str"


def test_null_fails_not_null_and_names_the_row(conn):
    conn.execute("UPDATE dpo_responses SET response = NULL WHERE prompt_id = 'p2' AND model = 'C1'")
    result = outcomes(conn, "dpo_responses")
    assert failed(conn, "dpo_responses") == {"not_null"}
    assert result["not_null"].metadata["response is never null: unexpected rows"] == 1
    assert "prompt_id=p2, model=C1" in result["not_null"].metadata["response is never null: examples"]


def test_duplicate_key_fails_unique_key_and_row_count(conn):
    conn.execute("INSERT INTO rl_responses SELECT * FROM rl_responses WHERE prompt_id = 'p1' AND model = 'T'")
    assert {"unique_key", "row_count"} <= failed(conn, "rl_responses")


def test_value_outside_its_set_or_range_fails_scores(conn):
    conn.execute("UPDATE sft_battle_outcomes SET winner = 'model_c' WHERE prompt_id = 'p2' AND model_b = 'C2'")
    assert failed(conn, "sft_battle_outcomes") == {"scores"}
    conn.execute("UPDATE sft_judgments SET score_a = 11 WHERE judgment_id = (SELECT min(judgment_id) FROM sft_judgments)")
    result = outcomes(conn, "sft_judgments")
    assert not result["scores"].passed and result["scores"].metadata["score_a in [1, 10]: unexpected rows"] == 1
    assert "11" in result["scores"].description


def test_row_count_is_bounded_by_the_input(conn):
    # A lost judge game: the judgments no longer cover both orders of every battle.
    conn.execute("DELETE FROM dpo_judgments WHERE judgment_id = (SELECT min(judgment_id) FROM dpo_judgments)")
    result = outcomes(conn, "dpo_judgments")
    assert failed(conn, "dpo_judgments") == {"row_count"}
    assert result["row_count"].metadata["rows = expected_games: observed"] == 15
    # An answer missing from the (prompt x model) grid.
    conn.execute("DELETE FROM sft_responses WHERE prompt_id = 'p4' AND model = 'C2'")
    assert "row_count" in failed(conn, "sft_responses")
    # More SFT rows than prompts the target lost.
    conn.execute("INSERT INTO sft_examples SELECT * REPLACE ('p2' AS prompt_id, 'e-extra' AS example_id) FROM sft_examples LIMIT 1")
    assert "row_count" in failed(conn, "sft_examples")


def test_a_battle_must_name_existing_responses(conn):
    conn.execute("UPDATE rl_battle_outcomes SET response_b_id = 'p1-GONE' WHERE prompt_id = 'p1' AND model_b = 'C1'")
    result = outcomes(conn, "rl_battle_outcomes")
    assert failed(conn, "rl_battle_outcomes") == {"responses_exist"}
    assert result["responses_exist"].metadata["response_b_found = True: unexpected rows"] == 1
    battle = stable_id("p1", "C1")
    assert f"battle_id={battle}" in result["responses_exist"].metadata["response_b_found = True: examples"]
    conn.execute("DELETE FROM rl_judgments WHERE judgment_id = ?", [f"{battle}-2"])
    assert "judgments_exist" in failed(conn, "rl_battle_outcomes")


def test_every_sft_row_is_a_lost_battle(conn):
    # The target won p2 against C1: an SFT row on that battle is not backed by a loss.
    won = stable_id("p2", "C1")
    conn.execute(
        "UPDATE sft_examples SET battle_id = ? WHERE prompt_id = 'p1'", [won]
    )
    result = outcomes(conn, "sft_examples")
    assert not result["lost_battle"].passed and not result["lost_battle"].blocking
    assert "prompt_id=p1" in result["lost_battle"].metadata["lost_battle = True: examples"]
    # An answer that is not the winner's stored answer.
    conn.execute("UPDATE sft_examples SET response = 'made up' WHERE prompt_id = 'p3'")
    assert "answer_found" in failed(conn, "sft_examples")


def test_every_dpo_pair_is_two_distinct_answers_to_one_prompt(conn):
    conn.execute("UPDATE dpo_pairs SET rejected = chosen, rejected_response_id = chosen_response_id WHERE prompt_id = 'p1'")
    assert {"distinct_answers", "answers_found"} <= failed(conn, "dpo_pairs")
    conn.execute("DELETE FROM dpo_pairs")
    build_pairs = load_models()["dpo_pairs"]
    run_model(conn, build_pairs, round_key=1, variables=VARS)
    assert failed(conn, "dpo_pairs") == set()
    # The chosen answer of another prompt.
    conn.execute("UPDATE dpo_pairs SET chosen = 'a longer answer to p3', chosen_response_id = 'p3-C1' WHERE prompt_id = 'p1'")
    assert failed(conn, "dpo_pairs") == {"answers_found"}


def test_reward_pairs_come_from_decided_battles(conn):
    conn.execute("UPDATE rl_battle_outcomes SET winner = 'tie', winner_model = NULL, loser_model = NULL WHERE prompt_id = 'p1'")
    assert "decided_battle" in failed(conn, "reward_pairs")


def test_pool_prompt_in_the_test_set_blocks(conn):
    conn.execute("UPDATE arena_testset SET prompt = 'prompt p3' WHERE prompt_id = 't1'")
    result = outcomes(conn, "prompt_pool")
    assert not result["decontaminated"].passed and result["decontaminated"].blocking
    assert "prompt_id=p3" in result["decontaminated"].metadata["in_testset = False: examples"]


def test_leaderboard_models_fought_and_intervals_contain_ratings(conn):
    conn.execute("UPDATE leaderboard SET ci_low = rating + 1 WHERE model = 'C2'")
    assert failed(conn, "leaderboard") == {"interval"}
    conn.execute("INSERT INTO leaderboard SELECT * REPLACE ('ghost' AS model) FROM leaderboard WHERE model = 'T'")
    assert {"row_count", "ranks"} <= failed(conn, "leaderboard")


def test_missing_table_or_upstream_fails_every_check_with_the_reason(conn):
    conn.execute("DROP TABLE sft_examples")
    result = outcomes(conn, "sft_examples")
    assert all(not o.passed for o in result.values())
    assert "table sft_examples was not written" in result["row_count"].description
    conn.execute("DROP TABLE sft_responses")
    result = outcomes(conn, "sft_judgments")
    assert all(not o.passed for o in result.values()) and "sft_responses" in result["responses_exist"].metadata["error"]


# ---------------------------------------------------------------- judge health limits


def test_judge_health_limits_block_or_warn_and_profiles_may_move_them(conn):
    conn.execute("UPDATE sft_judge_health SET flip_rate = 0.7, first_position_win_rate = 0.68")
    result = outcomes(conn, "sft_judge_health")
    assert result["block_parse_failure_rate"].passed
    assert not result["block_flip_rate"].passed and result["block_flip_rate"].blocking
    assert not result["warn_first_position_win_rate"].passed and not result["warn_first_position_win_rate"].blocking
    assert "first_position_win_rate=0.68" in result["warn_first_position_win_rate"].metadata[
        "first_position_win_rate in [0.35, 0.65]: examples"]
    loose = judge_health_suite("sft_judge_health", JudgeHealthSettings(block={"flip_rate": [0, 1]}))
    moved = {o.name: o for o in validate_suite(conn, loose, 1)}
    assert moved["block_flip_rate"].passed and "flip_rate in [0.0, 1.0]" in moved["block_flip_rate"].description
    assert judge_health_limits()["block"]["flip_rate"] == (0.0, 0.6)
    # Only the limits the suite has, at its two levels: the schema refuses any other.
    with pytest.raises(ValidationError, match="judge_iq"):
        JudgeHealthSettings.model_validate({"warn": {"judge_iq": [0, 1]}})
    with pytest.raises(ValidationError, match="fail"):
        JudgeHealthSettings.model_validate({"fail": {"flip_rate": [0, 1]}})


def test_the_schema_names_exactly_the_limits_of_the_judge_health_suite():
    from arena_dagster.profile_schema.constants import JUDGE_HEALTH_LIMITS

    suite = {level: set(columns) for level, columns in judge_health_limits().items()}
    assert suite == {level: set(columns) for level, columns in JUDGE_HEALTH_LIMITS.items()}


def test_the_arena_judge_health_only_warns_and_keeps_its_own_limits(conn):
    suite = table_suite("arena_judge_health")
    limits = [c for c in suite.checks if c.name.startswith("warn_")]
    assert limits and not any(c.blocking for c in limits)
    assert all("judge_health.warn" not in suite.describe(c) for c in limits)  # a profile's judge_health: is the stages'
    conn.execute("UPDATE arena_judge_health SET flip_rate = 0.5")
    result = outcomes(conn, "arena_judge_health")
    assert not result["warn_flip_rate"].passed and result["rates"].passed


def test_a_replayed_test_set_may_lack_prompt_texts_but_no_other_may(conn):
    conn.execute("UPDATE arena_testset SET prompt = NULL, subset = 'recorded'")
    assert failed(conn, "arena_testset") == set()
    conn.execute("UPDATE arena_testset SET subset = 'hard'")
    assert failed(conn, "arena_testset") == {"not_null"}


def test_an_expectation_that_cannot_hold_fails_its_check_and_the_others_still_run(conn):
    # An empty raw pool (a replay trains nothing): "at least 1 and at most 0 rows" cannot hold.
    conn.execute("DELETE FROM raw_prompts")
    conn.execute("DELETE FROM prompt_pool")
    result = outcomes(conn, "prompt_pool")
    assert not result["row_count"].passed and not result["row_count"].blocking
    assert "cannot hold with these parameters: min_value (1) must be less than or equal to max_value (0)" in \
        result["row_count"].description
    assert all(o.passed for name, o in result.items() if name != "row_count")


# ---------------------------------------------------------------- in Dagster


def test_table_checks_in_dagster_are_bound_to_the_round_and_a_blocking_failure_stops_the_round(tmp_path):
    from arena_dagster.defs.common import round_partitions, table_check_specs, table_result

    database = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(database)) as setup:
        build_round(setup)
        setup.execute("UPDATE sft_judgments SET score_a = 11 WHERE game = 1 AND prompt_id = 'p1'")
    specs = table_check_specs("sft_judgments")
    assert {s.partitions_def for s in specs} == {round_partitions} and all(s.blocking for s in specs)
    assert all("table: " not in s.description and ("Blocks" in s.description or "Warns" in s.description) for s in specs)

    @dg.asset(name="sft_judgments", partitions_def=round_partitions, check_specs=specs)
    def judgments(context: dg.AssetExecutionContext, duckdb: DuckDBResource):
        with duckdb.get_connection() as conn:
            return table_result(conn, "sft_judgments", int(context.partition_key))

    @dg.asset(partitions_def=round_partitions, deps=[judgments])
    def downstream():
        return None

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("round", ["1"])
    result = dg.materialize([judgments, downstream], instance=instance, partition_key="1", raise_on_error=False,
                            resources={"duckdb": DuckDBResource(database=str(database))})
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {e.partition for e in evaluations.values()} == {"1"}
    scores = evaluations["scores"]
    assert not scores.passed and scores.severity == dg.AssetCheckSeverity.ERROR
    assert scores.metadata["score_a in [1, 10]: unexpected rows"].value == 2
    assert all(not isinstance(v, dg.JsonMetadataValue) for e in evaluations.values() for v in e.metadata.values())
    assert evaluations["unique_key"].passed
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "downstream" not in materialized


def test_a_few_rows_report_their_values(conn):
    result = outcomes(conn, "sft_judge_health")
    health = conn.execute("SELECT flip_rate, tie_rate FROM sft_judge_health").fetchone()
    assert result["block_flip_rate"].metadata["flip_rate"] == health[0]
    assert result["warn_tie_rate"].metadata["tie_rate"] == health[1]
    assert "flip_rate" not in outcomes(conn, "sft_judgments")["scores"].metadata  # many rows: counts only


def test_a_renamed_column_is_named_in_the_failure(conn):
    conn.execute("ALTER TABLE raw_prompts RENAME COLUMN prompt TO instruction")
    result = outcomes(conn, "raw_prompts")
    assert not result["prompt_present"].passed
    assert result["prompt_present"].metadata["prompt is never null: error"] == "column prompt is missing from the table"
    assert "column prompt is missing" in result["column_types"].description
