"""The embedding steps of curation on Ray (`curation_ray.py`): semantic dedup and embedding decontamination.

Embeddings come from an actor pool (one MiniLM model per actor, with its share of the threads
and a GPU when the settings give one); the driver gets the duplicate pairs or, per test item,
each batch's top-k turns, never the vectors.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np

from arena_dagster.compute.cluster import actor_options
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.profile_schema.curation import CurationConfig
from arena_dagster.prompts.curation import embed_texts
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


class _TurnScorer(_Embedder):
    """Per test item, this batch's top-k turns at or above the threshold (only those can be flagged).

    Each replica embeds the (small) test set itself, so the driver never loads the model."""

    def __init__(self, threads: int, batch_size: int, test_texts: list[str], k: int, threshold: float) -> None:
        super().__init__(threads, batch_size)
        self.tests, self.k, self.threshold = self.embed(test_texts), k, threshold

    def __call__(self, batch):
        turns = [str(t) for t in batch["turn"]]
        sims = self.tests @ self.embed(turns).T
        k = min(self.k, len(turns))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out: dict[str, list] = {"test": [-1], "score": [len(turns)], "turn": [""]}
        for test, columns in enumerate(top):
            for column in columns:
                if sims[test, column] >= self.threshold:
                    out["test"].append(test)
                    out["score"].append(float(sims[test, column]))
                    out["turn"].append(turns[column])
        return {"test": np.asarray(out["test"], dtype=np.int64), "score": np.asarray(out["score"], dtype=np.float64),
                "turn": np.asarray(out["turn"], dtype=object)}


def _embedding_pool(compute: ComputeSettings) -> dict[str, Any]:
    import ray.data

    options = actor_options(compute)
    # Every replica asked for at once (an autoscaled second replica came too late to take a share),
    # yet it may start from one: a pool never waits for CPUs that another step's replicas are still giving back.
    pool = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=compute.workers, initial_size=compute.workers),
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


def _turn_parts(table, *, partitions: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    turns = pc.list_flatten(table["turns"])
    return typed_table({"turn": (turns, pa.string()),
                   "part": ([zlib.crc32(turn.encode()) % partitions for turn in turns.to_pylist()], pa.int64())})


def _distinct_turns(table):
    """A partition's distinct turns longest first, so that a batch holds turns of similar lengths (little
    padding) while batches stay small enough to share out evenly among the replicas."""
    import pyarrow as pa

    return typed_table({"turn": (sorted(dict.fromkeys(table["turn"].to_pylist()), key=lambda t: (-len(t), t)), pa.string())})


def _rows_with(table, *, flagged):
    """(id, its first flagged turn) of the rows that have one; `flagged`: an object ref of the flagged turns."""
    import pyarrow as pa
    import ray

    turns = ray.get(flagged)
    hits = [(index, next(t for t in row_turns if t in turns))
            for index, row_turns in zip(table["id"].to_pylist(), table["turns"].to_pylist()) if any(t in turns for t in row_turns)]
    return typed_table({"id": ([h[0] for h in hits], pa.int64()), "turn": ([h[1] for h in hits], pa.string())})


def decontaminate_embeddings(features, gone, test_texts: list[str], config: CurationConfig, compute: ComputeSettings,
                              threads: int, partitions: int, removal: dict, progress: Sink) -> None:
    import ray

    threshold = config.decontam_embedding_threshold
    distinct = on_survivors(features, gone, _turn_parts, partitions=partitions).groupby(
        "part", num_partitions=partitions).map_groups(_distinct_turns, batch_format="pyarrow").materialize()
    count = distinct.count()
    if not count:
        return
    k = min(config.decontam_top_k, count)
    scored = distinct.map_batches(
        _TurnScorer, fn_constructor_kwargs={"threads": threads, "batch_size": config.embed_batch_size, "test_texts": test_texts,
                                            "k": k, "threshold": threshold},
        batch_format="numpy", batch_size=config.embed_batch_size, **_embedding_pool(compute))
    per_test: dict[int, list[tuple[float, str]]] = {}
    bar = progress("embedding decontamination", count)
    for hit in scored.iter_rows():
        if hit["test"] < 0:  # a batch's row count, for the progress bar
            bar.update(int(hit["score"]))
            continue
        per_test.setdefault(int(hit["test"]), []).append((float(hit["score"]), str(hit["turn"])))
    bar.close()
    best: dict[str, tuple[float, int]] = {}
    for test, candidates in sorted(per_test.items()):
        for score, turn in sorted(candidates, key=lambda c: (-c[0], c[1]))[:k]:
            if score > best.get(turn, (-1.0, 0))[0]:
                best[turn] = (score, test)
    if not best:
        return
    flagged = {turn: (f"cosine {score:.3f} >= {threshold} with a test item (top-{k})", test_texts[test])
               for turn, (score, test) in best.items()}
    for hit in on_survivors(features, gone, _rows_with, flagged=ray.put(set(flagged))).iter_rows():
        removal[int(hit["id"])] = ("decontam_embedding", *flagged[hit["turn"]])
