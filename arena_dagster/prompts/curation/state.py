"""What the steps of one `curate` call share: the rows, their conversations, the rows still
alive (in input order), what was removed and why, and the seconds each step took."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from arena_dagster.profile_schema.curation import CurationConfig
from arena_dagster.prompts.curation.normalize import Conversation, normalize
from arena_dagster.prompts.curation.similarity import EmbedFn, MinHasher, jaccard, shingles

STEPS: tuple[str, ...] = (
    "invalid",
    "too_short",
    "too_long",
    "language",
    "exact_dup",
    "prefix_dup",
    "near_dup",
    "semantic_dup",
    "previous_rounds",
    "decontam_exact",
    "decontam_ngram",
    "decontam_minhash",
    "decontam_embedding",
)


@dataclass
class CurationResult:
    kept: list[dict]
    removed: dict[str, int]
    removed_rows: list[dict]
    n_input: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"input": self.n_input, "kept": len(self.kept), "removed": dict(self.removed)}


class CurationRun:
    def __init__(self, rows: Sequence[dict], config: CurationConfig, embed: EmbedFn,
                 embed_tests: EmbedFn | None = None) -> None:
        self.rows = rows
        self.config = config
        self.embed = embed
        self.embed_tests = embed_tests or embed  # the test set's embeddings (curate's default: cached)
        self.removed = {step: 0 for step in STEPS}
        self.removed_rows: list[dict] = []
        self.seconds: dict[str, float] = {}
        self.alive: list[int] = []
        self.convs: dict[int, Conversation] = {}
        self._hasher: MinHasher | None = None
        self._instruction_sets: dict[int, np.ndarray] = {}
        self._history_sets: dict[int, np.ndarray] = {}

    def drop(self, index: int, step: str, reason: str, matched: Any = None) -> None:
        self.removed[step] += 1
        self.removed_rows.append({**self.rows[index], "input_index": index, "step": step, "reason": reason, "matched": matched})

    def timed(self, step: str, started: float) -> None:
        self.seconds[step] = round(self.seconds.get(step, 0.0) + time.perf_counter() - started, 4)

    def hasher(self) -> MinHasher:
        """One MinHash scheme for every index of the run (built when a step first needs it)."""
        if self._hasher is None:
            self._hasher = MinHasher(self.config.num_perm, self.config.seed)
        return self._hasher

    def exact_key(self, index: int) -> str:
        return self.convs[index].history_key + "\n\u241e" + normalize(self.convs[index].instruction)

    def instruction_set(self, index: int) -> np.ndarray:
        if index not in self._instruction_sets:
            self._instruction_sets[index] = shingles(self.convs[index].instruction, self.config.shingle, self.config.shingle_size)
        return self._instruction_sets[index]

    def history_set(self, index: int) -> np.ndarray:
        if index not in self._history_sets:
            self._history_sets[index] = shingles(self.convs[index].history_key, self.config.shingle, self.config.shingle_size)
        return self._history_sets[index]

    def same_history(self, a: int, b: int) -> bool:
        ha, hb = self.convs[a].history, self.convs[b].history
        if not ha and not hb:
            return True
        if not ha or not hb:
            return False
        return jaccard(self.history_set(a), self.history_set(b)) >= self.config.near_dedup_threshold

    def result(self) -> CurationResult:
        return CurationResult(
            kept=[dict(self.rows[i]) for i in self.alive],
            removed=self.removed,
            removed_rows=sorted(self.removed_rows, key=lambda r: r["input_index"]),
            n_input=len(self.rows),
            seconds=self.seconds,
        )
