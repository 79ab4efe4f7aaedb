"""Does the flywheel lift its target on every seed? The real CLI, fresh homes, the figures over seeds.

For each seed, runs `arena-dagster flywheel --rounds R --seed N --home <fresh home>` (the
real CLI, through Dagster, exactly as a user would), reads every round's leaderboard back
with `arena-dagster leaderboard --home H --json`, and prints:

- per round and stage (the initial target, SFT-I{r}, DPO-I{r}, RL-I{r}): the mean rating
  over seeds, its spread (standard deviation, min..max), and how many seeds' gates
  promoted that checkpoint;
- per seed: wall time, peak memory (summed RSS of the CLI and every process it started,
  sampled every 0.2 s), the promoted target after each round, and a final line saying
  whether the final target's 95% interval lies above the initial target's (its lower
  bound above the initial target's upper bound).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_flywheel_lift.py --seeds 3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_flywheel_lift.py --seeds 3 --engine ray --workers 2

Homes go under --workdir (a fresh temporary folder by default) and are removed at the end
unless --keep-homes. ARENA_CACHE is left as it is: with a warm base-model cache a seed whose
base models were built before starts in seconds (`--cold-cache` gives each run an empty one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
STAGE_ORDER = {"initial": 0, "SFT": 1, "DPO": 2, "RL": 3}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli_command(cli: str) -> list[str]:
    """`arena-dagster` through this interpreter from the repository root, or the command given."""
    return cli.split() if cli else [sys.executable, "-m", "arena_dagster.cli"]


class PeakMemory:
    """Peak of the summed resident memory of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [self.process, *self.process.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes


def engine_flags(engine: str, workers: int | None) -> list[str]:
    """The flywheel's compute flags; none for the local engine unless asked, so the profile's own section holds."""
    flags = ["--engine", engine] if engine else []
    return flags + (["--workers", str(workers)] if workers else [])


def run_seed(command: list[str], *, seed: int, rounds: int, profile: str, home: Path, log_path: Path,
             timeout_s: float | None, cache: Path | None, compute: list[str]) -> dict[str, Any]:
    args = [*command, "flywheel", "--rounds", str(rounds), "--home", str(home), "--seed", str(seed), "--profile", profile,
            *compute]
    env = {**os.environ, **OFFLINE_ENV, **({"ARENA_CACHE": str(cache)} if cache else {})}
    started = time.monotonic()
    with open(log_path, "w") as log:
        # Its own session: a timeout kills the command and every process it started (daemon, code server, runs).
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        memory = PeakMemory(process.pid)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        peak = memory.stop()
    wall = time.monotonic() - started
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"seed {seed}: the flywheel exited with {code} after {wall:.0f} s; log {log_path}:\n" + "\n".join(tail))
    board = subprocess.run([*command, "leaderboard", "--home", str(home), "--json"], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True)
    return {"seed": seed, "wall_s": wall, "peak_rss_bytes": peak, "rows": json.loads(board.stdout)}


def stage_of(row: dict[str, Any]) -> str | None:
    """initial, SFT, DPO or RL for the target's rows; None for competitors and reward models."""
    if row["round"] == 0 and row.get("kind") == "initial":
        return "initial"
    match = re.match(r"(SFT|DPO|RL)-I(\d+)$", row["model"])
    return match.group(1) if match and int(match.group(2)) == row["round"] else None


def trajectory(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The initial target, each round's gate decision and the final target with its interval."""
    initial = next(r for r in rows if r["round"] == 0 and r.get("kind") == "initial")
    target, decisions = initial["model"], []
    for round_key in sorted({r["round"] for r in rows} - {0}):
        decided = [r for r in rows if r["round"] == round_key and r.get("promoted") is not None]
        if decided:
            row = decided[0]
            decisions.append({"round": round_key, "candidate": row["model"], "promoted": bool(row["promoted"]),
                              "diff": row.get("diff_vs_incumbent"), "ci_low": row.get("diff_ci_low"),
                              "ci_high": row.get("diff_ci_high")})
            if row["promoted"]:
                target = row["model"]
        else:
            decisions.append({"round": round_key, "candidate": None, "promoted": False})
    final = max((r for r in rows if r["model"] == target), key=lambda r: r["round"])
    return {"initial": initial, "final": final, "decisions": decisions, "separated": final["ci_low"] > initial["ci_high"]}


def spread(values: list[float]) -> str:
    if not values:
        return ""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):7.1f} ± {sd:5.1f}  ({min(values):.1f}..{max(values):.1f})"


