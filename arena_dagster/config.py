"""Profiles (assets/profiles/*.yaml) and the project's home folder."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from arena_dagster.errors import ArenaError
from arena_dagster.paths import ASSETS_DIR

if TYPE_CHECKING:
    from arena_dagster.profile_schema import Profile

PROFILES_DIR = ASSETS_DIR / "profiles"
DEFAULT_PROFILE = "skills"


class ConfigError(ArenaError, ValueError):
    """A profile that cannot be used: unknown, unreadable, extending itself, or not valid."""


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The flywheel's home: --home, else $ARENA_HOME, else ./.arena."""
    chosen = home or os.environ.get("ARENA_HOME") or ".arena"
    return Path(chosen).expanduser().resolve()


# A mapping that names another of these than its parent's is another kind of thing (an openai model
# config over a transformers one): it replaces the parent's instead of inheriting keys it cannot take.
TYPE_KEYS = ("backend", "kind", "source")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        parent = merged.get(key)
        if isinstance(value, dict) and isinstance(parent, dict) and not _retyped(parent, value):
            merged[key] = _deep_merge(parent, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _retyped(parent: dict[str, Any], child: dict[str, Any]) -> bool:
    return any(key in child and key in parent and child[key] != parent[key] for key in TYPE_KEYS)


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_file(ref: str | os.PathLike[str], relative_to: Path | None = None) -> Path:
    """The YAML file of a profile name (assets/profiles/NAME.yaml) or path (`.yaml`/`.yml`, or with a `/`)."""
    text = str(ref)
    if Path(text).suffix in (".yaml", ".yml") or "/" in text or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise ConfigError("profile file not found", str(path), f"give a YAML file, or a profile name: {', '.join(known_profiles())}")
        return path
    path = PROFILES_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {text!r}", None, f"use one of {', '.join(known_profiles())}, or a path to a .yaml file")
    return path


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    # The record reader's text rules: a BOM or CRLF reads as clean UTF-8; bad bytes, a NUL or a
    # lone surrogate (also as a YAML "\ud800" escape) is one line naming the file.
    from arena_dagster.record_files import RecordFileError, read_text, text_problem

    try:
        data = yaml.load(read_text(path), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecordFileError as exc:
        raise ConfigError(exc.what, exc.input, "save the profile as UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", where, "fix the YAML syntax at that line") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"a profile must be a YAML mapping, got {type(data).__name__}", str(path))
    problem = text_problem(data)
    if problem:
        raise ConfigError(f"{problem[0].replace('_', ' ')} in a value: {problem[1]}", str(path), "remove it")
    return data


def profile_chain(ref: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """(file, its own settings) from the root profile to `ref`, following `extends:`; a cycle is an error."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    path = profile_file(ref)
    while True:
        if any(seen.resolve() == path.resolve() for seen, _ in chain):
            cycle = " -> ".join([p.stem for p, _ in chain] + [path.stem])
            raise ConfigError(f"profiles extend each other in a cycle: {cycle}", str(chain[0][0]), "remove one `extends:`")
        data = _read_yaml(path)
        parent = data.pop("extends", None)
        chain.append((path, data))
        if parent is None:
            return chain[::-1]
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"extends must be a profile name or path, got {parent!r}", str(path))
        path = profile_file(parent, relative_to=path.parent)


def validate_profile(profile: dict[str, Any], chain: list[tuple[Path, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """`profile` when every key and value is valid (profile_schema), with its model names normalized
    (the same object when they already were); else one ConfigError line.

    `chain`: the files it was merged from, to name the one that holds the faulty key.
    """
    from arena_dagster.profile_schema.base import normalized_input

    return normalized_input(profile, settings_of(profile, chain))


def settings_of(profile: dict[str, Any], chain: list[tuple[Path, dict[str, Any]]] | None = None) -> "Profile":
    """The typed settings of a plain profile (as `load_profile` returns it and a home records it).

    The one place a profile is validated: code below reads the models' attributes, and the
    plain form stays what a home records and hashes (`profile_hash`). Else one ConfigError line.
    """
    from pydantic import ValidationError

    from arena_dagster.profile_schema import Profile, validation_context
    from arena_dagster.profile_schema.base import first_error

    try:
        return Profile.model_validate(profile, context=validation_context(profile))
    except ValidationError as exc:
        what, fix, parts, more = first_error(exc, profile)
        source = _holder(chain or [], parts)
        name = profile.get("name")
        where = ", ".join(x for x in (f"profile {name}" if isinstance(name, str) else "", str(source) if source else "") if x)
        if more:
            fix = f"{fix + '; ' if fix else ''}{more} more problem{'s' if more > 1 else ''} after this one"
        raise ConfigError(what, where or None, fix) from None


def _holder(chain: list[tuple[Path, dict[str, Any]]], parts: list[Any]) -> Path | None:
    """The last file of the chain that sets the longest prefix of `parts`."""
    best, depth = (chain[-1][0] if chain else None), -1
    for path, data in chain:
        node, reached = data, 0
        for part in parts:
            if isinstance(node, dict) and part in node:
                node, reached = node[part], reached + 1
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node, reached = node[part], reached + 1
            else:
                break
        if reached and reached >= depth:
            best, depth = path, reached
    return best


# Settings that name input files: a relative path is relative to the profile file that sets it (as
# `extends:`), never to the working directory, which differs between the CLI and the Dagster daemon
# (it runs in the home). Loading makes them absolute.
FILE_SETTINGS = (("judge", "paths"), ("prompts", "questions"), ("evaluation", "reference"),
                 ("models", "launch", "config_file"))


def _setting(profile: dict[str, Any], parts: tuple[str, ...]) -> tuple[bool, Any]:
    """(present, value) of the nested setting `parts` (absent where a level above is not a mapping)."""
    node: Any = profile
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _with_setting(profile: dict[str, Any], parts: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `profile` (copied only along `parts`) with the nested setting `parts` set to `value`."""
    if len(parts) == 1:
        return {**profile, parts[0]: value}
    return {**profile, parts[0]: _with_setting(profile[parts[0]], parts[1:], value)}


def _with_file_paths(profile: dict[str, Any], chain: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    out = profile
    for parts in FILE_SETTINGS:
        present, value = _setting(out, parts)
        if not present:
            continue
        holder = _holder(chain, list(parts))
        folder = holder.parent if holder is not None else Path.cwd()

        def absolute(value: Any, folder: Path = folder) -> Any:
            if not isinstance(value, str) or not value:
                return value  # not a path: validation names it
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (folder / path).resolve())

        resolved = [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
        out = _with_setting(out, parts, resolved)
    return out


def load_profile(name_or_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The profile as a plain dict, valid, with its sub-seeds derived from its `seed` (see `with_seed`).

    `name_or_path`: a name (assets/profiles/NAME.yaml) or a YAML path, else $ARENA_PROFILE,
    else the default. `extends: NAME` inherits another profile (its path relative to this file's
    folder when it is a path): mappings merge key by key, except that one naming another
    `backend`, `kind` or `source` than the parent's replaces it. The name is the file's own
    `name:` or its stem. Input files it names (FILE_SETTINGS) become absolute paths, read from
    the folder of the profile file that names them.
    """
    ref = str(name_or_path or os.environ.get("ARENA_PROFILE") or DEFAULT_PROFILE)
    chain = profile_chain(ref)
    merged: dict[str, Any] = {}
    for _path, data in chain:
        merged = _deep_merge(merged, data)
    leaf_path, leaf = chain[-1]
    merged["name"] = leaf.get("name", leaf_path.stem)
    merged = _with_file_paths(merged, chain)
    merged = validate_profile(merged, chain)
    return with_seed(merged, merged.get("seed", 0))


def load_settings(name_or_path: str | os.PathLike[str] | None = None) -> "Profile":
    """The typed settings of a profile (`load_profile`, then `settings_of`)."""
    return settings_of(load_profile(name_or_path))


def with_seed(profile: dict[str, Any], seed: int) -> dict[str, Any]:
    """A copy of `profile` whose every random choice follows `seed` (`arena-dagster flywheel --seed N`).

    Each sub-seed (`prompts.seed`: the raw pool, the train/test split of real sources and the
    round slices; `prompts.curation.seed`: MinHash; `testset.seed`; `models.seed`: base models and
    every stage's training; `evaluation.seed` and `promotion.seed`: bootstraps) that the profile
    does not set is derived from `seed`; one it sets is kept. Seed 0 derives the values every
    profile had before seeds existed, so it reproduces those runs. The paths derived are listed
    in `derived_seeds`, so a profile recorded with its seeds loads back to the same values and
    a later `with_seed` moves exactly those: with_seed(with_seed(p, 3), 5) == with_seed(p, 5).
    """
    from arena_dagster.profile_schema import SEED_PATHS

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ConfigError(f"seed must be an integer from 0 to {2**31 - 1}, got {seed!r}")
    out = copy.deepcopy(profile)
    out["seed"] = seed
    derived = set(out.get("derived_seeds") or [])
    source = (out.get("prompts") or {}).get("source")
    for path in SEED_PATHS:
        *sections, key = path.split(".")
        node: Any = out
        for section in sections:
            if node.get(section) is None:
                node[section] = {}
            node = node[section]
            if not isinstance(node, dict):
                break  # not a mapping: validation names it
        if isinstance(node, dict) and (key not in node or path in derived):
            node[key] = derive_seed(seed, path, source)
            derived.add(path)
    out["derived_seeds"] = [path for path in SEED_PATHS if path in derived]
    return out


# Sub-seeds at top-level seed 0: the values the built-in profiles were measured with.
BASE_SEEDS = {"prompts.seed": 1, "prompts.curation.seed": 1, "models.seed": 0, "evaluation.seed": 0, "promotion.seed": 0}


def derive_seed(seed: int, path: str, source: str | None = None) -> int:
    """The sub-seed at `path` for top-level `seed`: the historical value at 0, else a hash of both."""
    if seed == 0:
        if path == "testset.seed":
            return 10_000 if source == "skills" else 0
        return BASE_SEEDS[path]
    return int.from_bytes(hashlib.sha256(f"arena-dagster/{path}/{seed}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def input_digest(profile: dict[str, Any]) -> str | None:
    """A digest of the contents of the input files the profile names (FILE_SETTINGS; a folder: its
    files), None when it names none. Part of `profile_hash`: judgment files replaced in place change
    the hash, so `arena-dagster flywheel` reruns what was made from them."""
    files: list[Path] = []
    for parts in FILE_SETTINGS:
        value = _setting(profile, parts)[1]
        for entry in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            path = Path(str(entry))
            files.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path).encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(absent)") + b"\0")
    return digest.hexdigest()


def profile_hash(profile: dict[str, Any]) -> str:
    # Where the heavy steps run changes no table: the `compute` section is not part of the identity.
    profile = {key: value for key, value in profile.items() if key != "compute"}
    inputs = input_digest(profile)
    content = profile if inputs is None else {"profile": profile, "input_files": inputs}
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def require(profile: dict[str, Any], dotted: str) -> Any:
    node: Any = profile
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"profile {profile.get('name')!r} is missing setting {dotted!r}")
        node = node[part]
    return node
