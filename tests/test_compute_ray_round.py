"""A skills_smoke round on the Ray engine, end to end through the command line, against the local home.

A file of its own: it is the longest test of the Ray engine, and xdist (`--dist loadfile`) runs a file on one worker,
so the shorter Ray tests (tests/test_compute_ray.py) go to whichever worker is free meanwhile."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO


@pytest.mark.slow
def test_skills_smoke_on_ray_ends_with_the_local_tables(smoke_home, tmp_path):
    """`flywheel --engine ray --workers 2 --rounds 1` (curation, the battles' generation and the training stages on
    Ray Train, on a local Ray cluster of 2 CPUs, from an empty completion cache) ends with the setup tables and the round-0
    rows of the local `smoke_home` (built from the same profile and seed for 2 rounds), table by table, and round 1's
    rows up to the first training stage.
    One round keeps it cheap: round 2 runs the same steps again. The base models come from the session's base-model
    cache, which `smoke_home` filled: they are built locally whatever the engine, so training them again proves nothing."""
    from conftest import flywheel_command, flywheel_env

    from arena_dagster.operate import open_instance
    from arena_dagster.warehouse import open_readonly, table_fingerprints

    home = tmp_path / "on-ray"
    proc = subprocess.run(flywheel_command(home, "--engine", "ray", "--workers", "2", rounds=1), check=False, cwd=REPO,
                          env=flywheel_env(), capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    instance = open_instance(home)
    runs = instance.get_runs()
    assert runs and all(run.tags.get("arena/engine") == "ray" and run.tags.get("arena/workers") == "2" for run in runs)
    # Training ran on Ray Train (2 workers) through Pipes: rank 0's step lines are in the run's log.
    logs = [event.message for run in runs for event in instance.all_logs(run.run_id) if event.message]
    assert any("on Ray Train: 2 worker(s)" in line for line in logs)
    assert any(line.startswith("[sft] step ") and " loss " in line for line in logs)
    # A run's steps share one local cluster (with the job server its training steps submit to).
    started = {run.job_name: sum(event.message.startswith("Ray: a local cluster") for event in instance.all_logs(run.run_id)
                                 if event.message) for run in runs}
    assert started == {"flywheel_setup": 1, "flywheel_round": 1}, started
    # Two DDP workers sum gradients in another order than one process: the weights (not the revision) differ in the
    # last digits, and every table made after round 1's first checkpoint follows from them. So: the setup and round 0
    # whole, round 1 up to the SFT stage's training data, and the later round-1 tables present.
    with open_readonly(home) as conn:
        on_ray = {r: table_fingerprints(conn, through_round=r) for r in (0, 1)}
        assert conn.execute("SELECT max(round) FROM dpo_judgments").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM promotions WHERE round = 1").fetchone()[0] >= 1
    with open_readonly(smoke_home) as conn:
        local = {r: table_fingerprints(conn, through_round=r) for r in (0, 1)}
    assert on_ray[0] == local[0], {t: (on_ray[0].get(t), local[0].get(t)) for t in set(on_ray[0]) | set(local[0])
                                   if on_ray[0].get(t) != local[0].get(t)}
    before_training = ["sft_responses", "sft_judgments", "sft_battle_outcomes", "sft_examples"]
    assert {t: on_ray[1][t] for t in before_training} == {t: local[1][t] for t in before_training}
