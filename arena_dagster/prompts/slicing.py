"""Round slices: which round (and stage) of the flywheel each prompt of the pool belongs to.

A prompt's slice is a function of its id, the seed and the settings only (seeded hashes), never
of the other prompts: slicing the same pool twice, a grown pool, or a pool rebuilt after some
rounds ran gives every prompt the same round and stage, so a resumed run battles exactly the
prompts an uninterrupted one would. The price is the balance of hash buckets instead of an
exact deal: with n prompts a round gets n/rounds give or take about sqrt(n/rounds).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from arena_dagster.prompts.curation import CurationError

# A prompt that arrives after its round started draws again, up to this many times (then it
# takes the first open round): the chance that 64 draws all land in started rounds is
# (started / rounds) ** 64, below 1e-8 with 3 of 4 rounds started.
ROUND_DRAWS = 64


def _unit(*parts: object) -> float:
    """A number in [0, 1) from a hash of `parts`: the same on every machine and in every process."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_slicing(n_rounds: int, stage_fractions: dict[str, float] | None, first_open_round: int) -> dict[str, float]:
    if not isinstance(n_rounds, int) or isinstance(n_rounds, bool) or n_rounds < 1:
        raise CurationError(f"n_rounds must be an int >= 1, got {n_rounds!r}")
    if not 1 <= first_open_round <= n_rounds:
        raise CurationError(f"first_open_round must be in 1..{n_rounds} (a round that has not started), got {first_open_round!r}")
    weights: dict[str, float] = {}
    for name, value in (stage_fractions or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise CurationError(f"stage_fractions[{name!r}] must be a positive number, got {value!r}")
        weights[name] = float(value)
    total = sum(weights.values())
    return {name: weights[name] / total for name in sorted(weights)}


def slice_of(
    prompt_id: str,
    n_rounds: int,
    *,
    seed: int,
    stage_fractions: dict[str, float] | None = None,
    first_open_round: int = 1,
) -> tuple[int, str | None]:
    """The round (1..n_rounds) and stage of one prompt, from seeded hashes of its id alone.

    The round is the first of the prompt's draws (hash of seed, draw, id) that is a round that
    has not started (>= `first_open_round`): a prompt present from the start keeps its first
    draw, so no prompt's round depends on any other prompt, and one that arrives after its
    round started goes to a later round without moving anybody. The stage is the prompt's
    share of `stage_fractions` (names sorted, fractions normalized) at another hash.
    """
    weights = _check_slicing(n_rounds, stage_fractions, first_open_round)
    return _round_of(prompt_id, n_rounds, seed, first_open_round), _stage_of(prompt_id, seed, weights)


def _round_of(prompt_id: str, n_rounds: int, seed: int, first_open_round: int) -> int:
    for draw in range(ROUND_DRAWS):
        round_key = 1 + int(_unit("round", seed, draw, prompt_id) * n_rounds)
        if round_key >= first_open_round:
            return round_key
    return first_open_round


def _stage_of(prompt_id: str, seed: int, weights: dict[str, float]) -> str | None:
    if not weights:
        return None
    point, cumulative = _unit("stage", seed, prompt_id), 0.0
    for name, share in weights.items():
        cumulative += share
        if point < cumulative:
            return name
    return name  # rounding at the top end of the last share


def default_prompt_key(row: dict) -> str:
    """A row's identity for slicing when it has no `prompt_id`: its prompt text (or conversation)."""
    if row.get("prompt_id"):
        return str(row["prompt_id"])
    text = row.get("prompt")
    return text if isinstance(text, str) else repr(row.get("messages"))


def slice_rounds(
    rows: Sequence[dict],
    n_rounds: int,
    *,
    seed: int,
    stage_fractions: dict[str, float] | None = None,
    first_open_round: int = 1,
    key: Callable[[dict], str] = default_prompt_key,
) -> list[dict]:
    """Copies of `rows` (input order) with `round` and, with `stage_fractions`, `stage` (see `slice_of`).

    Each row's slice is a function of its own key (`prompt_id`, else its text), the seed and the
    settings only: slicing any superset, subset or reordering of the rows gives every row the
    same slice, so a rebuilt pool never re-cuts a round. Sizes are those of hash buckets: each
    round gets n/rounds rows give or take sqrt(n/rounds) or so (see `slice_sizes`).
    """
    weights = _check_slicing(n_rounds, stage_fractions, first_open_round)
    out = []
    for row in rows:
        prompt_key = key(row)
        sliced = dict(row, round=_round_of(prompt_key, n_rounds, seed, first_open_round))
        if weights:
            sliced["stage"] = _stage_of(prompt_key, seed, weights)
        out.append(sliced)
    return out
