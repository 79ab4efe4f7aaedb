"""The code location loads, with its groups, checks, jobs and schedule."""

from __future__ import annotations

import dagster as dg

from arena_dagster.defs import build_definitions

GROUPS = {"prompts", "battles", "preferences", "training", "evaluation"}


def test_definitions_load_with_groups_checks_and_schedule(tmp_path):
    defs = build_definitions(str(tmp_path / "home"), "skills")
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}
    assert {node.group_name for node in keys.values()} == GROUPS
    stage_tables = {f"{stage}_{table}" for stage in ("sft", "dpo", "rl")
                    for table in ("responses", "judgments", "battle_outcomes", "judge_health")}
    for name in ("raw_prompts", "prompt_pool", "arena_testset", *stage_tables, "sft_examples", "dpo_pairs",
                 "reward_pairs", "sft_checkpoint", "dpo_checkpoint", "reward_model", "rl_checkpoint", "target_model",
                 "arena_responses", "arena_judgments", "arena_battles", "leaderboard"):
        assert name in keys, name
        assert keys[name].description, name
    # Every warehouse table has checks; the SQL models' deps come from their refs.
    checked = {key.asset_key.to_user_string() for key in graph.asset_check_keys}
    tables = {"raw_prompts", "arena_testset", "prompt_pool", *stage_tables, "sft_examples", "dpo_pairs", "reward_pairs",
              "arena_responses", "arena_judgments", "arena_battles", "leaderboard", "reward_model"}
    assert tables <= checked
    assert {p.to_user_string() for p in keys["sft_examples"].parent_keys} == {"sft_battle_outcomes", "prompt_pool", "sft_responses"}

    def parents(name):
        return {p.to_user_string() for p in keys[name].parent_keys}

    # The stage schedule as asset dependencies: each stage battles with the previous stage's checkpoint.
    assert "sft_checkpoint" in parents("dpo_responses") and "dpo_checkpoint" in parents("rl_responses")
    assert {"sft_judge_health", "sft_examples"} <= parents("sft_checkpoint")
    assert {"reward_model", "dpo_checkpoint"} <= parents("rl_checkpoint")
    assert {"sft_checkpoint", "dpo_checkpoint", "rl_checkpoint"} <= parents("arena_responses")
    schedule = defs.resolve_schedule_def("nightly_flywheel")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == "flywheel_round"
    for job in ("flywheel_setup", "flywheel_round", "baseline_evaluation"):
        assert defs.resolve_job_def(job) is not None


def test_loading_definitions_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, arena_dagster.defs; print('torch' in sys.modules, 'trl' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False False"


def test_dagster_validates_the_workspace():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Validation successful" in proc.stdout + proc.stderr
