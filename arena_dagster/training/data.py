"""Training data: chat JSONL for SFT, preference pairs for DPO and reward models, RL prompts.

Bad rows fail here with the file and row number, before any model loads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from arena_dagster.training.spec import TrainingDataError

def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    return rows


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f"{where}: 'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") or not isinstance(
            message.get("content"), str
        ):
            raise TrainingDataError(f"{where}: every message needs a role (system/user/assistant) and a string content")
    if messages[-1]["role"] != "assistant":
        raise TrainingDataError(f"{where}: the last message must be the assistant's answer")
    if not messages[-1]["content"].strip():
        raise TrainingDataError(f"{where}: the assistant's answer is empty")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def sft_rows(path: Path) -> list[dict]:
    """Chat rows as TRL prompt/completion pairs, so the loss covers the answer only."""
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        messages = _check_messages(row.get("messages"), f"{path} row {i}")
        out.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return out


def _as_turns(value: Any, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return [{"role": m.get("role", role), "content": m["content"]} for m in value]
    raise TrainingDataError(f"{where}: expected a string or a list of messages, got {type(value).__name__}")


def dpo_rows(path: Path) -> list[dict]:
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path} row {i}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise TrainingDataError(f"{where}: missing {missing}")
        chosen, rejected = _as_turns(row["chosen"], "assistant", where), _as_turns(row["rejected"], "assistant", where)
        if chosen == rejected:
            raise TrainingDataError(f"{where}: chosen and rejected are identical")
        out.append({"prompt": _as_turns(row["prompt"], "user", where), "chosen": chosen, "rejected": rejected})
    return out


def replay_rows(spec: dict) -> list[dict]:
    """A seeded sample of `spec.replay.rows` rows of the replay dataset (SFT against forgetting)."""
    replay = spec.get("replay")
    if not replay or not int(replay.get("rows", 0)):
        return []
    pool = sft_rows(Path(replay["dataset_path"]))
    rng = random.Random(f"replay-{replay.get('seed', 0)}")
    count = min(int(replay["rows"]), len(pool))
    return rng.sample(pool, count)


def prompt_rows(path: Path) -> list[dict]:
    """RL prompts: each row's `prompt` (a string or a list of messages); other keys are ignored."""
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path} row {i}"
        if "prompt" not in row:
            raise TrainingDataError(f"{where}: missing 'prompt'")
        turns = _as_turns(row["prompt"], "user", where)
        if turns[-1]["role"] == "assistant":
            raise TrainingDataError(f"{where}: the prompt ends with an assistant turn; the policy answers the last user turn")
        if not any(t["content"].strip() for t in turns):
            raise TrainingDataError(f"{where}: the prompt is empty")
        out.append({"prompt": turns})
    return out


def split_preference_pairs(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict], dict]:
    """Hold out about `eval_fraction` of the pairs, whole prompts at a time (seeded).

    Pairs sharing a prompt are near-duplicates for a reward model: split apart, the held-out
    accuracy would measure memorised prompts, not preferences.
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row["prompt"], sort_keys=True), []).append(row)
    if len(groups) < 2:
        raise TrainingDataError(
            f"stage reward holds out whole prompts for evaluation, so it needs pairs from at least 2 distinct prompts; "
            f"got {len(rows)} pair(s) from {len(groups)} prompt(s)"
        )
    keys = sorted(groups)
    random.Random(f"reward-split-{seed}").shuffle(keys)
    target = max(1, round(eval_fraction * len(rows)))
    held_out: list[str] = []
    held_pairs = 0
    # At least one prompt each side; add held-out prompts until the held-out pairs reach the target.
    for key in keys[:-1]:
        if held_pairs >= target:
            break
        held_out.append(key)
        held_pairs += len(groups[key])
    held = set(held_out)
    train_rows = [row for key in keys if key not in held for row in groups[key]]
    eval_rows = [row for key in held_out for row in groups[key]]
    split = {"prompts": len(keys), "eval_prompts": len(held_out), "train_prompts": len(keys) - len(held_out)}
    return train_rows, eval_rows, split


def load_rows(resolved: dict) -> tuple[list[dict], int, list[dict]]:
    """The stage's training rows, its dataset's row count and the replay rows; bad data fails here."""
    stage, dataset_path = resolved["stage"], Path(resolved["dataset_path"])
    if stage in ("dpo", "reward"):
        rows = dpo_rows(dataset_path)
        if not rows:
            raise TrainingDataError(f"{dataset_path}: no preference pairs")
        return rows, len(rows), []
    if stage == "rl":
        rows = prompt_rows(dataset_path)
        if not rows:
            raise TrainingDataError(f"{dataset_path}: no prompts")
        return rows, len(rows), []
    rows = sft_rows(dataset_path)
    replay = replay_rows(resolved)
    if not rows + replay:
        raise TrainingDataError(f"{dataset_path}: no training rows (and no replay rows)")
    return rows + replay, len(rows), replay

