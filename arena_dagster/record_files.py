"""One reader for the record files users bring: JSON lines, JSON (an array or one object), CSV, Parquet.

Every reader of the package (prompt files, test sets, earlier rounds, battles, judgments,
recorded answers, question files) goes through `iter_records`, so one file reads the same
everywhere. A UTF-8 byte-order mark (at the start, or at the start of a line of concatenated
files), CRLF line ends and a last line without a newline read exactly like clean UTF-8; a
UTF-16 file with its byte-order mark is converted. A record that cannot be taken as text is
quarantined with its number (line of JSON lines and CSV, element of a JSON array, row of
Parquet) and a reason, and the rest of the file is read:

  invalid_utf8    bytes that are not UTF-8 (a Latin-1 name, a cut multi-byte character)
  nul_character   a NUL (U+0000): C libraries cut a string there and DuckDB refuses it
  lone_surrogate  half of a UTF-16 pair (`"\\ud800"` in JSON): json.loads takes it, and every
                  later encode (DuckDB, a JSONL write, the terminal) fails on it
  invalid_json    a JSON line or array element that does not parse
  not_an_object   a JSON value that is not an object
  invalid_csv     a CSV record with more cells than the header, or one the csv module refuses

A file that cannot be read at all (missing, a folder, not Parquet, a JSON array that is not
one) is a RecordFileError: one line naming the file. `read_text` decodes a whole text file
(YAML profiles, model configs) by the same rules, with any bad character an error naming
its line. The standard library's json and csv and pyarrow's Parquet reader do the parsing;
JSON arrays are walked element by element (`json_array.py`), so a truncated file keeps its
complete records.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from arena_dagster.errors import ArenaError
from arena_dagster.json_array import ESCAPED_BYTE, DecodeStats, JSONArrayError, array_items, iter_json_array

__all__ = ["DecodeStats", "JSONArrayError", "Quarantined", "RecordFileError", "csv_rows", "iter_json_array",
           "iter_records", "printable", "read_text", "reason_counts", "strict_records", "text_problem"]

REASONS = ("invalid_utf8", "nul_character", "lone_surrogate", "invalid_json", "not_an_object", "invalid_csv")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_SURROGATE = re.compile("[\ud800-\udfff]")


class RecordFileError(ArenaError, ValueError):
    """A file that cannot be read at all; its one line names the file."""


@dataclass(frozen=True)
class Quarantined:
    number: int  # 1-based line (JSON lines, CSV), element (JSON array) or row (Parquet)
    reason: str  # one of REASONS
    detail: str  # for a person: what was found where
    raw: str = ""  # the record as far as it is readable, printable (bad bytes and characters escaped)


def printable(text: str) -> str:
    """`text` with NULs and surrogates written as escapes: safe to store, print and encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def reason_counts(quarantine: list[Quarantined]) -> dict[str, int]:
    return dict(sorted(Counter(q.reason for q in quarantine).items()))


def _string_problem(text: str) -> tuple[str, str] | None:
    if "\x00" in text:
        return "nul_character", f"a NUL character (U+0000) at position {text.index(chr(0)) + 1} of \"{printable(text[:60])}\""
    found = _SURROGATE.search(text)
    if found:
        return "lone_surrogate", (f"a lone UTF-16 surrogate U+{ord(found.group()):04X} at position {found.start() + 1} "
                                  f"of \"{printable(text[:60])}\"")
    return None


def text_problem(value: Any) -> tuple[str, str] | None:
    """(reason, detail) of the first string (key or value, at any depth) that no encoder takes, else None."""
    if isinstance(value, str):
        return _string_problem(value)
    if isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key) or text_problem(item)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for item in value:
            problem = text_problem(item)
            if problem:
                return problem
    return None


def _not_utf8(raw: bytes, error: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1})"


