"""`kill -TERM` / Ctrl-C on `arena-dagster flywheel`: the run is canceled, nothing it started survives, the rerun resumes.

The command is stopped twice on one home, by SIGTERM while round 1 trains its reward model (a
Pipes training subprocess) and by SIGINT while round 2 trains SFT-I2; each time it must exit
128 + the signal with one line, leave the run CANCELED in the home's instance and no process
of its tree (daemon, code servers, run worker, trainer). The last, uninterrupted command then
ends with the tables of the uninterrupted home of the `smoke_home` fixture.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from arena_dagster.operate import open_instance
from conftest import REPO, flywheel_command, flywheel_env
from test_crash_resume import _step_started

pytestmark = pytest.mark.slow


def _processes_of(home: Path) -> list[str]:
    """Every live process that works on `home` (its environment or command line names it)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("ARENA_HOME") == str(home) or str(home) in " ".join(process.info["cmdline"] or []):
                found.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:160]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _run_round_runs(instance: dg.DagsterInstance, partition: str) -> list[dg.DagsterRun]:
    return [run for run in instance.get_runs() if run.tags.get("dagster/partition") == partition]


def _interrupt(home: Path, sig: signal.Signals, step: str, partition: str, timeout_s: float = 1500) -> tuple[int, str, str]:
    """Start the command, send `sig` to it (only to it, as `kill` does) once `step` of round `partition` runs."""
    out, err = home.parent / f"{sig.name}.out", home.parent / f"{sig.name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(flywheel_command(home), cwd=REPO, env=flywheel_env(), stdout=stdout, stderr=stderr,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout_s
    instance = None
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the command ended ({process.returncode}) before {step}:\n{out.read_text()[-3000:]}"
            if instance is None and (home / "logs" / "daemon.log").is_file():
                instance = open_instance(home)
            if instance is not None and _step_started(instance, step, partition):
                time.sleep(2.0)  # inside the step: a trainer (or a generation) is running
                process.send_signal(sig)
                return process.wait(timeout=240), out.read_text(), err.read_text()
            time.sleep(0.3)
        raise AssertionError(f"step {step} (round {partition}) did not start in {timeout_s:.0f} s")
    finally:
        if process.poll() is None:
            process.kill()


def _assert_canceled(home: Path, sig: signal.Signals, round_key: str, rc: int, out: str, err: str) -> None:
    assert rc == 128 + sig, (rc, out[-2000:], err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"arena-dagster: round {round_key} canceled by {sig.name} (run "), lines[0]
    assert lines[0].endswith("): run the same command again to resume"), lines[0]
    instance = open_instance(home)
    latest = _run_round_runs(instance, round_key)[0]  # newest first
    assert latest.status == dg.DagsterRunStatus.CANCELED, latest.status
    assert latest.run_id[:8] in lines[0]
    time.sleep(3)
    survivors = _processes_of(home)
    assert not survivors, survivors


@pytest.mark.timeout(3600)
def test_sigterm_and_sigint_cancel_the_run_stop_its_processes_and_the_rerun_resumes(smoke_home, tmp_path):
    from arena_dagster.warehouse import open_readonly, table_fingerprints

    home = tmp_path / "home"
    # While round 1 trains its reward model through Pipes: the trainer must go with the run.
    rc, out, err = _interrupt(home, signal.SIGTERM, "reward_model", "1")
    _assert_canceled(home, signal.SIGTERM, "1", rc, out, err)
    assert not (home / "checkpoints" / "RM-I1").exists()
    # Ctrl-C (only the command gets it, as with `kill -INT`) while round 2 trains SFT-I2, once round 1 is resumed.
    rc, out, err = _interrupt(home, signal.SIGINT, "sft_checkpoint", "2")
    _assert_canceled(home, signal.SIGINT, "2", rc, out, err)
    assert "round 1: done in" in out

    proc = subprocess.run(flywheel_command(home), cwd=REPO, env=flywheel_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not [p for p in (home / "checkpoints").iterdir() if p.name.endswith((".tmp", ".old", ".spec.json"))]
    with open_readonly(home) as conn:
        resumed = table_fingerprints(conn)
    with open_readonly(smoke_home) as conn:
        uninterrupted = table_fingerprints(conn)
    differing = {t: (resumed.get(t), uninterrupted.get(t)) for t in set(resumed) | set(uninterrupted)
                 if resumed.get(t) != uninterrupted.get(t)}
    assert not differing, differing
