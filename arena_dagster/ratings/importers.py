"""Readers for battle and grade files, each with a count of the rows it rejected and why.

Every reader returns `(battles, rejected)`: a polars DataFrame ready for
`leaderboard` (columns question_id, model_a, model_b, winner, ...) and a dict
{reason: count} covering every input row that did not become part of a battle. A score is
read by the one rule the judge parser uses too (ratings/numbers.py): a JSON number, or a
string that is a plain decimal ("7" is 7); anything else is rejected, never guessed at.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from arena_dagster.names import NameBook, normalize_name, spelling
from arena_dagster.ratings.battles import WINNERS
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.numbers import read_number
from arena_dagster.ratings.records import PathLike, as_paths, read_csv_rows, read_records
from arena_dagster.record_files import Quarantined

BATTLE_SCHEMA = {"question_id": pl.String, "model_a": pl.String, "model_b": pl.String, "winner": pl.String}
MIN_SCORE, MAX_SCORE = 1.0, 10.0
# FastChat's conv_metadata (clean_battle_data.py) -> this package's style columns
_FASTCHAT_STYLE = {
    "length": "sum_assistant_{side}_tokens",
    "header_count": "header_count_{side}",
    "list_count": "list_count_{side}",
    "bold_count": "bold_count_{side}",
}


def model_name(value: Any, names: NameBook | None = None, where: str | None = None) -> str | None:
    """The name a row's model field is rated as (see arena_dagster.names); None when absent, not
    text or blank (the row is rejected as missing_model). ModelNameError for a name that holds an
    invisible character."""
    if not isinstance(value, str) or not value.strip():
        return None
    return names.add(value, where) if names is not None else normalize_name(value, where=where)


def question_id_of(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        text = str(value)
        return text if text.strip() else None
    return None


def _style_counts(metadata: Any) -> dict[str, float] | None:
    """FastChat's conv_metadata -> {length_a, ..., bold_count_b}; None when absent or malformed."""
    if not isinstance(metadata, dict):
        return None
    out = {}
    for feature, key in _FASTCHAT_STYLE.items():
        for side in ("a", "b"):
            value = metadata.get(key.format(side=side))
            if isinstance(value, dict):  # {"h1": 2, "h2": 0, ...}: the kinds are summed, as FastChat does
                value = sum(value.values()) if all(isinstance(v, int) for v in value.values()) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                return None
            out[f"{feature}_{side}"] = float(value)
    return out


