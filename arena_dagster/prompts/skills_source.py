"""The embedded default's prompt source (`prompts.source: skills`): a generated raw pool with
planted duplicates and junk, and a test set spread over the skill families plus a hard part."""

from __future__ import annotations

import hashlib
import polars as pl

from arena_dagster.profile_schema.sections import ArenaTestsetSettings, PromptsSettings
from arena_dagster.prompts.tables import RAW_SCHEMA, prompt_id


def skills_raw_frame(settings: PromptsSettings) -> pl.DataFrame:
    from arena_dagster.prompts.skills import make_raw_pool

    rows = make_raw_pool(
        settings.raw_pool_size,
        seed=settings.seed,
        exact_dup_rate=settings.exact_dup_rate,
        near_dup_rate=settings.near_dup_rate,
        short_rate=settings.short_rate,
    )
    return pl.DataFrame([{k: row.get(k) for k in RAW_SCHEMA} for row in rows], schema=RAW_SCHEMA)


def skills_testset(settings: ArenaTestsetSettings) -> pl.DataFrame:
    from arena_dagster.prompts.skills import FAMILIES, make_items

    per_family = settings.diverse_per_family
    hard = settings.hard
    candidates = make_items(settings.candidates, seed=settings.seed)
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
