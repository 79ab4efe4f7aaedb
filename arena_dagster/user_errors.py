"""Library errors a user causes (a locked or damaged warehouse, a file that is not UTF-8, a full disk)
turned into the project's one-line ArenaError; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno
import json

from arena_dagster.errors import ArenaError


def as_user_error(exc: BaseException) -> ArenaError | None:
    if isinstance(exc, ArenaError):
        return exc
    if isinstance(exc, UnicodeDecodeError):
        return ArenaError("a file is not UTF-8 text", f"byte {exc.start}: {exc.reason}",
                          "convert it to UTF-8 (the importers count and skip such rows where they can)")
    if isinstance(exc, json.JSONDecodeError):
        return ArenaError("malformed JSON", f"line {exc.lineno}, column {exc.colno}", exc.msg)
    try:
        import yaml

        if isinstance(exc, yaml.YAMLError):
            return ArenaError("malformed YAML", " ".join(str(exc).split())[:200], "fix the file's syntax")
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    try:
        import duckdb

        if isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
            return ArenaError("the warehouse is locked by another process", _first(exc),
                              "wait for the running flywheel (or the UI's run) to finish")
        # Storage errors only: a binder or catalog error is a bug in a query and keeps its traceback.
        if isinstance(exc, (duckdb.IOException, duckdb.InternalException, duckdb.FatalException,
                            duckdb.SerializationException)):
            return ArenaError("the warehouse cannot be read or written", _first(exc),
                              "check the file (a damaged warehouse.duckdb can be rebuilt by deleting it and rerunning)")
    except ImportError:  # pragma: no cover - duckdb is a dependency
        pass
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return ArenaError("the disk is full", exc.filename or "", "free space and rerun: finished work is kept")
        if isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)):
            return ArenaError(exc.strerror or type(exc).__name__, str(exc.filename or ""), "check the path and its permissions")
        if exc.errno == errno.EROFS:
            return ArenaError("the file system is read-only", str(exc.filename or ""), "use a writable --home")
    return None


def _first(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]
