"""A flywheel home: one folder with the warehouse, caches, models, the Dagster instance and the profile.

The home remembers the profile (and seed) it was built with in `arena.json`, so the UI, the
schedule, the sensors and `leaderboard` run and read the same flywheel the CLI started; a
different profile on an existing home is refused unless the caller says so explicitly.

Its locks (one writer per home) are in arena_dagster/locks.py.

No Dagster import here: the CLI and the Dagster layer both use these functions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from arena_dagster.config import DEFAULT_PROFILE, load_profile, profile_hash, resolve_home
from arena_dagster.locks import HomeError, now as _now, writer_lock
from arena_dagster.paths import check_name

HOME_FILE = "arena.json"
LOCATION_NAME = "arena_dagster"


class HomeProfileMismatch(HomeError):
    pass


def read_home_record(home: Path) -> dict[str, Any] | None:
    """What `arena.json` says (profile name, seed, hash), or None for a home no run has started."""
    path = Path(home) / HOME_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HomeError(f"the home's {HOME_FILE} is unreadable", str(path), f"fix or delete it ({exc})") from exc
    if not isinstance(record, dict) or "profile" not in record:
        raise HomeError(f"the home's {HOME_FILE} has no profile", str(path), "delete it to start the home afresh")
    return record


def profile_settings(name: str, seed: int | None = None) -> dict[str, Any]:
    """The validated profile, with every random choice derived from `seed` when one is given."""
    settings = load_profile(name)
    if seed is not None:
        from arena_dagster.config import with_seed

        settings = with_seed(settings, int(seed))
    return settings


def home_profile(home: Path, requested: str | None = None, seed: int | None = None) -> tuple[str, int | None, dict[str, Any]]:
    """(profile name, seed, settings) of a home: its record, else the request, $ARENA_PROFILE or the default."""
    record = read_home_record(home)
    if record is not None:
        name, recorded_seed = record["profile"], record.get("seed")
        if requested is not None and requested != name:
            raise HomeProfileMismatch(
                f"this home was built with profile {name!r}, not {requested!r}", str(home),
                "use another --home, or --switch-profile to run the new profile here",
            )
        if seed is not None and seed != recorded_seed:
            raise HomeProfileMismatch(
                f"this home was built with seed {recorded_seed}, not {seed}", str(home),
                "use another --home, or --switch-profile to run the new seed here",
            )
        return name, recorded_seed, profile_settings(name, recorded_seed)
    name = requested or os.environ.get("ARENA_PROFILE") or DEFAULT_PROFILE
    return name, seed, profile_settings(name, seed)


def record_profile(home: Path, name: str, seed: int | None, settings: dict[str, Any], *, switch: bool = False) -> dict[str, Any]:
    """Write `arena.json` on the first run; refuse another profile or seed unless `switch`."""
    check_name(name, "profile name")
    record = read_home_record(home)
    changed = record is not None and (record["profile"], record.get("seed")) != (name, seed)
    if changed and not switch:
        raise HomeProfileMismatch(
            f"this home was built with profile {record['profile']!r} (seed {record.get('seed')}), "
            f"not {name!r} (seed {seed})", str(home), "use another --home, or --switch-profile",
        )
    new = {
        "profile": name,
        "seed": seed,
        "profile_hash": profile_hash(settings),
        "created_at": (record or {}).get("created_at") or _now(),
        "switched_from": [*((record or {}).get("switched_from") or []),
                          *([{"profile": record["profile"], "seed": record.get("seed")}] if changed else [])],
    }
    if record != new:
        _write_json(Path(home) / HOME_FILE, new)
    return new


def dagster_home(home: Path) -> Path:
    return Path(home) / "dagster"


def logs_dir(home: Path) -> Path:
    return Path(home) / "logs"


# The instance every way of running shares: runs wait in one queue with one slot per home (the
# warehouse takes one writer), telemetry is off, and run logs stay in the home.
DAGSTER_YAML = """\
# Written by arena-dagster for this flywheel home; edits are kept unless the file is deleted.
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1        # one writer per home: the DuckDB warehouse takes one writing process
    dequeue_interval_seconds: 1
run_monitoring:
  enabled: false                  # dead runs are failed by `arena-dagster` at its next start (see home.py)
"""

WORKSPACE_YAML = f"""\
# Written by arena-dagster: the code location every run of this home loads.
load_from:
  - python_module:
      module_name: arena_dagster.defs
      location_name: {LOCATION_NAME}
"""


def prepare_instance(home: Path) -> Path:
    """Create the home's Dagster instance folder with its dagster.yaml and workspace.yaml; returns the workspace file."""
    folder = dagster_home(home)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("dagster.yaml", DAGSTER_YAML), ("workspace.yaml", WORKSPACE_YAML)):
        path = folder / name
        if not path.is_file():
            path.write_text(text)
    logs_dir(home).mkdir(parents=True, exist_ok=True)
    return folder / "workspace.yaml"


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def prepare_environment(home: Path) -> None:
    """Offline Hugging Face libraries and this home's Dagster instance for this process and its children."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.update(environment(home))


def environment(home: Path) -> dict[str, str]:
    """Environment of every process that works on this home (daemon, code server, run workers, trainers)."""
    return {
        "ARENA_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home(home)),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        # Dagster's beta/preview warnings are for the code's authors, not for the person running a round.
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"),
    }


# ------------------------------------------------------------------------------------------ misc


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def home_from_env() -> Path:
    """The home of this process: $ARENA_HOME, else ./.arena (resolved; not created)."""
    return resolve_home(None)


def _output_name(name: str) -> str:
    """The checkpoint folder a file beside it belongs to: `SFT-I1.tmp`, `SFT-I1.spec.json`, `SFT-I1.lock` -> SFT-I1."""
    for suffix in (".spec.json", ".tmp", ".old", ".lock"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    legacy = re.fullmatch(r"(.+)\.[a-z0-9_]{8}\.json", name)
    return legacy.group(1) if legacy else name


def reap_stale_files(home: Path) -> list[Path]:
    """Remove what killed trainings left in the home's model folders (see training.runner.leftovers).

    Only while no run holds the writer lock (a live training writes its `.tmp`); nothing
    outside the home is touched.
    """
    from arena_dagster.paths import remove_tree
    from arena_dagster.training.runner import leftovers

    lock = writer_lock(home)
    if not lock.acquire(wait=False, command="cleanup"):
        return []
    removed: list[Path] = []
    try:
        for folder in ("checkpoints", "models/models"):
            root = Path(home) / folder
            if not root.is_dir():
                continue
            outputs = {root / _output_name(entry.name) for entry in root.iterdir()}
            for stale in sorted({path for output in outputs for path in leftovers(output)}):
                remove_tree(home, stale)
                removed.append(stale)
    finally:
        lock.release()
    return removed
