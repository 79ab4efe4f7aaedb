"""`arena-dagster`: run the flywheel through Dagster, read leaderboards, and the standalone tools.

Every user error ends as one line, `arena-dagster: what (input): fix`, with exit status 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from arena_dagster.config import resolve_home
from arena_dagster.errors import ArenaError
from arena_dagster.home import prepare_environment

RANK_LEGEND = ("rank: 1 + the number of models rated above with 95% confidence (models that share a rank are not "
               "separable); 95% CI: prompt-bootstrap interval of the rating")
GATE_LEGEND = ("gate: candidate - target Elo with its paired 95% interval; the candidate is promoted when the lower "
               "bound is above the profile's promotion.margin")


def read_leaderboards(home: Path, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    from arena_dagster.warehouse import open_readonly, table_exists

    with open_readonly(home, timeout_s=timeout_s) as conn:
        if not table_exists(conn, "leaderboard"):
            return []
        if table_exists(conn, "leaderboard_history"):
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


def run_flywheel(
    rounds: int,
    home: Path,
    profile: str | None,
    *,
    seed: int | None = None,
    switch_profile: bool = False,
    wait: bool = True,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
    engine_tags: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run setup and rounds 1..`rounds` on `home` through the home's Dagster instance; returns every leaderboard row."""
    from arena_dagster.commands.flywheel import Flywheel
    from arena_dagster.operate import RunCanceled, end_processes, process_tree, signals_interrupt

    prepare_environment(home)
    # SIGTERM and SIGINT cancel the run being followed (commands/flywheel.py); then nothing this command started may outlive it.
    with signals_interrupt():
        try:
            with Flywheel(home, profile, seed=seed, switch_profile=switch_profile, wait=wait, verbose=verbose,
                          echo=echo, engine_tags=engine_tags) as flywheel:
                flywheel.run(rounds, on_round=lambda r: echo(format_leaderboard(read_leaderboards(home), r)))
        except (KeyboardInterrupt, RunCanceled):
            end_processes(process_tree(os.getpid())[1:])
            raise
    return read_leaderboards(home)


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, help="flywheel home (default: $ARENA_HOME or ./.arena)")


def build_parser() -> argparse.ArgumentParser:
    from arena_dagster.commands import curate as curate_cli
    from arena_dagster.commands import generate as generate_cli
    from arena_dagster.commands import leaderboard as ratings_cli
    from arena_dagster.commands import trace as trace_cli
    from arena_dagster.compute.cli import add_engine_arguments

    parser = argparse.ArgumentParser(prog="arena-dagster", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    flywheel = sub.add_parser("flywheel", help="run the flywheel's setup and N rounds through Dagster, then print the leaderboards")
    flywheel.add_argument("--rounds", type=int, default=3)
    flywheel.add_argument("--profile", default=None, help="profile name (default: the home's, else $ARENA_PROFILE or skills)")
    flywheel.add_argument("--seed", type=int, default=None, help="seed of every random choice (recorded with the home's profile)")
    flywheel.add_argument("--switch-profile", action="store_true", help="run another profile or seed on an existing home")
    flywheel.add_argument("--no-wait", action="store_true", help="refuse instead of waiting when another flywheel works on the home")
    flywheel.add_argument("--verbose", action="store_true", help="print every Dagster event (they always go to <home>/logs/)")
    _add_home(flywheel)
    add_engine_arguments(flywheel)

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

    ui = sub.add_parser("ui", help="start the Dagster UI on the flywheel home's instance")
    _add_home(ui)
    ui.add_argument("--profile", default=None, help="profile of a home no run has started yet")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "flywheel":
        from arena_dagster.compute.cli import engine_tags

        if args.rounds < 0:
            raise ArenaError("--rounds must be 0 or more", str(args.rounds))
        rows = run_flywheel(args.rounds, resolve_home(args.home), args.profile, seed=args.seed,
                            switch_profile=args.switch_profile, wait=not args.no_wait, verbose=args.verbose,
                            engine_tags=engine_tags(args))
        print("final leaderboards:")
        print(format_leaderboard(rows))
        print(RANK_LEGEND)
        print(GATE_LEGEND)
        return 0
    if args.command == "leaderboard":
        from arena_dagster.commands import leaderboard as ratings_cli

        if getattr(args, "battles", None):
            return ratings_cli.run(args)
        ratings_cli.refuse_file_options(args)
        if args.by == "category":
            from arena_dagster.ratings.home_categories import print_home_categories

            return print_home_categories(resolve_home(args.home), args.json, args.plot)
        rows = read_leaderboards(resolve_home(args.home))
        print(json.dumps(rows, indent=2, default=str) if args.json else
              "\n".join([format_leaderboard(rows), RANK_LEGEND, GATE_LEGEND]))
        if args.plot:
            from arena_dagster.config import settings_of
            from arena_dagster.home import home_profile
            from arena_dagster.plots import write_home_plots

            home = resolve_home(args.home)
            written = write_home_plots(home, Path(args.plot), evaluation=settings_of(home_profile(home)[2]).evaluation)
            print("\n".join(f"wrote {path}" for path in written), file=sys.stderr)
        return 0
    if args.command == "trace":
        from arena_dagster.commands import trace as trace_cli

        return trace_cli.run(args)
    if args.command == "generate":
        from arena_dagster.commands import generate as generate_cli

        return generate_cli.run(args)
    if args.command == "curate":
        from arena_dagster.commands import curate as curate_cli

        return curate_cli.run(args)
    if args.command == "ui":
        from arena_dagster.commands.flywheel import prepare_ui

        command = prepare_ui(resolve_home(args.home), args.profile, args.host, args.port)
        os.execv(command[0], command)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt as exc:
        from arena_dagster.operate import Interrupted

        interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        print(f"arena-dagster: {interrupted.line()}", file=sys.stderr)
        return 128 + interrupted.signum
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into one line
        if args.debug:
            raise
        from arena_dagster.user_errors import as_user_error

        error = as_user_error(exc)
        if error is None:
            raise
        print(f"arena-dagster: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
