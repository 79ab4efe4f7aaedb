"""Run training entry points as subprocesses: torch and TRL never load in the caller.

A finished run leaves `output_dir/manifest.json` carrying the spec's hash; running the same
spec again returns that manifest without training (reruns are cheap, and a run killed with
kill -9 simply trains again, since the entry point only renames a complete folder into place).
A lock file next to `output_dir` keeps two processes from training the same folder at once;
under it, leftovers of a killed run (`<output_dir>.tmp`, `.old`, its spec file) are removed.

How the prepared command runs is pluggable: `run_training(spec, launch=...)` hands the command
and its environment to `launch(command, env) -> exit status`, e.g. Dagster Pipes'
PipesSubprocessClient, so logs and per-step metrics reach the Dagster UI (the entry point
talks Pipes when a Pipes launcher started it). The default launch is a child process whose
output is streamed to `log`. Either way the command goes through training/guard.py, so the
training process dies with the process that launched it.

A spec with `launch: {num_processes: N, config_file: PATH, mixed_precision: ...}` (N > 1 or a
config file) starts the entry point through `accelerate launch` (torchrun underneath), e.g. 8 GPUs
with DeepSpeed ZeRO-3 from assets/accelerate/deepspeed_zero3.yaml; the manifest is still the
single main process's.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from arena_dagster.errors import ArenaError
from arena_dagster.paths import remove_tree
from arena_dagster.training.guard import guarded
from arena_dagster.training.spec import read_manifest, spec_hash, validate_spec

ENTRYPOINT_MODULE = "arena_dagster.training.entrypoint"

STDERR_TAIL_LINES = 40

# launch(command, env) -> the command's exit status. `env` is the complete environment.
Launch = Callable[[list[str], dict[str, str]], int]


class TrainingError(ArenaError, RuntimeError):
    """A training run that failed, timed out or wrote an inconsistent manifest."""


def _child_env(spec: dict, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    if threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ARENA_TORCH_THREADS"):
            env[key] = str(threads)
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    local_inputs = [spec.get(k) for k in ("base_model", "tokenizer", "reward_model") if spec.get(k)]
    if all(Path(p).is_dir() for p in local_inputs):
        # Every model input is a local folder: no reason to ask a hub about it.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def training_command(resolved_spec: dict, spec_path: str) -> list[str]:
    """The child's command line: the entry point itself, or `accelerate launch` of it (not yet guarded)."""
    launch = resolved_spec.get("launch")
    # On Ray the entry point is Ray Train's driver: its workers are the ranks (training/launch_config.py).
    if not launch or (resolved_spec.get("compute") or {}).get("engine") == "ray":
        return [sys.executable, "-m", ENTRYPOINT_MODULE, spec_path]
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.get("config_file"):
        command += ["--config_file", str(launch["config_file"])]
        if launch.get("mixed_precision"):
            command += ["--mixed_precision", launch["mixed_precision"]]
    else:
        # --multi_gpu only selects the torchrun launcher (one process per rank). On a machine
        # without CUDA the ranks still train on CPU over gloo, since the entry point passes
        # use_cpu=True; --cpu would select the single-process launcher (or mpirun) instead.
        command += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
        command += ["--mixed_precision", launch.get("mixed_precision") or "no"]
    if launch.get("num_processes"):
        command += ["--num_processes", str(launch["num_processes"])]
    # A fresh port per run: two launches at once (run_trainings) must not share torchrun's 29500.
    command += ["--main_process_port", str(_free_port()), "-m", ENTRYPOINT_MODULE, spec_path]
    return command


def spec_file(output_dir: Path) -> Path:
    """Where the runner writes the spec the entry point reads (one run per output_dir at a time: the lock)."""
    return Path(str(output_dir) + ".spec.json")


def leftovers(output_dir: Path) -> list[Path]:
    """What a killed run of `output_dir` can leave beside it: the half-written folder, the swapped-out one, its spec,
    Ray Train's checkpoints."""
    output_dir = Path(output_dir)
    beside = (".tmp", ".old", ".ray")
    found = [p for p in (*(Path(str(output_dir) + suffix) for suffix in beside), spec_file(output_dir)) if p.exists()]
    # Spec files of earlier versions: tempfile names `<name>.<8 random characters>.json`.
    legacy = re.compile(re.escape(output_dir.name) + r"\.[a-z0-9_]{8}\.json")
    if output_dir.parent.is_dir():
        found += sorted(p for p in output_dir.parent.iterdir() if p.is_file() and legacy.fullmatch(p.name))
    return found


def run_training(
    spec: dict,
    *,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
    launch: Launch | None = None,
    guard: bool = True,
) -> dict:
    """Train `spec` in a subprocess (or reuse an identical finished run); returns its manifest.

    `launch(command, env) -> exit status` runs the prepared command (default: a child process
    whose output goes to `log`, killed after `timeout_s`; a custom launch enforces its own limits).
    `guard=False` where the launch ends the process itself and is not its parent (a Ray job's
    supervisor stops its entry point when the job stops).
    """
    resolved = validate_spec(spec)
    identity = spec_hash(spec)
    output_dir = Path(spec["output_dir"])
    existing = read_manifest(output_dir)
    if existing and existing.get("spec_hash") == identity:
        log(f"{output_dir.name}: reusing the finished run (spec {identity[:12]})")
        return existing
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = read_manifest(output_dir)
        if existing and existing.get("spec_hash") == identity:
            log(f"{output_dir.name}: reusing the run another process just finished")
            return existing
        for stale in leftovers(output_dir):
            log(f"{output_dir.name}: removing {stale.name}, left by a run that did not finish")
            remove_tree(output_dir.parent, stale)
        manifest = _launch(spec, resolved, output_dir, log=log, timeout_s=timeout_s, launch=launch, guard=guard)
    if manifest.get("spec_hash") != identity:
        raise TrainingError(f"{output_dir}: manifest spec_hash {manifest.get('spec_hash')} != {identity}")
    return manifest


