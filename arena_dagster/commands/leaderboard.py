"""`arena-dagster leaderboard --battles ...`: a leaderboard from battle, grade or judgment files.

The lead's `leaderboard` subcommand owns `--json` and `--home`; this module adds the
options of a file-based leaderboard (`add_arguments`) and runs it (`run`) when
`--battles` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import Any

import polars as pl

from arena_dagster.ratings.alignment import alignment
from arena_dagster.ratings.board import rate
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.importers import apply_rename, read_fastchat_battles, read_grades, read_reference, read_rename
from arena_dagster.ratings.judgments import read_answers, read_arena_hard, read_mt_bench_pairs
from arena_dagster.ratings.resampling import BOOTSTRAP_UNITS
from arena_dagster.ratings.style import STYLE_PRESETS, with_style_features

FORMATS = ("fastchat", "grades", "arena-hard", "mt-bench-pair")
UNBOUNDED_MARK = "!"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the file-based leaderboard options to `parser` (which already has --json)."""
    group = parser.add_argument_group("leaderboard from files")
    group.add_argument("--battles", nargs="+", metavar="PATH", help="battle, grade or judgment files or folders")
    group.add_argument(
        "--input-format", choices=FORMATS, default="fastchat",
        help="fastchat: battle records with model_a, model_b, winner; grades: question_id, model, score 1-10 "
        "(every two models graded on a question make a battle); arena-hard: arena-hard-auto judgments "
        "(v0.1 or v2.0) against a baseline, one battle per game; mt-bench-pair: FastChat MT-Bench pairwise "
        "judgments (g1_winner, g2_winner). Default: fastchat",
    )
    group.add_argument(
        "--baseline", metavar="NAME",
        help="the model every row shows win_rate against; for arena-hard v0.1 files also the baseline they were "
        "judged against (v0.1 files do not name it)",
    )
    group.add_argument(
        "--strong-weight", type=float, default=3.0, metavar="W",
        help="arena-hard: weight of a strong verdict (A>>B), as arena-hard's own scoring (default 3)",
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
        "--style-control", choices=sorted(STYLE_PRESETS),
        help="also fit style-controlled ratings (style: length and markdown; length; markdown). Needs the answers' "
        "style: FastChat battles with conv_metadata, or --answers",
    )
    group.add_argument(
        "--answers", nargs="+", metavar="PATH",
        help="arena-hard model_answer files or folders: the answer texts style control measures",
    )
    group.add_argument(
        "--reference", metavar="CSV",
        help="reference leaderboard (model, rating[, rating_q025, rating_q975]) to report alignment with",
    )


def read_battles(args: argparse.Namespace) -> tuple[pl.DataFrame, dict[str, int]]:
    """The battles of `args.battles` in `args.input_format`, and the rejected rows by reason."""
    readers = {
        "fastchat": read_fastchat_battles,
        "grades": read_grades,
        "arena-hard": partial(read_arena_hard, baseline=args.baseline, strong_weight=args.strong_weight),
        "mt-bench-pair": read_mt_bench_pairs,
    }
    return readers[args.input_format](args.battles)


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON document of `run`: models, what belongs beside them, alignment, rejected rows."""
    battles, rejected = read_battles(args)
    if battles.height == 0:
        raise RatingsError(
            f"no usable battles in {len(args.battles)} {args.input_format} file(s); rejected rows: {rejected or 'none'}"
        )
    answer_rejects = None
    if args.answers:
        answers, answer_rejects = read_answers(args.answers)
        battles = with_style_features(battles, answers)
    baseline = args.baseline
    if args.rename:
        battles = apply_rename(battles, args.rename)
        baseline = read_rename(args.rename).get(baseline, baseline)  # the files' name -> the name rated
    ratings = rate(
        battles, anchor=args.anchor, baseline=baseline, bootstrap=args.bootstrap,
        bootstrap_unit=args.bootstrap_unit, seed=args.seed, style_control=args.style_control or False,
    )
    report: dict[str, Any] = {"models": ratings.board.to_dicts(), **ratings.summary()}
    if args.reference:
        reference, reference_rejects = read_reference(args.reference)
        report["alignment"] = alignment(ratings.board, reference)
        if reference_rejects:
            report["reference_rejected"] = reference_rejects
    if answer_rejects:
        report["answers_rejected"] = answer_rejects
    report["rejected"] = rejected
    return report


def _interval(low: float | None, high: float | None, digits: int = 1, factor: float = 1.0) -> str:
    return "" if low is None else f"[{low * factor:.{digits}f}, {high * factor:.{digits}f}]"


def format_table(report: dict[str, Any]) -> str:
    """The report as the table `run` prints (the same rows as --json)."""
    rows = report["models"]
    width = max(len("model"), *(len(row["model"]) for row in rows))
    with_rate, with_style = "win_rate" in rows[0], "rating_sc" in rows[0]
    head = f"{'rank':>4}  {'model':<{width}}  {'rating':>9}  {'95% interval':>19}"
    if with_rate:
        head += f"  {'win rate %':>10}  {'95% interval':>14}"
    if with_style:
        head += f"  {'rank sc':>7}  {'rating sc':>9}  {'95% interval':>19}"
    lines = [head + f"  {'battles':>8}"]
    for row in rows:
        mark = UNBOUNDED_MARK if row["unbounded"] else " "
        line = (f"{row['rank']:>4}  {row['model']:<{width}}  {row['rating']:8.1f}{mark}  "
                f"{_interval(row['ci_low'], row['ci_high']):>19}")
        if with_rate:
            line += f"  {row['win_rate'] * 100:10.1f}  {_interval(row['win_rate_low'], row['win_rate_high'], 1, 100):>14}"
        if with_style:
            line += f"  {row['rank_sc']:>7}  {row['rating_sc']:9.1f}  {_interval(row['ci_low_sc'], row['ci_high_sc']):>19}"
        lines.append(line + f"  {row['battles']:>8}")
    if report["unbounded"]:
        lines.append(f"\n{UNBOUNDED_MARK} unbounded: {report['unbounded_reason']}")
    if report.get("style_coefficients"):
        shown = ", ".join(
            f"{c['feature']} {'n/a' if c['coefficient'] is None else format(c['coefficient'], '+.3f')}"
            + (f" {_interval(c['ci_low'], c['ci_high'], 3)}" if c["ci_low"] is not None else "")
            for c in report["style_coefficients"]
        )
        lines.append(f"\nstyle coefficients (log-odds per typical style gap): {shown}")
    if "alignment" in report:
        a = report["alignment"]

        def show(x):
            return "n/a" if x is None else f"{x:.3f}"

        lines.append(
            f"\nalignment with the reference over {a['n_common']} models: spearman {show(a['spearman'])}, "
            f"kendall {show(a['kendall'])}, agreement_ci {show(a['agreement_ci'])}, "
            f"separability {show(a['separability'])}"
        )
    for key, title in (("rejected", "rejected rows"), ("answers_rejected", "rejected answer rows"),
                       ("reference_rejected", "rejected reference rows")):
        if key in report:
            shown = ", ".join(f"{reason} {count}" for reason, count in report[key].items()) or "none"
            lines.append(("\n" if key == "rejected" else "") + f"{title}: {shown}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the leaderboard of `args.battles` (JSON with args.json, else a table); 0 on success, 2 on bad input."""
    try:
        report = build_report(args)
    except (RatingsError, OSError, pl.exceptions.PolarsError) as error:
        print(f"arena-dagster: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if getattr(args, "json", False) else format_table(report))
    return 0
