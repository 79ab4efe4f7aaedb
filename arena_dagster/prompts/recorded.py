"""The arena test set of a replay (`prompts.source: judgments`): the prompts of a recorded judge's files.

A replay rates models on judgments made elsewhere (arena-hard-auto, MT-Bench). Its test set
is every question the judge's files judged, under the files' own question ids, so each planned
game is the recorded one. It trains nothing: the raw pool and the curated pool are empty.

Judgment files hold no question texts: a test prompt's text is NULL (unknown, never a
placeholder) unless `prompts.questions` names the benchmark's question file (arena-hard v0.1
`{question_id, category, turns: [{content}]}`, v2.0 `{uid, category, prompt}`, or MT-Bench /
FastChat `{question_id, category, turns: [str]}`); the text shown is the question's first turn.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from arena_dagster.config import ConfigError
from arena_dagster.profile_schema.constants import JUDGMENTS_SOURCE
from arena_dagster.profile_schema.sections import PromptsSettings
from arena_dagster.ratings.importers import question_id_of
from arena_dagster.ratings.records import read_records

SUBSET = "recorded"  # the test set's subset label: prompts of judgments recorded elsewhere
TESTSET_SCHEMA = {
    "prompt_id": pl.Utf8,
    "prompt": pl.Utf8,
    "messages": pl.Utf8,
    "family": pl.Utf8,
    "reference": pl.Utf8,
    "difficulty": pl.Int64,
    "subset": pl.Utf8,
    "testset_version": pl.Utf8,
}


def _first_turn(record: dict[str, Any]) -> str | None:
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        return prompt
    turns = record.get("turns")
    first = turns[0] if isinstance(turns, list) and turns else None
    if isinstance(first, dict):
        first = first.get("content")
    return first if isinstance(first, str) else None


def read_questions(path: str | Path) -> tuple[dict[str, tuple[str, str]], dict[str, int]]:
    """{question id: (first turn's text, category)} of a benchmark's question file, and the rows
    rejected by reason (missing_question_id, missing_text, duplicate_question, and the reader's)."""
    rejected: Counter = Counter()
    questions: dict[str, tuple[str, str]] = {}
    for _, record in read_records(Path(path), rejected):
        qid = question_id_of(record.get("question_id", record.get("uid")))
        text = _first_turn(record)
        if qid is None:
            rejected["missing_question_id"] += 1
        elif text is None or not text.strip():
            rejected["missing_text"] += 1
        elif qid in questions:
            rejected["duplicate_question"] += 1
        else:
            category = record.get("category")
            questions[qid] = (text, category if isinstance(category, str) else "")
    return questions, dict(sorted(rejected.items()))


def recorded_testset(settings: PromptsSettings, judge: Any) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The test set of a replay and how it was built: one row per question the recorded judge's
    files judged; `judge` is the profile's RecordedJudge."""
    if not hasattr(judge, "prompt_ids"):
        raise ConfigError(f"prompts.source {JUDGMENTS_SOURCE} reads its prompts from a recorded judge's files",
                          f"judge {getattr(judge, 'name', '?')}", "use judge kind recorded")
    ids = judge.prompt_ids()
    questions_file = settings.questions
    questions, rejected = read_questions(questions_file) if questions_file else ({}, {})
    rows = []
    for qid in ids:
        text, category = questions.get(qid, (None, ""))
        rows.append({
            "prompt_id": qid, "prompt": text,
            "messages": json.dumps([{"role": "user", "content": text}], ensure_ascii=False) if text is not None else None,
            "family": category, "reference": "", "difficulty": None, "subset": SUBSET,
        })
    identity = json.dumps([[row["prompt_id"], row["prompt"]] for row in rows], ensure_ascii=False)
    version = hashlib.sha256(identity.encode()).hexdigest()[:16]
    frame = pl.DataFrame([{**row, "testset_version": version} for row in rows], schema=TESTSET_SCHEMA)
    found = sum(1 for qid in ids if qid in questions)
    stats: dict[str, Any] = {
        "source": JUDGMENTS_SOURCE, "judge": judge.name, "judge_version": judge.version, "questions": len(ids),
        "prompt_texts": (f"{found} of {len(ids)} from {questions_file}" if questions_file else
                         "unknown: judgment files hold no question texts (prompt is NULL); set prompts.questions "
                         "to the benchmark's question file to show them"),
    }
    if questions_file:
        stats["questions_without_text"] = len(ids) - found
        stats["question_rows_rejected"] = rejected
    if getattr(judge, "rejected", None):
        stats["judgment_rows_rejected"] = dict(sorted(judge.rejected.items()))
    return frame, stats

