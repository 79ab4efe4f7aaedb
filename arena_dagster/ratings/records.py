"""Reading the rows of JSON, JSON-lines and CSV files written by other tools, never failing on
one bad row.

Real files carry a byte-order mark (Windows editors, PowerShell's `Out-File`), or a stray
non-UTF-8 byte in one row (a truncated multi-byte character, a Latin-1 name). A UTF-8 or
UTF-16 byte-order mark is skipped; a row whose bytes are not UTF-8 is rejected and counted
as `invalid_utf8`, and the rest of the file is read.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from arena_dagster.ratings.errors import InputFileError

PathLike = str | Path
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def as_paths(paths: PathLike | Iterable[PathLike], *, suffixes: tuple[str, ...] = ()) -> list[Path]:
    """The files named: a folder stands for its files ending in one of `suffixes`, sorted."""
    given = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not given:
        raise InputFileError("no input files given")
    found: list[Path] = []
    for path in given:
        if path.is_dir() and suffixes:
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(suffixes))
            if not inside:
                raise InputFileError(f"{path}: a folder without {' or '.join(suffixes)} files")
            found.extend(inside)
        elif not path.is_file():
            raise InputFileError(f"{path}: no such file")
        else:
            found.append(path)
    return found


def _file_bytes(path: Path) -> bytes:
    """The file's bytes as UTF-8, without a byte-order mark (UTF-16 files are converted)."""
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):]
    if raw.startswith(_UTF16_BOMS):
        try:
            return raw.decode("utf-16").encode("utf-8", "surrogateescape")
        except UnicodeDecodeError as error:
            raise InputFileError(f"{path}: starts with a UTF-16 byte-order mark but is not UTF-16 ({error})") from None
    return raw


def _has_undecodable(value: Any) -> bool:
    """Whether a parsed JSON value holds a byte that was not UTF-8 (kept as a lone surrogate)."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_undecodable(k) or _has_undecodable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_undecodable(v) for v in value)
    return False


def read_records(path: Path, rejected: Counter) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, object) of a JSON array file or a JSON-lines file.

    Bad rows are counted in `rejected`, never raised: invalid_utf8, invalid_json (a line
    that does not parse), not_an_object. A JSON array that does not parse as a whole is an
    InputFileError.
    """
    raw = _file_bytes(path)
    if raw.lstrip()[:1] == b"[":
        try:
            text, undecodable = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            text, undecodable = raw.decode("utf-8", "surrogateescape"), True
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputFileError(f"{path}: not valid JSON ({error})") from None
        for number, row in enumerate(rows, start=1):
            if undecodable and _has_undecodable(row):
                rejected["invalid_utf8"] += 1
            elif isinstance(row, dict):
                yield number, row
            else:
                rejected["not_an_object"] += 1
        return
    for number, line in enumerate(raw.split(b"\n"), start=1):
        line = line.removeprefix(codecs.BOM_UTF8).strip()  # a BOM also starts each file of a concatenation
        if not line:
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            rejected["invalid_utf8"] += 1
            continue
        except json.JSONDecodeError:
            rejected["invalid_json"] += 1
            continue
        if isinstance(row, dict):
            yield number, row
        else:
            rejected["not_an_object"] += 1


def read_csv_rows(path: PathLike) -> tuple[list[str], list[tuple[int, list[str] | None]]]:
    """The header and the (line number, cells) of every other non-blank line of a CSV file;
    cells is None for a line that is not UTF-8 (the caller rejects or refuses it)."""
    path = Path(path)
    lines = _file_bytes(path).split(b"\n")
    decoded: list[tuple[int, str | None]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            decoded.append((number, line.decode("utf-8")))
        except UnicodeDecodeError:
            decoded.append((number, None))
    if not decoded or decoded[0][1] is None:
        raise InputFileError(f"{path}: no readable header line (an empty file, or not UTF-8)")
    header = next(csv.reader([decoded[0][1]]))
    rows = [(number, None if text is None else next(csv.reader([text]))) for number, text in decoded[1:]]
    return [name.strip() for name in header], rows
