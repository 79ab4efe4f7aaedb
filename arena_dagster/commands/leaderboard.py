"""`arena-dagster leaderboard --battles ...`: a leaderboard from battle, grade or judgment files.

The lead's `leaderboard` subcommand owns `--json` and `--home`; this module adds the
options of a file-based leaderboard (`add_arguments`) and runs it (`run`) when
`--battles` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from functools import partial
from typing import Any

import polars as pl

from arena_dagster.errors import ArenaError
from arena_dagster.names import NameBook
from arena_dagster.ratings.alignment import alignment
from arena_dagster.ratings.board import rate
from arena_dagster.ratings.categories import category_report, format_categories
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.importers import read_fastchat_battles, read_grades, read_reference, read_rename
from arena_dagster.ratings.judgments import read_answers, read_arena_hard, read_mt_bench_pairs
from arena_dagster.ratings.resampling import BOOTSTRAP_UNITS
from arena_dagster.ratings.sandwich import CI_METHODS
from arena_dagster.ratings.style import STYLE_PRESETS, with_style_features

FORMATS = ("fastchat", "grades", "arena-hard", "mt-bench-pair")
FORMAT_NAMES = {"fastchat": "FastChat battles", "grades": "grades", "arena-hard": "arena-hard judgments",
                "mt-bench-pair": "MT-Bench pairwise judgments"}
UNBOUNDED_MARK = "!"
# Options whose default is None in the parser, so a value given on the command line can be told
# from the default (a flag the input ignores is refused only when given): their real defaults.
DEFAULTS = {"input_format": "fastchat", "strong_weight": 3.0, "bootstrap": 100, "bootstrap_unit": "battle", "seed": 0,
            "ci": "bootstrap"}
# Every option of a leaderboard from files (dest -> flag): without --battles none of them applies.
FILE_OPTIONS = {"input_format": "--input-format", "baseline": "--baseline", "strong_weight": "--strong-weight",
                "rename": "--rename", "anchor": "--anchor", "bootstrap": "--bootstrap",
                "bootstrap_unit": "--bootstrap-unit", "seed": "--seed", "style_control": "--style-control",
                "answers": "--answers", "reference": "--reference", "ci": "--ci", "questions": "--questions"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the file-based leaderboard options to `parser` (which already has --json)."""
    group = parser.add_argument_group("leaderboard from files")
    group.add_argument("--battles", nargs="+", metavar="PATH", help="battle, grade or judgment files or folders")
    group.add_argument(
        "--input-format", choices=FORMATS, default=None,
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
        "--strong-weight", type=float, default=None, metavar="W",
        help="arena-hard only: weight of a strong verdict (A>>B), a number above 0, as arena-hard's own scoring "
        "(default 3)",
    )
    group.add_argument(
        "--rename", metavar="CSV",
        help="two-column CSV with a header (from,to): rate each `from` name as `to`; two names renamed to one are "
        "merged on purpose (e.g. GPT-4,gpt-4), which is how names that differ only in case are rated as one",
    )
    group.add_argument("--anchor", metavar="MODEL=RATING", help="pin one model's rating (default: mean 1000)")
    group.add_argument(
        "--bootstrap", type=int, default=None, metavar="N",
        help="bootstrap rounds for the 95%% intervals (0: none; default 100)",
    )
    group.add_argument(
        "--bootstrap-unit", choices=BOOTSTRAP_UNITS, default=None,
        help="resample battles, or whole prompts (needs question_id). Default: battle",
    )
    group.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")
    group.add_argument(
        "--ci", choices=CI_METHODS, default=None,
        help="how the 95%% intervals, ranks and win-rate intervals are computed: bootstrap (--bootstrap rounds) or "
        "sandwich (the robust covariance H^-1 S H^-1 of the fit, LMArena's default: seconds instead of a bootstrap; "
        "--bootstrap-unit prompt makes it cluster-robust by prompt). Default: bootstrap",
    )
    group.add_argument(
        "--questions", nargs="+", metavar="PATH",
        help="question files (JSON lines with question_id and category, e.g. MT-Bench's question.jsonl) giving "
        "each battle's category for --by category",
    )
    parser.add_argument(
        "--by", choices=("category",), default=None,
        help="also one leaderboard per category of prompt (with --battles: the battles' category column or "
        "--questions; with --home: the stored per-category boards of every round)",
    )
    group.add_argument(
        "--style-control", choices=sorted(STYLE_PRESETS),
        help="also fit style-controlled ratings (style: length and markdown; length; markdown). Needs the answers' "
        "style: FastChat battles with conv_metadata, or --answers",
    )
    group.add_argument(
        "--answers", nargs="+", metavar="PATH",
        help="arena-hard model_answer files or folders: the answer texts --style-control measures",
    )
    group.add_argument(
        "--reference", metavar="CSV",
        help="reference leaderboard (model, rating[, rating_q025, rating_q975]) to report alignment with",
    )


