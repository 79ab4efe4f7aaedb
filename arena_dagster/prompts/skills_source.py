"""The embedded default's prompt source (`prompts.source: skills`): a generated raw pool with
planted duplicates and junk, and a test set spread over the skill families plus a hard part."""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl

from arena_dagster.prompts.tables import RAW_SCHEMA, prompt_id


def skills_raw_frame(settings: dict[str, Any]) -> pl.DataFrame:
    from arena_dagster.prompts.skills import make_raw_pool

    rows = make_raw_pool(
        int(settings["raw_pool_size"]),
        seed=int(settings.get("seed", 0)),
        exact_dup_rate=float(settings.get("exact_dup_rate", 0.08)),
        near_dup_rate=float(settings.get("near_dup_rate", 0.08)),
        short_rate=float(settings.get("short_rate", 0.02)),
    )
    return pl.DataFrame([{k: row.get(k) for k in RAW_SCHEMA} for row in rows], schema=RAW_SCHEMA)


def skills_testset(settings: dict[str, Any]) -> pl.DataFrame:
    """`settings`: the profile's `testset` section."""
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
