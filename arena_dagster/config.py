"""Profiles (assets/profiles/*.yaml) and the project's home folder."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any


import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    """A top-level folder of versioned inputs (`assets`, `dbt_like_sql`).

    From a checkout (or an editable install) it is the repository's folder; a wheel install
    puts them under `<prefix>/share/arena-dagster/` (pyproject's data-files), where <prefix>
    holds `lib/pythonX.Y/site-packages/arena_dagster`.
    """
    prefixes = [*PROJECT_ROOT.parents[2:3], Path(sys.prefix)]  # <prefix>/lib/pythonX.Y/site-packages
    candidates = [PROJECT_ROOT, *(prefix / "share" / "arena-dagster" for prefix in prefixes)]
    for root in candidates:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{name}/ not found in any of {[str(c) for c in candidates]}")


ASSETS_DIR = resource_dir("assets")
PROFILES_DIR = ASSETS_DIR / "profiles"
DEFAULT_PROFILE = "skills"


class ConfigError(ValueError):
    pass


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The flywheel's home: --home, else $ARENA_HOME, else ./.arena."""
    chosen = home or os.environ.get("ARENA_HOME") or ".arena"
    return Path(chosen).expanduser().resolve()


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_profile(name_or_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Load a profile by name (assets/profiles/NAME.yaml) or path; `extends: NAME` inherits."""
    ref = str(name_or_path or os.environ.get("ARENA_PROFILE") or DEFAULT_PROFILE)
    path = Path(ref)
    if not path.suffix:
        path = PROFILES_DIR / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"profile {ref!r} not found (known profiles: {known})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a YAML mapping")
    parent = data.pop("extends", None)
    if parent:
        data = _deep_merge(load_profile(parent), data)
    data.setdefault("name", path.stem)
    return data


def profile_hash(profile: dict[str, Any]) -> str:
    blob = json.dumps(profile, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def require(profile: dict[str, Any], dotted: str) -> Any:
    node: Any = profile
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"profile {profile.get('name')!r} is missing setting {dotted!r}")
        node = node[part]
    return node
