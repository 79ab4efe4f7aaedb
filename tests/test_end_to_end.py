"""One small flywheel, for real: setup, round 0 and round 1 (SFT, DPO, reward model, RL) through dagster.materialize."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from arena_dagster import cli
from arena_dagster.config import resolve_home
from arena_dagster.defs import build_definitions
from arena_dagster.defs.jobs import EVALUATION_ASSETS, SETUP_ASSETS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flywheel_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("arena")
    cli.prepare_environment(home, "skills_smoke")
    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(str(home), "skills_smoke")
    assets = list(defs.assets)
    resources = defs.resources
    graph = defs.resolve_asset_graph()
    all_keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    result = dg.materialize(assets, instance=instance, resources=resources, selection=SETUP_ASSETS)
    assert result.success
    instance.add_dynamic_partitions("round", ["0", "1"])
    result = dg.materialize(assets, instance=instance, resources=resources, selection=EVALUATION_ASSETS, partition_key="0")
    assert result.success
    round_assets = sorted(all_keys - set(SETUP_ASSETS))
    result = dg.materialize(assets, instance=instance, resources=resources, selection=round_assets, partition_key="1")
    assert result.success
    return home, result


def test_round_one_produces_data_checkpoints_and_a_leaderboard(flywheel_home):
    home, result = flywheel_home
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks if c.severity == dg.AssetCheckSeverity.ERROR)
    rows = cli.read_leaderboards(home)
    rounds = {r["round"] for r in rows}
    assert rounds == {0, 1}
    targets = {r["round"]: r for r in rows if r["role"] == "target"}
    assert targets[0]["model"] == "target-I0" and targets[1]["model"] == "RL-I1"
    # Every stage's checkpoint is on the round's leaderboard, with the rating it reached.
    round_one = {r["model"]: r for r in rows if r["round"] == 1}
    assert {"SFT-I1", "DPO-I1", "RL-I1", "target-I0"} <= set(round_one)
    assert (round_one["SFT-I1"]["stage"], round_one["DPO-I1"]["stage"], round_one["RL-I1"]["stage"]) == ("sft", "dpo", "rl")
    assert round_one["target-I0"]["kind"] == "incumbent" and round_one["RL-I1"]["kind"] == "candidate"
    for row in rows:
        assert row["ci_low"] <= row["rating"] <= row["ci_high"] and row["battles"] > 0


def test_lineage_from_checkpoint_to_judgments(flywheel_home):
    import duckdb

    home, _ = flywheel_home
    conn = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    parents = dict(conn.execute("SELECT model, parent FROM model_registry WHERE round = 1").fetchall())
    assert parents == {"SFT-I1": "target-I0", "DPO-I1": "SFT-I1", "RM-I1": "DPO-I1", "RL-I1": "DPO-I1"}
    rm = json.loads(conn.execute("SELECT manifest FROM model_registry WHERE model = 'RM-I1'").fetchone()[0])
    # The reward model ranks held-out pairs (prompts it never saw) above chance.
    assert rm["metrics"]["eval_pairs"] >= 10 and rm["metrics"]["eval_accuracy"] > 0.5, rm["metrics"]
    rl = json.loads(conn.execute("SELECT manifest FROM model_registry WHERE model = 'RL-I1'").fetchone()[0])
    assert rl["stage"] == "rl" and rl["reward_model"].endswith("RM-I1")
    # Each stage battled with the previous stage's checkpoint on its own slice.
    targets = dict(conn.execute(
        "SELECT 'sft', min(model) FROM sft_responses WHERE role = 'target' UNION ALL "
        "SELECT 'dpo', min(model) FROM dpo_responses WHERE role = 'target' UNION ALL "
        "SELECT 'rl', min(model) FROM rl_responses WHERE role = 'target'").fetchall())
    assert targets == {"sft": "target-I0", "dpo": "SFT-I1", "rl": "DPO-I1"}
    overlap = conn.execute("SELECT count(*) FROM sft_responses s JOIN dpo_responses d USING (prompt_id)").fetchone()[0]
    assert overlap == 0
    # An SFT row leads back to its battle, both judge games and both responses.
    row = conn.execute(
        """
        SELECT s.prompt_id, count(DISTINCT j.judgment_id), count(DISTINCT r.response_id)
        FROM sft_examples s
        JOIN sft_judgments j ON j.judgment_id IN (s.judgment_1_id, s.judgment_2_id)
        JOIN sft_responses r ON r.response_id IN (s.winner_response_id, s.target_response_id)
        GROUP BY s.prompt_id LIMIT 1
        """
    ).fetchone()
    assert row is not None, "the weak initial target lost no battle: no SFT rows"
    assert row[1] == 2 and row[2] == 2
    decision = conn.execute("SELECT candidate, incumbent, diff, ci_low, ci_high FROM promotions WHERE round = 1").fetchone()
    assert decision[0] == "RL-I1" and decision[1] == "target-I0" and decision[3] <= decision[2] <= decision[4]
    history = conn.execute("SELECT model, stage, diff_vs_incumbent FROM leaderboard_history WHERE round = 1").fetchall()
    assert {m for m, _, _ in history} >= {"SFT-I1", "DPO-I1", "RL-I1"}
    assert [d for m, _, d in history if m == "RL-I1"] == [decision[2]]
    conn.close()


def test_leaderboard_json_command(flywheel_home, capsys):
    home, _ = flywheel_home
    assert cli.main(["leaderboard", "--home", str(home), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"round", "model", "role", "rating", "ci_low", "ci_high", "battles"} <= set(rows[0])
    assert {r["role"] for r in rows} == {"target", "competitor"}
