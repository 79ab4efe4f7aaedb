"""Models answering prompt tables through the cached backend layer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import polars as pl

from arena_dagster.backends.base import ChatRequest, ModelSpec, user_messages
from arena_dagster.compute.settings import ComputeSettings

RESPONSE_SCHEMA = {
    "round": pl.Int64,
    "prompt_id": pl.Utf8,
    "model": pl.Utf8,
    "role": pl.Utf8,
    "response_id": pl.Utf8,
    "response": pl.Utf8,
    "tokens_in": pl.Int64,
    "tokens_out": pl.Int64,
    "finish_reason": pl.Utf8,
}
# Prompts answered per chunk (one Parquet shard of the round each): bounded memory, whatever the round's size.
CHUNK_ROWS = 4096
# Whether an answer came from the completion cache is not table content: a resumed run finds in
# the cache what an uninterrupted one generated. It is run metadata (cache_hits, cache_misses).


@dataclass
class AnswerStats:
    model: str
    requests: int
    cache_hits: int
    cache_misses: int
    tokens_in: int
    tokens_out: int
    wall_s: float

    @classmethod
    def none(cls, model: str) -> AnswerStats:
        return cls(model=model, requests=0, cache_hits=0, cache_misses=0, tokens_in=0, tokens_out=0, wall_s=0.0)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def prompt_messages(row: dict) -> tuple[dict[str, str], ...]:
    messages = row.get("messages")
    if messages:
        parsed = json.loads(messages) if isinstance(messages, str) else messages
        return tuple({"role": m["role"], "content": m["content"]} for m in parsed)
    return user_messages(row["prompt"])


def answers_recorded(spec: ModelSpec) -> bool:
    """False for a model known only through a recorded judge's verdicts (`backend: recorded`
    without a `path`): its answers were never kept, so it cannot answer anything."""
    return not (spec.backend == "recorded" and not spec.path)


def unrecorded_answers(spec: ModelSpec, prompts: pl.DataFrame, *, round_key: int, role: str) -> tuple[pl.DataFrame, AnswerStats]:
    """One row per prompt for a model whose answers were not recorded: the answer, its token counts and
    finish reason are NULL (unknown, never a placeholder), and its id names the absent answer, so
    judgments and battles still say which model's answer to which prompt they judged."""
    frame = pl.DataFrame(
        [
            {
                "round": round_key, "prompt_id": pid, "model": spec.name, "role": role,
                "response_id": "unrecorded-" + hashlib.sha256(f"{spec.name}|{pid}".encode()).hexdigest()[:24],
                "response": None, "tokens_in": None, "tokens_out": None, "finish_reason": None,
            }
            for pid in prompts["prompt_id"].to_list()
        ],
        schema=RESPONSE_SCHEMA,
    )
    return frame, AnswerStats.none(spec.name)


def answer_prompts(spec: ModelSpec, prompts: pl.DataFrame, cache_path: Path, **options) -> tuple[pl.DataFrame, AnswerStats]:
    """One response row per prompt, in one frame (`answer_chunks`'s options; one chunk)."""
    frames: list[pl.DataFrame] = []
    stats = answer_into(frames.append, spec, prompts, cache_path, chunk_rows=max(prompts.height, 1), **options)
    return (pl.concat(frames) if frames else pl.DataFrame(schema=RESPONSE_SCHEMA)), stats


def answer_into(write: Callable[[pl.DataFrame], None], spec: ModelSpec, prompts: pl.DataFrame, cache_path: Path,
                **options) -> AnswerStats:
    """`answer_chunks`, each chunk handed to `write` (a shard of the round) as it is made; returns the summed stats."""
    total = AnswerStats.none(spec.name)
    for frame, stats in answer_chunks(spec, prompts, cache_path, **options):
        write(frame)
        for name in ("requests", "cache_hits", "cache_misses", "tokens_in", "tokens_out", "wall_s"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
    total.wall_s = round(total.wall_s, 3)
    return total


def answer_chunks(
    spec: ModelSpec,
    prompts: pl.DataFrame,
    cache_path: Path,
    *,
    round_key: int,
    role: str,
    log: Callable[[str], None] | None = None,
    compute: ComputeSettings | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[tuple[pl.DataFrame, AnswerStats]]:
    """One response row per prompt, `chunk_rows` prompts at a time (one Parquet shard each, see shards.py),
    so a round of millions of answers never sits in memory whole; answers already in the cache are never
    generated again.

    `compute`: the engine's settings; on Ray a local model answers through replicas.

    A model whose answers were not recorded answers nothing: `unrecorded_answers`."""
    if not answers_recorded(spec):
        for chunk in prompts.iter_slices(chunk_rows):
            yield unrecorded_answers(spec, chunk, round_key=round_key, role=role)
        return
    from arena_dagster.backends.cache import CompletionCache
    from arena_dagster.backends.generation import generate_cached
    from arena_dagster.backends.replicas import backend_for

    backend = backend_for(spec, compute)
    cache = CompletionCache(cache_path)
    for chunk in prompts.iter_slices(chunk_rows):
        rows = list(chunk.iter_rows(named=True))
        requests = [
            ChatRequest(request_id=row["prompt_id"], messages=prompt_messages(row), sampling=spec.sampling)
            for row in rows
        ]
        result = generate_cached(backend, requests, cache, log=log)
        if result.stopped_by_budget or len(result.completions) != len(requests):
            raise RuntimeError(
                f"{spec.name}: {len(requests) - len(result.completions)} of {len(requests)} prompts unanswered "
                "(generation budget reached); rerun to resume from the cache"
            )
        frame = pl.DataFrame(
            [
                {
                    "round": round_key,
                    "prompt_id": req.request_id,
                    "model": spec.name,
                    "role": role,
                    "response_id": req.cache_key(spec),
                    "response": comp.text,
                    "tokens_in": comp.tokens_in,
                    "tokens_out": comp.tokens_out,
                    "finish_reason": comp.finish_reason,
                }
                for req, comp in zip(requests, result.completions)
            ],
            schema=RESPONSE_SCHEMA,
        )
        stats = AnswerStats(
            model=spec.name,
            requests=len(requests),
            cache_hits=result.hits,
            cache_misses=result.misses,
            tokens_in=result.tokens_in,
            tokens_out=result.tokens_out,
            wall_s=round(result.wall_s, 3),
        )
        yield frame, stats
