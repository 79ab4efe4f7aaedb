"""The locks that keep one writer per home, under `<home>/locks/`.

- `locks/writer.lock`, held by whichever process writes the warehouse (a Dagster run, whoever
  launched it): DuckDB takes one writing process per file, so a second run waits here and
  says who holds it instead of failing on DuckDB's lock error;
- `locks/flywheel.lock`, held by an `arena-dagster flywheel` command for its whole life, so a
  second command on the same home waits for the first (or refuses, with --no-wait).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from arena_dagster.errors import ArenaError
from arena_dagster.paths import check_name, inside


class HomeError(ArenaError):
    pass


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class HomeLock:
    """An exclusive flock on a file under `home/locks/`, whose content says who holds it.

    The kernel drops the lock when its holder dies (kill -9 included), so a stale lock file
    never blocks anyone; its content is only there to tell a waiting process who it waits for.
    """

    def __init__(self, home: Path, name: str) -> None:
        self.home = Path(home)
        self.path = inside(self.home, Path("locks") / f"{check_name(name, 'lock name')}.lock", "lock file")
        self._handle = None

    def holder(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except OSError:
            return None
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return None

    def acquire(
        self,
        *,
        wait: bool = True,
        timeout_s: float | None = None,
        on_wait: Callable[[dict[str, Any] | None], None] | None = None,
        **about: Any,
    ) -> bool:
        """Take the lock (True); False when `wait` is off or `timeout_s` passed while another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    handle.close()
                    raise
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                handle.close()
                return False
            if on_wait is not None and not told:
                on_wait(self.holder())
                told = True
            time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now(), **about}))
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.flush()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    @contextlib.contextmanager
    def held(self, **kwargs: Any) -> Iterator[None]:
        if not self.acquire(**kwargs):
            holder = self.holder() or {}
            raise HomeError(
                f"another process writes this home (pid {holder.get('pid', '?')}, {describe_holder(holder)})",
                str(self.home), "wait for it to finish, or stop it",
            )
        try:
            yield
        finally:
            self.release()


def writer_lock(home: Path) -> HomeLock:
    return HomeLock(home, "writer")


def flywheel_lock(home: Path) -> HomeLock:
    return HomeLock(home, "flywheel")


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "unknown holder"
    parts = [f"{k} {holder[k]}" for k in ("command", "job", "round", "run_id") if holder.get(k) not in (None, "")]
    return ", ".join(parts + [f"since {holder.get('since', '?')}"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
