"""A joined Ray cluster too small for a step: the decision (no cluster), then a real 1-CPU cluster joined by the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arena_dagster.compute.capacity import Capacity, Demand, too_small, verdict, waiting_line

REPO = Path(__file__).resolve().parents[1]
THREE = Demand(3, {"CPU": 1, "GPU": 0})


@pytest.mark.parametrize("capacity, expected", [
    (Capacity(total={"CPU": 4}, free={"CPU": 4}), "fits"),
    (Capacity(total={"CPU": 4}, free={"CPU": 1}), "wait"),  # other jobs hold 3 CPUs: they end, it goes on
    (Capacity(total={"CPU": 1}, free={"CPU": 1}, autoscaler=False), "never"),
    (Capacity(total={"CPU": 1}, free={"CPU": 1}, autoscaler=True), "wait"),  # KubeRay / `ray up`: nodes come
    (Capacity(total={"CPU": 1}, free={"CPU": 1}, autoscaler=None), "wait"),  # unknown: wait, logged
    (Capacity(total={"CPU": 1}, free={"CPU": 1}, maximum={"CPU": 8}, autoscaler=True), "wait"),
    (Capacity(total={"CPU": 1}, free={"CPU": 1}, maximum={"CPU": 2}, autoscaler=True), "never"),  # even grown
])
def test_a_demand_fits_waits_or_never_fits(capacity, expected):
    assert verdict(THREE, capacity) == expected


def test_gpus_are_checked_and_the_lines_name_the_cluster_the_demand_and_the_fix():
    gpus = Demand(2, {"CPU": 1, "GPU": 1})
    small = Capacity(total={"CPU": 8, "GPU": 1}, free={"CPU": 8, "GPU": 1}, autoscaler=False)
    assert verdict(gpus, small) == "never"
    assert too_small("auto", gpus, small) == (
        "the Ray cluster at auto has 8 CPUs, 1 GPU; 2 worker(s) x 1 CPU, 1 GPU ask for 2 CPUs, 2 GPUs: lower --workers "
        "/ compute.workers or cpus_per_worker / gpus_per_worker, or join a larger cluster")
    busy = Capacity(total={"CPU": 4}, free={"CPU": 1})
    assert waiting_line("auto", THREE, busy) == ("waiting for the Ray cluster at auto: 3 worker(s) x 1 CPU ask for 3 CPUs, "
                                                 "it has 1 of 4 CPUs free (other work holds the rest)")


# A cluster someone else started, by a process of its own (the session cluster of other tests is left alone): its
# driver holds `held` CPUs for `seconds` (other work), then waits for its stdin to close.
HEAD = """
import sys, time, ray
ray.init(num_cpus={cpus}, include_dashboard=False, logging_level="ERROR")
holder = ray.remote(num_cpus={held})(type("Holder", (), {{"ready": lambda self: True}})).remote()
ray.get(holder.ready.remote()) if {held} else None
print(ray.get_runtime_context().gcs_address, flush=True)
time.sleep({seconds})
ray.kill(holder)
sys.stdin.read()
"""


@pytest.fixture
def other_cluster(request):
    cpus, held, seconds = request.param
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    head = subprocess.Popen([sys.executable, "-c", HEAD.format(cpus=cpus, held=held, seconds=seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        yield head.stdout.readline().strip(), env
    finally:
        head.stdin.close()
        head.wait(timeout=60)


def curate_on(address: str, env: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi there how are you"}\n{"prompt": "what is the capital of France"}\n')
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "arena_dagster.cli", "curate", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                           "--engine", "ray", "--workers", "2", "--ray-address", address],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    return proc, time.perf_counter() - started


@pytest.mark.parametrize("other_cluster", [(1, 0, 0)], indirect=True)
def test_joining_a_cluster_too_small_fails_at_once_in_one_line(other_cluster, tmp_path):
    address, env = other_cluster
    proc, seconds = curate_on(address, env, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("arena-dagster curate:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [f"arena-dagster curate: the Ray cluster at {address} has 1 CPU, 0 GPUs; 2 worker(s) x 1 CPU ask for "
                     "2 CPUs: lower --workers / compute.workers or cpus_per_worker / gpus_per_worker, or join a larger "
                     "cluster"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and seconds < 60


@pytest.mark.parametrize("other_cluster", [(2, 1, 8)], indirect=True)
def test_a_cluster_whose_cpus_other_work_holds_is_waited_for_and_says_so(other_cluster, tmp_path):
    address, env = other_cluster
    proc, _ = curate_on(address, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"waiting for the Ray cluster at {address}: 2 worker(s) x 1 CPU ask for 2 CPUs, it has 1 of 2 CPUs free "
            "(other work holds the rest)") in proc.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
