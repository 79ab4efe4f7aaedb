"""Per-category leaderboards: one Bradley-Terry board per category of prompt, as the Arena
Learning paper reports every model's Elo per category.

A battle's category is its prompt's: the skills family or the pool's family of an arena test
set prompt, or the `category` of a question file (FastChat's MT-Bench and arena-hard
question.jsonl) for imported judgments. A category whose battles cannot be rated on their
own (one model, models never compared, an anchor or baseline without battles there) gets no
board and a reason instead: the other categories still get theirs.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from typing import Any

import polars as pl

from arena_dagster.ratings.errors import RatingsError, RatingsWarning
from arena_dagster.ratings.importers import question_id_of
from arena_dagster.ratings.records import PathLike, as_paths, read_records

CATEGORY = "category"


def read_question_categories(paths: PathLike | Iterable[PathLike]) -> tuple[dict[str, str], dict[str, int]]:
    """{question_id: category} of question files (JSON lines or a JSON array of objects with
    question_id, or arena-hard v2's uid, and category), and the rows left out by reason:
    invalid_utf8, invalid_json, not_an_object, missing_question_id, missing_category (absent,
    null, empty or not a string), conflicting_category (a question listed again with another
    category: the first is kept), duplicate_question (listed again with the same one)."""
    rejected: Counter = Counter()
    categories: dict[str, str] = {}
    for path in as_paths(paths, suffixes=(".jsonl", ".json")):
        for _, record in read_records(path, rejected):
            question_id = question_id_of(record.get("question_id", record.get("uid")))
            category = record.get(CATEGORY)
            if question_id is None:
                rejected["missing_question_id"] += 1
            elif not isinstance(category, str) or not category.strip():
                rejected["missing_category"] += 1
            elif question_id in categories:
                rejected["duplicate_question" if categories[question_id] == category.strip() else "conflicting_category"] += 1
            else:
                categories[question_id] = category.strip()
    if not categories:
        raise RatingsError(f"no question with a category in {', '.join(map(str, as_paths(paths, suffixes=('.jsonl', '.json'))))} "
                           f"(rows left out: {dict(rejected) or 'none'}): give the question file the judgments were "
                           "made on (rows with question_id and category)")
    return categories, dict(sorted(rejected.items()))


def with_categories(battles: pl.DataFrame, categories: dict[str, str]) -> tuple[pl.DataFrame, int]:
    """The battles with a `category` column from their question_id (null where the question is
    not listed), and how many battles have none."""
    if "question_id" not in battles.columns:
        raise RatingsError("the battles carry no question_id, so no category: per-category boards need judgments "
                           "of identified questions")
    lookup = pl.DataFrame({"question_id": list(categories), CATEGORY: list(categories.values())},
                          schema={"question_id": pl.String, CATEGORY: pl.String})
    tagged = battles.drop(CATEGORY, strict=False).with_columns(pl.col("question_id").cast(pl.String)).join(
        lookup, on="question_id", how="left", maintain_order="left")
    return tagged, int(tagged.get_column(CATEGORY).null_count())


def category_boards(battles: pl.DataFrame, rate_options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """({category: Ratings}, {category: why it has no board}) of battles with a `category`
    column; every board is rated with `rate_options` (those of `board.rate`). Battles without
    a category are in no board."""
    from arena_dagster.ratings.board import rate

    if CATEGORY not in battles.columns:
        raise RatingsError("the battles carry no category: give a question file with categories")
    boards, skipped = {}, {}
    for category in sorted(battles.get_column(CATEGORY).drop_nulls().unique().to_list()):
        part = battles.filter(pl.col(CATEGORY) == category)
        try:
            with warnings.catch_warnings():
                # a small category often leaves some rating unbounded: its board's `unbounded` column says so
                warnings.simplefilter("ignore", RatingsWarning)
                boards[category] = rate(part, **rate_options)
        except RatingsError as error:
            skipped[category] = f"{part.height} battle(s): {error}"
    return boards, skipped


def category_table(boards: dict[str, Any]) -> pl.DataFrame:
    """Every category's board in one table (a `category` column first), for the warehouse."""
    frames = [ratings.board.select(pl.lit(category).alias(CATEGORY), pl.all()) for category, ratings in boards.items()]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema={CATEGORY: pl.String})


