"""`arena-dagster flywheel`: bring a home's setup and rounds 1..N up to date through its Dagster instance.

What runs is decided from the instance's own record: a setup asset or a round whose latest
materialization was made with another profile (hash), or never, is run again, and so is every
round after it (its target may change). A finished home reruns as a no-op that verifies the
warehouse and the checkpoints, in seconds. Runs go through the home's run queue like the UI's
(see operate.py); a second command on the same home waits for the first, or refuses (--no-wait).
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from arena_dagster.config import profile_hash, settings_of
from arena_dagster.defs.automation import ROUND_JOB, SETUP_ASSETS, SETUP_JOB, add_missing_round_partitions
from arena_dagster.errors import ArenaError
from arena_dagster.home import (
    home_profile,
    logs_dir,
    prepare_environment,
    prepare_instance,
    profile_settings,
    reap_stale_files,
    record_profile,
)
from arena_dagster.locks import HomeError, describe_holder, flywheel_lock
from arena_dagster.operate import (
    Interrupted,
    RunCanceled,
    RunFailed,
    Submitter,
    cancel_run,
    follow,
    open_instance,
    reap_dead_runs,
    running_daemon,
)
from arena_dagster.progress import RunPrinter


def latest_profile_hash(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> str | None:
    """The profile hash recorded by the latest materialization of an asset (partition), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("arena/profile_hash")
    return None if value is None else str(value.value)


