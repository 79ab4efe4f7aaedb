"""`arena-dagster`: run the flywheel through Dagster, read leaderboards, and the standalone tools."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from arena_dagster.config import DEFAULT_PROFILE, load_profile, resolve_home

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def prepare_environment(home: Path, profile: str) -> None:
    """Point Dagster at the persistent instance under the home folder, so the UI shows CLI runs."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["ARENA_HOME"] = str(home)
    os.environ["ARENA_PROFILE"] = profile
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)


def read_leaderboards(home: Path) -> list[dict[str, Any]]:
    import duckdb

    path = home / "warehouse.duckdb"
    if not path.exists():
        raise SystemExit(f"no warehouse at {path}: run `arena-dagster flywheel` first")
    conn = duckdb.connect(str(path), read_only=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "leaderboard" not in tables:
            return []
        if "leaderboard_history" in tables:
            # With each round's promotion decision (difference to the incumbent and its interval).
            frame = conn.execute(
                "SELECT round, model, role, kind, stage, rating, ci_low, ci_high, rank, battles, testset_version, "
                "promoted, diff_vs_incumbent, diff_ci_low, diff_ci_high FROM leaderboard_history ORDER BY round, rating DESC"
            ).pl()
        else:
            frame = conn.execute(
                "SELECT round, model, role, kind, rating, ci_low, ci_high, rank, battles, testset_version "
                "FROM leaderboard ORDER BY round, rating DESC"
            ).pl()
    finally:
        conn.close()
    return frame.to_dicts()


def format_leaderboard(rows: list[dict[str, Any]], round_key: int | None = None) -> str:
    chosen = [r for r in rows if round_key is None or r["round"] == round_key]
    lines = [f"{'round':>5} {'rank':>4}  {'model':<24} {'rating':>8}  {'95% CI':<19} {'battles':>7}  {'kind':<10} gate"]
    for r in chosen:
        ci = f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        gate = ""
        if r.get("diff_vs_incumbent") is not None:
            gate = (f"{'promoted' if r['promoted'] else 'rejected'}: {r['diff_vs_incumbent']:+.1f} "
                    f"[{r['diff_ci_low']:+.1f}, {r['diff_ci_high']:+.1f}] vs target")
        lines.append(
            f"{r['round']:>5} {r['rank']:>4}  {r['model']:<24} {r['rating']:>8.1f}  {ci:<19} {r['battles']:>7}  "
            f"{r.get('kind') or r['role']:<10} {gate}".rstrip()
        )
    return "\n".join(lines)


def run_flywheel(rounds: int, home: Path, profile: str, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    prepare_environment(home, profile)
    from dagster import DagsterInstance

    from arena_dagster.defs import build_definitions
    from arena_dagster.defs.common import round_partitions

    settings = load_profile(profile)
    slices = int(settings["prompts"]["rounds"])
    if rounds > slices:
        raise SystemExit(f"profile {profile!r} slices its prompt pool into {slices} rounds; asked for {rounds}")
    instance = DagsterInstance.get()
    defs = build_definitions(str(home), profile)
    echo(f"arena-dagster: profile {profile}, home {home}")
    defs.resolve_job_def("flywheel_setup").execute_in_process(instance=instance)
    wanted = [str(r) for r in range(rounds + 1)]
    existing = set(instance.get_dynamic_partitions(round_partitions.name))
    instance.add_dynamic_partitions(round_partitions.name, [k for k in wanted if k not in existing])
    for round_key in range(rounds + 1):
        job = "baseline_evaluation" if round_key == 0 else "flywheel_round"
        echo(f"--- round {round_key} ({job})")
        defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=str(round_key))
        echo(format_leaderboard(read_leaderboards(home), round_key))
    return read_leaderboards(home)


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, help="flywheel home (default: $ARENA_HOME or ./.arena)")


def build_parser() -> argparse.ArgumentParser:
    from arena_dagster import trace_cli
    from arena_dagster.backends import cli as generate_cli
    from arena_dagster.prompts import cli as curate_cli
    from arena_dagster.ratings import cli as ratings_cli

    parser = argparse.ArgumentParser(prog="arena-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    flywheel = sub.add_parser("flywheel", help="run N flywheel rounds through Dagster, then print the leaderboard")
    flywheel.add_argument("--rounds", type=int, default=3)
    flywheel.add_argument("--profile", default=os.environ.get("ARENA_PROFILE", DEFAULT_PROFILE))
    _add_home(flywheel)

    board = sub.add_parser(
        "leaderboard",
        help="stored leaderboards of every round (--home), or a leaderboard of battle files (--battles)",
    )
    _add_home(board)
    board.add_argument("--json", action="store_true", help="print JSON")
    board.add_argument("--plot", metavar="OUT.png", help="also write the last round's leaderboard to OUT.png, the target "
                       "across rounds to OUT-history.png and the win-rate heat map to OUT-winrate.png")
    ratings_cli.add_arguments(board)

    generate = sub.add_parser("generate", help="answer a prompt file with one model through the cached backend layer")
    generate_cli.add_arguments(generate)

    curate = sub.add_parser("curate", help="curate prompt files: clean, deduplicate, decontaminate")
    curate_cli.add_arguments(curate)

    trace_cli.add_arguments(sub.add_parser("trace", help="where a training row, battle, prompt or checkpoint came from and went"))

    ui = sub.add_parser("ui", help="start the Dagster UI on the flywheel's persistent instance")
    _add_home(ui)
    ui.add_argument("--profile", default=os.environ.get("ARENA_PROFILE", DEFAULT_PROFILE))
    ui.add_argument("--port", type=int, default=3000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "flywheel":
        rows = run_flywheel(args.rounds, resolve_home(args.home), args.profile)
        print("final leaderboards:")
        print(format_leaderboard(rows))
        return 0
    if args.command == "leaderboard":
        if getattr(args, "battles", None):
            from arena_dagster.ratings import cli as ratings_cli

            return ratings_cli.run(args)
        rows = read_leaderboards(resolve_home(args.home))
        print(json.dumps(rows, indent=2, default=str) if args.json else format_leaderboard(rows))
        if args.plot:
            from arena_dagster.plots import write_home_plots

            print("\n".join(f"wrote {path}" for path in write_home_plots(resolve_home(args.home), Path(args.plot))), file=sys.stderr)
        return 0
    if args.command == "trace":
        from arena_dagster import trace_cli

        return trace_cli.run(args)
    if args.command == "generate":
        from arena_dagster.backends import cli as generate_cli

        return generate_cli.run(args)
    if args.command == "curate":
        from arena_dagster.prompts import cli as curate_cli

        return curate_cli.run(args)
    if args.command == "ui":
        home = resolve_home(args.home)
        prepare_environment(home, args.profile)
        os.execv(sys.executable, [sys.executable, "-m", "dagster", "dev", "-m", "arena_dagster.defs", "-p", str(args.port)])
    return 2


if __name__ == "__main__":
    sys.exit(main())