def read_fastchat_battles(
    paths: PathLike | Iterable[PathLike], *, names: NameBook | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """FastChat battle records (a JSON array or JSON lines) -> (battles, rejected).

    Keeps model_a, model_b, winner and question_id (null when absent) in file order, and
    when records carry FastChat's `conv_metadata`, the style columns of style control
    (length_a, length_b, header_count_a, ...: null for a record without it); other fields
    are ignored. Rejects, by reason: invalid_utf8, invalid_json, not_an_object,
    missing_model (absent, null, empty or not a string), invalid_winner (absent or not one
    of "model_a", "model_b", "tie", "tie (bothbad)"), same_model (a model against itself, also
    after `names` renamed it). Model names go through `names` (a fresh NameBook by default):
    normalized, renamed, and refused when two differ only in case.
    """
    names = NameBook() if names is None else names
    rejected: Counter = Counter()
    rows: list[tuple[str | None, str, str, str]] = []
    styles: list[dict[str, float] | None] = []
    for path in as_paths(paths):
        for number, record in read_records(path, rejected):
            where = f"{path}:{number}"
            model_a, model_b = model_name(record.get("model_a"), names, where), model_name(record.get("model_b"), names, where)
            winner = record.get("winner")
            if model_a is None or model_b is None:
                rejected["missing_model"] += 1
            elif not isinstance(winner, str) or winner not in WINNERS:
                rejected["invalid_winner"] += 1
            elif model_a == model_b:
                rejected["same_model"] += 1
            else:
                rows.append((question_id_of(record.get("question_id")), model_a, model_b, winner))
                styles.append(_style_counts(record.get("conv_metadata")))
    battles = pl.DataFrame(rows, schema=BATTLE_SCHEMA, orient="row")
    if any(style is not None for style in styles):
        columns = [f"{f}_{side}" for f in _FASTCHAT_STYLE for side in ("a", "b")]
        battles = battles.with_columns(
            pl.Series(name, [None if style is None else style[name] for style in styles], dtype=pl.Float64)
            for name in columns
        )
    names.check()
    return battles, dict(sorted(rejected.items()))


def _score_problem(score: Any) -> str | None:
    """Why a grade's score is unusable, or None when it is a number (ratings/numbers.py) in [1, 10]."""
    if score is None:
        return "score_missing"
    number = read_number(score)
    if number is None:
        return "score_not_a_number"
    if not MIN_SCORE <= number <= MAX_SCORE:
        return "score_out_of_range"
    return None


def read_grades(
    paths: PathLike | Iterable[PathLike], *, names: NameBook | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Single-answer grades (JSON lines of question_id, model, score 1-10) -> pairwise battles.

    Per question, every two models with a valid grade make one battle: the higher score
    wins, equal scores tie. model_a is the name that sorts first. Every valid score is
    kept as it is (9.5 included). Rejected, by reason: invalid_utf8, invalid_json, not_an_object,
    missing_question_id, missing_model, score_missing (null or absent),
    score_not_a_number (not a number by ratings/numbers.py: "seven", "7/10", booleans,
    lists, NaN; a plain decimal string such as "7" is the number 7), score_out_of_range (outside
    1-10, e.g. -1), duplicate_grade (a second grade of the same model on the same
    question; the first is kept), grade_without_opponent (a valid grade on a question no
    other model has a valid grade for). Model names go through `names` (see read_fastchat_battles).

    Returns columns question_id, model_a, model_b, winner, score_a, score_b.
    """
    names = NameBook() if names is None else names
    rejected: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    grades: list[tuple[str, str, float]] = []
    for path in as_paths(paths):
        for number, record in read_records(path, rejected):
            question_id = question_id_of(record.get("question_id"))
            model = model_name(record.get("model"), names, f"{path}:{number}")
            problem = (
                "missing_question_id" if question_id is None
                else "missing_model" if model is None
                else _score_problem(record.get("score"))
            )
            if problem is None and (question_id, model) in seen:
                problem = "duplicate_grade"
            if problem:
                rejected[problem] += 1
                continue
            seen.add((question_id, model))
            grades.append((question_id, model, read_number(record["score"])))

    names.check()
    schema = {"question_id": pl.String, "model": pl.String, "score": pl.Float64}
    table = pl.DataFrame(grades, schema=schema, orient="row")
    graded = table.group_by("question_id").agg(pl.len().alias("models"))
    alone = int(graded.filter(pl.col("models") == 1).height)
    if alone:
        rejected["grade_without_opponent"] += alone
    pairs = (
        table.join(table, on="question_id", suffix="_b")
        .filter(pl.col("model") < pl.col("model_b"))
        .select(
            "question_id",
            pl.col("model").alias("model_a"),
            "model_b",
            pl.when(pl.col("score") > pl.col("score_b")).then(pl.lit("model_a"))
            .when(pl.col("score") < pl.col("score_b")).then(pl.lit("model_b"))
            .otherwise(pl.lit("tie"))
            .alias("winner"),
            pl.col("score").alias("score_a"),
            pl.col("score_b"),
        )
        .sort("question_id", "model_a", "model_b")
    )
    return pairs, dict(sorted(rejected.items()))


def read_rename(csv_path: PathLike) -> dict[str, str]:
    """A two-column CSV with a header row (from-name, to-name) -> {from: to}.

    A rename decides which battles merge, so a line it cannot read (not UTF-8, not two
    cells, an empty name, a target name with an invisible character) is an error naming the
    line, never skipped. A source name is kept as spelled (in NFC, stripped), so a name with an
    invisible character can be mapped to a clean one.
    """
    path = Path(csv_path)
    header, rows = read_csv_rows(path)
    if len(header) != 2:
        raise RatingsError(f"{path}: a rename CSV has exactly two columns (from, to), found {header}")
    source, target = header
    mapping: dict[str, str] = {}
    repeated = set()
    for number, cells in rows:
        if isinstance(cells, Quarantined):
            raise RatingsError(f"{path}:{number}: {cells.detail}; save the file as UTF-8 text")
        if len(cells) != 2:
            raise RatingsError(f"{path}:{number}: expected two cells (from, to), found {len(cells)}")
        old, new = (spelling(cell) for cell in cells)
        if not old or not new:
            raise RatingsError(f"{path}:{number}: empty model name in {source!r} or {target!r}")
        new = normalize_name(new, f"{target} name", f"{path}:{number}")
        if old in mapping:
            repeated.add(old)
        mapping[old] = new
    if repeated:
        raise RatingsError(f"{path}: model(s) renamed more than once: {sorted(repeated)}")
    return mapping


def read_reference(csv_path: PathLike) -> tuple[pl.DataFrame, dict[str, int]]:
    """A reference leaderboard CSV (model, rating[, rating_q025, rating_q975] and any other
    columns, e.g. LMSYS's published board) -> (model, rating, bounds) and rejected rows by
    reason: the reader's (invalid_utf8, nul_character, ...), missing_model, rating_not_a_number (a rating or bound that is not
    a finite number), duplicate_model (the first row is kept)."""
    path = Path(csv_path)
    header, rows = read_csv_rows(path)
    missing = [c for c in ("model", "rating") if c not in header]
    if missing:
        raise RatingsError(f"{path}: a reference leaderboard needs columns model and rating, found {header}")
    numeric = [c for c in ("rating", "rating_q025", "rating_q975") if c in header]
    rejected: Counter = Counter()
    kept: dict[str, list[float]] = {}
    for _, cells in rows:
        if isinstance(cells, Quarantined):
            rejected[cells.reason] += 1
            continue
        row = dict(zip(header, cells))
        name = spelling(row.get("model") or "")
        try:
            values = [float(row.get(c, "")) for c in numeric]
        except ValueError:
            values = [math.nan]
        if not name:
            rejected["missing_model"] += 1
        elif not all(math.isfinite(v) for v in values):
            rejected["rating_not_a_number"] += 1
        elif name in kept:
            rejected["duplicate_model"] += 1
        else:
            kept[name] = values
    frame = pl.DataFrame(
        [[name, *values] for name, values in kept.items()],
        schema={"model": pl.String, **{c: pl.Float64 for c in numeric}},
        orient="row",
    )
    return frame, dict(sorted(rejected.items()))


def apply_rename(df: pl.DataFrame, csv_path: PathLike) -> pl.DataFrame:
    """Rename models in the model_a, model_b and model columns by a two-column CSV.

    Names not in the CSV stay as they are. Raises RatingsError when the renaming would
    merge two models of the table into one name: to merge names on purpose, rename while
    reading (`names=NameBook(read_rename(csv_path))`), as `leaderboard --rename` does.
    """
    mapping = read_rename(csv_path)
    columns = [c for c in ("model_a", "model_b", "model") if c in df.columns]
    if not columns:
        raise RatingsError(f"nothing to rename: the table has none of model_a, model_b, model ({df.columns})")
    present = pl.concat([df.get_column(c).cast(pl.String) for c in columns]).drop_nulls().unique().to_list()
    by_target: dict[str, list[str]] = {}
    for name in present:
        by_target.setdefault(mapping.get(name, name), []).append(name)
    merged = {target: sorted(names) for target, names in by_target.items() if len(names) > 1}
    if merged:
        raise RatingsError(f"renaming by {csv_path} would merge different models into one: {merged}")
    return df.with_columns(pl.col(c).cast(pl.String).replace(mapping) for c in columns)
