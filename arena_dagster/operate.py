"""Running the flywheel from the command line exactly as the UI and the schedule do.

`arena-dagster flywheel` does not execute jobs itself: it submits runs of the code location's
jobs (`flywheel_setup`, `flywheel_round` with the round as partition) to the home's Dagster
instance, whose run queue (one slot per home, see home.DAGSTER_YAML) launches them. When no
Dagster daemon serves the home (no UI is open), the command starts one for its own lifetime.
It then follows each run's events: one line per finished step with its time, a progress bar
for long steps, everything else into a log file under the home (`--verbose` prints it too).

Dagster's own Python API for creating a run against a code location lives under
`dagster._core` (the `dagster job launch` command uses the same calls): dagster is pinned in
pyproject.toml, and tests/test_cli_runs.py exercises this path end to end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import dagster as dg

from arena_dagster.errors import ArenaError
from arena_dagster.training.guard import guarded
from arena_dagster.home import LOCATION_NAME, dagster_home, environment, logs_dir, prepare_instance
from arena_dagster.locks import HomeLock, pid_alive

IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
WAITING = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


class RunFailed(ArenaError):
    pass


def open_instance(home: Path) -> dg.DagsterInstance:
    """The home's persistent Dagster instance (dagster.yaml written on first use).

    Opening creates the instance's SQLite storage the first time; two processes doing that at
    once (a command and the UI starting on a new home) would both stamp its schema version, so
    the first opening of a home is done under a lock.
    """
    prepare_instance(home)
    with HomeLock(home, "instance").held(timeout_s=120, command="open the Dagster instance"):
        return dg.DagsterInstance.from_config(str(dagster_home(home)))


# --------------------------------------------------------------------------- dead runs


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process that executes a run (Dagster's "Started process for run" engine event)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=50).records
    for record in records:
        event = record.event_log_entry.dagster_event
        metadata = getattr(event.event_specific_data, "metadata", None) or {}
        pid = metadata.get("pid")
        if pid is not None:
            return int(pid.value if hasattr(pid, "value") else pid)
    return None


def reap_dead_runs(instance: dg.DagsterInstance, echo: Callable[[str], None], home: Path | None = None) -> list[str]:
    """Mark failed every run whose process died (kill -9, a crash), and drop runs queued by a dead CLI.

    A run stays STARTED in Dagster's history forever when the process executing it is killed;
    at the next start its worker pid (Dagster's own engine event) tells whether it still lives.
    """
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS))):
        pid = worker_pid(instance, run.run_id)
        if pid is not None and pid_alive(pid):
            continue
        if pid is None and run.status == dg.DagsterRunStatus.STARTING and home is not None and daemon_serving(home):
            continue  # a live daemon is launching it right now
        instance.report_run_failed(run, f"the process running this run died (pid {pid}); marked failed at the next start")
        reaped.append(run.run_id)
        echo(f"marked run {run.run_id[:8]} ({run.job_name}, round {run.tags.get('dagster/partition', '-')}) failed: "
             f"its process {pid} is gone")
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(WAITING))):
        cli_pid = run.tags.get("arena/cli_pid")
        if cli_pid and not pid_alive(int(cli_pid)):
            instance.report_run_canceled(run, "the arena-dagster command that queued this run is gone")
            reaped.append(run.run_id)
            echo(f"dropped run {run.run_id[:8]} ({run.job_name}) queued by a command that is gone")
    return reaped


# --------------------------------------------------------------------------- the daemon


def _last_heartbeat(instance: dg.DagsterInstance) -> float:
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return 0.0 if beat is None else float(beat.timestamp)


def daemon_serving(home: Path) -> bool:
    """Whether a live dagster-daemon process works on this home's instance (the UI's, or another command's).

    A heartbeat alone cannot tell: daemons beat every 30 s, so a daemon killed a moment ago still
    looks alive for up to a minute, and runs submitted meanwhile would wait in a queue nobody serves.
    """
    import psutil

    target = dagster_home(home).resolve()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "dagster-daemon" not in cmdline and "dagster._daemon" not in cmdline:
            continue
        try:
            configured = process.environ().get("DAGSTER_HOME", "")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if configured and Path(configured).resolve() == target:
            return True
    return False


@contextlib.contextmanager
def running_daemon(home: Path, instance: dg.DagsterInstance, echo: Callable[[str], None],
                   timeout_s: float = 120) -> Iterator[Callable[[], None]]:
    """A Dagster daemon serving the home's run queue while the block runs (the UI's, if one is open).

    Yields `ready`, which returns once the daemon beats (at once for one already serving). The block
    runs while a new daemon starts: its imports and its code server load beside what the block does
    meanwhile (the command's own code server), instead of before it; call `ready` before relying on it.
    """
    if daemon_serving(home):
        yield lambda: None
        return
    workspace = prepare_instance(home)
    previous = _last_heartbeat(instance)  # perhaps of a daemon that died a moment ago
    with open(logs_dir(home) / "daemon.log", "a") as log:
        # Guarded: a daemon this command started ends with it, even when it is killed with kill -9.
        process = subprocess.Popen(
            guarded([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)]),
            env={**os.environ, **environment(home)}, stdout=log, stderr=subprocess.STDOUT, cwd=str(home),
        )
    deadline = time.monotonic() + timeout_s

    def ready() -> None:
        while _last_heartbeat(instance) <= previous:
            if process.poll() is not None:
                raise ArenaError("the Dagster daemon stopped at start", str(logs_dir(home) / "daemon.log"),
                                 "read the log's last lines")
            if time.monotonic() > deadline:
                raise ArenaError(f"the Dagster daemon sent no heartbeat in {timeout_s:.0f} s",
                                 str(logs_dir(home) / "daemon.log"), "read the log's last lines")
            time.sleep(0.5)

    try:
        yield ready
    finally:
        # Its code servers (and what they started) go with it, even when they outlive the daemon's own shutdown.
        started = process_tree(process.pid)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        end_processes(started[1:])


# --------------------------------------------------------------------------- submitting runs


class Submitter:
    """Creates runs of the code location's jobs, as the UI's Launch button does, and submits them to the queue."""

    def __init__(self, instance: dg.DagsterInstance, workspace_file: Path) -> None:
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        # The code server's start and stop messages are Dagster's to log, not this command's to print.
        logging.getLogger("dagster").setLevel(logging.WARNING)
        self.instance = instance
        self._stack = contextlib.ExitStack()
        try:  # a location that fails to load must not leave its code server running
            process_context = self._stack.enter_context(WorkspaceProcessContext(
                instance=instance, version=dg.__version__, read_only=False,
                workspace_load_target=WorkspaceFileTarget(paths=[str(workspace_file)]), code_server_log_level="WARNING",
            ))
            self.workspace = process_context.create_request_context()
            errors = self.workspace.get_code_location_error(LOCATION_NAME)
            if errors:
                raise ArenaError("the code location failed to load", LOCATION_NAME, errors.message.splitlines()[-1])
            self.location = self.workspace.get_code_location(LOCATION_NAME)
            self.repository = next(iter(self.location.get_repositories().values()))
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def _remote_job(self, job_name: str):
        from dagster._core.definitions.selector import JobSubsetSelector

        return self.location.get_job(JobSubsetSelector(
            location_name=self.location.name, repository_name=self.repository.name, job_name=job_name, op_selection=None,
        ))

    def resume(self, parent: dg.DagsterRun, tags: dict[str, str]) -> str | None:
        """Submit what a failed or canceled run left undone, as the UI's "Re-execute from failure" does (its
        finished steps' outputs are read, not made again), or None when it cannot be resumed."""
        from dagster._core.errors import (
            DagsterExecutionStepNotFoundError,
            DagsterInvalidSubsetError,
            DagsterRunNotFoundError,
        )
        from dagster._core.execution.plan.resume_retry import ReexecutionStrategy

        try:
            run = self.instance.create_reexecuted_run(
                request_context=self.workspace, parent_run=parent, code_location=self.location,
                remote_job=self._remote_job(parent.job_name), strategy=ReexecutionStrategy.FROM_FAILURE,
                extra_tags=tags, use_parent_run_tags=False,
            )
        except (DagsterInvalidSubsetError, DagsterExecutionStepNotFoundError, DagsterRunNotFoundError):
            return None  # no step left, a job whose steps changed since, or an ancestor run deleted: run it whole
        self.instance.submit_run(run.run_id, self.workspace)
        return run.run_id

    def submit(self, job_name: str, tags: dict[str, str]) -> str:
        remote_job = self._remote_job(job_name)
        plan = self.location.get_execution_plan(remote_job, {}, step_keys_to_execute=None, known_state=None,
                                                instance=self.instance)
        run = self.instance.create_run(
            job_name=job_name, run_id=None, run_config={}, resolved_op_selection=None,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute, op_selection=None, status=None,
            root_run_id=None, parent_run_id=None, tags={**remote_job.tags, **tags}, job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=None, asset_check_selection=None, asset_graph=self.repository.asset_graph,
        )
        self.instance.submit_run(run.run_id, self.workspace)
        return run.run_id


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT received while a command works on a home (a KeyboardInterrupt, so no `except Exception` hides it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    def line(self) -> str:
        return f"interrupted by {self.name}: run the same command again to resume"


class RunCanceled(ArenaError):
    """The run a command followed, ended because the command got a signal; exits 128 + the signal's number."""

    def __init__(self, title: str, interrupted: Interrupted, run: dg.DagsterRun | None, run_id: str) -> None:
        status = run.status if run is not None else None
        what = (f"{title} canceled by {interrupted.name}" if status == dg.DagsterRunStatus.CANCELED else
                f"{title} stopped by {interrupted.name}, the run ended {status.value if status else 'unknown'}")
        super().__init__(what, f"run {run_id[:8]}", "run the same command again to resume")
        self.exit_code = 128 + interrupted.signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise Interrupted in the main thread.

    Once one came, both are ignored until the process ends: cancelling the run and stopping what
    the command started is bounded (see cancel_run), and a second Ctrl-C must not cut it short.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        for each in (signal.SIGTERM, signal.SIGINT):
            signal.signal(each, signal.SIG_IGN)
        caught.append(signum)
        raise Interrupted(signum)

    previous = {each: signal.signal(each, handler) for each in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        if not caught:
            for each, old in previous.items():
                signal.signal(each, old)


def _alive(process: Any) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_tree(pid: int | None) -> list[Any]:
    """The process `pid` and every descendant (psutil.Process objects); empty when it is gone."""
    import psutil

    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def end_processes(processes: list[Any], grace_s: float = 10.0) -> list[int]:
    """Give `processes` `grace_s` to end by themselves, then SIGTERM, then SIGKILL; returns the pids that had to be stopped."""
    import psutil

    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped = []
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        survivors = [p for p in processes if _alive(p)]
        for process in survivors:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
                stopped.append(process.pid)
        deadline = time.monotonic() + wait_s
        while any(_alive(p) for p in survivors) and time.monotonic() < deadline:
            time.sleep(0.1)
    return sorted(set(stopped))


def cancel_run(instance: dg.DagsterInstance, run_id: str, reason: str, timeout_s: float = 60.0) -> dg.DagsterRun | None:
    """Have Dagster cancel a run and make sure its process tree is gone; returns the run as it ended.

    The run launcher asks the code server that launched the run to interrupt it: the step raises
    Dagster's interrupt, Pipes sends SIGINT to a training process, and the run ends CANCELED.
    A run that does not end in `timeout_s` (or whose code server is gone) has its processes
    stopped and is marked canceled here; trainers, Pipes processes and servers its step started
    are stopped too when they outlive it.
    """
    run = instance.get_run_by_id(run_id)
    if run is None or run.status in FINISHED:
        return run
    if run.status in WAITING:
        instance.report_run_canceled(run, reason)
        return instance.get_run_by_id(run_id)
    pid = worker_pid(instance, run_id)
    tree = process_tree(pid)
    with contextlib.suppress(Exception):  # a code server that is gone: the processes are stopped below
        instance.run_launcher.terminate(run_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status in FINISHED or (pid is not None and not pid_alive(pid)):
            break
        time.sleep(0.5)
    tree += [p for p in process_tree(pid) if p.pid not in {q.pid for q in tree}]
    end_processes(tree)
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status not in FINISHED:
        instance.report_run_canceled(run, reason)
    return instance.get_run_by_id(run_id)


def follow(instance: dg.DagsterInstance, run_id: str, on_event: Callable[[Any], None], poll_s: float = 0.5) -> dg.DagsterRun:
    """Feed every event of a run to `on_event` as it is written, until the run ends; returns the run."""
    cursor = None
    pid = None
    while True:
        # The status first: a run seen finished has written all its events, so the drain below reads them all.
        run = instance.get_run_by_id(run_id)
        while True:
            connection = instance.get_records_for_run(run_id, cursor=cursor, limit=500)
            for record in connection.records:
                on_event(record.event_log_entry)
            cursor = connection.cursor
            if not connection.has_more:
                break
        if run is not None and run.status in FINISHED:
            return run
        if run is not None and run.status in IN_PROGRESS:
            pid = pid or worker_pid(instance, run_id)
            if pid is not None and not pid_alive(pid):
                instance.report_run_failed(run, f"the process running this run died (pid {pid})")
        time.sleep(poll_s)
