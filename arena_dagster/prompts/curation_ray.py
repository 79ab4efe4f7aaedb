"""Prompt curation on Ray: `curation.curate`'s steps over chunks of the pool, with the same kept set.

One actor a worker (`curation_ray_worker.CurationWorker`) for the whole run does every step's share,
so each worker process starts, imports and loads its models once; each call goes to whichever
worker is free first (`ReplicaPool.finished`), so the workers end each step together.

  1. Each chunk of the pool gives its rows' single-row filters, duplicate keys, MinHash band keys
     and hits against earlier rounds and the test set (`curation_rows.RowJudge`), as an Arrow table
     of one schema that stays in the object store; its removed rows and hits come to the driver,
     and the duplicates shuffle's input, one table a partition, stays in the object store;
  2. exact, prefix and near duplicates: the shuffle's reducers, one a partition, group its rows on
     the duplicate key (a group keeps its smallest id) and on the LSH band keys (datasketch's bands
     for the threshold, so the candidates are the local index's); each candidate pair is verified
     with the exact Jaccard of the shingle sets on the worker; the verified pairs (duplicates only)
     come to the driver, which leaves out the rows an exact or prefix duplicate removed and keeps
     the rows a pass in id order keeps (`curation_rows.greedy_keep`);
  4. semantic duplicates: each chunk's survivors' embeddings, pairs above the threshold from
     chunk-by-chunk products, the same pass in id order;
  5. earlier rounds' and the exact / n-gram / MinHash test-set hits (from step 1) apply to the survivors;
  6. embedding decontamination: each chunk's distinct surviving user turns (no shuffle: a turn in
     several chunks is scored in each), in pieces, with the ids of the rows holding them, are scored
     against the test set; each piece keeps per test item its top-k turns above the threshold (with
     their rows), and the driver merges them (a turn once, at its best score) into the global top-k
     and removes each row for its first flagged turn.

The driver holds row ids, the removed rows' reasons and the duplicate pairs; never the features,
the shingles or the pool's embeddings. Every removed row is counted with its step and reason.
"""

from __future__ import annotations

import json
import time
from functools import partial
from itertools import pairwise
from typing import Any, Callable, Sequence

import numpy as np

from arena_dagster.compute.capacity import Demand
from arena_dagster.compute.cluster import actor_options, ray_cluster
from arena_dagster.compute.pools import ReplicaPool, block_pool, drop_pool, losing_workers
from arena_dagster.compute.progress import Progress, progress_sink
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.profile_schema.curation import CurationConfig, CurationError
from arena_dagster.prompts.curation import STEPS, CurationResult, curate, embed_texts
from arena_dagster.prompts.curation.decontamination import against_texts
from arena_dagster.prompts.curation.similarity import embed_test_set
from arena_dagster.prompts.curation_ray_embed import decontaminate_embeddings, semantic_duplicates
from arena_dagster.prompts.curation_ray_worker import CurationWorker
from arena_dagster.prompts.curation_rows import greedy_keep

Sink = Callable[[str, int], Progress]  # progress.progress_sink: (label, total) -> a bar that logs


def curate_with(compute: ComputeSettings | None, rows: Sequence[dict], *, config: CurationConfig | None = None,
                against: Sequence[str | dict] = (), previous: Sequence[str | dict] = (), embed=None,
                connect: Callable[[], None] | None = None, progress: Sink | None = None) -> CurationResult:
    """`curate` on the engine the compute settings name (local: in this process), reporting to `progress`."""
    config = config or CurationConfig()
    progress = progress or progress_sink()
    if compute is None or compute.engine == "local":
        return curate(rows, config=config, against=against, previous=previous,
                      embed=embed or _embedding_with_progress(config, progress),
                      embed_tests=embed or partial(embed_test_set, batch_size=config.embed_batch_size))
    with ray_cluster(compute, connect), losing_workers("curation"):
        return curate_on_ray(rows, config=config, against=against, previous=previous, compute=compute, progress=progress)


def _embedding_with_progress(config: CurationConfig, progress: Sink):
    """The local engine's embeddings (most of its time) in chunks, each reported."""

    def embed(texts):
        bar = progress("embedding", len(texts))
        try:
            vectors = []
            for start in range(0, len(texts), 512):
                vectors.append(embed_texts(texts[start : start + 512], batch_size=config.embed_batch_size))
                bar.update(len(vectors[-1]))
            return np.concatenate(vectors) if vectors else embed_texts([])
        finally:
            bar.close()

    return embed


