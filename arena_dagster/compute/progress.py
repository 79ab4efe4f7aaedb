"""Progress of a long step: a tqdm bar on a terminal and a log line every few percent, with rows/s.

`Progress` is what a step reports to; `progress_sink(log)` makes one per phase. The CLI passes no
log (the bar is enough on a terminal; a line every 5% when stderr is not one), a Dagster step
passes `context.log.info`, so the run's log says how far the step is and how fast it goes.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

Log = Callable[[str], None]


class Progress:
    def __init__(self, label: str, total: int, *, log: Log | None = None, every: float = 0.05, unit: str = "rows") -> None:
        from tqdm import tqdm

        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.done = 0
        self.every = every
        self.started = time.perf_counter()
        self._next = every
        terminal = sys.stderr.isatty()
        self.log = log or (None if terminal else (lambda line: print(line, file=sys.stderr, flush=True)))
        self.bar = tqdm(total=self.total, desc=label, unit=f" {unit}", disable=not terminal, leave=False, file=sys.stderr)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.started, 1e-9)

    def line(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.label}: {self.done}/{self.total} {self.unit} ({percent:.0f}%), {self.rate():.1f} {self.unit}/s"

    def update(self, n: int) -> None:
        self.done += int(n)
        self.bar.update(int(n))
        if self.log and self.total and (self.done / self.total >= self._next or self.done >= self.total):
            self.log(self.line())
            while self._next <= self.done / self.total:
                self._next += self.every

    def close(self) -> None:
        self.bar.close()


def progress_sink(log: Log | None = None) -> Callable[[str, int], Progress]:
    """A factory of progress bars that all log to `log`: `sink(label, total) -> Progress`."""
    return lambda label, total: Progress(label, total, log=log)
