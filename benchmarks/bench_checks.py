"""How long a round's Great Expectations checks take, against the round they check.

On a materialized home (e.g. `arena-dagster flywheel --profile skills_smoke --rounds 1 --home H`):
validates every table suite of round R in a fresh process (GX import included), the way the
assets do after writing, and reads from the home's Dagster instance how long the round's run
took and how long its checkpoint-check steps took. Prints per-table seconds, the totals and
the share of the round.

    .venv/bin/python benchmarks/bench_checks.py --home H --round 1 [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import sys, time, json
started = time.perf_counter()
import great_expectations  # noqa: F401  (the one-time import cost a run pays once)
imported = time.perf_counter() - started
import duckdb
from arena_dagster.quality.suites import load_suites
from arena_dagster.quality.validation import validate_suite
from pathlib import Path
from arena_dagster.shards import connection_config
conn = duckdb.connect(sys.argv[1], read_only=True, config=connection_config(Path(sys.argv[1]).parent))
round_key = int(sys.argv[2])
timings = {}
failed = []
for table, suite in load_suites().items():
    t = time.perf_counter()
    outcomes = validate_suite(conn, suite, round_key if suite.round_scoped else None)
    timings[table] = [time.perf_counter() - t, suite.round_scoped]
    failed += [f"{table}.{o.name}" for o in outcomes if not o.passed]
print(json.dumps({"import_s": imported, "tables": timings, "failed": failed}))
"""


def round_run_seconds(home: Path, round_key: int) -> tuple[float | None, float]:
    """(wall seconds of the round's flywheel_round run, seconds of its checkpoint-check steps)."""
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    from dagster import DagsterInstance, RunsFilter

    instance = DagsterInstance.get()
    runs = instance.get_run_records(RunsFilter(job_name="flywheel_round", tags={"dagster/partition": str(round_key)}))
    if not runs:
        return None, 0.0
    record = runs[0]
    stats = instance.get_run_step_stats(record.dagster_run.run_id)
    checks = sum((s.end_time or 0) - (s.start_time or 0) for s in stats if s.step_key.endswith("_checks"))
    return (record.end_time or 0) - (record.start_time or 0), checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes; the best is reported")
    args = parser.parse_args()
    warehouse = args.home / "warehouse.duckdb"
    results = []
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, "-c", WORKER, str(warehouse), str(args.round)],
                             capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(results, key=lambda r: sum(s for s, _ in r["tables"].values()))
    round_tables = {t: s for t, (s, scoped) in best["tables"].items() if scoped}
    setup_tables = {t: s for t, (s, scoped) in best["tables"].items() if not scoped}
    total = sum(round_tables.values())
    for table, seconds in sorted({**round_tables, **setup_tables}.items(), key=lambda kv: -kv[1]):
        print(f"{table:24s} {seconds:6.3f} s{'' if table in round_tables else '  (setup, not per round)'}")
    round_s, checkpoint_s = round_run_seconds(args.home, args.round)
    print(f"round tables: {len(round_tables)}, failed checks: {best['failed'] or 'none'}")
    print(f"setup tables (raw_prompts, arena_testset, prompt_pool): {sum(setup_tables.values()):.2f} s")
    print(f"GX import (once per process): {best['import_s']:.2f} s")
    print(f"table checks of the round (best of {args.repeat}): {total:.2f} s")
    print(f"checkpoint checks (steps of the round's run): {checkpoint_s:.2f} s")
    if round_s:
        share = (total + best["import_s"] + checkpoint_s) / round_s
        print(f"round {args.round} run: {round_s:.1f} s; checks incl. GX import: {share:.1%} of the round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
