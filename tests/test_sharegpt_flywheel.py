"""A round of the sharegpt graph, for real: `arena-dagster flywheel --profile sharegpt_smoke --rounds 1` on
ShareGPT conversations, SmolLM2 (from its GGUF) as the target and the judge, ChatGPT's recorded answers as the
competitor. The declared-model path (transformers backend, LLM judge, real multi-turn prompts) runs end to end;
stages without usable data are skipped with the reason in the registry, never a crash."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, flywheel_env

pytestmark = pytest.mark.slow


def test_a_sharegpt_round_runs_through_the_command_line(tmp_path):
    home = tmp_path / "home"
    command = [sys.executable, "-m", "arena_dagster.cli", "flywheel", "--profile", "sharegpt_smoke", "--rounds", "1",
               "--home", str(home)]
    proc = subprocess.run(command, cwd=REPO, env=flywheel_env(), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "round 1: done" in proc.stdout

    import duckdb

    conn = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    registry = {model: (kind, parent, json.loads(manifest or "{}"))
                for model, kind, parent, manifest in conn.execute(
                    "SELECT model, kind, parent, manifest FROM model_registry WHERE round = 1").fetchall()}
    assert set(registry) == {"SFT-I1", "DPO-I1", "RM-I1", "RL-I1"}
    trained = [model for model, (_, _, manifest) in registry.items() if manifest.get("spec_hash")]
    skipped = {model: manifest.get("skipped") for model, (_, _, manifest) in registry.items() if model not in trained}
    # Something trained on the round's judged battles, and every stage that did not says why.
    assert trained, registry
    assert all(reason for reason in skipped.values()), skipped
    for model in trained:
        metrics = registry[model][2]["metrics"]
        assert metrics["steps"] > 0 and metrics["train_loss"] > 0, (model, metrics)
    # The paper's rule at this test-set size: the last trained stage against the initial target.
    rule, candidate, incumbent = conn.execute("SELECT rule, candidate, incumbent FROM promotions WHERE round = 1").fetchone()
    assert (rule, incumbent) == ("last", "smollm2-135m-instruct") and candidate in trained
    models = {model for (model,) in conn.execute("SELECT model FROM leaderboard WHERE round = 1").fetchall()}
    assert {"sharegpt-chatgpt", "smollm2-135m-instruct", candidate} <= models
    conn.close()