def _launch(
    spec: dict, resolved: dict, output_dir: Path, *, log: Callable[[str], None], timeout_s: float | None, launch: Launch | None,
    guard: bool = True,
) -> dict:
    threads = int(spec.get("threads") or 0) or None
    spec_path = spec_file(output_dir)
    spec_path.write_text(json.dumps(spec, indent=2, default=str))
    command = training_command(resolved, str(spec_path))
    command = guarded(command) if guard else command
    launcher = launch or SubprocessLaunch(log=log, prefix=f"{output_dir.name}: ", timeout_s=timeout_s)
    started = time.time()
    try:
        returncode = launcher(command, _child_env(spec, threads))
    except Exception as exc:
        if isinstance(exc, TrainingError):
            raise
        # E.g. PipesSubprocessClient's error for a non-zero exit: the entry point's own error
        # line went through the launcher's log.
        raise TrainingError(f"{output_dir.name}: the training launch failed: {exc}") from exc
    finally:
        spec_path.unlink(missing_ok=True)
    if returncode != 0:
        detail = launcher.failure() if isinstance(launcher, SubprocessLaunch) else "see the launcher's log"
        raise TrainingError(f"{output_dir.name}: training exited with {returncode} after {time.time() - started:.0f} s: {detail}")
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise TrainingError(f"{output_dir.name}: training exited cleanly but wrote no manifest.json")
    return manifest


# Trainings this process runs through SubprocessLaunch: run_trainings stops them when it is interrupted.
_RUNNING: set[subprocess.Popen] = set()


class SubprocessLaunch:
    """The default launch: the command as a child process, its output streamed line by line to `log`."""

    def __init__(self, *, log: Callable[[str], None] = print, prefix: str = "", timeout_s: float | None = None) -> None:
        self.log, self.prefix, self.timeout_s = log, prefix, timeout_s
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        # The entry point's own "error: ..." lines: under accelerate launch, torchrun's report of
        # the failed ranks follows them and would push them out of the tail.
        self.error_lines: collections.deque[str] = collections.deque(maxlen=5)

    def __call__(self, command: list[str], env: dict[str, str]) -> int:
        # Waited for in this thread: the guard's PR_SET_PDEATHSIG fires when the starting thread ends.
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env, start_new_session=True
        )
        readers = [
            threading.Thread(target=self._pump, args=(process.stdout, False), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, True), daemon=True),
        ]
        for reader in readers:
            reader.start()
        _RUNNING.add(process)
        try:
            returncode = process.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self._kill(process)
            raise TrainingError(f"{self.prefix}training exceeded {self.timeout_s} s and was killed") from None
        except BaseException:
            self._kill(process)
            raise
        finally:
            _RUNNING.discard(process)
        for reader in readers:
            reader.join(timeout=10)
        return returncode

    def failure(self) -> str:
        """The entry point's error lines and the end of its stderr, one line."""
        lines = [*(line for line in self.error_lines if line not in self.stderr_tail), *self.stderr_tail]
        return " | ".join(line.strip() for line in lines if line.strip())

    def _pump(self, stream, is_stderr: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if is_stderr:
                self.stderr_tail.append(line)
                if line.startswith("error: ") and line not in self.error_lines:
                    self.error_lines.append(line)
            if line.strip():
                self.log(f"{self.prefix}{line}")

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        # The whole session: `accelerate launch` and whatever it started in it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def run_trainings(
    specs: Sequence[dict],
    *,
    max_parallel: int = 2,
    threads_per_process: int | None = None,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
    launch: Launch | None = None,
    run: Callable[..., dict] = run_training,
) -> list[dict]:
    """Train independent specs concurrently, at most `max_parallel` at a time; manifests in spec order.

    Each process gets `threads_per_process` torch threads (default: the CPU count divided by
    `max_parallel`), unless its spec sets `threads`. Every spec runs even when another fails;
    then one TrainingError names every failure. `run` trains one spec with run_training's
    keywords (e.g. training/model_cache.py's cached_training, which reuses a shared cache).
    """
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
    outputs = [str(Path(s["output_dir"]).resolve()) for s in specs]
    if len(set(outputs)) != len(outputs):
        raise ValueError("two specs write the same output_dir")
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // max_parallel)
    prepared = [{**spec, "threads": spec.get("threads") or threads} for spec in specs]
    lock = threading.Lock()

    def safe_log(line: str) -> None:
        with lock:
            log(line)

    pool = ThreadPoolExecutor(max_workers=max_parallel)
    try:
        futures = [pool.submit(run, spec, log=safe_log, timeout_s=timeout_s, launch=launch) for spec in prepared]
        pool.shutdown(wait=True)
    except BaseException:
        # Interrupted (a canceled run): the pool's threads wait on their trainings, so end those, not wait for them.
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(_RUNNING):
            SubprocessLaunch._kill(process)
        raise
    failures, manifests = [], []
    for spec, future in zip(prepared, futures):
        error = future.exception()
        if error is not None:
            failures.append(f"{spec['output_dir']}: {error}")
        else:
            manifests.append(future.result())
    if failures:
        raise TrainingError(f"{len(failures)} of {len(specs)} trainings failed: " + " || ".join(failures))
    return manifests
