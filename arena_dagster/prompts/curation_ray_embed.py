"""The embedding steps of curation on Ray (`curation_ray.py`): semantic dedup and embedding decontamination.

Embeddings come from an actor pool (one MiniLM model per actor, with its share of the threads
and a GPU when the settings give one); the driver gets the duplicate pairs or, per test item,
each batch's top-k turns, never the vectors.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from arena_dagster.compute.cluster import actor_options
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.profile_schema.curation import CurationConfig
from arena_dagster.prompts.curation import embed_texts
from arena_dagster.prompts.curation.similarity import embed_test_set
from arena_dagster.prompts.curation_rows import greedy_keep, on_survivors, typed_table

Sink = Callable[[str, int], Any]  # progress.progress_sink: (label, total) -> a bar that logs


class _Embedder:
    """One embedding model per actor, with its share of the threads (and a GPU when the settings give one)."""

    def __init__(self, threads: int, batch_size: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(texts, batch_size=self.batch_size)


class _SemanticVectors(_Embedder):
    def __call__(self, batch):
        return {"id": np.asarray(batch["id"]), "vector": self.embed([str(t) for t in batch["semantic_text"]])}


_BATCH_SIZE, _BATCH_TURN = -1, -2  # the scorer's rows that are not hits
_BATCHES_PER_BLOCK = 4  # embedding batches in a block of turns (64 turns: 4000 prompts make ~60 blocks to share out)


class _TurnScorer(_Embedder):
    """Per test item, this batch's top-k turns at or above the threshold (only those can be flagged).

    Each replica gets the (small) test set's embeddings itself (cached: `embed_test_set`), so the driver
    never loads the model."""

    def __init__(self, threads: int, batch_size: int, test_texts: list[str], k: int, threshold: float) -> None:
        super().__init__(threads, batch_size)
        self.tests, self.k, self.threshold = embed_test_set(test_texts, batch_size=batch_size), k, threshold

    def __call__(self, batch):
        turns = [str(t) for t in batch["turn"]]
        sims = self.tests @ self.embed(turns).T
        k = min(self.k, len(turns))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        # A row of the batch's size (for the progress bar) and rows of its first k turns (for the pool's count).
        out: dict[str, list] = {"test": [_BATCH_SIZE] + [_BATCH_TURN] * k, "score": [len(turns)] + [0.0] * k,
                                "turn": [""] + turns[:k], "rows": [""] * (k + 1)}
        for test, columns in enumerate(top):
            for column in columns:
                if sims[test, column] >= self.threshold:
                    out["test"].append(test)
                    out["score"].append(float(sims[test, column]))
                    out["turn"].append(turns[column])
                    out["rows"].append(batch["rows"][column])
        return {"test": np.asarray(out["test"], dtype=np.int64), "score": np.asarray(out["score"], dtype=np.float64),
                "turn": np.asarray(out["turn"], dtype=object), "rows": np.asarray(out["rows"], dtype=object)}


def _embedding_pool(compute: ComputeSettings) -> dict[str, Any]:
    import ray.data

    options = actor_options(compute)
    # Every replica asked for at once (an autoscaled second replica came too late to take a share),
    # yet it may start from one: a pool never waits for CPUs that another step's replicas are still giving back.
    # One block in flight a replica: the others wait for whichever replica frees first, so the replicas end together.
    pool = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=compute.workers, initial_size=compute.workers,
                                                  max_tasks_in_flight_per_actor=1),
            "num_cpus": options["num_cpus"]}
    if "num_gpus" in options:
        pool["num_gpus"] = options["num_gpus"]
    return pool


def _similar_pairs(pairs, blocks: list, threshold: float):
    # One batch of block pairs (i <= j): every pair of rows across the two blocks at or over the threshold.
    import pyarrow as pa
    import ray

    found = []
    for i, j in zip(pairs["i"].to_pylist(), pairs["j"].to_pylist()):
        left, right = ray.get(blocks[i]), ray.get(blocks[j])
        if "vector" not in left or "vector" not in right:  # a block of no rows (Ray Data leaves it without columns)
            continue
        sims = left["vector"] @ right["vector"].T
        for a, b in zip(*np.nonzero(sims >= threshold)):
            low, high = int(left["id"][a]), int(right["id"][b])
            if low < high or (i != j and low > high):
                found.append((min(low, high), max(low, high), float(sims[a, b])))
    return typed_table({"low": ([f[0] for f in found], pa.int64()), "high": ([f[1] for f in found], pa.int64()),
                   "score": ([f[2] for f in found], pa.float64())})


def semantic_duplicates(rows, config: CurationConfig, compute: ComputeSettings, threads: int, removal: dict) -> None:
    import ray

    threshold = config.semantic_dedup_threshold
    vectors = rows.select_columns(["id", "semantic_text"]).map_batches(
        _SemanticVectors, fn_constructor_kwargs={"threads": threads, "batch_size": config.embed_batch_size},
        batch_format="numpy", batch_size=256, **_embedding_pool(compute)).materialize()
    blocks = vectors.to_numpy_refs()
    # Block pairs (i <= j) as a dataset: Ray Data schedules them beside the pools it still holds.
    grid = ray.data.from_items([{"i": i, "j": j} for i in range(len(blocks)) for j in range(i, len(blocks))])
    edges = {(int(e["low"]), int(e["high"])): float(e["score"])
             for e in grid.map_batches(_similar_pairs, fn_kwargs={"blocks": blocks, "threshold": threshold},
                                       batch_format="pyarrow", batch_size=1).iter_rows()}
    del vectors, blocks, grid  # the vectors leave the object store before the greedy pass
    for index, (other, score) in greedy_keep(edges).items():
        removal[index] = ("semantic_dup", f"cosine {score:.3f} >= {threshold}", other)


def _block_turns(table):
    """A block's distinct turns longest first, so that a batch holds turns of similar lengths (little padding),
    each with the block's rows that hold it: JSON [[id, the turn's position in the row's turns], ...].

    No shuffle brings a turn's copies together: a turn in several blocks is scored in each (`top_k_turns`
    keeps it once). The scorer hands a hit's rows back with it, so no second pass over the pool finds them."""
    import pyarrow as pa

    rows: dict[str, list[list[int]]] = {}
    for index, row_turns in zip(table["id"].to_pylist(), table["turns"].to_pylist()):
        for position, turn in enumerate(row_turns or ()):
            rows.setdefault(turn, []).append([index, position])
    turns = sorted(rows, key=lambda t: (-len(t), t))
    return typed_table({"turn": (turns, pa.string()), "rows": ([json.dumps(rows[t]) for t in turns], pa.string())})


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


