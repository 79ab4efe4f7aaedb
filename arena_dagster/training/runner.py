"""Run training entry points as subprocesses: torch and TRL never load in the caller.

A finished run leaves `output_dir/manifest.json` carrying the spec's hash; running the same
spec again returns that manifest without training (reruns are cheap, and a run killed with
kill -9 simply trains again, since the entry point only renames a complete folder into place).
A lock file next to `output_dir` keeps two processes from training the same folder at once.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from arena_dagster.training.entrypoint import read_manifest, spec_hash, validate_spec

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
    local_inputs = [spec.get(k) for k in ("base_model", "tokenizer") if spec.get(k)]
    if all(Path(p).is_dir() for p in local_inputs):
        # Every model input is a local folder: no reason to ask a hub about it.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def run_training(
    spec: dict,
    *,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> dict:
    """Train `spec` in a subprocess (or reuse an identical finished run); returns its manifest."""
    validate_spec(spec)
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
        manifest = _run_subprocess(spec, output_dir, log=log, timeout_s=timeout_s)
    if manifest.get("spec_hash") != identity:
        raise TrainingError(f"{output_dir}: manifest spec_hash {manifest.get('spec_hash')} != {identity}")
    return manifest


def _run_subprocess(spec: dict, output_dir: Path, *, log: Callable[[str], None], timeout_s: float | None) -> dict:
    threads = int(spec.get("threads") or 0) or None
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"{output_dir.name}.", dir=output_dir.parent, delete=False) as handle:
        json.dump(spec, handle, indent=2, default=str)
        spec_path = handle.name
    command = [sys.executable, "-m", "arena_dagster.training.entrypoint", spec_path]
    started = time.time()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
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
        tail = "\n".join(stderr_tail)
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
