"""Readers for battle and grade files, each with a count of the rows it rejected and why.

Every reader returns `(battles, rejected)`: a polars DataFrame ready for
`leaderboard` (columns question_id, model_a, model_b, winner, ...) and a dict
{reason: count} covering every input row that did not become part of a battle. Nothing
is coerced: a score of "7" (a string) is rejected as `score_numeric_string`, not parsed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from arena_dagster.ratings.battles import WINNERS
from arena_dagster.ratings.errors import InputFileError, RatingsError

PathLike = str | Path
BATTLE_SCHEMA = {"question_id": pl.String, "model_a": pl.String, "model_b": pl.String, "winner": pl.String}
MIN_SCORE, MAX_SCORE = 1.0, 10.0


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    found = [Path(p) for p in paths]
    if not found:
        raise InputFileError("no input files given")
    return found


def _records(path: Path, rejected: Counter) -> Iterator[dict[str, Any]]:
    """Objects of a JSON array file or a JSON-lines file; bad lines are counted, not raised."""
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputFileError(f"{path}: not valid JSON ({error})") from None
    else:
        rows = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rejected["invalid_json"] += 1
    for row in rows:
        if isinstance(row, dict):
            yield row
        else:
            rejected["not_an_object"] += 1


def _model_name(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _question_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        text = str(value)
        return text if text.strip() else None
    return None


def read_fastchat_battles(paths: PathLike | Iterable[PathLike]) -> tuple[pl.DataFrame, dict[str, int]]:
    """FastChat battle records (a JSON array or JSON lines) -> (battles, rejected).

    Keeps model_a, model_b, winner and question_id (null when absent) in file order;
    other fields are ignored. Rejects, by reason: invalid_json, not_an_object,
    missing_model (absent, null, empty or not a string), invalid_winner (absent or not one
    of "model_a", "model_b", "tie", "tie (bothbad)"), same_model (a model against itself).
    """
    rejected: Counter = Counter()
    rows: list[tuple[str | None, str, str, str]] = []
    for path in _as_paths(paths):
        for record in _records(path, rejected):
            model_a, model_b = _model_name(record.get("model_a")), _model_name(record.get("model_b"))
            winner = record.get("winner")
            if model_a is None or model_b is None:
                rejected["missing_model"] += 1
            elif not isinstance(winner, str) or winner not in WINNERS:
                rejected["invalid_winner"] += 1
            elif model_a == model_b:
                rejected["same_model"] += 1
            else:
                rows.append((_question_id(record.get("question_id")), model_a, model_b, winner))
    battles = pl.DataFrame(rows, schema=BATTLE_SCHEMA, orient="row")
    return battles, dict(sorted(rejected.items()))


def _score_problem(score: Any) -> str | None:
    """Why a grade's score is unusable, or None when it is a number in [1, 10]."""
    if score is None:
        return "score_missing"
    if isinstance(score, str):
        try:
            float(score)
        except ValueError:
            return "score_not_a_number"
        return "score_numeric_string"
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return "score_not_a_number"
    if not MIN_SCORE <= score <= MAX_SCORE:
        return "score_out_of_range"
    return None


def read_grades(paths: PathLike | Iterable[PathLike]) -> tuple[pl.DataFrame, dict[str, int]]:
    """Single-answer grades (JSON lines of question_id, model, score 1-10) -> pairwise battles.

    Per question, every two models with a valid grade make one battle: the higher score
    wins, equal scores tie. model_a is the name that sorts first. Every valid score is
    kept as it is (9.5 included). Rejected, by reason: invalid_json, not_an_object,
    missing_question_id, missing_model, score_missing (null or absent),
    score_numeric_string (a number written as a string, e.g. "7": never coerced),
    score_not_a_number (other strings, booleans, lists, NaN), score_out_of_range (outside
    1-10, e.g. -1), duplicate_grade (a second grade of the same model on the same
    question; the first is kept), grade_without_opponent (a valid grade on a question no
    other model has a valid grade for).

    Returns columns question_id, model_a, model_b, winner, score_a, score_b.
    """
    rejected: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    grades: list[tuple[str, str, float]] = []
    for path in _as_paths(paths):
        for record in _records(path, rejected):
            question_id, model = _question_id(record.get("question_id")), _model_name(record.get("model"))
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
            grades.append((question_id, model, float(record["score"])))

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
    """A two-column CSV with a header row (from-name, to-name) -> {from: to}."""
    path = Path(csv_path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    table = pl.read_csv(path, infer_schema=False)
    if table.width != 2:
        raise RatingsError(f"{path}: a rename CSV has exactly two columns (from, to), found {table.columns}")
    source, target = table.columns
    for row, (old, new) in enumerate(table.iter_rows(), start=2):
        if not (old and old.strip()) or not (new and new.strip()):
            raise RatingsError(f"{path}:{row}: empty model name in {source!r} or {target!r}")
    repeated = table.filter(pl.col(source).is_duplicated()).get_column(source).unique().sort().to_list()
    if repeated:
        raise RatingsError(f"{path}: model(s) renamed more than once: {repeated}")
    return dict(zip(table.get_column(source).to_list(), table.get_column(target).to_list()))


def apply_rename(df: pl.DataFrame, csv_path: PathLike) -> pl.DataFrame:
    """Rename models in the model_a, model_b and model columns by a two-column CSV.

    Names not in the CSV stay as they are. Raises RatingsError when the renaming would
    merge two models of the table into one name.
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