def decontaminate_embeddings(features, gone, test_texts: list[str], config: CurationConfig, compute: ComputeSettings,
                              threads: int, removal: dict, progress: Sink) -> None:
    threshold, top_k = config.decontam_embedding_threshold, config.decontam_top_k
    # Blocks of a few batches: a replica is sent blocks, not batches, so much larger blocks all went to the replica
    # that started first (with 2 workers, one replica scored every turn and the other none).
    block = _BATCHES_PER_BLOCK * config.embed_batch_size
    turns = on_survivors(features, gone, _block_turns).repartition(target_num_rows_per_block=block).materialize()
    count = turns.count()  # a turn of several blocks counts once per block
    if not count:
        return
    scored = turns.map_batches(
        _TurnScorer, fn_constructor_kwargs={"threads": threads, "batch_size": config.embed_batch_size, "test_texts": test_texts,
                                            "k": top_k, "threshold": threshold},
        batch_format="numpy", batch_size=block, **_embedding_pool(compute))
    bar = progress("embedding decontamination", count)
    rows_of: dict[str, set[tuple[int, int]]] = {}  # a hit turn -> (row id, position) of the rows holding it

    def hits():
        for hit in scored.iter_rows():
            if hit["test"] == _BATCH_SIZE:
                bar.update(int(hit["score"]))
            elif hit["test"] >= 0:
                rows_of.setdefault(str(hit["turn"]), set()).update(map(tuple, json.loads(hit["rows"])))
            yield int(hit["test"]), float(hit["score"]), str(hit["turn"])

    k, best = top_k_turns(hits(), top_k)
    bar.close()
    if not best:
        return
    flagged = {turn: (f"cosine {score:.3f} >= {threshold} with a test item (top-{k})", test_texts[test])
               for turn, (score, test) in best.items()}
    for index, turn in first_flagged_turns(flagged, rows_of).items():
        removal[index] = ("decontam_embedding", *flagged[turn])
