"""Pairwise LLM-judge output of other tools -> battles: arena-hard-auto and FastChat's MT-Bench.

arena-hard-auto (lmarena/arena-hard-auto) judges every model against one baseline, twice
per question: game 1 shows the baseline as A, game 2 swaps. Its rows:
- v0.1: `{question_id, model, judge, games: [{score, judgment, user_prompt}, {...}]}`
  (the baseline is not named: pass it);
- v2.0: `{uid, category, judge, model, baseline, games: [...]}`.
`score` is a verdict label: A>>B, A>B, A=B, B>A, B>>A, and in v2.0 also A<<B, A<B, B=A,
B<A, B<<A. arena-hard's own scoring (show_result.py) turns each game into one battle and a
strong verdict (>> or <<) into three; here it is one battle of weight `strong_weight`.

FastChat's MT-Bench pairwise judgments (fastchat/llm_judge/gen_judgment.py) are rows
`{question_id, model_1, model_2, g1_winner, g2_winner, judge, turn}` where both games'
winners are already named from model_1/model_2's side; they combine as FastChat's
show_result.py does: a judge error in either game drops the row, a tie in game 1 or two
games that disagree make a tie, else the winner of both.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import polars as pl

from arena_dagster.names import NameBook
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.importers import model_name, question_id_of
from arena_dagster.ratings.records import PathLike, as_paths, read_records

# every label -> the same verdict written from A's side
VERDICTS = {
    "A>>B": "A>>B", "A>B": "A>B", "A=B": "A=B", "B>A": "B>A", "B>>A": "B>>A",
    "A<<B": "B>>A", "A<B": "B>A", "B=A": "A=B", "B<A": "A>B", "B<<A": "A>>B",
}
# verdict -> (winner of the game, strong)
_OUTCOME = {"A>>B": ("model_a", True), "A>B": ("model_a", False), "A=B": ("tie", False),
            "B>A": ("model_b", False), "B>>A": ("model_b", True)}
MT_BENCH_WINNERS = ("model_1", "model_2", "tie", "error")
JUDGMENT_SUFFIXES = (".jsonl", ".json")


class RecordedGame(NamedTuple):
    """One judged game: `model_a` was shown as A; verdict is a key of _OUTCOME, or None when the
    recorded game has no readable verdict."""

    question_id: str
    model_a: str
    model_b: str
    game: int
    verdict: str | None
    judge: str
    explanation: str = ""


def _judge_name(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # FastChat writes [judge model, prompt template]
        return "/".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def _verdict(game: Any) -> tuple[str | None, str]:
    """(verdict from A's side, why not) of one arena-hard game."""
    if not isinstance(game, dict) or game.get("score") is None:
        return None, "missing_game"
    score = game["score"]
    label = VERDICTS.get(score.strip().upper()) if isinstance(score, str) else None
    return label, "" if label else "unknown_verdict"


def _explanation(game: Any) -> str:
    judgment = game.get("judgment") if isinstance(game, dict) else None
    if isinstance(judgment, dict):  # v2.0 keeps the completion object: {"answer": ...}
        judgment = judgment.get("answer")
    return judgment if isinstance(judgment, str) else ""


def arena_hard_games(
    paths: PathLike | Iterable[PathLike], *, baseline: str | None, rejected: Counter, names: NameBook | None = None
) -> Iterator[tuple[list[RecordedGame], str, str | None]]:
    """Per judgment row: its two games (verdict None where absent or unreadable), "" or the
    reason to reject the row as a battle source, and its category (v2.0). Rows without a question id, model or baseline are counted in
    `rejected` and skipped. Model names (`baseline` too) go through `names`; the caller checks it."""
    names = NameBook() if names is None else names
    baseline = None if baseline is None else names.add(baseline, "the baseline given", spelled=False)
    for path in as_paths(paths, suffixes=JUDGMENT_SUFFIXES):
        for number, record in read_records(path, rejected):
            where = f"{path}:{number}"
            question_id = question_id_of(record.get("question_id", record.get("uid")))
            model = model_name(record.get("model"), names, where)
            row_baseline = model_name(record.get("baseline"), names, where) or baseline
            if question_id is None:
                rejected["missing_question_id"] += 1
                continue
            if model is None:
                rejected["missing_model"] += 1
                continue
            if row_baseline is None:
                raise RatingsError(f"{path}:{number}: arena-hard v0.1 judgments do not name their baseline; "
                                   "pass it (--baseline NAME)")
            judge = _judge_name(record.get("judge"))
            games = record.get("games")
            games = games if isinstance(games, list) else []
            recorded = []
            problem = "missing_game" if len(games) < 2 else "too_many_games" if len(games) > 2 else ""
            for index in range(2):  # an absent game is recorded without a verdict
                game = games[index] if index < len(games) else None
                verdict, why = _verdict(game)
                problem = problem or why
                a, b = (row_baseline, model) if index == 0 else (model, row_baseline)
                recorded.append(RecordedGame(question_id, a, b, index + 1, verdict, judge, _explanation(game)))
            if model == row_baseline:
                problem = "baseline_vs_itself"
            category = record.get("category")
            yield recorded, problem, category if isinstance(category, str) else None


def read_arena_hard(
    paths: PathLike | Iterable[PathLike], *, baseline: str | None = None, strong_weight: float = 3.0,
    names: NameBook | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """arena-hard-auto judgment files or folders of them (v0.1 or v2.0) -> (battles, rejected).

    Every judgment row gives two battles, one per game, with model_a the model shown as A
    (the baseline in game 1) and weight 1, or `strong_weight` for a strong verdict (>>,
    <<); a tie always weighs 1. `baseline` names the baseline of rows that do not (v0.1).
    Columns: question_id, model_a, model_b, winner, weight, game, judge, category.

    Rejected rows, by reason: invalid_utf8, invalid_json, not_an_object,
    missing_question_id, missing_model, missing_game (fewer than two games, a null game or
    a null verdict: never guessed), unknown_verdict (a label outside the ten above),
    too_many_games, baseline_vs_itself (counted, not fitted: it carries no information),
    duplicate_judgment (the same question, model, baseline and judge again; the first is kept).
    Model names go through `names` (a fresh NameBook by default), checked at the end.
    """
    if isinstance(strong_weight, bool) or not isinstance(strong_weight, (int, float)) or not (
        math.isfinite(strong_weight) and strong_weight > 0
    ):
        raise RatingsError(f"strong_weight must be a number above 0, got {strong_weight!r}")
    rejected: Counter = Counter()
    seen: set[tuple[str, ...]] = set()
    rows = []
    names = NameBook() if names is None else names
    for games, problem, category in arena_hard_games(paths, baseline=baseline, rejected=rejected, names=names):
        key = (games[0].question_id, games[0].model_b, games[0].model_a, games[0].judge) if games else ()
        if not problem and key in seen:
            problem = "duplicate_judgment"
        if problem:
            rejected[problem] += 1
            continue
        seen.add(key)
        for game in games:
            winner, strong = _OUTCOME[game.verdict]
            rows.append((game.question_id, game.model_a, game.model_b, winner,
                         float(strong_weight) if strong else 1.0, game.game, game.judge, category))
    battles = pl.DataFrame(
        rows,
        schema={"question_id": pl.String, "model_a": pl.String, "model_b": pl.String, "winner": pl.String,
                "weight": pl.Float64, "game": pl.Int64, "judge": pl.String, "category": pl.String},
        orient="row",
    )
    names.check()
    return battles, dict(sorted(rejected.items()))


def _mt_bench_row(record: dict[str, Any], names: NameBook, where: str) -> tuple[tuple | None, str]:
    """(question_id, turn, model_1, model_2, g1_winner, g2_winner, judge) or the reason to reject."""
    question_id = question_id_of(record.get("question_id"))
    model_1, model_2 = model_name(record.get("model_1"), names, where), model_name(record.get("model_2"), names, where)
    g1, g2 = record.get("g1_winner"), record.get("g2_winner")
    turn = record.get("turn", 1)
    if question_id is None:
        return None, "missing_question_id"
    if model_1 is None or model_2 is None:
        return None, "missing_model"
    if model_1 == model_2:
        return None, "same_model"
    if g1 is None or g2 is None:
        return None, "missing_game"
    if g1 not in MT_BENCH_WINNERS or g2 not in MT_BENCH_WINNERS:
        return None, "unknown_verdict"
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        return None, "invalid_turn"
    return (question_id, turn, model_1, model_2, g1, g2, _judge_name(record.get("judge"))), ""


def mt_bench_games(
    paths: PathLike | Iterable[PathLike], *, rejected: Counter, names: NameBook | None = None
) -> Iterator[tuple[tuple, list[RecordedGame]]]:
    """Per readable MT-Bench pairwise row: (question_id, turn, model_1, model_2, g1, g2, judge)
    and its two games seen from A's side (game 2 shows model_2 as A; "error" -> no verdict).
    Model names go through `names`; the caller checks it."""
    names = NameBook() if names is None else names
    own = {"model_1": "A>B", "model_2": "B>A", "tie": "A=B", "error": None}
    swapped = {"model_1": "B>A", "model_2": "A>B", "tie": "A=B", "error": None}
    for path in as_paths(paths, suffixes=JUDGMENT_SUFFIXES):
        for number, record in read_records(path, rejected):
            row, problem = _mt_bench_row(record, names, f"{path}:{number}")
            if problem:
                rejected[problem] += 1
                continue
            question_id, turn, model_1, model_2, g1, g2, judge = row
            yield row, [
                RecordedGame(question_id, model_1, model_2, 1, own[g1], judge, str(record.get("g1_judgment") or "")),
                RecordedGame(question_id, model_2, model_1, 2, swapped[g2], judge, str(record.get("g2_judgment") or "")),
            ]


def read_mt_bench_pairs(
    paths: PathLike | Iterable[PathLike], *, names: NameBook | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """FastChat MT-Bench pairwise judgment files (e.g. gpt-4_pair.jsonl) -> (battles, rejected).

    One battle per row, model_a = model_1: a tie when game 1 is a tie or the two games
    disagree, else the winner of both (FastChat's show_result.py). Columns: question_id,
    model_a, model_b, winner, turn, judge. Rejected rows, by reason: invalid_utf8,
    invalid_json, not_an_object, missing_question_id, missing_model, same_model,
    missing_game (g1_winner or g2_winner absent), unknown_verdict (not model_1, model_2,
    tie or error), invalid_turn, judge_error (either game "error": FastChat drops it too),
    duplicate_judgment (the same question, turn, pair and judge again; the first is kept).
    Model names go through `names` (a fresh NameBook by default), checked at the end.
    """
    names = NameBook() if names is None else names
    rejected: Counter = Counter()
    seen: set[tuple] = set()
    rows = []
    for (question_id, turn, model_1, model_2, g1, g2, judge), _ in mt_bench_games(paths, rejected=rejected, names=names):
        key = (question_id, turn, min(model_1, model_2), max(model_1, model_2), judge)
        if "error" in (g1, g2):
            rejected["judge_error"] += 1
            continue
        if key in seen:
            rejected["duplicate_judgment"] += 1
            continue
        seen.add(key)
        winner = "tie" if g1 == "tie" or g1 != g2 else {"model_1": "model_a", "model_2": "model_b"}[g1]
        rows.append((question_id, model_1, model_2, winner, turn, judge))
    battles = pl.DataFrame(
        rows,
        schema={"question_id": pl.String, "model_a": pl.String, "model_b": pl.String, "winner": pl.String,
                "turn": pl.Int64, "judge": pl.String},
        orient="row",
    )
    names.check()
    return battles, dict(sorted(rejected.items()))


def read_answers(
    paths: PathLike | Iterable[PathLike], *, names: NameBook | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """arena-hard-auto model_answer files (or folders of them) -> (question_id, model, answer)
    for style control, and rejected rows by reason (invalid_utf8, invalid_json,
    not_an_object, missing_question_id, missing_model, missing_answer, duplicate_answer).

    v0.1 rows `{question_id, model_id, choices: [{turns: [{content}]}]}` (the turns are
    joined); v2.0 rows `{uid, model, messages: [..., {role: assistant, content: {answer}}]}`.
    Model names go through `names` (the battles' NameBook, so both are renamed alike), checked at the end.
    """
    names = NameBook() if names is None else names
    rejected: Counter = Counter()
    rows: dict[tuple[str, str], str] = {}
    for path in as_paths(paths, suffixes=JUDGMENT_SUFFIXES):
        for number, record in read_records(path, rejected):
            question_id = question_id_of(record.get("question_id", record.get("uid")))
            model = model_name(record.get("model_id", record.get("model")), names, f"{path}:{number}")
            answer = _answer_text(record)
            if question_id is None:
                rejected["missing_question_id"] += 1
            elif model is None:
                rejected["missing_model"] += 1
            elif answer is None:
                rejected["missing_answer"] += 1
            elif (question_id, model) in rows:
                rejected["duplicate_answer"] += 1
            else:
                rows[(question_id, model)] = answer
    answers = pl.DataFrame(
        [(q, m, a) for (q, m), a in rows.items()],
        schema={"question_id": pl.String, "model": pl.String, "answer": pl.String},
        orient="row",
    )
    names.check()
    return answers, dict(sorted(rejected.items()))


def _answer_text(record: dict[str, Any]) -> str | None:
    choices = record.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        turns = choices[0].get("turns")
        if isinstance(turns, list) and turns and all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                                     for t in turns):
            return "\n\n".join(t["content"] for t in turns)
        return None
    messages = record.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, dict):
            content = content.get("answer")
        return content if isinstance(content, str) else None
    return None
