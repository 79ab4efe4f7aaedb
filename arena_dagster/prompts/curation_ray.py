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
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from arena_dagster.compute.cluster import actor_options, quiet_ray_data, ray_cluster
from arena_dagster.compute.progress import Progress, progress_sink
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.profile_schema.curation import CurationConfig, CurationError
from arena_dagster.prompts.curation import STEPS, CurationResult, curate, embed_texts
from arena_dagster.prompts.curation.decontamination import against_texts
from arena_dagster.prompts.curation.similarity import jaccard
from arena_dagster.prompts.curation_rows import RowJudge, first_of_groups, greedy_keep

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
    """Stage 1 as tasks (they free their CPU when done); a worker process builds the row judge once per run."""
    import pandas as pd

    if key not in _JUDGES:
        _JUDGES.clear()
        _JUDGES[key] = RowJudge(config, test_texts, previous)
    judge = _JUDGES[key]
    return pd.DataFrame([judge(json.loads(text), int(index)) for index, text in zip(batch["id"], batch["row"])])


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


def _without(table, *, gone):
    """The batch's rows whose id is not in `gone` (an object ref: one fetch a batch, not one a row)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    return table.filter(pc.invert(pc.is_in(table["id"], value_set=pa.array(ray.get(gone), type=pa.int64()))))


def _partition(key: str, partitions: int) -> int:
    return int(key[:8], 16) % partitions if key else 0


def curate_on_ray(rows: Sequence[dict], *, config: CurationConfig, against: Sequence[str | dict] = (),
                  previous: Sequence[str | dict] = (), compute: ComputeSettings,
                  progress: Sink | None = None) -> CurationResult:
    import pandas as pd
    import ray
    import ray.data

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
    workers = compute.workers
    partitions = max(2 * workers, n // 20_000 + 1)
    blocks = max(2 * workers, min(n // 500 + 1, 4 * workers * 16))
    test_texts = against_texts(against)
    removal: dict[int, tuple[str, str, Any]] = {}  # id -> (step, reason, matched)
    threads = max(1, int(compute.cpus_per_worker))

    items = [{"id": i, "row": json.dumps(row, default=str)} for i, row in enumerate(rows)]
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CurationError(f"row {index}: expected a dict, got {type(row).__name__}")
    source = ray.data.from_items(items, override_num_blocks=blocks) if items else None
    del items
    if source is None:
        return CurationResult(kept=[], removed={step: 0 for step in STEPS}, removed_rows=[], n_input=0)
    run_key = f"{time.time_ns()}-{id(rows)}"
    features = source.map_batches(
        _features, fn_kwargs={"key": run_key, "config": config, "test_texts": test_texts, "previous": list(previous)},
        batch_format="pandas", batch_size=256, num_cpus=compute.cpus_per_worker).materialize()
    phases.update(n)  # every row through the per-row stage; the shuffles follow
    for fact in features.filter(lambda r: r["step"] is not None).select_columns(["id", "step", "reason", "matched"]).iter_rows():
        removal[int(fact["id"])] = (fact["step"], fact["reason"], json.loads(fact["matched"]) if fact["matched"] else None)
    timed("filters")
    alive = features.filter(lambda r: r["step"] is None)

    if config.exact_dedup or config.prefix_dedup_chars:
        group = "prefix_key" if config.prefix_dedup_chars else "exact_key"

        def duplicates(frame):
            return pd.DataFrame(first_of_groups(frame["id"].tolist(), frame["exact_key"].tolist(),
                                                frame["prefix_key"].tolist(), config),
                                columns=["id", "step", "reason", "matched"])

        keyed = alive.select_columns(["id", "exact_key", "prefix_key"]).map_batches(
            lambda frame: frame.assign(part=[_partition(k, partitions) for k in frame[group]]), batch_format="pandas")
        for hit in keyed.groupby("part", num_partitions=partitions).map_groups(duplicates, batch_format="pandas").iter_rows():
            removal[int(hit["id"])] = (hit["step"], hit["reason"], int(hit["matched"]))
        timed("exact_prefix_dup")

    def survivors():
        gone = ray.put(np.fromiter(removal, dtype=np.int64, count=len(removal)))
        return alive.map_batches(_without, fn_kwargs={"gone": gone}, batch_format="pyarrow")

    if config.near_dedup:
        threshold = config.near_dedup_threshold
        edges: dict[tuple[int, int], float] = {}

        def band_rows(row):
            return [{"part": _partition(band.split(":", 1)[1], partitions), "band": band, "id": row["id"],
                     "shingles": row["shingles"], "history_shingles": row["history_shingles"],
                     "has_history": row["has_history"]} for band in row["bands"]]

        def verified(frame):
            found: dict[tuple[int, int], float] = {}
            for _band, members in frame.groupby("band"):
                if len(members) < 2:
                    continue
                ids = members["id"].tolist()
                sets = [np.frombuffer(b, dtype=np.uint64) for b in members["shingles"]]
                hists = [np.frombuffer(b, dtype=np.uint64) for b in members["history_shingles"]]
                has = members["has_history"].tolist()
                for a in range(len(ids)):
                    for b in range(a + 1, len(ids)):
                        pair = (min(ids[a], ids[b]), max(ids[a], ids[b]))
                        if pair in found:
                            continue
                        if has[a] != has[b] or (has[a] and jaccard(hists[a], hists[b]) < threshold):
                            continue
                        score = jaccard(sets[a], sets[b])
                        if score >= threshold:
                            found[pair] = score
            return pd.DataFrame([(a, b, s) for (a, b), s in found.items()], columns=["low", "high", "score"])

        pairs = survivors().flat_map(band_rows).groupby("part", num_partitions=partitions).map_groups(verified, batch_format="pandas")
        for edge in pairs.iter_rows():
            edges[(int(edge["low"]), int(edge["high"]))] = float(edge["score"])
        for index, (other, score) in greedy_keep(edges).items():
            removal[index] = ("near_dup", f"Jaccard {score:.3f} >= {threshold} "
                              f"({config.shingle} {config.shingle_size}-shingles)", other)
        timed("near_dup")

    if config.semantic_dedup_threshold is not None:
        _semantic(survivors(), config, compute, threads, removal)
        timed("semantic_dup")

    if previous and config.dedup_previous:
        for hit in survivors().filter(lambda r: r["prev_reason"] is not None).iter_rows():
            removal[int(hit["id"])] = ("previous_rounds", hit["prev_reason"], json.loads(hit["prev_matched"]))
        timed("previous_rounds")

    if test_texts:
        for hit in survivors().filter(lambda r: r["dc_step"] is not None).iter_rows():
            removal[int(hit["id"])] = (hit["dc_step"], hit["dc_reason"], json.loads(hit["dc_matched"]))
        if config.decontam_embedding_threshold is not None:
            _decontaminate_embeddings(survivors(), test_texts, config, compute, threads, partitions, removal, progress)
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
    import pandas as pd
    import ray

    found = []
    for i, j in zip(pairs["i"], pairs["j"]):
        left, right = ray.get(blocks[i]), ray.get(blocks[j])
        sims = left["vector"] @ right["vector"].T
        for a, b in zip(*np.nonzero(sims >= threshold)):
            low, high = int(left["id"][a]), int(right["id"][b])
            if low < high or (i != j and low > high):
                found.append((min(low, high), max(low, high), float(sims[a, b])))
    return pd.DataFrame(found, columns=["low", "high", "score"])


def _semantic(rows, config: CurationConfig, compute: ComputeSettings, threads: int, removal: dict) -> None:
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
                                       batch_format="pandas", batch_size=1).iter_rows()}
    del vectors, blocks, grid  # the vectors leave the object store before the greedy pass
    for index, (other, score) in greedy_keep(edges).items():
        removal[index] = ("semantic_dup", f"cosine {score:.3f} >= {threshold}", other)


def _decontaminate_embeddings(rows, test_texts: list[str], config: CurationConfig, compute: ComputeSettings,
                              threads: int, partitions: int, removal: dict, progress: Sink) -> None:
    import pandas as pd

    threshold = config.decontam_embedding_threshold
    row_turns = rows.select_columns(["id", "turns"]).flat_map(
        lambda r: [{"turn": turn, "part": zlib.crc32(turn.encode()) % partitions} for turn in r["turns"]])
    # Each partition's distinct turns longest first, so that a batch holds turns of similar lengths
    # (little padding) while batches stay small enough to share out evenly among the replicas.
    distinct = row_turns.groupby("part", num_partitions=partitions).map_groups(
        lambda frame: pd.DataFrame({"turn": sorted(dict.fromkeys(frame["turn"].tolist()), key=lambda t: (-len(t), t))}),
        batch_format="pandas").materialize()
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
    hits = rows.select_columns(["id", "turns"]).filter(lambda r: any(t in flagged for t in r["turns"]))
    for hit in hits.iter_rows():
        turn = next(t for t in hit["turns"] if t in flagged)
        removal[int(hit["id"])] = ("decontam_embedding", *flagged[turn])