def given(args: argparse.Namespace) -> list[str]:
    """The file-leaderboard options given on the command line, as flags."""
    return [flag for dest, flag in FILE_OPTIONS.items() if getattr(args, dest, None) is not None]


def check_flags(args: argparse.Namespace) -> list[str]:
    """Refuse (RatingsError) a value out of range, or a flag the input ignores where ignoring it would
    change what the user gets; return the warnings for flags that only have nothing to do.

    An error: --strong-weight outside (0, inf) in any case, and with a format that has no strong
    verdicts (the board would silently lack the weighting asked for); --style-control without
    --answers on a format that holds no answer style; --answers without
    --style-control (the answers would be read and measured for nothing: the style fit asked for
    is missing); --plot with --battles (no picture would be written). A warning: --seed or
    --bootstrap-unit with --bootstrap 0 (no draws to seed or resample: the board is the one asked
    for), and --home with --battles (the files are rated; the home is not read)."""
    input_format = args.input_format or DEFAULTS["input_format"]
    weight = args.strong_weight
    if weight is not None and not (math.isfinite(weight) and weight > 0):
        raise RatingsError(f"--strong-weight {weight:g} is out of range (the weight of a strong verdict: a number "
                           "above 0): give e.g. 3, arena-hard's own weight")
    if args.bootstrap is not None and args.bootstrap < 0:
        raise RatingsError(f"--bootstrap {args.bootstrap} is out of range (rounds of the bootstrap): give 0 or more")
    if weight is not None and input_format != "arena-hard":
        raise RatingsError(f"--strong-weight does not apply to {FORMAT_NAMES[input_format]} (--input-format "
                           f"{input_format} has no strong verdicts; only arena-hard judgments do): drop it")
    if args.style_control and not args.answers and input_format != "fastchat":
        raise RatingsError(f"--style-control has no style to measure in {FORMAT_NAMES[input_format]} (only FastChat "
                           "battles carry it, as conv_metadata): add --answers with the models' answer files")
    if args.answers and not args.style_control:
        raise RatingsError("--answers does not apply without --style-control (the answers only feed the style "
                           "fit): add --style-control style, or drop --answers")
    if args.ci == "sandwich" and args.bootstrap is not None:
        raise RatingsError(f"--bootstrap {args.bootstrap} does not apply with --ci sandwich (its intervals come from "
                           "the fit's covariance, not from resampling): drop --bootstrap, or use --ci bootstrap")
    if args.questions and args.by != "category":
        raise RatingsError("--questions does not apply without --by category (it only gives the battles' "
                           "categories): add --by category, or drop --questions")
    if getattr(args, "plot", None):
        raise RatingsError("--plot does not apply to --battles (it draws a home's stored leaderboards): "
                           "drop it, or use --home")
    warnings = []
    if args.bootstrap == 0:
        warnings += [f"{flag} has no effect with --bootstrap 0 (no bootstrap draws)"
                     for flag, value in (("--seed", args.seed), ("--bootstrap-unit", args.bootstrap_unit))
                     if value is not None]
    if args.ci == "sandwich" and args.seed is not None:
        warnings.append("--seed has no effect with --ci sandwich (no bootstrap draws)")
    if getattr(args, "home", None) is not None:
        warnings.append("--home has no effect with --battles (the files are rated, the home is not read)")
    return warnings


