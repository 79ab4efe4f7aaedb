"""Run training entry points as subprocesses: torch and TRL never load in the caller.

A finished run leaves `output_dir/manifest.json` carrying the spec's hash; running the same
spec again returns that manifest without training (reruns are cheap, and a run killed with
kill -9 simply trains again, since the entry point only renames a complete folder into place).
A lock file next to `output_dir` keeps two processes from training the same folder at once.

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
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from arena_dagster.training.entrypoint import read_manifest, spec_hash, validate_spec

ENTRYPOINT_MODULE = "arena_dagster.training.entrypoint"

STDERR_TAIL_LINES = 40


class TrainingError(RuntimeError):
    pass


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
    """The child's command line: the entry point itself, or `accelerate launch` of it."""
    launch = resolved_spec.get("launch")
    if not launch:
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


def run_training(
    spec: dict,
    *,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> dict:
    """Train `spec` in a subprocess (or reuse an identical finished run); returns its manifest."""
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
        manifest = _run_subprocess(spec, resolved, output_dir, log=log, timeout_s=timeout_s)
    if manifest.get("spec_hash") != identity:
        raise TrainingError(f"{output_dir}: manifest spec_hash {manifest.get('spec_hash')} != {identity}")
    return manifest


def _run_subprocess(
    spec: dict, resolved: dict, output_dir: Path, *, log: Callable[[str], None], timeout_s: float | None
) -> dict:
    threads = int(spec.get("threads") or 0) or None
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"{output_dir.name}.", dir=output_dir.parent, delete=False) as handle:
        json.dump(spec, handle, indent=2, default=str)
        spec_path = handle.name
    command = training_command(resolved, spec_path)
    started = time.time()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    # The entry point's own "error: ..." lines: under accelerate launch, torchrun's report of the
    # failed ranks follows them and would push them out of the tail.
    error_lines: collections.deque[str] = collections.deque(maxlen=5)
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=_child_env(spec, threads),
            start_new_session=True,
        )

        def pump(stream, keep: collections.deque | None) -> None:
            for line in stream:
                line = line.rstrip("\n")
                if keep is not None:
                    keep.append(line)
                    if line.startswith("error: ") and line not in error_lines:
                        error_lines.append(line)
                if line.strip():
                    log(f"{output_dir.name}: {line}")

        readers = [
            threading.Thread(target=pump, args=(process.stdout, None), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, stderr_tail), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise TrainingError(f"{output_dir.name}: training exceeded {timeout_s} s and was killed") from None
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        for reader in readers:
            reader.join(timeout=10)
    finally:
        Path(spec_path).unlink(missing_ok=True)
    if returncode != 0:
        tail = "\n".join([*(line for line in error_lines if line not in stderr_tail), *stderr_tail])
        raise TrainingError(f"{output_dir.name}: training exited with {returncode} after {time.time() - started:.0f} s:\n{tail}")
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise TrainingError(f"{output_dir.name}: training exited cleanly but wrote no manifest.json")
    return manifest


def run_trainings(
    specs: Sequence[dict],
    *,
    max_parallel: int = 2,
    threads_per_process: int | None = None,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> list[dict]:
    """Train independent specs concurrently, at most `max_parallel` at a time; manifests in spec order.

    Each process gets `threads_per_process` torch threads (default: the CPU count divided by
    `max_parallel`), unless its spec sets `threads`. Every spec runs even when another fails;
    then one TrainingError names every failure.
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

    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        futures = [pool.submit(run_training, spec, log=safe_log, timeout_s=timeout_s) for spec in prepared]
    failures, manifests = [], []
    for spec, future in zip(prepared, futures):
        error = future.exception()
        if error is not None:
            failures.append(f"{spec['output_dir']}: {error}")
        else:
            manifests.append(future.result())
    if failures:
        raise TrainingError(f"{len(failures)} of {len(specs)} trainings failed:\n" + "\n".join(failures))
    return manifests
