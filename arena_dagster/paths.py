"""Names that become files, and the folders the pipeline may write: names stay names, paths stay home.

A profile's model, judge, competitor and dataset names end up as file and folder names
(`models/<name>`, `checkpoints/<name>`, `data/<name>.jsonl`). `check_name` admits only a
plain name (letters, digits, `.`, `_`, `-`; no separators, no leading dot), so a name like
`../../home/me/evil` or `/home/me/precious` is refused where the profile is loaded, not
discovered as a write outside the home. `inside` is the second line of defence: every path
the pipeline writes or deletes is resolved (symlinks included) and must lie under one of
the roots it is allowed to touch (the home, and the shared cache of base models).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from arena_dagster.errors import ArenaError

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

# A name is 1-128 characters: a letter or digit first, then letters, digits, '.', '_' or '-'.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)


class UnsafePathError(ArenaError, ValueError):
    """A name that is not a plain name, or a path outside the roots the pipeline may write."""


def check_name(name: object, what: str = "name") -> str:
    """`name` itself when it is a plain name (see NAME_PATTERN); UnsafePathError otherwise."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise UnsafePathError(
            f"{what} {name!r} is not a plain name: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def slug(text: str, *, max_length: int = 64) -> str:
    """A plain name derived from any text, unique per text (a short hash is appended when it had to change)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[: max_length - 9] or "x"
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    if cleaned == text:
        return text
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str], what: str = "path") -> Path:
    """`path` resolved, when it lies under `root` (resolved too); UnsafePathError otherwise."""
    base = Path(root).expanduser().resolve()
    target = Path(path).expanduser()
    target = (target if target.is_absolute() else base / target).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{what} {str(path)!r} resolves to {target}, outside {base}")
    return target


def inside_any(roots: list[str | os.PathLike[str]], path: str | os.PathLike[str], what: str = "path") -> Path:
    """`path` resolved, when it lies under one of `roots`."""
    errors = []
    for root in roots:
        try:
            return inside(root, path, what)
        except UnsafePathError as exc:
            errors.append(str(exc))
    raise UnsafePathError(errors[0] if len(errors) == 1 else f"{what} {str(path)!r} is outside every allowed root: {roots}")


def remove_tree(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Delete a folder (or file) that lies under `root`; never anything outside it, never `root` itself.

    A symbolic link under `root` is removed as a link (what it points to is left alone).
    """
    link = Path(path).expanduser()
    link = link if link.is_absolute() else Path(root).expanduser().resolve() / link
    if link.is_symlink():
        inside(root, link.parent, "folder to delete from")
        link.unlink()
        return
    target = inside(root, path, "folder to delete")
    if target == Path(root).expanduser().resolve():
        raise UnsafePathError(f"refusing to delete the root {target} itself")
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def replace_dir(root: str | os.PathLike[str], source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Swap the finished folder `source` into `target` (both under `root`); a stale target goes aside, then away."""
    source_path, target_path = inside(root, source, "source folder"), inside(root, target, "target folder")
    if target_path.exists():
        stale = Path(str(target_path) + ".old")
        if stale.exists():
            remove_tree(root, stale)
        os.rename(target_path, stale)
        os.rename(source_path, target_path)
        remove_tree(root, stale)
    else:
        os.rename(source_path, target_path)


CACHE_ENV = "ARENA_CACHE"
CACHE_OFF = ("off", "none", "0", "false")


def cache_root() -> Path | None:
    """The shared cache folder (training/model_cache.py's docstring), or None when ARENA_CACHE=off."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured.lower() in CACHE_OFF:
        return None
    if configured:
        return Path(configured).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "arena-dagster").resolve()


def base_models_cache(root: Path | None = None) -> Path | None:
    """The base-model part of the cache (created), or None when the cache is off."""
    root = root if root is not None else cache_root()
    if root is None:
        return None
    folder = inside(root, Path(root) / "base-models", "base-model cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