def category_differences(battles: pl.DataFrame, model_x: str, model_y: str, categories: Iterable[str],
                         difference_options: dict[str, Any]) -> list[dict[str, Any]]:
    """rating(model_x) - rating(model_y) in each of `categories` with its 95% interval
    (`board.rating_difference` with `difference_options`); a category where either model has
    no battles or the two are not comparable gets `diff` None and the reason."""
    from arena_dagster.ratings.board import rating_difference

    rows = []
    for category in categories:
        part = battles.filter(pl.col(CATEGORY) == category)
        row: dict[str, Any] = {CATEGORY: category, "battles": part.height}
        try:
            row.update(rating_difference(part, model_x, model_y, **difference_options))
        except RatingsError as error:
            row.update(diff=None, ci_low=None, ci_high=None, reason=str(error))
        rows.append(row)
    return rows


def category_report(battles: pl.DataFrame, questions: list[PathLike] | None, rate_options: dict[str, Any]) -> dict[str, Any]:
    """The per-category part of the leaderboard command's JSON: by_category {category: [board
    rows]}, by_category_battles, and where they apply by_category_skipped (category: reason),
    uncategorized_battles and questions_rejected. The category comes from `questions` when
    given, else from the battles' own `category` column."""
    out: dict[str, Any] = {}
    if questions:
        categories, rejected = read_question_categories(questions)
        battles, missing = with_categories(battles, categories)
        if missing == battles.height:
            listed = list(categories)[:3]
            shown = battles.get_column("question_id").unique().sort().head(3).to_list()
            raise RatingsError(f"none of the {battles.height} battles' question_ids is in the question file(s) "
                               f"(battles: {shown}..., questions: {listed}...): give the question file the "
                               "judgments were made on")
        if rejected:
            out["questions_rejected"] = rejected
    elif CATEGORY in battles.columns:
        battles = battles.with_columns(pl.col(CATEGORY).cast(pl.String))
        missing = int(battles.get_column(CATEGORY).null_count())
    else:
        raise RatingsError("--by category needs each battle's category and these battles carry none: add "
                           "--questions with the question file (question_id and category per row)")
    boards, skipped = category_boards(battles, rate_options)
    counts = battles.drop_nulls(CATEGORY).group_by(CATEGORY).len().sort(CATEGORY)
    out["by_category"] = {category: ratings.board.to_dicts() for category, ratings in boards.items()}
    out["by_category_battles"] = dict(zip(counts[CATEGORY].to_list(), counts["len"].to_list()))
    if skipped:
        out["by_category_skipped"] = skipped
    if missing:
        out["uncategorized_battles"] = missing
    return out


def format_categories(report: dict[str, Any], format_table) -> str:
    """The per-category boards of `category_report` as tables (`format_table` draws one board)."""
    lines = []
    for category, rows in report["by_category"].items():
        unbounded = [row["model"] for row in rows if row["unbounded"]]
        board = {"models": rows, "unbounded": unbounded,
                 "unbounded_reason": f"the battles of category {category!r} do not bound these ratings: {unbounded}"}
        lines.append(f"\ncategory {category} ({report['by_category_battles'][category]} battles)\n"
                     + format_table(board))
    for category, reason in report.get("by_category_skipped", {}).items():
        lines.append(f"\ncategory {category}: no board ({reason})")
    if report.get("uncategorized_battles"):
        lines.append(f"\n{report['uncategorized_battles']} battle(s) have no category (their question is not in the "
                     "question file) and are in no category board")
    if report.get("questions_rejected"):
        shown = ", ".join(f"{reason} {count}" for reason, count in report["questions_rejected"].items())
        lines.append(f"rejected question rows: {shown}")
    return "\n".join(lines)


def categories_of_testset(testset: pl.DataFrame) -> dict[str, str]:
    """{prompt_id: category} of an arena test set: the prompt's family (the skills family, or the
    pool's family, category or source), else its cluster's label; prompts with neither are left out."""
    if "family" in testset.columns and testset.get_column("family").fill_null("").str.strip_chars().ne("").any():
        column = pl.col("family").cast(pl.String).str.strip_chars()
    elif "cluster" in testset.columns:
        column = pl.format("cluster {}", pl.col("cluster"))
    else:
        return {}
    frame = testset.select(pl.col("prompt_id").cast(pl.String), column.alias(CATEGORY)).filter(
        pl.col(CATEGORY).is_not_null() & (pl.col(CATEGORY) != ""))
    return dict(zip(frame["prompt_id"].to_list(), frame[CATEGORY].to_list()))
