"""Kill -9 at every kind of step, rerun the same command: the tables end as an uninterrupted run's.

The `interrupted_home` fixture (tests/interruptions.py) builds one home by `arena-dagster
flywheel` killed (the whole process tree: the command, the Dagster daemon it started, the code
server, the run worker and any training subprocess, as a machine crash would) while it runs each
kind of step in turn, restarted after each kill, and finally let finish (the same home is also
stopped by SIGTERM and SIGINT: tests/test_signals.py); it builds setup and one round. Every
warehouse table must then hold the same rows (an order-independent hash per table, volatile
columns such as wall-clock times left out) as setup and the first round of the uninterrupted home
of the `smoke_home` fixture, built from the same profile and seed in another folder.
"""

from __future__ import annotations

import os
import signal

import dagster as dg
import pytest
from interruptions import INTERRUPTIONS, differing_tables

from arena_dagster.operate import open_instance

pytestmark = pytest.mark.slow

KILL_POINTS = [(what, step, partition) for how, what, step, partition in INTERRUPTIONS if how == signal.SIGKILL]


@pytest.mark.timeout(5400)  # builds interrupted_home if first of its two tests; then smoke_home (xdist: built meanwhile)
def test_kill_at_every_kind_of_step_then_resume_gives_the_uninterrupted_tables(interrupted_home, smoke_home):
    kills = interrupted_home.by(signal.SIGKILL)
    assert [(each.what, each.step, each.partition) for each in kills] == KILL_POINTS
    # Every kind of step: training (setup's base models, a round's stage), evaluation, generation, judging, SQL, the gate.
    assert {each.step for each in kills} >= {"base_models", "baseline_leaderboard", "sft_responses", "dpo_judgments",
                                              "rl_battle_outcomes", "promotion_gate", "dpo_checkpoint"}
    for each in kills:
        assert each.killed >= 2, f"killing during {each.what} found no process tree"
    proc, home = interrupted_home.final, interrupted_home.home
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The resumed command marked the killed runs failed and cleaned what they left.
    instance = open_instance(home)
    statuses = [run.status for run in instance.get_runs()]
    assert dg.DagsterRunStatus.STARTED not in statuses and dg.DagsterRunStatus.QUEUED not in statuses
    assert statuses.count(dg.DagsterRunStatus.FAILURE) >= len(KILL_POINTS) - 1
    # Each rerun resumed the killed run from where it stopped (Dagster's re-execution from failure), not from scratch.
    resumed = {run.tags.get("dagster/parent_run_id") for run in instance.get_runs()} - {None}
    assert len(resumed) >= len(KILL_POINTS) - 1, resumed
    assert "resuming run" in proc.stdout, proc.stdout[-3000:]
    leftovers = [p for folder in ("checkpoints", "models") for p in (home / folder).rglob("*")
                 if p.name.endswith((".tmp", ".old"))]
    assert not leftovers
    differing = differing_tables(home, smoke_home)
    assert not differing, differing
    assert os.path.getsize(home / "warehouse.duckdb") > 0
