"""`arena-dagster leaderboard --battles ...`: a leaderboard from battle or grade files.

The lead's `leaderboard` subcommand owns `--json` and `--home`; this module adds the
options of a file-based leaderboard (`add_arguments`) and runs it (`run`) when
`--battles` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import polars as pl

from arena_dagster.ratings.alignment import alignment
from arena_dagster.ratings.bradley_terry import BOOTSTRAP_UNITS, leaderboard
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.importers import apply_rename, read_fastchat_battles, read_grades

READERS = {"fastchat": read_fastchat_battles, "grades": read_grades}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the file-based leaderboard options to `parser` (which already has --json)."""
    group = parser.add_argument_group("leaderboard from files")
    group.add_argument("--battles", nargs="+", metavar="PATH", help="battle or grade files (JSON or JSON lines)")
    group.add_argument(
        "--input-format", choices=sorted(READERS), default="fastchat",
        help="fastchat: battle records with model_a, model_b, winner; grades: question_id, model, score 1-10 "
        "(every two models graded on a question make a battle). Default: fastchat",
    )
    group.add_argument("--rename", metavar="CSV", help="two-column CSV (with header) mapping model names")
    group.add_argument("--anchor", metavar="MODEL=RATING", help="pin one model's rating (default: mean 1000)")
    group.add_argument(
        "--bootstrap", type=int, default=100, metavar="N", help="bootstrap rounds for the 95%% intervals (0: none)"
    )
    group.add_argument(
        "--bootstrap-unit", choices=BOOTSTRAP_UNITS, default="battle",
        help="resample battles, or whole prompts (needs question_id). Default: battle",
    )
    group.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    group.add_argument(
        "--reference", metavar="CSV",
        help="reference leaderboard (model, rating[, rating_q025, rating_q975]) to report alignment with",
    )


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON document of `run`: models, rejected rows and, with --reference, alignment."""
    battles, rejected = READERS[args.input_format](args.battles)
    if battles.height == 0:
        raise RatingsError(
            f"no usable battles in {len(args.battles)} {args.input_format} file(s); rejected rows: {rejected or 'none'}"
        )
    if args.rename:
        battles = apply_rename(battles, args.rename)
    board = leaderboard(
        battles, anchor=args.anchor, bootstrap=args.bootstrap, bootstrap_unit=args.bootstrap_unit, seed=args.seed
    )
    report: dict[str, Any] = {"models": board.to_dicts()}
    if args.reference:
        report["alignment"] = alignment(board, pl.read_csv(args.reference))
    report["rejected"] = rejected
    return report


def _table(report: dict[str, Any]) -> str:
    width = max(len("model"), *(len(row["model"]) for row in report["models"]))
    lines = [f"{'rank':>4}  {'model':<{width}}  {'rating':>8}  {'95% interval':>19}  {'battles':>8}"]
    for row in report["models"]:
        interval = "" if row["ci_low"] is None else f"[{row['ci_low']:8.1f}, {row['ci_high']:8.1f}]"
        lines.append(
            f"{row['rank']:>4}  {row['model']:<{width}}  {row['rating']:8.1f}  {interval:>19}  {row['battles']:>8}"
        )
    if "alignment" in report:
        a = report["alignment"]

        def show(x):
            return "n/a" if x is None else f"{x:.3f}"

        lines.append(
            f"\nalignment with the reference over {a['n_common']} models: spearman {show(a['spearman'])}, "
            f"kendall {show(a['kendall'])}, agreement_ci {show(a['agreement_ci'])}, "
            f"separability {show(a['separability'])}"
        )
    rejected = report["rejected"]
    lines.append(
        "\nrejected rows: " + (", ".join(f"{reason} {count}" for reason, count in rejected.items()) or "none")
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the leaderboard of `args.battles` (JSON with args.json, else a table); 0 on success, 2 on bad input."""
    try:
        report = build_report(args)
    except (RatingsError, OSError, pl.exceptions.PolarsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if getattr(args, "json", False) else _table(report))
    return 0
