"""The embedding steps of curation on Ray (`curation_ray.py`): semantic dedup and embedding decontamination.

The run's workers (`curation_ray_worker.CurationWorker`: one MiniLM model each, with its share of
the threads and a GPU when the settings give one) embed their blocks of the pool; the driver gets
the duplicate pairs or, per test item, each piece's top-k turns, never the vectors.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from arena_dagster.profile_schema.curation import CurationConfig
from arena_dagster.prompts.curation_rows import greedy_keep

Sink = Callable[[str, int], Any]  # progress.progress_sink: (label, total) -> a bar that logs

_BATCH_SIZE, _BATCH_TURN = -1, -2  # the scorer's rows that are not hits
_ROWS_PER_PIECE = 50  # decontamination's share of a chunk a call: ~50 turns, so that the workers end within a second


def scored_turns(tests: np.ndarray, vectors: np.ndarray, turns: list[str], rows: list[str], top_k: int,
                 threshold: float) -> dict[str, list]:
    """Per test item, the top-k of these turns at or above the threshold (only those can be flagged), with each
    turn's rows; first a row of the number of turns (for the progress bar) and rows of the first k turns (for the
    pool's count of distinct turns)."""
    k = min(top_k, len(turns))
    out: dict[str, list] = {"test": [_BATCH_SIZE] + [_BATCH_TURN] * k, "score": [len(turns)] + [0.0] * k,
                            "turn": [""] + turns[:k], "rows": [""] * (k + 1)}
    if not k:
        return out
    sims = tests @ vectors.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    for test, columns in enumerate(top):
        for column in columns:
            if sims[test, column] >= threshold:
                out["test"].append(test)
                out["score"].append(float(sims[test, column]))
                out["turn"].append(turns[column])
                out["rows"].append(rows[column])
    return out


def similar_pairs(left: dict, right: dict, same: bool, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair of rows across two blocks of vectors (`id`, `vector`) at or over the threshold, (smaller id,
    larger id, cosine); `same`: the two are one block (each pair once, no row with itself)."""
    sims = left["vector"] @ right["vector"].T
    found = []
    for a, b in zip(*np.nonzero(sims >= threshold)):
        low, high = int(left["id"][a]), int(right["id"][b])
        if low < high or (not same and low > high):
            found.append((min(low, high), max(low, high), float(sims[a, b])))
    return found


def semantic_duplicates(workers, chunks: list, gone, config: CurationConfig, removal: dict) -> None:
    """`workers` (a `ReplicaPool` of `CurationWorker`s) embed each chunk's survivors, then compare every pair of chunks."""
    import ray

    threshold = config.semantic_dedup_threshold
    vectors = workers.in_order("semantic_vectors", [(chunk, gone) for chunk in chunks])
    pairs = [(vectors[i], vectors[j], i == j) for i in range(len(vectors)) for j in range(i, len(vectors))]
    edges = {(low, high): score for _, found in workers.finished("similar_pairs", pairs)
             for low, high, score in ray.get(found)}
    del vectors  # the vectors leave the object store before the greedy pass
    for index, (other, score) in greedy_keep(edges).items():
        removal[index] = ("semantic_dup", f"cosine {score:.3f} >= {threshold}", other)


def block_turns(table) -> tuple[list[str], list[str]]:
    """A block's distinct turns longest first, so that a batch holds turns of similar lengths (little padding),
    and for each the block's rows that hold it: JSON [[id, the turn's position in the row's turns], ...].

    No shuffle brings a turn's copies together: a turn in several blocks is scored in each (`top_k_turns`
    keeps it once). The scorer hands a hit's rows back with it, so no second pass over the pool finds them."""
    rows: dict[str, list[list[int]]] = {}
    for index, row_turns in zip(table["id"].to_pylist(), table["turns"].to_pylist()):
        for position, turn in enumerate(row_turns or ()):
            rows.setdefault(turn, []).append([index, position])
    turns = sorted(rows, key=lambda t: (-len(t), t))
    return turns, [json.dumps(rows[t]) for t in turns]

def top_k_turns(hits, top_k: int) -> tuple[int, dict[str, tuple[float, int]]]:
    """(k, turn -> (score, test)) from the scorer's rows (test, score, turn): per test item its k best distinct
    turns, a turn scored in several batches at its best score; a turn in several tests' top-k keeps the first
    test of the highest score. k is `top_k`, or the pool's number of distinct turns where smaller (the local rule)."""
    per_test: dict[int, dict[str, float]] = {}
    some_turns: set[str] = set()  # up to top_k of the pool's distinct turns
    for test, score, turn in hits:
        if test == _BATCH_TURN:
            if len(some_turns) < top_k:
                some_turns.add(turn)
        elif test >= 0:
            scores = per_test.setdefault(test, {})
            scores[turn] = max(score, scores.get(turn, score))
    k = min(top_k, len(some_turns))
    best: dict[str, tuple[float, int]] = {}
    for test, scores in sorted(per_test.items()):
        for turn, score in sorted(scores.items(), key=lambda c: (-c[1], c[0]))[:k]:
            if score > best.get(turn, (-1.0, 0))[0]:
                best[turn] = (score, test)
    return k, best


def first_flagged_turns(flagged, rows_of: dict[str, set[tuple[int, int]]]) -> dict[int, str]:
    """Row id -> its first flagged turn (in the row's order), from each hit turn's (row id, position) pairs."""
    first: dict[int, tuple[int, str]] = {}
    for turn in flagged:
        for index, position in rows_of[turn]:
            if position < first.get(index, (position + 1, ""))[0]:
                first[index] = (position, turn)
    return {index: turn for index, (_, turn) in first.items()}


def decontaminate_embeddings(workers, chunks: list, sizes: list[int], gone, test_texts: list[str], config: CurationConfig,
                             removal: dict, progress: Sink) -> None:
    """`workers` score each chunk's surviving turns in pieces of about `_ROWS_PER_PIECE` rows (`sizes`: each chunk's
    rows), whichever worker is free taking the next; the driver merges each piece's top-k turns."""
    import ray

    threshold, top_k = config.decontam_embedding_threshold, config.decontam_top_k
    calls = [(chunk, gone, piece, pieces) for chunk, size in zip(chunks, sizes)
             for pieces in [max(1, -(-size // _ROWS_PER_PIECE))] for piece in range(pieces)]
    bar = progress("embedding decontamination (pieces of the pool)", len(calls))
    rows_of: dict[str, set[tuple[int, int]]] = {}  # a hit turn -> (row id, position) of the rows holding it

    def hits():
        for _, ref in workers.finished("score_turns", calls):
            scored = ray.get(ref)
            bar.update(1)
            for test, score, turn, rows in zip(scored["test"], scored["score"], scored["turn"], scored["rows"]):
                if test >= 0:
                    rows_of.setdefault(turn, set()).update(map(tuple, json.loads(rows)))
                yield test, score, turn

    k, best = top_k_turns(hits(), top_k)
    bar.close()
    if not best:
        return
    flagged = {turn: (f"cosine {score:.3f} >= {threshold} with a test item (top-{k})", test_texts[test])
               for turn, (score, test) in best.items()}
    for index, turn in first_flagged_turns(flagged, rows_of).items():
        removal[index] = ("decontam_embedding", *flagged[turn])