def curate_on_ray(rows: Sequence[dict], *, config: CurationConfig, against: Sequence[str | dict] = (),
                  previous: Sequence[str | dict] = (), compute: ComputeSettings,
                  progress: Sink | None = None) -> CurationResult:
    import ray

    progress = progress or progress_sink()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    phases = progress(f"curation on Ray ({compute.workers} workers)", len(rows))

    def timed(step: str) -> None:
        nonlocal started
        seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - started, 4)
        started = time.perf_counter()
        phases.label = f"curation on Ray ({compute.workers} workers), {step} done"
        if phases.log:
            phases.log(f"curation on Ray: {step} done in {seconds[step]:.1f} s ({n / max(seconds[step], 1e-9):.1f} rows/s)")

    n = len(rows)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CurationError(f"row {index}: expected a dict, got {type(row).__name__}")
    if not n:
        return CurationResult(kept=[], removed={step: 0 for step in STEPS}, removed_rows=[], n_input=0)
    partitions = max(2 * compute.workers, n // 20_000 + 1)
    test_texts = against_texts(against)
    removal: dict[int, tuple[str, str, Any]] = {}  # id -> (step, reason, matched)
    key = ("curation", time.time_ns(), id(rows))
    workers = _workers(key, compute, config=config, test_texts=test_texts, previous=ray.put(list(previous)),
                       threads=max(1, int(compute.cpus_per_worker)), partitions=partitions)
    try:
        bounds = stage_one_chunks(n, compute.workers)
        chunks, facts, shuffled = _stage_one(workers, rows, bounds, partitions)
        phases.update(n)  # every row through the per-row stage; the shuffle follows
        # What stage 1 decided alone: the filters now, earlier rounds and test-set hits later.
        previous_hits, test_hits = {}, {}
        for fact in facts:
            index = fact["id"]
            if fact["step"] is not None:
                removal[index] = (fact["step"], fact["reason"], json.loads(fact["matched"]) if fact["matched"] else None)
                continue
            if fact["prev_reason"] is not None:
                previous_hits[index] = ("previous_rounds", fact["prev_reason"], json.loads(fact["prev_matched"]))
            if fact["dc_step"] is not None:
                test_hits[index] = (fact["dc_step"], fact["dc_reason"], json.loads(fact["dc_matched"]))
        timed("filters")

        def gone():
            return ray.put(np.fromiter(removal, dtype=np.int64, count=len(removal)))

        if config.prefix_dedup_chars or config.exact_dedup or config.near_dedup:
            _duplicates(workers, shuffled, config, removal)
            timed("duplicates")
        del shuffled

        if config.semantic_dedup_threshold is not None:
            semantic_duplicates(workers, chunks, gone(), config, removal)
            timed("semantic_dup")

        for hits in (previous_hits, test_hits):  # in curate's order: a row an earlier round used is not a test-set hit
            removal.update({index: hit for index, hit in hits.items() if index not in removal})
        if test_texts:
            if config.decontam_embedding_threshold is not None:
                decontaminate_embeddings(workers, chunks, [stop - start for start, stop in bounds], gone(), test_texts,
                                         config, removal, progress)
            timed("decontam")
    finally:
        drop_pool(key)

    phases.close()
    removed = {step: 0 for step in STEPS}
    removed_rows = []
    for index in sorted(removal):
        step, reason, matched = removal[index]
        removed[step] += 1
        removed_rows.append({**rows[index], "input_index": index, "step": step, "reason": reason, "matched": matched})
    return CurationResult(kept=[dict(row) for i, row in enumerate(rows) if i not in removal], removed=removed,
                          removed_rows=removed_rows, n_input=n, seconds=seconds)


def _workers(key, compute: ComputeSettings, **arguments) -> ReplicaPool:
    """The run's `workers` actors, asked for at once (each starts its process and loads its row judge while the
    others do): the block's other pools are released first where the cluster has not their CPUs and GPUs free."""
    resources = actor_options(compute)
    return block_pool(key, lambda: ReplicaPool("curation", CurationWorker, arguments, resources, compute.workers),
                      Demand.of_actors(compute.workers, resources))


def _stage_one(workers: ReplicaPool, rows: Sequence[dict], bounds: list[tuple[int, int]], partitions: int):
    """Stage 1 of each chunk on the workers: (the chunks' features refs, the facts of `FACTS` as rows, per
    partition the refs of its shuffle input from every chunk). Only the facts come to the driver."""
    import pyarrow as pa
    import ray

    pool = pa.table({"id": pa.array(range(len(rows)), type=pa.int64()),
                     "row": pa.array([json.dumps(row, default=str) for row in rows], type=pa.string())})
    results = workers.in_order("stage_one", [(pool.slice(start, stop - start),) for start, stop in bounds],
                               num_returns=2 + partitions)
    facts = pa.concat_tables(ray.get([refs[1] for refs in results])).to_pylist()
    return [refs[0] for refs in results], facts, [[refs[2 + part] for refs in results] for part in range(partitions)]


def _duplicates(workers: ReplicaPool, shuffled: list[list], config: CurationConfig, removal: dict) -> None:
    """Exact, prefix and near duplicates from the shuffle's reducers (one a partition): the near pairs are found
    among every row the filters kept, and those with an exact or prefix duplicate are left out before the pass
    in id order."""
    import ray

    edges: dict[tuple[int, int], float] = {}
    for _, ref in workers.finished("duplicates", [tuple(parts) for parts in shuffled]):
        for hit in ray.get(ref).to_pylist():
            if hit["kind"] == "near":
                edges[(hit["low"], hit["high"])] = hit["score"]
            else:
                removal[hit["high"]] = (hit["kind"], hit["reason"], hit["low"])
    threshold = config.near_dedup_threshold
    edges = {pair: score for pair, score in edges.items() if pair[0] not in removal and pair[1] not in removal}
    for index, (other, score) in greedy_keep(edges).items():
        removal[index] = ("near_dup", f"Jaccard {score:.3f} >= {threshold} "
                          f"({config.shingle} {config.shingle_size}-shingles)", other)


def stage_one_chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """(start, stop) of stage 1's chunks of a pool of `n` rows: the same number for each worker (a second worker
    that starts later takes fewer), at least 4 each and at most 200 rows each up to 64 each, none empty."""
    count = min(n, -(-max(4 * workers, min(-(-n // 200), 64 * workers)) // workers) * workers)
    bounds = [n * i // count for i in range(count + 1)]
    return list(pairwise(bounds))
