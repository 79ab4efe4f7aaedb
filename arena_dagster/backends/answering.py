"""Models answering prompt tables through the cached backend layer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    return frame, AnswerStats(model=spec.name, requests=0, cache_hits=0, cache_misses=0, tokens_in=0, tokens_out=0, wall_s=0.0)


def answer_prompts(
    spec: ModelSpec,
    prompts: pl.DataFrame,
    cache_path: Path,
    *,
    round_key: int,
    role: str,
    log: Callable[[str], None] | None = None,
    compute: ComputeSettings | None = None,
) -> tuple[pl.DataFrame, AnswerStats]:
    """One response row per prompt; answers already in the cache are never generated again.

    `compute`: the engine's settings; on Ray a local model answers through replicas.

    A model whose answers were not recorded answers nothing: `unrecorded_answers`."""
    if not answers_recorded(spec):
        return unrecorded_answers(spec, prompts, round_key=round_key, role=role)
    from arena_dagster.backends.cache import CompletionCache
    from arena_dagster.backends.generation import generate_cached
    from arena_dagster.backends.replicas import backend_for

    rows = list(prompts.iter_rows(named=True))
    requests = [
        ChatRequest(request_id=row["prompt_id"], messages=prompt_messages(row), sampling=spec.sampling)
        for row in rows
    ]
    cache = CompletionCache(cache_path)
    result = generate_cached(backend_for(spec, compute), requests, cache, log=log)
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
    return frame, stats
