"""Profile-level prompt tables: the raw pool, the arena test set and the curated, sliced pool."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl

from arena_dagster.config import ConfigError

RAW_SCHEMA = {
    "source_id": pl.Utf8,
    "prompt": pl.Utf8,
    "family": pl.Utf8,
    "reference": pl.Utf8,
    "difficulty": pl.Int64,
}


def prompt_id(prompt: str, prefix: str = "p") -> str:
    return f"{prefix}-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]


def raw_prompt_frame(profile: dict[str, Any]) -> pl.DataFrame:
    settings = profile["prompts"]
    source = settings.get("source")
    if source == "skills":
        from arena_dagster.prompts.skills import make_raw_pool

        rows = make_raw_pool(
            int(settings["raw_pool_size"]),
            seed=int(settings.get("seed", 0)),
            exact_dup_rate=float(settings.get("exact_dup_rate", 0.08)),
            near_dup_rate=float(settings.get("near_dup_rate", 0.08)),
            short_rate=float(settings.get("short_rate", 0.02)),
        )
        return pl.DataFrame([{k: row.get(k) for k in RAW_SCHEMA} for row in rows], schema=RAW_SCHEMA)
    raise ConfigError(f"profile {profile.get('name')!r}: unknown prompt source {source!r}")


def testset_frame(profile: dict[str, Any]) -> pl.DataFrame:
    """The fixed offline arena: a diverse part spread over families and a hard part."""
    settings = profile["testset"]
    source = profile["prompts"].get("source")
    if source != "skills":
        raise ConfigError(f"profile {profile.get('name')!r}: no test-set builder for source {source!r}")
    from arena_dagster.prompts.skills import FAMILIES, make_items

    per_family = int(settings["diverse_per_family"])
    hard = int(settings["hard"])
    candidates = make_items(int(settings["candidates"]), seed=int(settings.get("seed", 10_000)))
    seen: set[str] = set()
    diverse, rest = [], []
    counts = {family: 0 for family in FAMILIES}
    for item in candidates:
        if item.prompt in seen:
            continue
        seen.add(item.prompt)
        if counts.get(item.family, per_family) < per_family:
            counts[item.family] += 1
            diverse.append(item)
        else:
            rest.append(item)
    hardest = sorted(rest, key=lambda item: (-item.difficulty, item.item_id))[:hard]
    rows = [
        {
            "prompt_id": prompt_id(item.prompt, "t"),
            "prompt": item.prompt,
            "family": item.family,
            "reference": item.reference,
            "difficulty": item.difficulty,
            "subset": subset,
        }
        for subset, items in (("diverse", diverse), ("hard", hardest))
        for item in items
    ]
    frame = pl.DataFrame(rows)
    version = hashlib.sha256("\n".join(sorted(frame["prompt"].to_list())).encode()).hexdigest()[:16]
    return frame.with_columns(pl.lit(version).alias("testset_version"))


def curated_pool(raw: pl.DataFrame, testset: pl.DataFrame, profile: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, int], pl.DataFrame]:
    """Clean, deduplicate, decontaminate against the test set and slice into rounds.

    Returns the pool, the count removed by each step, and the removed rows (the quarantine).
    """
    from arena_dagster.prompts.curation import CurationConfig, curate, slice_rounds

    settings = profile["prompts"]
    config = CurationConfig.from_dict(settings.get("curation"))
    result = curate(raw.to_dicts(), config=config, against=testset["prompt"].to_list())
    rows = slice_rounds(
        result.kept,
        int(settings["rounds"]),
        seed=int(settings.get("seed", 0)),
        stage_fractions=settings.get("stage_fractions"),
    )
    for row in rows:
        # A follow-up is its whole conversation: the same last turn in two conversations is two prompts.
        messages = row.get("messages")
        row["prompt_id"] = prompt_id(json.dumps(messages, sort_keys=True) if messages else row["prompt"])
    pool = pl.DataFrame(rows)
    removed_rows = pl.DataFrame(
        [{"source_id": r.get("source_id"), "prompt": r.get("prompt"), "step": r.get("step"), "reason": str(r.get("reason", ""))}
         for r in result.removed_rows],
        schema={"source_id": pl.Utf8, "prompt": pl.Utf8, "step": pl.Utf8, "reason": pl.Utf8},
    )
    return pool, dict(result.removed), removed_rows