def _file_bytes(path: Path) -> bytes:
    """The bytes of a file as UTF-8 without a byte-order mark (a UTF-16 file is converted)."""
    if path.is_dir():
        raise RecordFileError("a folder, not a file", str(path), "name the files in it")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecordFileError("no such file", str(path), "check the path") from None
    except OSError as error:
        raise RecordFileError(f"cannot read the file: {error.strerror or error}", str(path)) from None
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):]
    if raw.startswith(_UTF16_BOMS):
        try:
            return raw.decode("utf-16").encode("utf-8", "surrogatepass")
        except UnicodeDecodeError as error:
            raise RecordFileError(f"starts with a UTF-16 byte-order mark but is not UTF-16 ({error.reason})",
                                  str(path), "save it as UTF-8") from None
    return raw


def read_text(path: str | Path) -> str:
    """A whole text file (a YAML profile): byte-order mark dropped, CRLF read as LF; text that is
    not UTF-8, a NUL or a lone surrogate is a RecordFileError naming the line."""
    path = Path(path)
    raw = _file_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise RecordFileError(f"not UTF-8 text (byte {raw[error.start]:#04x})", f"{path}:{line}", "save it as UTF-8") from None
    problem = _string_problem(text)
    if problem:
        line = text.count("\n", 0, text.index("\x00") if problem[0] == "nul_character" else _SURROGATE.search(text).start()) + 1
        raise RecordFileError(f"a {problem[0].replace('_', ' ')} in the text", f"{path}:{line}", "remove it") from None
    return text.replace("\r\n", "\n")


def iter_records(path: str | Path, quarantine: list[Quarantined], *, decode: DecodeStats | None = None) -> Iterator[tuple[int, dict]]:
    """(number, object) of every readable record of a file; the others are appended to
    `quarantine` as they are met. `.parquet` and `.csv` by suffix (a short CSV record's missing
    cells are ""), anything else is JSON: an array, one object, or JSON lines. `decode` receives the byte counts of a JSON array."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_records(path, quarantine)
        return
    raw = _file_bytes(path)
    if suffix == ".csv":
        header, rows = csv_rows(path, quarantine, raw=raw)
        for number, cells in rows:
            if len(cells) > len(header):
                quarantine.append(Quarantined(number, "invalid_csv", f"{len(cells)} cells under a header of {len(header)}",
                                              printable(",".join(cells))[:2000]))
            else:
                yield number, dict(zip(header, cells + [""] * (len(header) - len(cells))))
        return
    start = re.match(rb"\s*", raw).end()  # the first byte that is not white space, without copying the file
    first = raw[start:start + 1]
    if first == b"[":
        yield from _array_records(io.BytesIO(raw), quarantine, decode if decode is not None else DecodeStats(), path)
        return
    lines = raw.split(b"\n")
    if first == b"{" and _json_text(lines[0]) is None:
        whole = _one_document(raw)  # an object written over several lines
        if whole is not None:
            yield from _checked(1, whole, printable(raw[:8000].decode("utf-8", "backslashreplace"))[:2000], quarantine)
            return
    for number, line in enumerate(lines, start=1):
        line = line.removeprefix(codecs.BOM_UTF8).strip()  # a BOM also starts each file of a concatenation
        if not line:
            continue
        shown = printable(line.decode("utf-8", "backslashreplace"))[:2000]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            quarantine.append(Quarantined(number, "invalid_utf8", _not_utf8(line, error), shown))
            continue
        if "\x00" in text:  # json.loads calls a raw NUL an invalid control character: say what it is
            quarantine.append(Quarantined(number, "nul_character", _string_problem(text)[1], shown))
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            quarantine.append(Quarantined(number, "invalid_json", f"not JSON ({error.msg} at column {error.colno})", shown))
            continue
        yield from _checked(number, value, shown, quarantine)


def strict_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """`iter_records` for files where every row counts (prompts to answer, recorded answers): the
    first record that would be quarantined is a RecordFileError naming its line instead."""
    quarantine: list[Quarantined] = []

    def refuse() -> None:
        if quarantine:
            first = quarantine[0]
            raise RecordFileError(first.detail, f"{path}:{first.number}")

    for number, row in iter_records(path, quarantine):
        refuse()
        yield number, row
    refuse()


def _json_text(line: bytes) -> Any:
    try:
        return json.loads(line.removeprefix(codecs.BOM_UTF8))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _one_document(raw: bytes) -> Any:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _checked(number: int, value: Any, shown: str, quarantine: list[Quarantined]) -> Iterator[tuple[int, dict]]:
    problem = text_problem(value)
    if problem:
        quarantine.append(Quarantined(number, problem[0], problem[1], shown))
    elif not isinstance(value, dict):
        quarantine.append(Quarantined(number, "not_an_object", f"a JSON {type(value).__name__}, not an object", shown))
    else:
        yield number, value


def _array_records(stream: IO[bytes], quarantine: list[Quarantined], stats: DecodeStats, path: Path) -> Iterator[tuple[int, dict]]:
    try:
        for number, (value, problem) in enumerate(array_items(stream, stats), start=1):
            if problem == "invalid_utf8":
                quarantine.append(Quarantined(number, "invalid_utf8", "not UTF-8 text", printable(json.dumps(value))[:2000]))
            elif problem:
                quarantine.append(Quarantined(number, "invalid_json", problem))
            else:
                yield from _checked(number, value, printable(json.dumps(value, ensure_ascii=False))[:2000], quarantine)
    except JSONArrayError as error:
        raise RecordFileError(str(error), str(path)) from None


# ---------------------------------------------------------------- CSV and Parquet


def csv_rows(path: str | Path, quarantine: list[Quarantined], *, raw: bytes | None = None) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header (names stripped) and (first line number, cells) of every other non-blank CSV
    record; quoted cells may span lines. A record with bad text goes to `quarantine`."""
    path = Path(path)
    text = (raw if raw is not None else _file_bytes(path)).decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    while header is None:
        try:
            cells = next(reader)
        except StopIteration:
            raise RecordFileError("no header line (an empty file)", str(path)) from None
        except csv.Error as error:
            raise RecordFileError(f"the header is not CSV ({error})", str(path)) from None
        if any(cell.strip() for cell in cells):
            problem = _cells_problem(cells)
            if problem:
                raise RecordFileError(f"the header has {problem[1]}", f"{path}:{reader.line_num}", "save the file as UTF-8 text")
            header = [name.strip() for name in cells]

    def rows() -> Iterator[tuple[int, list[str]]]:
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                quarantine.append(Quarantined(start, "invalid_csv", str(error)))
                continue
            if not any(cell.strip() for cell in cells):
                continue
            problem = _cells_problem(cells)
            if problem:
                quarantine.append(Quarantined(start, problem[0], problem[1], printable(",".join(cells))[:2000]))
            else:
                yield start, cells

    return header, rows()


