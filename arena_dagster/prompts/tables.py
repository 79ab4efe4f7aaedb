"""The shapes of the prompt tables every source fills: raw rows, the pool, the quarantine, and prompt ids."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl

RAW_SCHEMA = {
    "source_id": pl.Utf8,
    "prompt": pl.Utf8,
    "family": pl.Utf8,
    "reference": pl.Utf8,
    "difficulty": pl.Int64,
}


def prompt_id(prompt: str, prefix: str = "p") -> str:
    return f"{prefix}-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]


QUARANTINE_SCHEMA = {"source_id": pl.Utf8, "prompt": pl.Utf8, "step": pl.Utf8, "reason": pl.Utf8}


def pool_prompt_id(row: dict) -> str:
    # A follow-up is its whole conversation: the same last turn in two conversations is two prompts.
    messages = row.get("messages")
    return prompt_id(json.dumps(messages, sort_keys=True) if messages else row["prompt"])


def pool_frame(rows: list[dict], extra: dict[str, Any]) -> pl.DataFrame:
    # Every pool row carries its conversation, so training rows are built one way for every source.
    schema = {**RAW_SCHEMA, **extra, "messages": pl.Utf8}
    out = []
    for row in rows:
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        out.append({**{k: row.get(k) for k in schema}, "messages": json.dumps(messages, ensure_ascii=False)})
    return pl.DataFrame(out, schema=schema)
