"""Prompt curation on Ray Data: `curation.curate`'s steps over blocks of the pool, with the same kept set.

  1. a map over blocks (an actor pool: each worker builds the test-set and earlier-round indexes
     once) computes each row's single-row filters, duplicate keys, MinHash band keys and hits
     against earlier rounds and the test set (`curation_rows.RowJudge`);
  2. exact and prefix duplicates: a shuffle on the duplicate key; a group keeps its smallest id;
  3. near duplicates: a shuffle on the LSH band keys (datasketch's bands for the threshold, so the
     candidates are the local index's); each candidate pair is verified with the exact Jaccard of
     the shingle sets on the worker; the verified pairs (duplicates only) come to the driver,
     which keeps the rows a pass in id order keeps (`curation_rows.greedy_keep`);
  4. semantic duplicates: embeddings from an actor pool (one model per actor), pairs above the
     threshold from block-by-block products, the same pass in id order;
  5. earlier rounds and the exact / n-gram / MinHash test-set hits apply to the survivors;
  6. embedding decontamination: the survivors' distinct user turns go through the embedding
     actor pool, each worker keeps per test item its top-k turns above the threshold, and the
     driver merges them into the global top-k.

The driver holds row ids, the removed rows' reasons and the duplicate pairs; never the features,
the shingles or the pool's embeddings. Every removed row is counted with its step and reason.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from arena_dagster.compute.cluster import quiet_ray_data, ray_cluster
from arena_dagster.compute.progress import Progress, progress_sink
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.profile_schema.curation import CurationConfig, CurationError
from arena_dagster.prompts.curation import STEPS, CurationResult, curate, embed_texts
from arena_dagster.prompts.curation.decontamination import against_texts
from arena_dagster.prompts.curation.similarity import jaccard
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
                      embed=embed or _embedding_with_progress(config, progress))
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


def _features(batch, *, key: str, config: CurationConfig, test_texts: list[str], previous: list):
    """Stage 1 as tasks (they free their CPU when done); a worker process builds the row judge once per run.

    The facts go out with one fixed schema: a block of removed rows only has the columns of a block of kept ones."""
    import pyarrow as pa

    if key not in _JUDGES:
        _JUDGES.clear()
        _JUDGES[key] = RowJudge(config, test_texts, previous)
    judge = _JUDGES[key]
    facts = [judge(json.loads(text), index) for index, text in zip(batch["id"].to_pylist(), batch["row"].to_pylist())]
    return pa.Table.from_pylist(facts, schema=feature_schema())


def _facts(table, *, columns: Sequence[str], present: str):
    import pyarrow.compute as pc

    return table.filter(pc.is_valid(table[present])).select(list(columns))


def _partition(key: str, partitions: int) -> int:
    return int(key[:8], 16) % partitions if key else 0


def _keyed(table, *, group: str, partitions: int):
    import pyarrow as pa

    parts = [_partition(key, partitions) for key in table[group].to_pylist()]
    return table.select(["id", "exact_key", "prefix_key"]).append_column("part", pa.array(parts, type=pa.int64()))


def _duplicates(table, *, config: CurationConfig):
    import pyarrow as pa

    found = first_of_groups(table["id"].to_pylist(), table["exact_key"].to_pylist(), table["prefix_key"].to_pylist(), config)
    kinds = {"id": pa.int64(), "step": pa.string(), "reason": pa.string(), "matched": pa.int64()}
    return typed_table({name: ([hit[i] for hit in found], kind) for i, (name, kind) in enumerate(kinds.items())})


def _band_rows(table, *, partitions: int):
    """One row per (row, LSH band), partitioned on the band's hash."""
    import pyarrow as pa

    rows, bands = exploded(table, "bands", ["id", "shingles", "history_shingles", "has_history"])
    parts = [_partition(band.split(":", 1)[1], partitions) for band in bands.to_pylist()]
    return rows.append_column("band", bands).append_column("part", pa.array(parts, type=pa.int64()))


