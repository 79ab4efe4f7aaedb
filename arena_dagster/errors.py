"""The one error type a user sees: what went wrong, with which input, and how to fix it.

Every module raises its own subclass (ConfigError, WarehouseError, BackendError, ...) or wraps
a library error in one; the CLI prints `arena-dagster: <what> (<input>): <fix>` and exits 2,
and shows the traceback only with `--debug`.
"""

from __future__ import annotations


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
