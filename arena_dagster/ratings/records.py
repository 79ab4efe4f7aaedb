"""Reading the rows of JSON, JSON-lines and CSV files written by other tools, never failing on
one bad row: the package's one reader (`arena_dagster/record_files.py`), with the rows it
quarantined counted by reason (invalid_utf8, nul_character, lone_surrogate, invalid_json,
not_an_object, invalid_csv) in the importers' `rejected` counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from arena_dagster.ratings.errors import InputFileError
from arena_dagster.record_files import Quarantined, RecordFileError, csv_rows, iter_records

PathLike = str | Path


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


def read_records(path: Path, rejected: Counter) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, object) of a JSON array, JSON object or JSON-lines file; bad rows are
    counted in `rejected` by reason, never raised. A file that cannot be read is an InputFileError."""
    quarantine: list[Quarantined] = []
    try:
        yield from iter_records(path, quarantine)
    except RecordFileError as error:
        raise InputFileError(error.what, error.input, error.fix) from None
    finally:
        rejected.update(q.reason for q in quarantine)


def read_csv_rows(path: PathLike) -> tuple[list[str], list[tuple[int, list[str] | Quarantined]]]:
    """The header and the (line number, cells) of every other non-blank record of a CSV file;
    a record with bad text comes as its Quarantined entry instead (the caller rejects or refuses it)."""
    quarantine: list[Quarantined] = []
    try:
        header, rows = csv_rows(path, quarantine)
        read = list(rows)
    except RecordFileError as error:
        raise InputFileError(error.what, error.input, error.fix) from None
    return header, sorted([*read, *((q.number, q) for q in quarantine)], key=lambda item: item[0])
