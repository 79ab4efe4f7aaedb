"""One small flywheel, for real: `arena-dagster flywheel --profile skills_smoke --rounds 2` through the home's Dagster
instance (the session fixture `smoke_home`), then what it left: data, checkpoints, lineage, leaderboards, traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena_dagster import cli
from arena_dagster.shards import connection_config

pytestmark = pytest.mark.slow


def test_rounds_produce_data_checkpoints_and_leaderboards(smoke_home):
    home = smoke_home
    rows = cli.read_leaderboards(home)
    assert {r["round"] for r in rows} == {0, 1, 2}
    kinds = {(r["round"], r["model"]): r["kind"] for r in rows}
    assert kinds[(0, "target-I0")] == "initial"
    # Every stage's checkpoint is on its round's leaderboard, with the incumbent and the initial target beside it.
    round_one = {r["model"]: r for r in rows if r["round"] == 1}
    assert {"SFT-I1", "DPO-I1", "RL-I1", "target-I0"} <= set(round_one)
    assert (round_one["SFT-I1"]["stage"], round_one["DPO-I1"]["stage"], round_one["RL-I1"]["stage"]) == ("sft", "dpo", "rl")
    assert round_one["target-I0"]["kind"] == "incumbent" and round_one["RL-I1"]["kind"] == "candidate"
    round_two = {r["model"]: r for r in rows if r["round"] == 2}
    assert {"SFT-I2", "DPO-I2", "RL-I2", "target-I0"} <= set(round_two)
    for row in rows:
        assert row["ci_low"] <= row["rating"] <= row["ci_high"] and row["battles"] > 0
    text = (home / "flywheel-output.txt").read_text()
    assert "rank: 1 + the number of models" in text and "round 2: done" in text


def test_lineage_from_checkpoint_to_judgments(smoke_home):
    import duckdb

    home = smoke_home
    conn = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True, config=connection_config(home))
    parents = dict(conn.execute("SELECT model, parent FROM model_registry WHERE round = 1").fetchall())
    assert parents == {"SFT-I1": "target-I0", "DPO-I1": "SFT-I1", "RM-I1": "DPO-I1", "RL-I1": "DPO-I1"}
    manifests = dict(conn.execute("SELECT model, manifest FROM model_registry WHERE model LIKE 'RM-%'").fetchall())
    first, second = (json.loads(manifests[m])["metrics"] for m in ("RM-I1", "RM-I2"))
    # Every reward model's loss went down and it scores its own pairs in the chosen answer's favour; round 2's
    # (the first with a trained target, so more decided battles) also ranks pairs of prompts it never saw.
    # Round 1's few pairs (tens) are too few to ask more of a 40-step model.
    for metrics in (first, second):
        assert metrics["final_loss"] < metrics["first_loss"] and metrics["train_margin"] > 0, metrics
    assert second["eval_pairs"] >= 10 and second["eval_margin"] > 0 and second["eval_accuracy"] > 0.6, second
    assert second["train_accuracy"] > 0.6, second
    rl = json.loads(conn.execute("SELECT manifest FROM model_registry WHERE model = 'RL-I1'").fetchone()[0])
    assert rl["stage"] == "rl" and rl["reward_model"].endswith("RM-I1")
    # Each stage battled with the previous stage's checkpoint on its own slice.
    targets = dict(conn.execute(
        "SELECT 'sft', min(model) FROM sft_responses WHERE role = 'target' AND round = 1 UNION ALL "
        "SELECT 'dpo', min(model) FROM dpo_responses WHERE role = 'target' AND round = 1 UNION ALL "
        "SELECT 'rl', min(model) FROM rl_responses WHERE role = 'target' AND round = 1").fetchall())
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
    # Every stage checkpoint is a candidate: the gate tested the one the selection prompts chose.
    assert decision[0] in {"SFT-I1", "DPO-I1", "RL-I1"} and decision[1] == "target-I0"
    assert decision[3] <= decision[2] <= decision[4]
    history = conn.execute("SELECT model, stage, diff_vs_incumbent FROM leaderboard_history WHERE round = 1").fetchall()
    assert {m for m, _, _ in history} >= {"SFT-I1", "DPO-I1", "RL-I1"}
    assert [d for m, _, d in history if m == decision[0]] == [decision[2]]
    conn.close()


def test_leaderboard_json_command(smoke_home, capsys):
    home = smoke_home
    assert cli.main(["leaderboard", "--home", str(home), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"round", "model", "role", "rating", "ci_low", "ci_high", "battles"} <= set(rows[0])
    assert {r["role"] for r in rows} == {"target", "competitor"}


def _trace_json(home, wanted, capsys) -> dict:
    assert cli.main(["trace", wanted, "--home", str(home), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_trace_training_rows_back_to_prompt_battle_and_forward_to_the_gate(smoke_home, capsys):
    import datasets
    import duckdb

    home = smoke_home
    conn = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True, config=connection_config(home))
    expected = {
        "sft_example": conn.execute("SELECT example_id, battle_id, prompt_id FROM sft_examples LIMIT 1").fetchone(),
        "dpo_pair": conn.execute("SELECT pair_id, battle_id, prompt_id FROM dpo_pairs LIMIT 1").fetchone(),
        "reward_pair": conn.execute("SELECT pair_id, battle_id, prompt_id FROM reward_pairs LIMIT 1").fetchone(),
    }
    checkpoint = {"sft_example": "SFT-I1", "dpo_pair": "DPO-I1", "reward_pair": "RM-I1"}
    for kind, (row_id, battle_id, prompt_id) in expected.items():
        doc = _trace_json(home, row_id, capsys)
        assert (doc["kind"], doc["id"], doc["row"]["battle_id"]) == (kind, row_id, battle_id)
        source = conn.execute("SELECT source_id FROM prompt_pool WHERE prompt_id = ?", [prompt_id]).fetchone()[0]
        assert doc["prompt"]["source_id"] == source and doc["prompt"]["in_raw_prompts"] and doc["prompt"]["messages"]
        battle = doc["battle"]
        assert battle["battle_id"] == battle_id and len(battle["games"]) == 2 and len(battle["responses"]) == 2
        assert [g["judgment_id"] for g in battle["games"]] == [doc["row"]["judgment_1_id"], doc["row"]["judgment_2_id"]]
        assert all(g["raw"] and g["parse_ok"] for g in battle["games"])
        assert all(r["response"] is not None for r in battle["responses"])
        # SFT and reward data accumulate over rounds (the skills schedule): round 1's rows train round 2 too.
        [use] = [u for u in doc["training"] if u["checkpoint"] == checkpoint[kind]]
        assert use["hash_matches"] and use["line"] >= 1
        # The exported dataset keeps the id (train.jsonl) and every lineage column (the HF export).
        lines = Path(use["dataset"]).read_text().splitlines()
        assert json.loads(lines[use["line"] - 1])["pair_id" if "pair" in kind else "example_id"] == row_id
        hf = datasets.load_from_disk(use["hf_dataset"])
        assert {"prompt_id", "battle_id", "judgment_1_id", "judgment_2_id", "judge"} <= set(hf.column_names)
        [traced] = [c for c in doc["checkpoints"] if c["model"] == checkpoint[kind]]
        assert traced["gates"] and traced["gates"][0]["round"] == 1
        if kind != "reward_pair":
            assert [r["round"] for r in traced["leaderboard"]] == [1]
    conn.close()


def test_trace_battles_and_checkpoints(smoke_home, capsys):
    import duckdb

    home = smoke_home
    conn = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True, config=connection_config(home))
    battle_id, pair_id = conn.execute("SELECT battle_id, pair_id FROM dpo_pairs LIMIT 1").fetchone()
    arena_battle = conn.execute("SELECT battle_id, model_a, model_b FROM arena_battles WHERE round = 1 LIMIT 1").fetchone()
    decision = conn.execute("SELECT candidate, promoted, diff FROM promotions WHERE round = 1").fetchone()
    conn.close()
    doc = _trace_json(home, battle_id, capsys)
    assert doc["kind"] == "battle" and doc["training_rows"] == [{"table": "dpo_pairs", "id": pair_id}]
    doc = _trace_json(home, arena_battle[0], capsys)
    assert doc["kind"] == "arena_battle" and [c["model"] for c in doc["checkpoints"]] == list(arena_battle[1:])
    assert all(len(c["leaderboard"]) == 1 for c in doc["checkpoints"])
    doc = _trace_json(home, "RL-I1", capsys)
    [rl] = doc["checkpoints"]
    assert rl["ancestors"] == ["DPO-I1", "SFT-I1", "target-I0"] and rl["hash_matches"]
    assert (rl["gates"][0]["candidate"], rl["gates"][0]["promoted"], rl["gates"][0]["diff"]) == decision  # round 1's gate
    # Human output: sections, and one line for an unknown id.
    assert cli.main(["trace", pair_id[:12], "--home", str(home)]) == 0
    text = capsys.readouterr().out
    assert all(s in text for s in ("DPO pair", "PROMPT", "BATTLE", "game 2", "TRAINING", "CHECKPOINT DPO-I1", "gate round 1"))
    assert cli.main(["trace", "no-such-id", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arena-dagster: no training row, battle or checkpoint has id no-such-id") and err.count("\n") == 1


def test_leaderboard_plot_command(smoke_home, tmp_path, capsys):
    from PIL import Image

    home = smoke_home
    assert cli.main(["leaderboard", "--home", str(home), "--plot", str(tmp_path / "board.png")]) == 0
    for name in ("board.png", "board-history.png", "board-winrate.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] == 800 and image.size[1] >= 250
