"""The duplicate steps: exact_dup, prefix_dup, near_dup, semantic_dup and previous_rounds.

Each keeps the first row of a duplicate group (input order). Near-duplicate candidates come
from MinHash LSH and are verified with the exact Jaccard similarity of the shingle sets, so
the decision does not depend on MinHash estimation noise and a rerun gives the same result.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from arena_dagster.prompts.curation.normalize import conversation_of, normalize, texts_of
from arena_dagster.prompts.curation.similarity import NearIndex, shingles
from arena_dagster.prompts.curation.state import CurationRun


def drop_exact(run: CurationRun) -> None:
    """exact_dup: the same normalized conversation; prefix_dup: the same first characters, same history."""
    config = run.config
    if config.exact_dedup:
        started = time.perf_counter()
        first: dict[str, int] = {}
        survivors = []
        for index in run.alive:
            key = run.exact_key(index)
            if key in first:
                run.drop(index, "exact_dup", "same normalized conversation as an earlier row", first[key])
            else:
                first[key] = index
                survivors.append(index)
        run.alive = survivors
        run.timed("exact_dup", started)

    if config.prefix_dedup_chars:
        started = time.perf_counter()
        first = {}
        survivors = []
        n = config.prefix_dedup_chars
        for index in run.alive:
            key = run.convs[index].history_key + "\n\u241e" + normalize(run.convs[index].instruction).casefold()[:n]
            if key in first:
                run.drop(index, "prefix_dup", f"same first {n} characters as an earlier row", first[key])
            else:
                first[key] = index
                survivors.append(index)
        run.alive = survivors
        run.timed("prefix_dup", started)


def drop_near(run: CurationRun) -> None:
    """near_dup: MinHash LSH near duplicate of an earlier kept row (instruction and history)."""
    config = run.config
    if not config.near_dedup:
        return
    started = time.perf_counter()
    index_near = NearIndex(config.near_dedup_threshold, run.hasher())
    survivors = []
    for index in run.alive:
        hit = index_near.best(run.instruction_set(index), accept=lambda other, me=index: run.same_history(me, other))
        if hit is not None:
            run.drop(index, "near_dup", f"Jaccard {hit[1]:.3f} >= {config.near_dedup_threshold} "
                     f"({config.shingle} {config.shingle_size}-shingles)", hit[0])
        else:
            index_near.add(index, run.instruction_set(index))
            survivors.append(index)
    run.alive = survivors
    run.timed("near_dup", started)


def drop_semantic(run: CurationRun) -> None:
    """semantic_dup: embedding cosine >= semantic_dedup_threshold with an earlier kept row."""
    config = run.config
    if config.semantic_dedup_threshold is None or len(run.alive) <= 1:
        return
    started = time.perf_counter()
    alive = run.alive
    vectors = run.embed([run.exact_key(i) for i in alive])
    survivors = []
    kept_rows: list[int] = []
    threshold = config.semantic_dedup_threshold
    for position, index in enumerate(alive):
        if kept_rows:
            sims = vectors[kept_rows] @ vectors[position]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                run.drop(index, "semantic_dup", f"cosine {sims[best]:.3f} >= {threshold}", alive[kept_rows[best]])
                continue
        kept_rows.append(position)
        survivors.append(index)
    run.alive = survivors
    run.timed("semantic_dup", started)


def drop_previous(run: CurationRun, previous: Sequence[str | dict]) -> None:
    """previous_rounds: an exact or near duplicate of a prompt an earlier round used."""
    config = run.config
    if not (previous and config.dedup_previous):
        return
    started = time.perf_counter()
    previous_keys: dict[str, str] = {}
    index_prev = NearIndex(config.near_dedup_threshold, run.hasher()) if config.near_dedup else None
    previous_texts: list[str] = []
    for position, item in enumerate(previous):
        if isinstance(item, dict):
            conv = conversation_of(item, position)
            key = conv.history_key + "\n\u241e" + normalize(conv.instruction)
            text, single = conv.instruction, not conv.history
        else:
            text, single = texts_of(item, f"previous[{position}]")[0], True
            key = "\n\u241e" + normalize(text)
        previous_keys.setdefault(key, text)
        if index_prev is not None and single:
            index_prev.add(len(previous_texts), shingles(text, config.shingle, config.shingle_size))
            previous_texts.append(text)
    survivors = []
    for index in run.alive:
        key = run.exact_key(index)
        if key in previous_keys:
            run.drop(index, "previous_rounds", "same prompt as an earlier round", previous_keys[key])
            continue
        if index_prev is not None and not run.convs[index].history:
            hit = index_prev.best(run.instruction_set(index))
            if hit is not None:
                run.drop(index, "previous_rounds", f"near duplicate (Jaccard {hit[1]:.3f}) of an earlier round's prompt",
                         previous_texts[hit[0]])
                continue
        survivors.append(index)
    run.alive = survivors
    run.timed("previous_rounds", started)