class Flywheel:
    """One `flywheel` command on one home: its lock, its profile, the runs it submits and follows."""

    def __init__(self, home: Path, profile: str | None, *, seed: int | None = None, switch_profile: bool = False,
                 wait: bool = True, verbose: bool = False, echo: Callable[[str], None] = print,
                 engine_tags: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.engine_tags = dict(engine_tags or {})  # --engine/--workers/--ray-address, read by the compute resource
        self.requested = profile
        self.seed = seed
        self.switch_profile = switch_profile
        self.wait = wait
        self.verbose = verbose
        self.echo = echo
        self._lock = flywheel_lock(self.home)
        self._submitter: Submitter | None = None
        self._executed = False  # whether this command has run a job yet (only its first may resume one)
        self.log_file = logs_dir(self.home) / f"flywheel-{datetime.now().strftime('%Y%m%d-%H%M%S')}.log"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "Flywheel":
        self.home.mkdir(parents=True, exist_ok=True)

        def waiting(holder: dict[str, Any] | None) -> None:
            self.echo(f"another flywheel works on this home (pid {(holder or {}).get('pid', '?')}, "
                      f"{describe_holder(holder)}): waiting for it to finish")

        if not self._lock.acquire(wait=self.wait, on_wait=waiting, command="flywheel"):
            holder = self._lock.holder() or {}
            raise HomeError(f"another flywheel works on this home (pid {holder.get('pid', '?')}, {describe_holder(holder)})",
                            str(self.home), "wait for it to finish, or drop --no-wait to wait")
        try:
            if self.switch_profile:
                name = self.requested or home_profile(self.home)[0]
                self.profile, self.settings = name, profile_settings(name, self.seed)
            else:
                self.profile, self.seed, self.settings = home_profile(self.home, self.requested, self.seed)
            record_profile(self.home, self.profile, self.seed, self.settings, switch=self.switch_profile)
            self.hash = profile_hash(self.settings)
            self.instance = open_instance(self.home)
            reap_dead_runs(self.instance, self.echo, self.home)
            for path in reap_stale_files(self.home):
                self.echo(f"removed {path.relative_to(self.home)} left by a killed run")
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._submitter is not None:
                self._submitter.close()
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ what to run

    def pending(self, rounds: int) -> tuple[bool, list[int]]:
        """(setup needed, rounds needed): never made, or made with another profile; and every round after."""
        # A run killed after its round's target_model was recorded but before its last steps left that round unfinished.
        setup = (any(latest_profile_hash(self.instance, asset) != self.hash for asset in SETUP_ASSETS)
                 or self._unfinished(SETUP_JOB, None) is not None)
        needed: list[int] = []
        for round_key in range(1, rounds + 1):
            if (setup or needed or latest_profile_hash(self.instance, "target_model", str(round_key)) != self.hash
                    or self._unfinished(ROUND_JOB, round_key) is not None):
                needed.append(round_key)
        return setup, needed

    def run(self, rounds: int, on_round: Callable[[int], None] | None = None) -> None:
        slices = settings_of(self.settings).prompts.rounds
        if rounds > slices:
            raise ArenaError(f"profile {self.profile!r} slices its prompt pool into {slices} rounds", f"--rounds {rounds}",
                             f"ask for at most {slices}, or raise prompts.rounds in the profile" if slices else
                             "it trains nothing (a replay rates recorded judgments): run --rounds 0")
        self.echo(f"arena-dagster: profile {self.profile} (seed {self.seed if self.seed is not None else 'default'}, "
                  f"hash {self.hash[:8]}), home {self.home}; events in {self.log_file}")
        setup, needed = self.pending(rounds)
        if not setup and not needed:
            started = time.monotonic()
            self.verify(rounds)
            self.echo(f"every round up to {rounds} is done with this profile: verified in {time.monotonic() - started:.1f} s")
            for round_key in range(0, rounds + 1):
                if on_round:
                    on_round(round_key)
            return
        with running_daemon(self.home, self.instance, self.echo) as daemon_ready:
            # The command's code server loads while the daemon starts: each is a process that imports the code location.
            self._submitter = Submitter(self.instance, prepare_instance(self.home))
            daemon_ready()
            if setup:
                self._execute(SETUP_JOB, None, "setup and baseline (round 0)")
            elif on_round:
                on_round(0)
            add_missing_round_partitions(self.instance)
            if setup and on_round:
                on_round(0)
            for round_key in range(1, rounds + 1):
                if round_key not in needed:
                    self.echo(f"round {round_key}: done with this profile")
                else:
                    self._execute(ROUND_JOB, round_key, f"round {round_key}")
                if on_round:
                    on_round(round_key)

    def _execute(self, job: str, round_key: int | None, title: str) -> None:
        assert self._submitter is not None
        tags = {"arena/started_by": "cli", "arena/cli_pid": str(__import__("os").getpid()), **self.engine_tags}
        if round_key is not None:
            tags.update({"dagster/partition": str(round_key), "arena/round": str(round_key)})
        parent = self._resumable(job, round_key)
        run_id = self._submitter.resume(parent, tags) if parent is not None else None
        if run_id is not None:
            self.echo(f"{title}: run {run_id[:8]} of job {job}, resuming run {parent.run_id[:8]} where it stopped")
        else:
            run_id = self._submitter.submit(job, tags)
            self.echo(f"{title}: run {run_id[:8]} of job {job}")
        self._executed = True
        printer = RunPrinter(self.log_file, verbose=self.verbose)
        started = time.monotonic()
        try:
            run = follow(self.instance, run_id, printer)
        except KeyboardInterrupt as exc:
            interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
            printer.close()
            ended = cancel_run(self.instance, run_id, f"the arena-dagster command got {interrupted.name}")
            raise RunCanceled(title, interrupted, ended, run_id) from None
        finally:
            printer.close()
        if run.status != dg.DagsterRunStatus.SUCCESS:
            failure = printer.failures[0] if printer.failures else f"the run ended {run.status.value}"
            raise RunFailed(f"{title} failed: {failure}", f"run {run_id[:8]}",
                            f"events in {self.log_file}; rerun the same command to resume where it stopped")
        self.echo(f"{title}: done in {time.monotonic() - started:.0f} s")

    def _resumable(self, job: str, round_key: int | None) -> dg.DagsterRun | None:
        """The run of `job` (and round) to resume from where it stopped: the latest one, if it failed or was
        canceled under this profile (hash). Only a command's first run resumes: once this command has run setup
        or an earlier round, what a later run left was made from inputs that may have changed."""
        return None if self._executed else self._unfinished(job, round_key)

    def _unfinished(self, job: str, round_key: int | None) -> dg.DagsterRun | None:
        """The latest run of `job` (and round) if it failed or was canceled under this profile (hash)."""
        tags = {"dagster/partition": str(round_key)} if round_key is not None else {}
        latest = self.instance.get_runs(filters=dg.RunsFilter(job_name=job, tags=tags), limit=1)
        if not latest or latest[0].status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            return None
        return latest[0] if latest[0].tags.get("arena/profile_hash") == self.hash else None

    # ------------------------------------------------------------------ verification

    def verify(self, rounds: int) -> None:
        """A finished home's cheap check: every round has its leaderboard and gate, every checkpoint its folder."""
        from arena_dagster.warehouse import open_readonly

        with open_readonly(self.home) as conn:
            boards = {r for (r,) in conn.execute("SELECT DISTINCT round FROM leaderboard").fetchall()}
            gates = {r for (r,) in conn.execute("SELECT round FROM promotions").fetchall()}
            checkpoints = conn.execute("SELECT model, path, manifest FROM model_registry WHERE round <= ?", [rounds]).fetchall()
        missing = [r for r in range(rounds + 1) if r not in boards or r not in gates]
        if missing:
            raise ArenaError("the warehouse lacks rounds the Dagster instance says are done", f"rounds {missing}",
                             "rerun with --switch-profile to rebuild them")
        # A declared model without files (served by name, or known only through recorded verdicts) has no path.
        absent = [model for model, path, _ in checkpoints if path and not Path(path).exists()]
        if absent:
            raise ArenaError("registered checkpoints are missing on disk", ", ".join(absent[:5]),
                             "rerun with --switch-profile to rebuild them")


def prepare_ui(home: Path, profile: str | None, host: str, port: int) -> list[str]:
    """The `dagster dev` command line for a home's UI (its profile resolved, dead runs marked failed)."""
    import sys

    prepare_environment(home)
    name, seed, settings = home_profile(home, profile)
    if profile is not None:
        record_profile(home, name, seed, settings)
    workspace = prepare_instance(home)
    reap_dead_runs(open_instance(home), print, home)
    dagster = str(Path(sys.executable).with_name("dagster"))
    return [dagster, "dev", "-w", str(workspace), "-h", host, "-p", str(port)]
