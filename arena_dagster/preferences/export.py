"""Preference tables exported as training files and Hugging Face datasets, with lineage."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import polars as pl


def _write_jsonl_atomic(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    digest = hashlib.sha256()
    with tmp.open("w") as handle:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
            digest.update(line.encode())
            handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return digest.hexdigest()


def prompt_messages(row: dict) -> list[dict]:
    """The conversation up to the instruction (multi-turn prompts keep their history)."""
    messages = row.get("messages")
    if messages:
        parsed = json.loads(messages) if isinstance(messages, str) else messages
        return [{"role": m["role"], "content": m["content"]} for m in parsed]
    return [{"role": "user", "content": row["prompt"]}]


def sft_training_rows(examples: pl.DataFrame) -> list[dict]:
    """Conversational SFT rows (TRL's `messages` format) in a stable order."""
    ordered = examples.sort(["round", "prompt_id"])
    return [
        {
            "messages": [*prompt_messages(row), {"role": "assistant", "content": row["response"]}],
            "example_id": row["example_id"],
        }
        for row in ordered.iter_rows(named=True)
    ]


def preference_training_rows(pairs: pl.DataFrame) -> list[dict]:
    """Conversational preference rows (TRL's prompt/chosen/rejected format, for DPO and reward models)."""
    ordered = pairs.sort(["round", "pair_id"])
    return [
        {
            "prompt": prompt_messages(row),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
            "pair_id": row["pair_id"],
        }
        for row in ordered.iter_rows(named=True)
    ]


def prompt_training_rows(prompts: pl.DataFrame) -> list[dict]:
    """Prompt-only rows for the RL stage, in a stable order."""
    return [
        {"prompt": prompt_messages(row), "prompt_id": row["prompt_id"]}
        for row in prompts.sort("prompt_id").iter_rows(named=True)
    ]


def export_dataset(table: pl.DataFrame, training_rows: list[dict], folder: Path) -> dict:
    """Write train.jsonl (what the trainer reads) and a Hugging Face dataset with every lineage column."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    dataset_hash = _write_jsonl_atomic(training_rows, folder / "train.jsonl")
    hf_path = folder / "hf"
    datasets.Dataset.from_polars(table).save_to_disk(str(hf_path))
    return {"train_path": str(folder / "train.jsonl"), "hf_path": str(hf_path), "dataset_hash": dataset_hash, "rows": len(training_rows)}
