"""The stage schedule picks each stage's slice, data rounds, battle target and training spec."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from arena_dagster.config import load_settings
from arena_dagster.profile_schema.models import SkillsModels
from arena_dagster.profile_schema.sections import ScheduleSettings
from arena_dagster.prompts.slicing import slice_rounds
from arena_dagster.registry import record_promotion, register_model, round_candidate, round_checkpoints, stage_battle_target
from arena_dagster.training.spec import DEFAULT_HYPERPARAMS
from arena_dagster.training.schedule import ScheduleError, battle_prompts, checkpoint_name, stage_plan
from arena_dagster.training.stages import stage_training_spec

PROFILE = ScheduleSettings.model_validate({"sft": {"accumulate_rounds": True}, "dpo": {"accumulate_rounds": False}})


def pool(rounds: int = 3) -> pl.DataFrame:
    rows = [{"prompt": f"prompt number {i}", "family": f"f{i % 4}"} for i in range(300)]
    sliced = slice_rounds(rows, rounds, seed=1, stage_fractions={"sft": 0.34, "dpo": 0.33, "rl": 0.33})
    return pl.DataFrame([dict(r, prompt_id=f"p{i}") for i, r in enumerate(sliced)])


def test_each_stage_battles_its_own_disjoint_slice_of_the_round():
    frame = pool()
    seen: set[str] = set()
    for round_key in (1, 2, 3):
        for stage in ("sft", "dpo", "rl"):
            rows = battle_prompts(frame, stage_plan(PROFILE, stage, round_key))
            assert set(rows["round"].to_list()) == {round_key} and set(rows["stage"].to_list()) == {stage}
            assert 20 <= rows.height <= 50  # ~100 prompts a round (hash buckets), split .34/.33/.33
            assert not seen & set(rows["prompt_id"].to_list())
            seen |= set(rows["prompt_id"].to_list())
    assert len(seen) == 300


def test_targets_and_data_rounds_follow_the_paper():
    assert stage_plan(PROFILE, "sft", 1).battle_target_stage is None
    assert stage_plan(PROFILE, "dpo", 2).battle_target_stage == "sft"
    assert stage_plan(PROFILE, "rl", 2).battle_target_stage == "dpo"
    assert stage_plan(PROFILE, "sft", 3).data_rounds == (1, 2, 3)  # accumulated, as in the paper's later rounds
    assert stage_plan(PROFILE, "dpo", 3).data_rounds == (3,)
    assert stage_plan(None, "rl", 2).data_rounds == (2,)
    assert [checkpoint_name(s, 2) for s in ("sft", "dpo", "reward", "rl")] == ["SFT-I2", "DPO-I2", "RM-I2", "RL-I2"]


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="ppo"):  # the schema refuses an unknown stage where the profile loads
        ScheduleSettings.model_validate({"ppo": {}})
    with pytest.raises(ScheduleError, match="rounds >= 1"):
        stage_plan(None, "sft", 0)
    with pytest.raises(ScheduleError, match="no prompts labelled 'dpo'"):
        battle_prompts(pool().filter(pl.col("stage") != "dpo"), stage_plan(None, "dpo", 1))


def test_a_pool_without_stage_labels_gives_every_stage_the_whole_round():
    frame = pool().drop("stage")
    plans = [stage_plan(None, s, 2) for s in ("sft", "dpo", "rl")]
    assert {battle_prompts(frame, p).height for p in plans} == {frame.filter(pl.col("round") == 2).height}


def _register(conn, model, kind, round_key, parent=None, skipped=False):
    register_model(conn, model=model, kind=kind, round_key=round_key, path=f"/m/{model}", revision=model,
                   parent=parent, manifest={"skipped": "no rows"} if skipped else {"metrics": {}})


def test_battle_targets_candidates_and_skipped_stages_come_from_the_registry():
    conn = duckdb.connect(":memory:")
    _register(conn, "target-I0", "initial", 0)
    record_promotion(conn, 0, {"candidate": "target-I0", "incumbent": "target-I0", "promoted": True, "new_target": "target-I0", "reason": "baseline"})
    _register(conn, "SFT-I1", "sft", 1, "target-I0")
    _register(conn, "DPO-I1", "dpo", 1, "SFT-I1")
    _register(conn, "RL-I1", "rl", 1, "DPO-I1")
    assert stage_battle_target(conn, stage_plan(None, "sft", 1))["model"] == "target-I0"
    assert stage_battle_target(conn, stage_plan(None, "dpo", 1))["model"] == "SFT-I1"
    assert stage_battle_target(conn, stage_plan(None, "rl", 1))["model"] == "DPO-I1"
    assert round_candidate(conn, 1)["model"] == "RL-I1"
    assert [r["model"] for r in round_checkpoints(conn, 1)] == ["SFT-I1", "DPO-I1", "RL-I1"]
    # Round 2 starts from the promoted model; a stage without data stands for its parent.
    record_promotion(conn, 1, {"candidate": "RL-I1", "incumbent": "target-I0", "promoted": True, "new_target": "RL-I1", "reason": "x"})
    _register(conn, "SFT-I2", "sft", 2, "RL-I1", skipped=True)
    _register(conn, "DPO-I2", "dpo", 2, "SFT-I2")
    _register(conn, "RL-I2", "rl", 2, "DPO-I2", skipped=True)
    assert stage_battle_target(conn, stage_plan(None, "sft", 2))["model"] == "RL-I1"
    assert stage_battle_target(conn, stage_plan(None, "dpo", 2))["model"] == "RL-I1"
    assert round_candidate(conn, 2)["model"] == "DPO-I2"
    assert [r["model"] for r in round_checkpoints(conn, 2)] == ["DPO-I2"]
    assert round_candidate(conn, 0)["model"] == "target-I0" and round_checkpoints(conn, 0) == []


def test_training_specs_use_small_values_locally_and_the_papers_for_declared_models(tmp_path):
    skills = load_settings("skills").models
    local = stage_training_spec("rl", round_key=2, base_model="/m/DPO-I2", dataset="/d.jsonl", output_dir="/o",
                                models=skills, locally_built=True, reward_model="/m/RM-I2")
    assert local["name"] == "RL-I2" and local["reward_model"] == "/m/RM-I2"
    assert local["hyperparams"]["max_steps"] >= 1 and local["hyperparams"]["learning_rate"] > 1e-6
    declared = stage_training_spec("dpo", round_key=1, base_model="/m", dataset="/d.jsonl", output_dir="/o",
                                   models=None, locally_built=False)
    assert declared["hyperparams"] == {"seed": 1}  # the entry point fills the paper's values
    paper = DEFAULT_HYPERPARAMS
    assert (paper["sft"]["learning_rate"], paper["sft"]["epochs"]) == (5e-6, 3)
    assert (paper["dpo"]["learning_rate"], paper["dpo"]["beta"], paper["dpo"]["epochs"]) == (5e-7, 0.3, 2)
    assert (paper["reward"]["learning_rate"], paper["reward"]["epochs"]) == (1e-6, 1)
    assert (paper["rl"]["learning_rate"], paper["rl"]["beta"]) == (1e-7, 0.4)
    with pytest.raises(ValueError, match="reward model"):
        stage_training_spec("rl", round_key=1, base_model="/m", dataset="/d", output_dir="/o", models=None, locally_built=False)
    z3 = tmp_path / "z3.yaml"
    z3.write_text("distributed_type: DEEPSPEED\n")
    launched = stage_training_spec("sft", round_key=1, base_model="/m", dataset="/d", output_dir="/o", locally_built=False,
                                   models=SkillsModels.model_validate({"launch": {"num_processes": 8, "config_file": str(z3)}}))
    assert launched["launch"] == {"num_processes": 8, "config_file": str(z3)}