def _cells_problem(cells: list[str]) -> tuple[str, str] | None:
    for cell in cells:
        if ESCAPED_BYTE.search(cell):  # the file was decoded with surrogateescape: these were bad bytes
            return "invalid_utf8", "not UTF-8 text"
        problem = _string_problem(cell)
        if problem:
            return problem
    return None


def _parquet_records(path: Path, quarantine: list[Quarantined]) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise RecordFileError("a folder, not a file" if path.is_dir() else "no such file", str(path), "check the path")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise RecordFileError(f"not a readable Parquet file ({' '.join(str(error).split())[:200]})", str(path)) from None
    number = 0
    for batch in table.to_batches():
        try:
            rows = batch.to_pylist()
        except UnicodeDecodeError:  # a string column with bytes that are not UTF-8: find the rows
            rows = []
            for index in range(batch.num_rows):
                try:
                    rows.append(batch.slice(index, 1).to_pylist()[0])
                except UnicodeDecodeError as error:
                    rows.append(error)
        for row in rows:
            number += 1
            if isinstance(row, UnicodeDecodeError):
                quarantine.append(Quarantined(number, "invalid_utf8", f"not UTF-8 text ({row.reason})"))
            else:
                yield from _checked(number, row, printable(json.dumps(row, ensure_ascii=False, default=str))[:2000], quarantine)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write every row or nothing: a temporary file in the same folder, fsynced, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    count = 0
    try:
        with handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return count
