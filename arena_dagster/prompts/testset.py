"""The WizardArena-style offline test set: a diverse part and a hard part, versioned by hash.

Diverse: embed the candidates (MiniLM), cluster them with k-means (scikit-learn), take
`per_cluster` prompts from each cluster (seeded random choice as in the paper, 500 clusters
x 2; or `pick="central"`, the ones nearest the centroid, steadier on small sets).
Hard: among the candidates not already taken, the `n_hard` with the highest difficulty
score, which the caller supplies as a column name or a callable (e.g. the judge's 0-10
difficulty rating). The version is a content hash of the chosen (subset, prompt) pairs, so
any change of the set changes the version recorded with every leaderboard computed on it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from arena_dagster.prompts.curation.normalize import conversation_of, normalize
from arena_dagster.prompts.curation.similarity import embed_texts

Difficulty = str | Callable[[dict], float]


class TestSetError(ValueError):
    __test__ = False  # not a pytest class


@dataclass
class TestSet:
    __test__ = False

    rows: list[dict]
    version: str
    stats: dict[str, Any] = field(default_factory=dict)


def _key(row: dict, index: int) -> str:
    conv = conversation_of(row, index)
    return conv.history_key + "\n\u241e" + normalize(conv.instruction)


def testset_version(rows: Sequence[dict]) -> str:
    """Content hash of the test set: order-independent, over (subset, conversation)."""
    items = sorted(json.dumps([row.get("subset", ""), _key(row, i)], ensure_ascii=False) for i, row in enumerate(rows))
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


testset_version.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def build_testset(
    candidates: Sequence[dict],
    *,
    n_clusters: int,
    per_cluster: int = 2,
    n_hard: int = 0,
    difficulty: Difficulty | None = None,
    seed: int = 0,
    pick: str = "random",
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> TestSet:
    """Rows (copies) with `subset` in {diverse, hard}, `cluster` or `difficulty_score`, and the version."""
    from sklearn.cluster import KMeans

    if n_clusters < 1 or per_cluster < 1 or n_hard < 0:
        raise TestSetError(f"need n_clusters >= 1, per_cluster >= 1, n_hard >= 0; got {n_clusters}, {per_cluster}, {n_hard}")
    if pick not in ("random", "central"):
        raise TestSetError(f"pick must be 'random' (the paper) or 'central' (nearest the centroid), got {pick!r}")
    if n_hard and difficulty is None:
        raise TestSetError("n_hard > 0 needs a difficulty (a column name or a callable)")
    unique: dict[str, int] = {}
    for index, row in enumerate(candidates):
        unique.setdefault(_key(row, index), index)
    indices = list(unique.values())
    if len(indices) < n_clusters:
        raise TestSetError(f"{len(indices)} distinct candidates is fewer than n_clusters={n_clusters}")
    texts = [conversation_of(candidates[i], i).instruction for i in indices]
    vectors = (embed or embed_texts)(texts)
    kmeans = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit(vectors)
    rng = random.Random(f"testset-{seed}")
    members: dict[int, list[int]] = {}
    for position, label in enumerate(kmeans.labels_):
        members.setdefault(int(label), []).append(position)
    diverse: list[tuple[int, int]] = []  # (candidate index, cluster)
    for label in sorted(members):
        count = min(per_cluster, len(members[label]))
        if pick == "random":
            chosen = sorted(rng.sample(members[label], count))
        else:
            distances = np.linalg.norm(vectors[members[label]] - kmeans.cluster_centers_[label], axis=1)
            chosen = [members[label][i] for i in np.argsort(distances, kind="stable")[:count]]
        diverse.extend((indices[position], label) for position in chosen)
    taken = {index for index, _ in diverse}

    hard: list[tuple[int, float]] = []
    if n_hard:
        scored = []
        for index in indices:
            if index in taken:
                continue
            row = candidates[index]
            if callable(difficulty):
                score = difficulty(row)
            else:
                if difficulty not in row:
                    raise TestSetError(f"candidate {index}: no difficulty column {difficulty!r}")
                score = row[difficulty]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
                raise TestSetError(f"candidate {index}: difficulty must be a number, got {score!r}")
            scored.append((index, float(score)))
        hard = sorted(scored, key=lambda item: (-item[1], item[0]))[:n_hard]

    rows = [dict(candidates[index], subset="diverse", cluster=label) for index, label in diverse]
    rows += [dict(candidates[index], subset="hard", difficulty_score=score) for index, score in hard]
    version = testset_version(rows)
    for row in rows:
        row["testset_version"] = version
    sizes = sorted(len(m) for m in members.values())
    stats = {
        "candidates": len(candidates),
        "distinct_candidates": len(indices),
        "diverse": len(diverse),
        "hard": len(hard),
        "clusters": n_clusters,
        "cluster_size_min": sizes[0],
        "cluster_size_max": sizes[-1],
        "hard_score_min": min((s for _, s in hard), default=None),
    }
    return TestSet(rows=rows, version=version, stats=stats)
