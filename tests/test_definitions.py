"""The code location loads lazily, with groups that read as a chain, checks, jobs, schedule and sensors."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from arena_dagster.defs import SECTIONS_BY_GROUP, build_definitions

REPO = Path(__file__).resolve().parents[1]
# The flywheel's steps, left to right: the collapsed asset graph is this chain.
CHAIN = ["prompts", "models", "baseline", "round", "sft", "dpo", "rl", "evaluation", "gate"]


def _graph(tmp_path, profile="skills"):
    defs = build_definitions(str(tmp_path / "home"), profile)
    graph = defs.resolve_asset_graph()
    return defs, graph, {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}


def test_groups_form_a_chain_and_every_asset_says_its_round_semantics(tmp_path):
    _, graph, nodes = _graph(tmp_path)
    assert {node.group_name for node in nodes.values()} == set(CHAIN) == set(SECTIONS_BY_GROUP)
    position = {group: i for i, group in enumerate(CHAIN)}
    edges = set()
    for name, node in nodes.items():
        assert node.description, name
        for parent in node.parent_keys:
            # Edges only go forward along the chain (or stay inside a group).
            assert position[graph.get(parent).group_name] <= position[node.group_name], (parent, name)
            edges.add((graph.get(parent).group_name, node.group_name))
        if node.partitions_def is not None:
            assert node.description.startswith("Round r") or "round r" in node.description.lower(), name
    # Collapsed, the graph is the chain of steps; only the prompt pool feeds several of them.
    skips = {(a, b) for a, b in edges if a != b and position[b] - position[a] > 1}
    assert skips <= {("prompts", "sft"), ("prompts", "dpo"), ("prompts", "rl")}, skips
    assert all((a, b) in edges for a, b in zip(CHAIN, CHAIN[1:]))


def test_partitions_can_all_be_materialized(tmp_path):
    """Only training rounds are partitions (keys 1..slices); the baseline is an unpartitioned asset."""
    _, _, nodes = _graph(tmp_path)
    partitioned = {name for name, node in nodes.items() if node.partitions_def is not None}
    for name in partitioned:
        assert nodes[name].partitions_def == dg.DynamicPartitionsDefinition(name="round"), name
    assert {"baseline_leaderboard", "prompt_pool", "competitor_models", "leaderboard_history"}.isdisjoint(partitioned)
    assert {"round_target", "sft_responses", "leaderboard", "target_model", "promotions", "model_registry"} <= partitioned


def test_loop_assets_jobs_schedule_and_sensors(tmp_path):
    defs, _, nodes = _graph(tmp_path)
    parents = {name: {p.to_user_string() for p in node.parent_keys} for name, node in nodes.items()}
    assert "round_target" in parents["sft_responses"] and "baseline_leaderboard" in parents["round_target"]
    assert "sft_checkpoint" in parents["dpo_responses"] and "dpo_checkpoint" in parents["rl_responses"]
    assert "reward_model" in parents["rl_checkpoint"] and "dpo_checkpoint" in parents["reward_model"]
    assert parents["arena_responses"] == {"rl_checkpoint"}  # after SFT-Ir and DPO-Ir, through the chain
    assert {"leaderboard", "arena_battles"} <= parents["target_model"] == parents["promotions"]
    assert {"prompt_pool", "prompt_quarantine"} <= set(nodes) and "model_registry" in nodes
    assert {p for p in parents["sft_examples"]} == {"sft_battle_outcomes", "prompt_pool", "sft_responses"}
    schedule = defs.resolve_schedule_def("nightly_flywheel")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED and schedule.job_name == "flywheel_round"
    for sensor in ("round_partitions_sensor", "next_round_sensor", "failed_round_sensor"):
        assert defs.resolve_sensor_def(sensor) is not None
    for job in ("flywheel_setup", "flywheel_round"):
        assert defs.resolve_job_def(job).tags["arena/profile"] == "skills"


def test_sql_assets_carry_column_descriptions_and_code_references(tmp_path):
    _, _, nodes = _graph(tmp_path)
    metadata = nodes["sft_examples"].metadata
    columns = {c.name: c.description for c in metadata["dagster/column_schema"].columns}
    assert "winner's answer" in columns["response"]
    [reference] = metadata["dagster/code_references"].code_references
    assert reference.file_path.endswith("dbt_like_sql/sft_examples.sql")
    python_refs = nodes["leaderboard"].metadata["dagster/code_references"].code_references
    assert any(r.file_path.endswith("defs/evaluation.py") for r in python_refs)


def test_a_profile_edit_changes_the_code_version_of_the_assets_it_affects(tmp_path, monkeypatch):
    from arena_dagster import home as home_module

    _, _, before = _graph(tmp_path)
    original = home_module.profile_settings

    def edited(name, seed=None):
        settings = original(name, seed)
        return {**settings, "promotion": {**settings.get("promotion", {}), "margin": 5.0}}

    monkeypatch.setattr(home_module, "profile_settings", edited)
    _, _, after = _graph(tmp_path / "other")
    changed = {name for name in before if before[name].code_version != after[name].code_version}
    assert changed == {name for name, node in before.items() if node.group_name == "gate"}


def test_importing_the_code_location_has_no_side_effects_and_no_heavy_imports(tmp_path):
    code = ("import sys, arena_dagster.defs; print('torch' in sys.modules, 'trl' in sys.modules, "
            "'transformers' in sys.modules, 'great_expectations' in sys.modules, 'matplotlib' in sys.modules)")
    env = {**os.environ, "ARENA_HOME": str(tmp_path / "never"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    assert out.stdout.strip() == "False False False False False"
    assert not (tmp_path / "never").exists() and not (tmp_path / ".arena").exists()


DAGSTER_LAYER = {"defs", "operate.py", "commands/flywheel.py"}


def test_domain_modules_never_import_dagster():
    offenders = []
    for path in (REPO / "arena_dagster").rglob("*.py"):
        relative = path.relative_to(REPO / "arena_dagster")
        if relative.parts[0] in DAGSTER_LAYER or relative.as_posix() in DAGSTER_LAYER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "dagster" or n.startswith(("dagster.", "dagster_")) and not n.startswith("dagster_pipes")
                   for n in names):
                offenders.append(str(relative))
    assert not offenders, f"domain modules import Dagster: {sorted(set(offenders))}"


@pytest.mark.timeout(300)
def test_dagster_validates_the_workspace(tmp_path):
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "ARENA_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Validation successful" in proc.stdout + proc.stderr
    assert not (tmp_path / "home").exists()
