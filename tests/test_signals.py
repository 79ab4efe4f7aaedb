"""`kill -TERM` / Ctrl-C on `arena-dagster flywheel`: the run is canceled, nothing it started survives, the rerun resumes.

The command is stopped twice on the home of the `interrupted_home` fixture (tests/interruptions.py,
which also kills it with kill -9 at every kind of step: tests/test_crash_resume.py): by SIGTERM
while round 1 trains its reward model (a Pipes training subprocess) and by SIGINT while it
trains SFT-I1; each time it must exit 128 + the signal with one line, leave the run CANCELED in
the home's instance and no process of its tree (daemon, code servers, run worker, trainer). The
last, uninterrupted command then ends with the tables of the uninterrupted home of the
`smoke_home` fixture (its first round).
"""

from __future__ import annotations

import signal

import dagster as dg
import pytest
from interruptions import Interruption, differing_tables

pytestmark = pytest.mark.slow


def _assert_canceled(each: Interruption, round_key: str) -> None:
    sig, rc, out, err = each.how, each.returncode, each.out, each.err
    assert rc == 128 + sig, (rc, out[-2000:], err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"arena-dagster: round {round_key} canceled by {sig.name} (run "), lines[0]
    assert lines[0].endswith("): run the same command again to resume"), lines[0]
    latest_id, latest_status = each.round_runs[0]  # newest first
    assert latest_status == dg.DagsterRunStatus.CANCELED, latest_status
    assert latest_id[:8] in lines[0]
    assert not each.survivors, each.survivors


@pytest.mark.timeout(5400)  # builds interrupted_home if first of its two tests; then smoke_home (xdist: built meanwhile)
def test_sigterm_and_sigint_cancel_the_run_stop_its_processes_and_the_rerun_resumes(interrupted_home, smoke_home):
    # While round 1 trains its reward model through Pipes: the trainer must go with the run.
    (sigterm,) = interrupted_home.by(signal.SIGTERM)
    assert (sigterm.step, sigterm.partition) == ("reward_model", "1")
    _assert_canceled(sigterm, "1")
    assert "RM-I1" not in sigterm.checkpoints
    # Ctrl-C (only the command gets it, as with `kill -INT`) while round 1 trains SFT-I1, in the command that resumed
    # the generation killed before.
    (sigint,) = interrupted_home.by(signal.SIGINT)
    assert (sigint.step, sigint.partition) == ("sft_checkpoint", "1")
    _assert_canceled(sigint, "1")
    assert "SFT-I1" not in sigint.checkpoints

    proc, home = interrupted_home.final, interrupted_home.home
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not [p for p in (home / "checkpoints").iterdir() if p.name.endswith((".tmp", ".old", ".spec.json"))]
    differing = differing_tables(home, smoke_home)
    assert not differing, differing
