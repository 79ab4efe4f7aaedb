"""What `curation.curate` decides about one row alone, for the steps that run on blocks of the pool.

A row's filters (invalid, too short, too long, language), its duplicate keys, its MinHash band
keys, and its hits against earlier rounds and the test set depend on the row and the fixed
inputs only, so Ray workers compute them block by block (`curation_ray.py`); the steps that
compare rows with each other (duplicates) are decided after a shuffle. The rules and messages
are `curation.curate`'s: the two engines keep the same rows for the same reasons. The facts
travel as Arrow tables of one schema (`feature_schema`), and every later step works on the
rows of each block that are still alive (`survivors`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np

from arena_dagster.profile_schema.curation import CurationConfig, CurationError
from arena_dagster.prompts.curation.filters import LANGUAGE_TARGET_FLOOR
from arena_dagster.prompts.curation.normalize import canonical, conversation_of, identify_language, normalize, texts_of, words
from arena_dagster.prompts.curation.similarity import MinHasher, NearIndex, shingles

SEPARATOR = "\n\u241e"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def band_params(config: CurationConfig) -> tuple[int, int]:
    """(bands, rows per band) of `datasketch.MinHashLSH` for the near-duplicate threshold: the same candidates."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=min(config.near_dedup_threshold, 0.99), num_perm=config.num_perm)
    return lsh.b, lsh.r


def feature_schema():
    """The Arrow schema of `RowJudge`'s facts. Every block of the features gets it whatever mix of removed
    rows (which lack most facts: nulls here) and kept rows it holds, so that the blocks' schemas agree."""
    import pyarrow as pa

    text, texts = pa.string(), pa.list_(pa.string())
    return pa.schema([
        ("id", pa.int64()), ("step", text), ("reason", text), ("matched", text),
        ("exact_key", text), ("prefix_key", text), ("semantic_text", text), ("shingles", pa.binary()),
        ("history_shingles", pa.binary()), ("has_history", pa.bool_()), ("bands", texts), ("turns", texts),
        ("prev_reason", text), ("prev_matched", text), ("dc_step", text), ("dc_reason", text), ("dc_matched", text),
    ])


