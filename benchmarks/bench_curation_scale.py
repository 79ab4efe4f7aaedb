"""Curation throughput: the local engine against Ray with 1, 2, ... workers, on the packaged ShareGPT pool.

    python benchmarks/bench_curation_scale.py --prompts 2000 --workers 1 2

Each configuration runs in its own process (so its peak RSS is the driver's alone), on the same
first N ShareGPT prompts, decontaminated against MT-Bench with the paper's settings. Ray runs start
a local cluster of `workers` CPUs (1 CPU and 1 torch thread a worker); the cluster's start is
printed apart from the curation time. Prints prompts/s, the speed-up over 1 worker, the driver's
peak RSS, whether the kept ids equal the local engine's, the embedding cost per prompt, and the CPU
time a prompt cost in every process of the run (the driver and the cluster's processes, sampled):
the figure to compare when other jobs load the machine. MT-Bench's embeddings are put in the shared
cache first (as any run after the first finds them), so no configuration pays for them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pool(n: int) -> tuple[list[dict], list[str]]:
    from arena_dagster.prompts.ingest import against_texts
    from arena_dagster.prompts.real_sources import mtbench_questions_path
    from arena_dagster.prompts.sharegpt import load_sharegpt

    rows, _ = load_sharegpt(max_conversations=max(50, n))
    if len(rows) < n:
        raise SystemExit(f"bench_curation_scale: the packaged ShareGPT file has {len(rows)} prompts, fewer than --prompts {n}")
    return rows[:n], against_texts([str(mtbench_questions_path())])[0]


class _TreeCPU:
    """CPU seconds of this process's descendants (the local Ray cluster), sampled: a worker that exits keeps its last."""

    def __init__(self) -> None:
        import threading

        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.25):
            for child in me.children(recursive=True):
                try:
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                self.seen[child.pid] = times.user + times.system + times.children_user + times.children_system

    def __enter__(self) -> "_TreeCPU":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        return False


def _one(engine: str, workers: int, n: int) -> dict:
    """One configuration in this process; returns its measurements."""
    import torch

    from arena_dagster.compute.cluster import ray_cluster
    from arena_dagster.compute.settings import ComputeSettings
    from arena_dagster.profile_schema.curation import CurationConfig
    from arena_dagster.prompts.curation_ray import curate_with

    rows, against = _pool(n)
    settings = ComputeSettings(engine=engine, workers=workers)
    if engine == "ray":
        torch.set_num_threads(1)
    threads = torch.get_num_threads()
    started = time.perf_counter()
    with _TreeCPU() as tree, ray_cluster(settings) if engine == "ray" else _nothing():
        cluster_s = time.perf_counter() - started
        before = dict(tree.seen)
        started, cpu = time.perf_counter(), time.process_time()
        result = curate_with(settings, rows, config=CurationConfig(), against=against)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        time.sleep(0.5)  # a last sample of the workers
    cluster_cpu = sum(total - before.get(pid, 0.0) for pid, total in tree.seen.items())
    kept = [r["source_id"] for r in result.kept]
    return {"engine": engine, "workers": workers, "torch_threads": threads, "seconds": seconds, "cluster_s": cluster_s,
            "kept": len(kept), "driver_cpu": cpu, "cluster_cpu": cluster_cpu, "kept_hash": hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": result.seconds}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _embedding_cost(n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per prompt of the MiniLM embedding alone, one process and one torch thread, on the
    pool's first turns. CPU time is the figure to compare when other processes load the machine."""
    import torch

    from arena_dagster.prompts.curation.similarity import embed_texts, load_embedder

    torch.set_num_threads(1)
    rows, _ = _pool(n)
    load_embedder()
    texts = [r["prompt"] for r in rows]
    wall, cpu = time.perf_counter(), time.process_time()
    embed_texts(texts)
    return (time.perf_counter() - wall) / len(texts), (time.process_time() - cpu) / len(texts)


def _cache_test_set() -> None:
    from arena_dagster.prompts.curation.decontamination import against_texts
    from arena_dagster.prompts.curation.similarity import embed_test_set

    embed_test_set(against_texts(_pool(50)[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        engine, workers = args.one.split(":")
        print(json.dumps(_one(engine, int(workers), args.prompts)))
        return 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    _cache_test_set()
    results = []
    loads = os.getloadavg()
    for engine, workers in [("local", 1), *(("ray", w) for w in args.workers)]:
        proc = subprocess.run([sys.executable, __file__, "--prompts", str(args.prompts), "--one", f"{engine}:{workers}"],
                              env=env, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    local = results[0]
    one = next((r for r in results if r["engine"] == "ray" and r["workers"] == 1), None)
    print(f"curation of {args.prompts} ShareGPT prompts (paper preset, against MT-Bench), {os.cpu_count()} CPUs, "
          f"load average {loads[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'engine':<8}{'workers':>8}{'seconds':>9}{'prompts/s':>11}{'vs 1 worker':>12}{'vs local':>9}"
          f"{'peak RSS MB':>12}{'cluster s':>10}{'CPU ms/prompt':>14}{'driver':>8}  kept ids")
    for r in results:
        rate = args.prompts / r["seconds"]
        speedup = f"{one['seconds'] / r['seconds']:.2f}x" if one and r["engine"] == "ray" else "-"
        agree = "same" if r["kept_hash"] == local["kept_hash"] else "DIFFERENT"
        print(f"{r['engine']:<8}{r['workers']:>8}{r['seconds']:>9.1f}{rate:>11.1f}{speedup:>12}"
              f"{local['seconds'] / r['seconds']:>8.2f}x{r['peak_rss_mb']:>12.0f}{r['cluster_s']:>10.1f}"
              f"{1000 * (r['driver_cpu'] + r['cluster_cpu']) / args.prompts:>14.1f}{1000 * r['driver_cpu'] / args.prompts:>8.1f}"
              f"  {r['kept']} {agree}")
    for r in results:
        print(f"  {r['engine']} {r['workers']}: seconds by step {r['steps']}")
    print(f"local engine: {local['torch_threads']} torch threads (the whole machine); Ray: 1 CPU and 1 torch thread a worker")
    wall, cpu = _embedding_cost(min(args.prompts, 500))
    print(f"embedding alone: {1000 * wall:.1f} ms a prompt wall, {1000 * cpu:.1f} ms CPU (one process, one thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
