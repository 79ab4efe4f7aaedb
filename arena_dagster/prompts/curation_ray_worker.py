"""The actor of curation on Ray (`curation_ray.py`): one a worker for the whole run, doing every step's share.

Each worker process pays its start once: Ray's imports, the row judge (test-set and earlier-round
indexes, the language model), and at its first embedding MiniLM and the test set's vectors. Its
methods take and return Arrow tables (blocks of the pool) that stay in the object store; the
driver passes their refs on and gets only what a step decides (removed rows, hits, pairs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from arena_dagster.profile_schema.curation import CurationConfig
from arena_dagster.prompts.curation.similarity import embed_test_set, embed_texts, jaccard
from arena_dagster.prompts.curation_ray_embed import block_turns, scored_turns, similar_pairs
from arena_dagster.prompts.curation_rows import RowJudge, exploded, feature_schema, first_of_groups, survivors, typed_table

FACTS = ["id", "step", "reason", "matched", "prev_reason", "prev_matched", "dc_step", "dc_reason", "dc_matched"]


class CurationWorker:
    """Stage 1, the duplicates shuffle's map and reduce, and the embedding steps, on one worker's share of CPUs."""

    def __init__(self, config: CurationConfig, test_texts: list[str], previous: Sequence[str | dict], threads: int,
                 partitions: int) -> None:
        self.config, self.test_texts, self.threads, self.partitions = config, test_texts, threads, partitions
        self.judge = RowJudge(config, test_texts, previous)
        self.group = "prefix_key" if config.prefix_dedup_chars else "exact_key" if config.exact_dedup else None
        self._tests: np.ndarray | None = None

    def stage_one(self, chunk):
        """A chunk of the pool (a table of `id` and the row as JSON): its features, the rows stage 1 removed or found
        in an earlier round or the test set (`FACTS`), then the duplicates shuffle's input, one table a partition.

        The features have one fixed schema: a block of removed rows only has the columns of a block of kept ones.
        The shuffle's input is the chunk's survivors of stage 1, the only rows stage 1 leaves to the duplicates."""
        import pyarrow as pa
        import pyarrow.compute as pc

        features = pa.Table.from_pylist([self.judge(json.loads(text), index) for index, text in
                                         zip(chunk["id"].to_pylist(), chunk["row"].to_pylist())], schema=feature_schema())
        found = pc.or_(pc.or_(pc.is_valid(features["step"]), pc.is_valid(features["prev_reason"])),
                       pc.is_valid(features["dc_step"]))
        parts = dedup_parts(survivors(features, ()), group=self.group, near=self.config.near_dedup, partitions=self.partitions)
        return features, features.filter(found).select(FACTS), *parts

    def duplicates(self, *parts):
        """A partition of the shuffle (its table from every chunk): its duplicates and verified near pairs."""
        import pyarrow as pa

        return dedup_hits(pa.concat_tables(parts), config=self.config)

    def semantic_vectors(self, features, gone: np.ndarray) -> dict[str, np.ndarray]:
        rows = survivors(features, gone)
        return {"id": rows["id"].to_numpy(), "vector": self._embed(rows["semantic_text"].to_pylist())}

    def similar_pairs(self, left: dict, right: dict, same: bool):
        return similar_pairs(left, right, same, self.config.semantic_dedup_threshold)

    def score_turns(self, features, gone: np.ndarray, piece: int, pieces: int):
        """Piece `piece` of `pieces` of a chunk's surviving distinct turns (longest first), scored against the test
        set (`scored_turns`). A chunk is cut in pieces so that the workers' last pieces end close together."""
        turns, rows = block_turns(survivors(features, gone))
        start, stop = len(turns) * piece // pieces, len(turns) * (piece + 1) // pieces
        if self._tests is None:
            self._embed([])  # torch's threads set before the test set's vectors (cached: usually no model run)
            self._tests = embed_test_set(self.test_texts, batch_size=self.config.embed_batch_size)
        return scored_turns(self._tests, self._embed(turns[start:stop]), turns[start:stop], rows[start:stop],
                            self.config.decontam_top_k, self.config.decontam_embedding_threshold)

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        if torch.get_num_threads() != self.threads:  # the worker's share of the CPUs, whatever OMP_NUM_THREADS says
            torch.set_num_threads(self.threads)
        return embed_texts(texts, batch_size=self.config.embed_batch_size, device=embedding_device())


def embedding_device() -> str:
    """Where this worker's MiniLM runs: the GPU Ray gave the actor (`compute.gpus_per_worker`), else the CPU."""
    import ray

    if ray.is_initialized() and ray.get_gpu_ids():  # in-process (not an actor): no GPUs were given
        import torch

        if torch.cuda.is_available():  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs: "cuda" is one of them
            return "cuda"
    return "cpu"


def _partition(key: str, partitions: int) -> int:
    return int(key[:8], 16) % partitions if key else 0


def _dedup_schema():
    import pyarrow as pa

    return pa.schema([("part", pa.int64()), ("key", pa.string()), ("id", pa.int64()), ("exact_key", pa.string()),
                      ("prefix_key", pa.string()), ("shingles", pa.binary()), ("history_shingles", pa.binary()),
                      ("has_history", pa.bool_())])


def dedup_parts(table, *, group: str | None, near: bool, partitions: int) -> list:
    """The shuffle's input, one table a partition: a row per member of a duplicate-key group (key `=` and the
    digest) and, for near duplicates, a row per (row, LSH band) with the shingles; each partitioned on its key's hash."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = _dedup_schema()
    tables = []
    if group:
        keys = table[group].to_pylist()
        tables.append(pa.table({"part": pa.array([_partition(k, partitions) for k in keys], type=pa.int64()),
                                "key": pa.array(["=" + k for k in keys], type=pa.string()),
                                **{name: table[name] for name in ("id", "exact_key", "prefix_key")}}))
    if near:
        rows, bands = exploded(table, "bands", ["id", "shingles", "history_shingles", "has_history"])
        tables.append(rows.append_column("key", bands).append_column(
            "part", pa.array([_partition(band.split(":", 1)[1], partitions) for band in bands.to_pylist()], type=pa.int64())))
    rows = pa.concat_tables([_complete(part, schema) for part in tables]) if tables else schema.empty_table()
    return [rows.filter(pc.equal(rows["part"], part)) for part in range(partitions)]


def _complete(table, schema):
    """`table` with `schema`'s missing columns as nulls."""
    import pyarrow as pa

    return pa.table({field.name: table[field.name] if field.name in table.column_names else pa.nulls(len(table), field.type)
                     for field in schema}, schema=schema)


def dedup_hits(table, *, config: CurationConfig):
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
