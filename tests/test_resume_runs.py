"""Which run a `flywheel` command resumes from failure (commands/flywheel.Flywheel._resumable), on a real instance.

The resume itself (Dagster's re-execution from failure, through the command's code server) is exercised by
tests/test_crash_resume.py, which kills a home at every kind of step and compares its tables with an uninterrupted one.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id

from arena_dagster.commands.flywheel import Flywheel
from arena_dagster.defs.automation import ROUND_JOB, SETUP_JOB


def _add(instance, status, *, job=ROUND_JOB, partition="1", profile_hash="this"):
    tags = {"arena/profile_hash": profile_hash, **({"dagster/partition": partition} if partition else {})}
    return instance.add_run(DagsterRun(job_name=job, run_id=make_new_run_id(), status=status, tags=tags))


def test_a_commands_first_run_resumes_the_latest_failed_or_canceled_run_of_its_profile(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        flywheel = Flywheel(tmp_path / "home", None)
        flywheel.instance, flywheel.hash = instance, "this"
        assert flywheel._resumable(ROUND_JOB, 1) is None  # no run yet
        _add(instance, dg.DagsterRunStatus.FAILURE)
        _add(instance, dg.DagsterRunStatus.SUCCESS)
        assert flywheel._resumable(ROUND_JOB, 1) is None  # the latest run succeeded
        failed = _add(instance, dg.DagsterRunStatus.FAILURE)
        _add(instance, dg.DagsterRunStatus.CANCELED, partition="2")
        assert flywheel._resumable(ROUND_JOB, 1).run_id == failed.run_id  # its round's, not another round's
        assert flywheel._resumable(ROUND_JOB, 2).status == dg.DagsterRunStatus.CANCELED
        assert flywheel._resumable(ROUND_JOB, 3) is None
        _add(instance, dg.DagsterRunStatus.FAILURE, partition="2", profile_hash="other")
        assert flywheel._resumable(ROUND_JOB, 2) is None  # made under another profile: run whole
        _add(instance, dg.DagsterRunStatus.STARTED, partition="1")
        assert flywheel._resumable(ROUND_JOB, 1) is None  # (a live run: the command waits for it elsewhere)
        setup = _add(instance, dg.DagsterRunStatus.FAILURE, job=SETUP_JOB, partition=None)
        assert flywheel._resumable(SETUP_JOB, None).run_id == setup.run_id
        flywheel._executed = True  # after setup or an earlier round ran, what a later run left may be stale
        assert flywheel._resumable(SETUP_JOB, None) is None and flywheel._resumable(ROUND_JOB, 2) is None
