"""The one error type a user sees: what went wrong, with which input, and how to fix it.

Every module raises its own subclass (ConfigError, WarehouseError, BackendError, ...) or wraps
a library error in one; the CLI prints `arena-dagster: <what> (<input>): <fix>` and exits 2,
and shows the traceback only with `--debug`.
"""

from __future__ import annotations

import errno as _errno
import os as _os
import re as _re


class ArenaError(Exception):
    """A user-facing error. `str(error)` is the one line the CLI prints after `arena-dagster: `."""

    exit_code = 2

    def __init__(self, what: str, input: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.input = input
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        text = self.what
        if self.input:
            text += f" ({self.input})"
        if self.fix:
            text += f": {self.fix}"
        return " ".join(text.split())


# ------------------------------------------------------------------------------ OS errors by name

# How OS errors read once they crossed a process or a library: Python's `[Errno 28] ...`, Rust's
# (safetensors, tokenizers) `... (os error 28)` or `Os { code: 28, kind: StorageFull, ... }`.
_PYTHON_ERRNO = _re.compile(r"\[Errno (\d+)\] ")
_RUST_ERRNO = _re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def errno_name(number: int | None) -> str:
    return _errno.errorcode.get(number or 0, f"errno {number}")


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OS error behind `exc`: itself, one in its cause/context chain, or one a library reports in its message."""
    seen: set[int] = set()
    current = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        match = _RUST_ERRNO.search(str(current))
        if match:
            number = int(match.group(1) or match.group(2))
            return OSError(number, _os.strerror(number))
        current = current.__cause__ or current.__context__
    return None


def describe_os_error(error: OSError, writing: object = None) -> str:
    """`ENOSPC: No space left on device: /path`: the errno's name, its message and the path.

    A failed write names no file (only a failed open does): `writing` says what was being written.
    """
    text = f"{errno_name(error.errno)}: {error.strerror or _os.strerror(error.errno or 0)}"
    if error.filename is not None:
        text += f": {_os.fsdecode(error.filename)}"
        if error.filename2 is not None:
            text += f" -> {_os.fsdecode(error.filename2)}"
    elif writing is not None:
        text += f" (while writing {writing})"
    return text


def name_os_errors(text: str) -> str:
    """Python's `[Errno 28] No space left on device: '/x'` in a message, with the errno's name: `ENOSPC: No space ...`."""
    return _PYTHON_ERRNO.sub(lambda m: f"{errno_name(int(m.group(1)))}: ", text)
