"""Kill -9 at every kind of step, rerun the same command: the tables end as an uninterrupted run's.

One home is built by `arena-dagster flywheel` killed (the whole process tree: the command, the
Dagster daemon it started, the code server, the run worker and any training subprocess, as a
machine crash would) while it runs each kind of step in turn, restarted after each kill, and
finally let finish. Every warehouse table must then hold the same rows (an order-independent
hash per table, volatile columns such as wall-clock times left out) as the uninterrupted home
of the `smoke_home` fixture, built from the same profile and seed in another folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from arena_dagster.operate import open_instance
from conftest import REPO, flywheel_command, flywheel_env

pytestmark = pytest.mark.slow

# (what is interrupted, the step running when the kill comes, its round partition or None for setup)
KILL_POINTS = [
    ("base-model training in setup", "base_models", None),
    ("the baseline evaluation", "baseline_leaderboard", None),
    ("a generation", "sft_responses", "1"),
    ("a judgment", "dpo_judgments", "1"),
    ("an SQL model", "rl_battle_outcomes", "1"),
    ("a training step", "reward_model", "1"),
    ("the gate", "promotion_gate", "1"),
    ("training in the last round", "dpo_checkpoint", "2"),
]


def _kill_tree(pid: int) -> int:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    processes = [root, *root.children(recursive=True)]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)
    return len(processes)


def _step_started(instance: dg.DagsterInstance, step: str, partition: str | None) -> bool:
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if (run.tags.get("dagster/partition") or None) != partition:
            continue
        records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records
        if any(r.event_log_entry.step_key == step for r in records):
            return True
    return False


def _run_until_step(home: Path, step: str, partition: str | None, cache: Path, timeout_s: float = 1200) -> int:
    """Start the command, wait until `step` of `partition` runs, kill everything."""
    # Its own base-model cache: setup trains the base models (and fills the cache) instead of copying them.
    log = cache.parent / f"kill-{step}-{partition}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(flywheel_command(home), cwd=REPO, env={**flywheel_env(), "ARENA_CACHE": str(cache)},
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    instance = None
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, (f"the command ended ({process.returncode}) before step {step} ran:\n"
                                            + log.read_text()[-3000:])
            if instance is None and (home / "logs" / "daemon.log").is_file():  # the command made the instance
                instance = open_instance(home)
            if instance is not None and _step_started(instance, step, partition):
                time.sleep(0.2)  # inside the step, not at its edge
                return _kill_tree(process.pid)
            time.sleep(0.3)
        raise AssertionError(f"step {step} (round {partition}) did not start in {timeout_s:.0f} s")
    finally:
        if process.poll() is None:
            _kill_tree(process.pid)


@pytest.mark.timeout(3600)
def test_kill_at_every_kind_of_step_then_resume_gives_the_uninterrupted_tables(smoke_home, tmp_path):
    from arena_dagster.warehouse import open_readonly, table_fingerprints

    home = tmp_path / "crashed"
    for what, step, partition in KILL_POINTS:
        killed = _run_until_step(home, step, partition, tmp_path / "cache")
        assert killed >= 2, f"killing during {what} found no process tree"
    proc = subprocess.run(flywheel_command(home), cwd=REPO, env={**flywheel_env(), "ARENA_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The resumed command marked the killed runs failed and cleaned what they left.
    instance = open_instance(home)
    statuses = [run.status for run in instance.get_runs()]
    assert dg.DagsterRunStatus.STARTED not in statuses and dg.DagsterRunStatus.QUEUED not in statuses
    assert statuses.count(dg.DagsterRunStatus.FAILURE) >= len(KILL_POINTS) - 1
    leftovers = [p for folder in ("checkpoints", "models") for p in (home / folder).rglob("*")
                 if p.name.endswith((".tmp", ".old"))]
    assert not leftovers
    with open_readonly(home) as conn:
        resumed = table_fingerprints(conn)
    with open_readonly(smoke_home) as conn:
        uninterrupted = table_fingerprints(conn)
    differing = {t: (resumed.get(t), uninterrupted.get(t)) for t in set(resumed) | set(uninterrupted)
                 if resumed.get(t) != uninterrupted.get(t)}
    assert not differing, differing
    assert os.path.getsize(home / "warehouse.duckdb") > 0
