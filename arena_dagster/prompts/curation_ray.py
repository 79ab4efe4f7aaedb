"""Prompt curation on Ray Data: `curation.curate`'s steps over blocks of the pool, with the same kept set.

  1. Ray tasks over chunks of the pool (each worker process builds the test-set and earlier-round
     indexes once) compute each row's single-row filters, duplicate keys, MinHash band keys and hits
     against earlier rounds and the test set (`curation_rows.RowJudge`), as Arrow tables of one
     schema that become the blocks of a dataset; each task also returns its removed rows and hits,
     which alone come to the driver;
  2. exact, prefix and near duplicates: one shuffle, on the duplicate key (a group keeps its
     smallest id) and on the LSH band keys (datasketch's bands for the threshold, so the
     candidates are the local index's); each candidate pair is verified with the exact Jaccard of
     the shingle sets on the worker; the verified pairs (duplicates only) come to the driver,
     which leaves out the rows an exact or prefix duplicate removed and keeps the rows a pass in
     id order keeps (`curation_rows.greedy_keep`);
  4. semantic duplicates: embeddings from an actor pool (one model per actor), pairs above the
     threshold from block-by-block products, the same pass in id order;
  5. earlier rounds' and the exact / n-gram / MinHash test-set hits (from step 1) apply to the survivors;
  6. embedding decontamination: each block's distinct user turns (no shuffle: a turn in several
     blocks is scored in each), with the ids of the rows holding them, go through the embedding
     actor pool in blocks of a few batches, each block keeps per test item its top-k turns above
     the threshold (with their rows), and the driver merges them (a turn once, at its best score)
     into the global top-k and removes each row for its first flagged turn.

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

from arena_dagster.compute.cluster import quiet_ray_data, ray_cluster
from arena_dagster.compute.progress import Progress, progress_sink
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.profile_schema.curation import CurationConfig, CurationError
from arena_dagster.prompts.curation import STEPS, CurationResult, curate, embed_texts
from arena_dagster.prompts.curation.decontamination import against_texts
from arena_dagster.prompts.curation.similarity import embed_test_set, jaccard
from arena_dagster.prompts.curation_ray_embed import decontaminate_embeddings, semantic_duplicates
from arena_dagster.prompts.curation_rows import (RowJudge, exploded, feature_schema, first_of_groups, greedy_keep,
                                                 on_survivors, typed_table)

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
    with ray_cluster(compute, connect):
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


_JUDGES: dict[str, RowJudge] = {}


def _stage_one(chunk, key: str, judged: tuple[CurationConfig, list[str], list]):
    """Stage 1 of a chunk of the pool (a table of `id` and the row as JSON), in a task (it frees its CPU when done):
    (its features, the rows stage 1 removed or found in an earlier round or the test set). A worker process
    builds the row judge once per run (`judged`: its config, test texts and earlier rounds' prompts).

    The features go out with one fixed schema: a block of removed rows only has the columns of a block of kept ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if key not in _JUDGES:
        _JUDGES.clear()
        _JUDGES[key] = RowJudge(*judged)
    judge = _JUDGES[key]
    features = pa.Table.from_pylist([judge(json.loads(text), index) for index, text in
                                     zip(chunk["id"].to_pylist(), chunk["row"].to_pylist())], schema=feature_schema())
    found = pc.or_(pc.or_(pc.is_valid(features["step"]), pc.is_valid(features["prev_reason"])), pc.is_valid(features["dc_step"]))
    return features, features.filter(found).select(FACTS)


FACTS = ["id", "step", "reason", "matched", "prev_reason", "prev_matched", "dc_step", "dc_reason", "dc_matched"]


def _partition(key: str, partitions: int) -> int:
    return int(key[:8], 16) % partitions if key else 0


def _dedup_schema():
    import pyarrow as pa

    return pa.schema([("part", pa.int64()), ("key", pa.string()), ("id", pa.int64()), ("exact_key", pa.string()),
                      ("prefix_key", pa.string()), ("shingles", pa.binary()), ("history_shingles", pa.binary()),
                      ("has_history", pa.bool_())])


def _dedup_rows(table, *, group: str | None, near: bool, partitions: int):
    """The one shuffle's input: a row per member of a duplicate-key group (key `=` and the digest) and, for near
    duplicates, a row per (row, LSH band) with the shingles; each partitioned on its key's hash."""
    import pyarrow as pa

    schema = _dedup_schema()
    parts = []
    if group:
        keys = table[group].to_pylist()
        parts.append(pa.table({"part": pa.array([_partition(k, partitions) for k in keys], type=pa.int64()),
                               "key": pa.array(["=" + k for k in keys], type=pa.string()),
                               **{name: table[name] for name in ("id", "exact_key", "prefix_key")}}))
    if near:
        rows, bands = exploded(table, "bands", ["id", "shingles", "history_shingles", "has_history"])
        parts.append(rows.append_column("key", bands).append_column(
            "part", pa.array([_partition(band.split(":", 1)[1], partitions) for band in bands.to_pylist()], type=pa.int64())))
    return pa.concat_tables([_complete(part, schema) for part in parts])


def _complete(table, schema):
    """`table` with `schema`'s missing columns as nulls."""
    import pyarrow as pa

    return pa.table({field.name: table[field.name] if field.name in table.column_names else pa.nulls(len(table), field.type)
                     for field in schema}, schema=schema)


def _dedup_hits(table, *, config: CurationConfig):
    """Per key group: the exact and prefix duplicates (`first_of_groups`) and the LSH candidate pairs whose
    shingle sets' Jaccard reaches the threshold. Rows (kind, low, high, score, reason): a duplicate is
    (its step, the kept id, its id, 1.0, why); a near pair is ("near", smaller id, larger id, Jaccard, null)."""
    import pyarrow as pa

    members: dict[str, list[int]] = {}
    for position, key in enumerate(table["key"].to_pylist()):
        members.setdefault(key, []).append(position)
    ids = table["id"].to_pylist()
    hits: list[tuple[str, int, int, float, str | None]] = []
    keyed = [p for key, positions in members.items() if key.startswith("=") for p in positions]
    exact, prefix = table["exact_key"].to_pylist(), table["prefix_key"].to_pylist()
    for index, step, reason, kept in first_of_groups([ids[p] for p in keyed], [exact[p] for p in keyed],
                                                     [prefix[p] for p in keyed], config):
        hits.append((step, kept, index, 1.0, reason))
    found = _verified(table, ids, [positions for key, positions in members.items() if not key.startswith("=")],
                      config.near_dedup_threshold)
    hits.extend(("near", low, high, score, None) for (low, high), score in found.items())
    return typed_table({name: ([hit[i] for hit in hits], kind) for i, (name, kind) in enumerate(
        [("kind", pa.string()), ("low", pa.int64()), ("high", pa.int64()), ("score", pa.float64()), ("reason", pa.string())])})


def _verified(table, ids: list[int], groups: list[list[int]], threshold: float) -> dict[tuple[int, int], float]:
    """The candidate pairs (rows sharing a band) whose shingle sets' Jaccard reaches the threshold."""
    has = table["has_history"].to_pylist()
    raw_sets, raw_hists = table["shingles"].to_pylist(), table["history_shingles"].to_pylist()
    sets: dict[int, np.ndarray] = {}
    hists: dict[int, np.ndarray] = {}
    found: dict[tuple[int, int], float] = {}
    for positions in groups:
        for position in positions if len(positions) > 1 else ():
            sets.setdefault(position, np.frombuffer(raw_sets[position], dtype=np.uint64))
            hists.setdefault(position, np.frombuffer(raw_hists[position], dtype=np.uint64))
        for x, a in enumerate(positions):
            for b in positions[x + 1 :]:
                pair = (min(ids[a], ids[b]), max(ids[a], ids[b]))
                if pair in found or has[a] != has[b] or (has[a] and jaccard(hists[a], hists[b]) < threshold):
                    continue
                score = jaccard(sets[a], sets[b])
                if score >= threshold:
                    found[pair] = score
    return found


def curate_on_ray(rows: Sequence[dict], *, config: CurationConfig, against: Sequence[str | dict] = (),
                  previous: Sequence[str | dict] = (), compute: ComputeSettings,
                  progress: Sink | None = None) -> CurationResult:
    import ray
    from ray.data.context import DataContext, ShuffleStrategy

    quiet_ray_data()
    # The duplicates' shuffle as tasks on the pooled workers: the default hash shuffle starts an aggregator actor
    # (a process that imports Ray Data again) per partition, which cost 6-10 s of a 1000-prompt run.
    DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
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
    threads = max(1, int(compute.cpus_per_worker))

    features, facts = _features_of(rows, config, compute, test_texts, previous)
    phases.update(n)  # every row through the per-row stage; the shuffles follow
    # What stage 1 decided alone: the filters now, earlier rounds and test-set hits later.
    previous_hits, test_hits = {}, {}
    for fact in facts.to_pylist():
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

    group = "prefix_key" if config.prefix_dedup_chars else "exact_key" if config.exact_dedup else None
    if group or config.near_dedup:
        # Exact, prefix and near duplicates in one shuffle: the near pairs are found among every row the filters
        # kept, and those with an exact or prefix duplicate are left out before the pass in id order.
        hits = on_survivors(features, gone(), _dedup_rows, group=group, near=config.near_dedup, partitions=partitions).groupby(
            "part", num_partitions=partitions).map_groups(partial(_dedup_hits, config=config),
                                                                          batch_format="pyarrow")
        edges: dict[tuple[int, int], float] = {}
        for hit in hits.iter_rows():
            if hit["kind"] == "near":
                edges[(int(hit["low"]), int(hit["high"]))] = float(hit["score"])
            else:
                removal[int(hit["high"])] = (hit["kind"], hit["reason"], int(hit["low"]))
        threshold = config.near_dedup_threshold
        edges = {pair: score for pair, score in edges.items() if pair[0] not in removal and pair[1] not in removal}
        for index, (other, score) in greedy_keep(edges).items():
            removal[index] = ("near_dup", f"Jaccard {score:.3f} >= {threshold} "
                              f"({config.shingle} {config.shingle_size}-shingles)", other)
        timed("duplicates")

    if config.semantic_dedup_threshold is not None:
        semantic_duplicates(on_survivors(features, gone(), _columns, columns=["id", "semantic_text"]), config, compute, threads, removal)
        timed("semantic_dup")

    for hits in (previous_hits, test_hits):  # in curate's order: a row an earlier round used is not a test-set hit
        removal.update({index: hit for index, hit in hits.items() if index not in removal})
    if test_texts:
        if config.decontam_embedding_threshold is not None:
            decontaminate_embeddings(features, gone(), test_texts, config, compute, threads, removal, progress)
        timed("decontam")

    phases.close()
    removed = {step: 0 for step in STEPS}
    removed_rows = []
    for index in sorted(removal):
        step, reason, matched = removal[index]
        removed[step] += 1
        removed_rows.append({**rows[index], "input_index": index, "step": step, "reason": reason, "matched": matched})
    return CurationResult(kept=[dict(row) for i, row in enumerate(rows) if i not in removal], removed=removed,
                          removed_rows=removed_rows, n_input=n, seconds=seconds)


def _columns(table, *, columns: Sequence[str]):
    return table.select(list(columns))


def stage_one_chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """(start, stop) of stage 1's chunks of a pool of `n` rows: the same number for each worker (a second worker
    that starts later takes fewer), at least 4 each and at most 200 rows each up to 64 each, none empty."""
    count = min(n, -(-max(4 * workers, min(-(-n // 200), 64 * workers)) // workers) * workers)
    bounds = [n * i // count for i in range(count + 1)]
    return list(pairwise(bounds))


def _features_of(rows: Sequence[dict], config: CurationConfig, compute: ComputeSettings, test_texts: list[str],
                 previous: Sequence[str | dict]):
    """Stage 1 as Ray tasks: (the features as a dataset of one block a chunk, the facts table of `FACTS`).

    Plain tasks, not a Ray Data map: the driver gets each chunk's facts without a second pass over the features,
    and the tasks start at once (a first Ray Data execution starts its own actors first, taking the raylet's
    worker start slots). Every chunk holds rows (a block of none would reach the maps below without a schema)."""
    import pyarrow as pa
    import ray
    import ray.data

    pool = pa.table({"id": pa.array(range(len(rows)), type=pa.int64()),
                     "row": pa.array([json.dumps(row, default=str) for row in rows], type=pa.string())})
    judged = ray.put((config, test_texts, list(previous)))
    stage_one = ray.remote(_stage_one).options(num_cpus=compute.cpus_per_worker, num_returns=2)
    run_key = f"{time.time_ns()}-{id(rows)}"
    refs = [stage_one.remote(pool.slice(start, stop - start), run_key, judged)
            for start, stop in stage_one_chunks(len(rows), compute.workers)]
    facts = pa.concat_tables(ray.get([fact for _, fact in refs]))
    return ray.data.from_arrow_refs([block for block, _ in refs]), facts
