"""Run a command that dies with the process that launched it: `python -m arena_dagster.training.guard --parent PID -- COMMAND...`.

A training subprocess must not outlive a flywheel killed with kill -9: it would keep writing
`<checkpoint>.tmp` into a home whose next run is already starting. Linux's
`prctl(PR_SET_PDEATHSIG, SIGKILL)` asks the kernel to kill this process when its parent dies;
the setting survives `execve`, so the guard sets it, checks that the parent it was started by
(`--parent`) is still its parent (it may have died before the prctl), then execs the real
command in its own place. Any launcher that starts a plain command line gets this, Dagster
Pipes' `PipesSubprocessClient` included (it has no `preexec_fn`).

Under `accelerate launch`, torchrun starts the ranks in new sessions from the launcher
process; the guard exports its own pid as ARENA_GUARD_PARENT, and every rank calls
`follow_launcher()` first thing, so the ranks die with the launcher, which dies with the
flywheel.

The kernel sends the signal when the *thread* that started the child ends: launch the command
from a thread that waits for it (as `subprocess.run` and PipesSubprocessClient do).
Elsewhere than Linux the guard only execs the command.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_ENV = "ARENA_GUARD_PARENT"
GUARD_MODULE = "arena_dagster.training.guard"
# The exit status of a guard whose parent was already gone: as if killed by SIGKILL.
ORPHAN_EXIT = 128 + signal.SIGKILL


def guarded(command: list[str], parent: int | None = None) -> list[str]:
    """`command` run through the guard, to die with `parent` (default: this process, its launcher)."""
    return [sys.executable, "-m", GUARD_MODULE, "--parent", str(parent or os.getpid()), "--", *command]


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends; end now if `parent` is not its parent any more."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    # Checked after the prctl: a parent that dies from here on kills us; one that died before
    # has left us with another parent (init or a subreaper).
    if os.getppid() != parent:
        print(f"guard: the launching process {parent} is gone; not starting", file=sys.stderr, flush=True)
        os._exit(ORPHAN_EXIT)


def follow_launcher() -> None:
    """In a process started by a guarded launcher (an accelerate rank), die with that launcher too."""
    launcher = os.environ.get(PARENT_ENV)
    if launcher and launcher.isdigit() and int(launcher) != os.getpid():
        die_with_parent(int(launcher))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 4 or argv[0] != "--parent" or not argv[1].isdigit() or argv[2] != "--":
        print("usage: python -m arena_dagster.training.guard --parent PID -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    command = argv[3:]
    die_with_parent(int(argv[1]))
    os.environ[PARENT_ENV] = str(os.getpid())
    os.execvp(command[0], command)
    return 0  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    raise SystemExit(main())
