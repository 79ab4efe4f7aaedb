"""One home interrupted at every kind of step, by kill -9 and by SIGTERM / SIGINT, then let finish.

`arena-dagster flywheel --profile skills_smoke --rounds 1` is started on a fresh home again and
again; each time, once a given step of a given round runs, it is either killed (the whole process
tree: the command, the Dagster daemon it started, the code server, the run worker and any
training subprocess, as a machine crash would) or sent SIGTERM / SIGINT (only the command, as
`kill` and Ctrl-C do). Finally the same command runs uninterrupted. What each interruption left
is recorded when it happens, for tests/test_crash_resume.py and tests/test_signals.py to check:
one home serves both, so the suite builds it once instead of twice.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psutil
from conftest import REPO, flywheel_command, flywheel_env

from arena_dagster.operate import open_instance

# (how, what is interrupted, the step running when it comes, its round partition or None for setup), in the order the
# steps run: setup, then the one round the home builds (INTERRUPTED_ROUNDS).
INTERRUPTIONS = [
    (signal.SIGKILL, "base-model training in setup", "base_models", None),
    (signal.SIGKILL, "the baseline evaluation", "baseline_leaderboard", None),
    (signal.SIGKILL, "a generation", "sft_responses", "1"),
    # Ctrl-C while round 1 trains SFT-I1, in the command that resumed the killed generation.
    (signal.SIGINT, "SFT training", "sft_checkpoint", "1"),
    (signal.SIGKILL, "a judgment", "dpo_judgments", "1"),
    (signal.SIGKILL, "training in the last round", "dpo_checkpoint", "1"),
    (signal.SIGKILL, "an SQL model", "rl_battle_outcomes", "1"),
    # kill -TERM while round 1 trains its reward model through Pipes: the trainer must go with the run.
    (signal.SIGTERM, "reward-model training (Pipes)", "reward_model", "1"),
    (signal.SIGKILL, "the gate", "promotion_gate", "1"),
]
# One round: a second round runs the same kinds of step again (smoke_home's first round is the reference).
INTERRUPTED_ROUNDS = 1



@dataclass
class Interruption:
    how: signal.Signals
    what: str
    step: str
    partition: str | None
    killed: int = 0  # SIGKILL: processes of the tree that got it
    returncode: int | None = None  # SIGTERM / SIGINT: how the command ended, and what it printed
    out: str = ""
    err: str = ""
    round_runs: list[tuple[str, dg.DagsterRunStatus]] = field(default_factory=list)  # (run id, status), newest first
    survivors: list[str] = field(default_factory=list)  # processes still working on the home 3 s after the command ended
    checkpoints: list[str] = field(default_factory=list)  # the home's checkpoint folders right after


@dataclass
class InterruptedHome:
    home: Path
    interruptions: list[Interruption]
    final: subprocess.CompletedProcess

    def by(self, how: signal.Signals) -> list[Interruption]:
        return [each for each in self.interruptions if each.how == how]


def kill_tree(pid: int) -> int:
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


def step_started(instance: dg.DagsterInstance, step: str, partition: str | None, cli_pid: int) -> bool:
    """Whether a run that the command `cli_pid` submitted runs `step` of `partition`.

    Only its own runs count: a run killed at the same step by the previous kill still reads
    STARTED until this command marks it failed.
    """
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if (run.tags.get("dagster/partition") or None) != partition or run.tags.get("arena/cli_pid") != str(cli_pid):
            continue
        records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records
        if any(r.event_log_entry.step_key == step for r in records):
            return True
    return False


def processes_of(home: Path) -> list[str]:
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


def _interrupt(home: Path, cache: Path, each: Interruption, timeout_s: float = 1500) -> None:
    """Start the command, and once `each.step` of its round runs, interrupt it as `each.how` says."""
    stem = home.parent / f"{each.how.name}-{each.step}-{each.partition}"
    out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(flywheel_command(home, rounds=INTERRUPTED_ROUNDS), cwd=REPO, env={**flywheel_env(), "ARENA_CACHE": str(cache)},
                                   stdout=stdout, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    instance = None
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, (f"the command ended ({process.returncode}) before step {each.step} "
                                            f"(round {each.partition}) ran:\n{out.read_text()[-3000:]}{err.read_text()[-3000:]}")
            if instance is None and (home / "logs" / "daemon.log").is_file():  # the command made the instance
                instance = open_instance(home)
            if instance is not None and step_started(instance, each.step, each.partition, process.pid):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"step {each.step} (round {each.partition}) did not start in {timeout_s:.0f} s")
        if each.how == signal.SIGKILL:
            time.sleep(0.2)  # inside the step, not at its edge
            each.killed = kill_tree(process.pid)
        else:
            time.sleep(2.0)  # inside the step: a trainer is running
            process.send_signal(each.how)
            each.returncode = process.wait(timeout=240)
            time.sleep(3)
            each.survivors = processes_of(home)
        each.out, each.err = out.read_text(), err.read_text()
        each.round_runs = [(run.run_id, run.status) for run in open_instance(home).get_runs()
                           if (run.tags.get("dagster/partition") or None) == each.partition]
        each.checkpoints = sorted(p.name for p in (home / "checkpoints").glob("*"))
    finally:
        if process.poll() is None:
            kill_tree(process.pid)


def interrupted_home(folder: Path) -> InterruptedHome:
    """Interrupt the command on a fresh home in `folder` at every point of INTERRUPTIONS, then run it to its end."""
    home, cache = folder / "home", folder / "cache"  # its own base-model cache: setup trains the base models
    done = []
    for how, what, step, partition in INTERRUPTIONS:
        each = Interruption(how, what, step, partition)
        _interrupt(home, cache, each)
        done.append(each)
    final = subprocess.run(flywheel_command(home, rounds=INTERRUPTED_ROUNDS), check=False, cwd=REPO, env={**flywheel_env(), "ARENA_CACHE": str(cache)},
                           capture_output=True, text=True, timeout=1800)
    return InterruptedHome(home, done, final)


def differing_tables(home: Path, reference: Path) -> dict[str, tuple[str | None, str | None]]:
    """Tables whose rows differ between `home` and the first INTERRUPTED_ROUNDS rounds of `reference` (order-independent
    hashes, volatile columns left out)."""
    from arena_dagster.warehouse import open_readonly, table_fingerprints

    with open_readonly(home) as conn:
        resumed = table_fingerprints(conn, through_round=INTERRUPTED_ROUNDS)
    with open_readonly(reference) as conn:
        uninterrupted = table_fingerprints(conn, through_round=INTERRUPTED_ROUNDS)
    return {t: (resumed.get(t), uninterrupted.get(t)) for t in set(resumed) | set(uninterrupted)
            if resumed.get(t) != uninterrupted.get(t)}