class RowJudge:
    """Built once per worker (test-set and earlier-round indexes), then called on each row."""

    def __init__(self, config: CurationConfig, test_texts: Sequence[str] = (), previous: Sequence[str | dict] = ()) -> None:
        self.config = config
        self.hasher = MinHasher(config.num_perm, config.seed)
        self.bands = band_params(config) if config.near_dedup else (0, 0)
        self.test_texts = list(test_texts)
        self._previous(previous if config.dedup_previous else ())
        self._tests()

    def _previous(self, previous: Sequence[str | dict]) -> None:
        config = self.config
        self.previous_keys: dict[str, str] = {}
        self.previous_texts: list[str] = []
        self.index_prev = NearIndex(config.near_dedup_threshold, self.hasher) if previous and config.near_dedup else None
        for position, item in enumerate(previous):
            if isinstance(item, dict):
                conv = conversation_of(item, position)
                key = conv.history_key + SEPARATOR + normalize(conv.instruction)
                text, single = conv.instruction, not conv.history
            else:
                text, single = texts_of(item, f"previous[{position}]")[0], True
                key = SEPARATOR + normalize(text)
            self.previous_keys.setdefault(key, text)
            if self.index_prev is not None and single:
                self.index_prev.add(len(self.previous_texts), shingles(text, config.shingle, config.shingle_size))
                self.previous_texts.append(text)

    def _tests(self) -> None:
        config = self.config
        self.test_keys: dict[str, str] = {}
        self.grams: dict[tuple[str, ...], str] = {}
        self.gram_lengths: set[int] = set()
        self.index_test = None
        if not self.test_texts:
            return
        for text in self.test_texts:
            self.test_keys.setdefault(canonical(text), text)
        n = config.decontam_ngram
        if n:
            for text in self.test_texts:
                tokens = tuple(words(text))
                if len(tokens) >= n:
                    for i in range(len(tokens) - n + 1):
                        self.grams.setdefault(tokens[i : i + n], text)
                    self.gram_lengths.add(n)
                elif len(tokens) >= max(2, n // 2):
                    self.grams.setdefault(tokens, text)
                    self.gram_lengths.add(len(tokens))
        if config.decontam_minhash_threshold is not None:
            self.index_test = NearIndex(config.decontam_minhash_threshold, self.hasher)
            for position, text in enumerate(self.test_texts):
                self.index_test.add(position, shingles(text, config.shingle, config.shingle_size))

    def __call__(self, row: Any, index: int) -> dict[str, Any]:
        """The row's facts (`feature_schema`'s columns); `step` is set when a single-row filter removes it."""
        config = self.config
        out: dict[str, Any] = {"id": index, "step": None, "reason": None, "matched": None}
        if not isinstance(row, dict):
            raise CurationError(f"row {index}: expected a dict, got {type(row).__name__}")
        try:
            conv = conversation_of(row, index)
        except CurationError as err:
            return {**out, "step": "invalid", "reason": str(err)}
        instruction = normalize(conv.instruction)
        if not instruction:
            return {**out, "step": "invalid", "reason": "empty instruction"}
        if len(instruction) < config.min_chars:
            return {**out, "step": "too_short", "reason": f"{len(instruction)} characters < min_chars={config.min_chars}"}
        if config.max_chars is not None:
            length = len(conv.instruction) + sum(len(content) for _role, content in conv.history)
            if length > config.max_chars:
                return {**out, "step": "too_long", "reason": f"{length} characters > max_chars={config.max_chars}"}
        if config.language:
            top, top_p, probabilities = identify_language(conv.language_text)
            target_p = probabilities.get(config.language, 0.0)
            if top != config.language and top_p >= config.language_min_confidence and target_p < LANGUAGE_TARGET_FLOOR:
                return {**out, "step": "language", "matched": json.dumps(top),
                        "reason": f"identified as {top!r} (p={top_p:.2f}), p({config.language})={target_p:.3f}"}
        history_key = conv.history_key
        exact_text = history_key + SEPARATOR + instruction
        instruction_set = shingles(conv.instruction, config.shingle, config.shingle_size)
        prefix = config.prefix_dedup_chars
        out.update(
            exact_key=digest(exact_text) if config.exact_dedup else None,
            prefix_key=digest(history_key + SEPARATOR + instruction.casefold()[:prefix]) if prefix else None,
            semantic_text=exact_text,
            shingles=instruction_set.tobytes(),
            history_shingles=shingles(history_key, config.shingle, config.shingle_size).tobytes() if conv.history else b"",
            has_history=bool(conv.history),
            bands=self.band_keys(instruction_set),
            turns=[turn for turn in dict.fromkeys(conv.user_turns) if normalize(turn)],
        )
        out.update(self.previous_hit(exact_text, conv, instruction_set))
        out.update(self.test_hit(out["turns"]))
        return out

    def band_keys(self, instruction_set: np.ndarray) -> list[str]:
        bands, per_band = self.bands
        if not bands:
            return []
        values = self.hasher(instruction_set).hashvalues
        return [f"{b}:{hashlib.sha1(values[b * per_band : (b + 1) * per_band].tobytes()).hexdigest()}" for b in range(bands)]

    def previous_hit(self, exact_text: str, conv, instruction_set: np.ndarray) -> dict[str, Any]:
        if exact_text in self.previous_keys:
            return {"prev_reason": "same prompt as an earlier round", "prev_matched": json.dumps(self.previous_keys[exact_text])}
        if self.index_prev is not None and not conv.history:
            hit = self.index_prev.best(instruction_set)
            if hit is not None:
                return {"prev_reason": f"near duplicate (Jaccard {hit[1]:.3f}) of an earlier round's prompt",
                        "prev_matched": json.dumps(self.previous_texts[hit[0]])}
        return {"prev_reason": None, "prev_matched": None}

    def test_hit(self, turns: list[str]) -> dict[str, Any]:
        """The first decontamination step (in curate's order) that one of the turns fails."""
        config = self.config
        if not self.test_texts:
            return {"dc_step": None, "dc_reason": None, "dc_matched": None}
        if config.decontam_exact:
            for turn in turns:
                key = canonical(turn)
                if key in self.test_keys:
                    return self._hit("decontam_exact", "a user turn equals a test item", self.test_keys[key])
        if config.decontam_ngram:
            for turn in turns:
                tokens = tuple(words(turn))
                for length in sorted(self.gram_lengths, reverse=True):
                    for i in range(len(tokens) - length + 1):
                        if tokens[i : i + length] in self.grams:
                            return self._hit("decontam_ngram", f"shares a verbatim {length}-word sequence with a test item",
                                             self.grams[tokens[i : i + length]])
        if self.index_test is not None:
            for turn in turns:
                hit = self.index_test.best(shingles(turn, config.shingle, config.shingle_size))
                if hit is not None:
                    return self._hit("decontam_minhash", f"near-verbatim copy of a test item (Jaccard {hit[1]:.3f})",
                                     self.test_texts[hit[0]])
        return {"dc_step": None, "dc_reason": None, "dc_matched": None}

    @staticmethod
    def _hit(step: str, reason: str, matched: str) -> dict[str, Any]:
        return {"dc_step": step, "dc_reason": reason, "dc_matched": json.dumps(matched)}


def first_of_groups(ids: Sequence[int], exact_keys: Sequence[str | None], prefix_keys: Sequence[str | None],
                    config: CurationConfig) -> list[tuple[int, str, str, int]]:
    """Exact and prefix duplicates among rows (ids ascending or not): (id, step, reason, kept id) of each removed row.

    The kept row of a group is its smallest id (the row first in the pool). A prefix group holds
    whole exact groups, so its smallest id survives the exact step and the two steps need one shuffle.
    """
    first_exact: dict[str, int] = {}
    first_prefix: dict[str, int] = {}
    for index, exact, prefix in zip(ids, exact_keys, prefix_keys):
        if exact is not None:
            first_exact[exact] = min(first_exact.get(exact, index), index)
        if prefix is not None:
            first_prefix[prefix] = min(first_prefix.get(prefix, index), index)
    removed = []
    for index, exact, prefix in zip(ids, exact_keys, prefix_keys):
        if exact is not None and first_exact[exact] != index:
            removed.append((index, "exact_dup", "same normalized conversation as an earlier row", first_exact[exact]))
        elif prefix is not None and first_prefix[prefix] != index:
            removed.append((index, "prefix_dup", f"same first {config.prefix_dedup_chars} characters as an earlier row",
                            first_prefix[prefix]))
    return removed


def greedy_keep(edges: dict[tuple[int, int], float]) -> dict[int, tuple[int, float]]:
    """Which rows a pass in id order removes: a row goes when an earlier *kept* row is its duplicate.

    `edges`: (smaller id, larger id) -> similarity of every verified duplicate pair. Returns
    removed id -> (the kept row it matched: the most similar, the smaller id on a tie, score),
    the same answer as curate's incremental index, however the pairs were found.
    """
    earlier: dict[int, list[tuple[int, float]]] = {}
    for (low, high), score in edges.items():
        earlier.setdefault(high, []).append((low, score))
    removed: dict[int, tuple[int, float]] = {}
    for index in sorted(earlier):
        kept = [(other, score) for other, score in earlier[index] if other not in removed]
        if kept:
            other, score = max(kept, key=lambda pair: (pair[1], -pair[0]))
            removed[index] = (other, score)
    return removed


def typed_table(columns: dict[str, tuple[Any, Any]]):
    """An Arrow table of `name: (values, type)`: typed even when empty, so a reducer's inputs concatenate."""
    import pyarrow as pa

    return pa.table({name: pa.array(values, type=kind) for name, (values, kind) in columns.items()})


def exploded(table, column: str, keep: Sequence[str]):
    """(`keep` columns, each repeated once per element of the list column, the elements)."""
    import pyarrow.compute as pc

    return table.select(list(keep)).take(pc.list_parent_indices(table[column])), pc.list_flatten(table[column])


def survivors(table, removed):
    """The rows of a block of features that no step has removed yet: stage 1 kept them and their ids are not in
    `removed` (the ids later steps removed, an array or sequence)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.is_null(table["step"])
    if len(removed):
        keep = pc.and_(keep, pc.invert(pc.is_in(table["id"], value_set=pa.array(removed, type=pa.int64()))))
    return table.filter(keep)
