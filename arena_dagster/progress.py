"""What the terminal shows while a run works: one line per finished step, a bar for long steps.

Every event of the run also goes, one line each, to a log file under the home; `verbose`
prints those lines too. Events are Dagster's EventLogEntry objects, read by attribute, so
this module does not import Dagster. Long steps (generation, judging, training) report
`done/total` counts in their log lines ("SFT-I1: 96/240 generated", "step 40/120"): the last
such count of the running step drives its bar.
"""

from __future__ import annotations

import io
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, TextIO

from arena_dagster.errors import name_os_errors

_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")
_QUIET = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED", "RUN_SUCCESS", "RUN_FAILURE"}


def _event_type(entry: Any) -> str:
    event = getattr(entry, "dagster_event", None)
    return str(getattr(event, "event_type_value", "") or "") if event is not None else ""


def _first_line(text: str) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


class RunPrinter:
    """Renders a run's events as steps with elapsed time; feed it with `operate.follow`."""

    def __init__(self, log_file: Path | None, *, verbose: bool = False, out: TextIO | None = None, label: str = "") -> None:
        self.out = out or sys.stdout
        self.verbose = verbose
        self.label = label
        self._log = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_file.open("a", encoding="utf-8")
        self._started: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._bar = None
        self._bar_step: str | None = None
        self.failures: list[str] = []
        self._tty = hasattr(self.out, "isatty") and self.out.isatty()

    def close(self) -> None:
        self._close_bar()
        if self._log is not None:
            self._log.close()

    def __call__(self, entry: Any) -> None:
        kind = _event_type(entry)
        step = getattr(entry, "step_key", None) or ""
        message = getattr(entry, "user_message", "") or ""
        stamp = datetime.fromtimestamp(getattr(entry, "timestamp", time.time())).strftime("%H:%M:%S")
        line = f"{stamp} {kind or getattr(entry, 'level', '')} {step} {message}".rstrip()
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()
        if self.verbose:
            self._write(line)
        if step and message and kind != "STEP_FAILURE" and int(getattr(entry, "level", 0) or 0) >= 40:
            self._last_error[step] = _first_line(message)
        if step and kind == "ENGINE_EVENT":
            # A Pipes process that died of an exception says which in an engine event; the step's own failure
            # only says that the process exited.
            error = getattr(getattr(entry.dagster_event, "event_specific_data", None), "error", None)
            if error is not None:
                self._last_error[step] = _first_line(getattr(error, "message", ""))
        if kind == "STEP_START":
            self._started[step] = getattr(entry, "timestamp", time.time())
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            self._finish(step, kind, entry)
        if step and message and kind not in _QUIET:
            self._progress(step, message)

    def _finish(self, step: str, kind: str, entry: Any) -> None:
        if self._bar_step == step:
            self._close_bar()
        elapsed = getattr(entry, "timestamp", time.time()) - self._started.pop(step, getattr(entry, "timestamp", time.time()))
        mark = {"STEP_SUCCESS": "ok  ", "STEP_FAILURE": "FAIL", "STEP_SKIPPED": "skip"}[kind]
        detail = ""
        if kind == "STEP_FAILURE":
            error = getattr(getattr(entry.dagster_event, "event_specific_data", None), "error", None)
            # Dagster wraps the asset's own exception ("Error occurred while executing op ..."): show the innermost.
            while getattr(error, "cause", None) is not None:
                error = error.cause
            detail = _first_line(getattr(error, "message", "") or getattr(entry, "user_message", ""))
            reported = self._last_error.pop(step, "")
            if reported and "DagsterPipesExecutionError" in detail:
                detail = f"{reported} (in the step's process; {detail.split(': ', 1)[-1]})"
            elif reported and reported not in detail:
                detail = f"{detail} ({reported})"
            detail = name_os_errors(detail)
            self.failures.append(f"{step}: {detail}")
        self._write(f"  {mark} {self.label}{step:<28} {elapsed:7.1f} s  {detail}".rstrip())

    def _progress(self, step: str, message: str) -> None:
        match = None
        for match in _COUNT.finditer(message):
            pass
        if match is None or not self._tty:
            return
        done, total = int(match.group(1)), int(match.group(2))
        if total <= 0 or done > total:
            return
        from tqdm import tqdm

        if self._bar_step != step:
            self._close_bar()
            self._bar = tqdm(total=total, desc=f"       {self.label}{step}", file=self.out, leave=False,
                             bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} [{elapsed}]")
            self._bar_step = step
        if self._bar.total != total:
            self._bar.reset(total=total)
        self._bar.n = done
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._bar_step = None

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.clear()
        print(text, file=self.out, flush=True)
        if self._bar is not None:
            self._bar.refresh()


def step_failures(entries: Iterable[Any]) -> list[str]:
    """`step: cause` of every failed step of a run's events, as the terminal's FAIL lines say it (the failed-rounds log)."""
    printer = RunPrinter(None, out=io.StringIO())
    for entry in entries:
        printer(entry)
    printer.close()
    return printer.failures