def print_report(results: list[dict[str, Any]]) -> bool:
    n = len(results)
    paths = {res["seed"]: trajectory(res["rows"]) for res in results}
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for res in results:
        for row in res["rows"]:
            stage = stage_of(row)
            if stage:
                cells.setdefault((row["round"], stage), []).append(row)
    promoted_by_cell = {}
    for path in paths.values():
        for decision in path["decisions"]:
            if decision["promoted"]:
                stage = decision["candidate"].split("-")[0]
                promoted_by_cell[(decision["round"], stage)] = promoted_by_cell.get((decision["round"], stage), 0) + 1
    print(f"\nratings over {n} seed(s): mean ± sd (min..max); gate: seeds whose gate promoted the checkpoint")
    print(f"{'round':>5}  {'stage':<8} {'rating':<36} {'95% CI (mean)':<20} gate")
    for (round_key, stage) in sorted(cells, key=lambda k: (k[0], STAGE_ORDER[k[1]])):
        rows = cells[(round_key, stage)]
        ci = f"[{statistics.mean(r['ci_low'] for r in rows):.1f}, {statistics.mean(r['ci_high'] for r in rows):.1f}]"
        gate = "" if stage == "initial" else f"promoted {promoted_by_cell.get((round_key, stage), 0)}/{n}"
        print(f"{round_key:>5}  {stage:<8} {spread([r['rating'] for r in rows]):<36} {ci:<20} {gate}".rstrip())
    rejected = {}
    for path in paths.values():
        for decision in path["decisions"]:
            if not decision["promoted"]:
                rejected[decision["round"]] = rejected.get(decision["round"], 0) + 1
    if rejected:
        print("rejected (target kept): " + ", ".join(f"round {r}: {k}/{n}" for r, k in sorted(rejected.items())))
    walls = [res["wall_s"] for res in results]
    warm = [res["warm_wall_s"] for res in results if "warm_wall_s" in res]
    peaks = [res["peak_rss_bytes"] / 2**20 for res in results]
    print(f"\nwall time {spread(walls)} s; peak memory (process tree RSS) {spread(peaks)} MiB")
    if warm:
        print(f"wall time from a cold base-model cache {spread(walls)} s, warm (the same seed again, cache filled) "
              f"{spread(warm)} s")
    print(f"\n{'seed':>4}  {'wall':>7}  {'peak MiB':>8}  gate per round: candidate - target, 95% CI")
    for res in results:
        decisions = [
            f"r{d['round']} {d['candidate']} {d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] {'promoted' if d['promoted'] else 'rejected'}"
            if d["candidate"] and d.get("diff") is not None else f"r{d['round']} no candidate"
            for d in paths[res["seed"]]["decisions"]
        ]
        print(f"{res['seed']:>4}  {res['wall_s']:6.0f}s  {res['peak_rss_bytes'] / 2**20:8.0f}  " + "; ".join(decisions))
    print()
    for res in results:
        path = paths[res["seed"]]
        initial, final = path["initial"], path["final"]
        verdict = "ABOVE" if path["separated"] else "NOT above"
        print(
            f"seed {res['seed']}: final target {final['model']} {final['rating']:.1f} [{final['ci_low']:.1f}, {final['ci_high']:.1f}] "
            f"is {verdict} initial {initial['model']} {initial['rating']:.1f} [{initial['ci_low']:.1f}, {initial['ci_high']:.1f}] "
            f"(lift {final['rating'] - initial['rating']:+.1f})"
        )
    return all(path["separated"] for path in paths.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="run seeds 0..N-1 (or --seed-list)")
    parser.add_argument("--seed-list", default="", help="comma-separated seeds, e.g. 0,5,9")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="skills")
    parser.add_argument("--workdir", default="", help="where the homes and logs go (default: a fresh temporary folder)")
    parser.add_argument("--keep-homes", action="store_true")
    parser.add_argument("--cold-cache", action="store_true",
                        help="an empty base-model cache for every seed; then the same seed again in a fresh home with the "
                             "cache it filled (the warm start), timed")
    parser.add_argument("--cli", default="", help="the CLI command (default: this interpreter's arena_dagster.cli)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per seed before the run is killed")
    parser.add_argument("--json", default="", help="also write every seed's figures and leaderboards to this file")
    parser.add_argument("--engine", choices=["local", "ray"], default="",
                        help="the flywheel's --engine (default: the profile's compute section)")
    parser.add_argument("--workers", type=int, default=None, help="the flywheel's --workers (Ray workers)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seed_list.split(",") if s.strip()] or list(range(args.seeds))
    command = cli_command(args.cli)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-lift-"))
    workdir.mkdir(parents=True, exist_ok=True)
    compute = engine_flags(args.engine, args.workers)
    print(f"profile {args.profile}, {args.rounds} rounds, seeds {seeds}, {' '.join(compute) or 'profile compute'}; "
          f"homes and logs in {workdir}", flush=True)
    results = []
    for seed in seeds:
        home = workdir / f"home-seed{seed}"
        if home.exists():
            shutil.rmtree(home)
        print(f"seed {seed}: running ...", flush=True)
        result = run_seed(command, seed=seed, rounds=args.rounds, profile=args.profile, home=home,
                          log_path=workdir / f"seed{seed}.log", timeout_s=args.timeout,
                          cache=workdir / f"cache-seed{seed}" if args.cold_cache else None, compute=compute)
        print(f"seed {seed}: {result['wall_s']:.0f} s, peak {result['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
        if args.cold_cache:
            warm_home = workdir / f"home-seed{seed}-warm"
            warm = run_seed(command, seed=seed, rounds=args.rounds, profile=args.profile, home=warm_home,
                            log_path=workdir / f"seed{seed}-warm.log", timeout_s=args.timeout,
                            cache=workdir / f"cache-seed{seed}", compute=compute)
            result["warm_wall_s"] = warm["wall_s"]
            print(f"seed {seed}: warm start {warm['wall_s']:.0f} s", flush=True)
            if not args.keep_homes:
                shutil.rmtree(warm_home)
        results.append(result)
        if args.json:  # after every seed: a run cut short still leaves the seeds that finished
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        if not args.keep_homes:
            shutil.rmtree(home)
    all_above = print_report(results)
    if not args.workdir and not args.keep_homes:
        shutil.rmtree(workdir)
    return 0 if all_above else 1


if __name__ == "__main__":
    raise SystemExit(main())