def _verified(table, *, threshold: float):
    """The candidate pairs (rows sharing a band) whose shingle sets' Jaccard reaches the threshold."""
    import pyarrow as pa

    members: dict[str, list[int]] = {}
    for position, band in enumerate(table["band"].to_pylist()):
        members.setdefault(band, []).append(position)
    ids, has = table["id"].to_pylist(), table["has_history"].to_pylist()
    raw_sets, raw_hists = table["shingles"].to_pylist(), table["history_shingles"].to_pylist()
    sets: dict[int, np.ndarray] = {}
    hists: dict[int, np.ndarray] = {}
    found: dict[tuple[int, int], float] = {}
    for positions in members.values():
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
    return typed_table({"low": ([a for a, _ in found], pa.int64()), "high": ([b for _, b in found], pa.int64()),
                   "score": (list(found.values()), pa.float64())})


def curate_on_ray(rows: Sequence[dict], *, config: CurationConfig, against: Sequence[str | dict] = (),
                  previous: Sequence[str | dict] = (), compute: ComputeSettings,
                  progress: Sink | None = None) -> CurationResult:
    import ray

    quiet_ray_data()
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

    features = _features_of(rows, config, compute, test_texts, previous)
    phases.update(n)  # every row through the per-row stage; the shuffles follow
    facts = features.map_batches(_facts, fn_kwargs={"columns": ["id", "step", "reason", "matched"], "present": "step"},
                                 batch_format="pyarrow", batch_size=None)
    for fact in facts.iter_rows():
        removal[int(fact["id"])] = (fact["step"], fact["reason"], json.loads(fact["matched"]) if fact["matched"] else None)
    timed("filters")

    def gone():
        return ray.put(np.fromiter(removal, dtype=np.int64, count=len(removal)))

    if config.exact_dedup or config.prefix_dedup_chars:
        keyed = on_survivors(features, gone(), _keyed, group="prefix_key" if config.prefix_dedup_chars else "exact_key",
                             partitions=partitions)
        hits = keyed.groupby("part", num_partitions=partitions).map_groups(
            partial(_duplicates, config=config), batch_format="pyarrow")
        for hit in hits.iter_rows():
            removal[int(hit["id"])] = (hit["step"], hit["reason"], int(hit["matched"]))
        timed("exact_prefix_dup")

    if config.near_dedup:
        threshold = config.near_dedup_threshold
        pairs = on_survivors(features, gone(), _band_rows, partitions=partitions).groupby(
            "part", num_partitions=partitions).map_groups(partial(_verified, threshold=threshold), batch_format="pyarrow")
        edges = {(int(edge["low"]), int(edge["high"])): float(edge["score"]) for edge in pairs.iter_rows()}
        for index, (other, score) in greedy_keep(edges).items():
            removal[index] = ("near_dup", f"Jaccard {score:.3f} >= {threshold} "
                              f"({config.shingle} {config.shingle_size}-shingles)", other)
        timed("near_dup")

    if config.semantic_dedup_threshold is not None:
        semantic_duplicates(on_survivors(features, gone(), _columns, columns=["id", "semantic_text"]), config, compute, threads, removal)
        timed("semantic_dup")

    if previous and config.dedup_previous:
        hits = on_survivors(features, gone(), _facts, columns=["id", "prev_reason", "prev_matched"], present="prev_reason")
        for hit in hits.iter_rows():
            removal[int(hit["id"])] = ("previous_rounds", hit["prev_reason"], json.loads(hit["prev_matched"]))
        timed("previous_rounds")

    if test_texts:
        hits = on_survivors(features, gone(), _facts, columns=["id", "dc_step", "dc_reason", "dc_matched"], present="dc_step")
        for hit in hits.iter_rows():
            removal[int(hit["id"])] = (hit["dc_step"], hit["dc_reason"], json.loads(hit["dc_matched"]))
        if config.decontam_embedding_threshold is not None:
            decontaminate_embeddings(features, gone(), test_texts, config, compute, threads, partitions, removal, progress)
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


def _features_of(rows: Sequence[dict], config: CurationConfig, compute: ComputeSettings, test_texts: list[str],
                 previous: Sequence[str | dict]):
    """Stage 1, materialized: every block holds rows (a block of none would reach the maps below without a schema)."""
    import ray.data

    n = len(rows)
    blocks = min(n, max(2 * compute.workers, min(n // 500 + 1, 4 * compute.workers * 16)))
    items = [{"id": i, "row": json.dumps(row, default=str)} for i, row in enumerate(rows)]
    run_key = f"{time.time_ns()}-{id(rows)}"
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _features, fn_kwargs={"key": run_key, "config": config, "test_texts": test_texts, "previous": list(previous)},
        batch_format="pyarrow", batch_size=256, num_cpus=compute.cpus_per_worker).materialize()