def refuse_file_options(args: argparse.Namespace) -> None:
    """RatingsError when an option of a leaderboard from files is given without --battles: the
    stored leaderboards were rated with the profile's `evaluation` settings, so it would be ignored."""
    flags = given(args)
    if flags:
        raise RatingsError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only to a leaderboard "
                           "of --battles files (the stored leaderboards were rated with the profile's evaluation "
                           f"settings): drop {'it' if len(flags) == 1 else 'them'}, or add --battles FILES")


def _option(args: argparse.Namespace, dest: str) -> Any:
    value = getattr(args, dest)
    return DEFAULTS[dest] if value is None else value


def read_battles(args: argparse.Namespace, names: NameBook) -> tuple[pl.DataFrame, dict[str, int]]:
    """The battles of `args.battles` in `args.input_format`, and the rejected rows by reason; model
    names go through `names`."""
    readers = {
        "fastchat": read_fastchat_battles,
        "grades": read_grades,
        "arena-hard": partial(read_arena_hard, baseline=args.baseline, strong_weight=_option(args, "strong_weight")),
        "mt-bench-pair": read_mt_bench_pairs,
    }
    return readers[_option(args, "input_format")](args.battles, names=names)


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON document of `run`: models, what belongs beside them, alignment, rejected rows."""
    names = NameBook(read_rename(args.rename) if args.rename else None)
    baseline = None if args.baseline is None else names.add(args.baseline, "--baseline", spelled=False)
    anchor = args.anchor
    if anchor and "=" in anchor:
        model, _, value = anchor.rpartition("=")
        anchor = f"{names.add(model, '--anchor', spelled=False)}={value}"
    battles, rejected = read_battles(args, names)
    if battles.height == 0:
        raise RatingsError(
            f"no usable battles in {len(args.battles)} {_option(args, 'input_format')} file(s); "
            f"rejected rows: {rejected or 'none'}"
        )
    answer_rejects = None
    if args.answers:
        answers, answer_rejects = read_answers(args.answers, names=names)
        battles = with_style_features(battles, answers)
    options = dict(anchor=anchor, baseline=baseline, bootstrap=_option(args, "bootstrap"),
                   bootstrap_unit=_option(args, "bootstrap_unit"), seed=_option(args, "seed"),
                   style_control=args.style_control or False, ci=_option(args, "ci"))
    ratings = rate(battles, **options)
    report: dict[str, Any] = {"models": ratings.board.to_dicts(), **ratings.summary()}
    if args.by == "category":
        report.update(category_report(battles, args.questions, options))
    if args.reference:
        reference, reference_rejects = read_reference(args.reference)
        report["alignment"] = alignment(ratings.board, reference)
        if reference_rejects:
            report["reference_rejected"] = reference_rejects
    if answer_rejects:
        report["answers_rejected"] = answer_rejects
    if names.merged:
        report["merged"] = names.merged
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
    if report.get("merged"):
        shown = "; ".join(f"{name} <- {', '.join(spellings)}" for name, spellings in report["merged"].items())
        lines.append(f"\nmerged by --rename: {shown}")
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
            f"kendall {show(a['kendall'])}, pairs in the same order {show(a['pairs_same_order'])}, "
            f"agreement_ci {show(a['agreement_ci'])}, "
            f"separability {show(a['separability'])}"
        )
    if "by_category" in report:
        lines.append(format_categories(report, format_table))
    for key, title in (("rejected", "rejected rows"), ("answers_rejected", "rejected answer rows"),
                       ("reference_rejected", "rejected reference rows")):
        if key in report:
            shown = ", ".join(f"{reason} {count}" for reason, count in report[key].items()) or "none"
            lines.append(("\n" if key == "rejected" else "") + f"{title}: {shown}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the leaderboard of `args.battles` (JSON with args.json, else a table); 0 on success, 2 on bad input."""
    try:
        for warning in check_flags(args):
            print(f"arena-dagster: warning: {warning}", file=sys.stderr)
        report = build_report(args)
    except (ArenaError, OSError, pl.exceptions.PolarsError) as error:
        print(f"arena-dagster: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if getattr(args, "json", False) else format_table(report))
    return 0
