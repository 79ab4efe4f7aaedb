"""The embedded default's starting models: a shared tokenizer, specialist competitors, a weak target.

Each competitor is trained on its own subset of skill families, so it is strong there and
weak elsewhere; the initial target sees every family but is trained briefly, so it is
weak but not hopeless (it wins some battles). Everything is cached: a second call with the
same profile reuses every folder whose manifest matches, and a home with the same profile
copies the tokenizer and the models from the shared cache (training/model_cache.py) instead
of training them again.

`DEFAULT_SKILLS_MODELS` (in the schema, profile_schema/training.py) documents the profile shape (the `models:` key of
assets/profiles/skills.yaml); `resolve_profile` merges a partial profile into it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from arena_dagster.paths import check_name, remove_tree, replace_dir
from arena_dagster.profile_schema.training import DEFAULT_SKILLS_MODELS, FAMILIES
from arena_dagster.prompts.skills import make_items
from arena_dagster.training.model_cache import base_models_cache, cache_root, cached_folder, cached_training



class ProfileError(ValueError):
    pass


def resolve_profile(profile: dict | None) -> dict:
    """Deep-merge `profile` over the defaults; a competitor map given in full replaces the default one."""

    def merge(base: dict, override: dict, where: str) -> dict:
        out = copy.deepcopy(base)
        for key, value in override.items():
            if key == "competitors":
                out[key] = {name: merge(_COMPETITOR_DEFAULTS, spec or {}, f"{where}competitors.{name}.") for name, spec in value.items()}
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value, f"{where}{key}.")
            else:
                out[key] = copy.deepcopy(value)
        return out

    resolved = merge(DEFAULT_SKILLS_MODELS, profile or {}, "")
    if not resolved["competitors"]:
        raise ProfileError("models.competitors: at least one competitor is needed")
    # Model names become folder and file names (models/<name>, data/<name>.jsonl).
    for name in resolved["competitors"]:
        check_name(name, "models.competitors name")
    check_name(resolved["initial_target"].get("name"), "models.initial_target.name")
    for name, spec in [*resolved["competitors"].items(), ("initial_target", resolved["initial_target"])]:
        unknown = [f for f in spec.get("families", []) if f not in FAMILIES]
        if unknown or not spec.get("families"):
            raise ProfileError(f"models {name}: families {spec.get('families')} must be a non-empty subset of {FAMILIES}")
        if int(spec.get("items", 0)) < 1:
            raise ProfileError(f"models {name}: items must be >= 1")
    return resolved


_COMPETITOR_DEFAULTS = {"families": [], "items": 5000, "hyperparams": {"max_steps": 550, "batch_size": 32, "learning_rate": 3e-3}}


def chat_row(prompt: str, answer: str, **lineage) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], **lineage}


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    """Write atomically and only when the content changed, so file hashes (and cached runs) stay stable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    tmp = path.with_name(path.name + ".tmp")
    if path.is_file() and path.read_text(encoding="utf-8") == blob:
        tmp.unlink(missing_ok=True)  # left by a run killed while writing
        return path
    tmp.write_text(blob, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _model_items(name: str, spec: dict, seed: int, excluded: set[str]):
    # A name-derived seed: each model sees its own sample of the families it learns.
    model_seed = int(hashlib.sha256(f"{seed}-{name}".encode()).hexdigest()[:8], 16)
    items = make_items(int(spec["items"]) + len(excluded), seed=model_seed, families=spec["families"])
    return [item for item in items if item.prompt not in excluded][: int(spec["items"])]


def build_tokenizer_folder(
    home: Path, profile: dict, *, cache: Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """Train (or reuse, or copy from the cache) the shared tokenizer on suite text covering every family and template."""
    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    settings = profile["tokenizer"]
    items = make_items(int(settings["corpus_items"]), seed=int(profile["seed"]) + 7919)
    texts = [i.prompt for i in items] + [i.reference for i in items]
    fingerprint = hashlib.sha256(json.dumps([settings, texts], sort_keys=True).encode()).hexdigest()
    folder = Path(home) / "tokenizer"
    stamp = folder / "tokenizer_fingerprint.txt"
    if stamp.is_file() and stamp.read_text() == fingerprint:
        return folder

    def build() -> None:
        tokenizer = build_tokenizer(texts, kind=settings["kind"], vocab_size=int(settings.get("vocab_size", 512)))
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            remove_tree(home, tmp)
        save_tokenizer(tokenizer, tmp)
        (tmp / "tokenizer_fingerprint.txt").write_text(fingerprint)
        replace_dir(home, tmp, folder)

    if cached_folder(cache, "tokenizers", fingerprint, folder, Path(home), build=build, log=log):
        log(f"tokenizer: copied from the base-model cache ({fingerprint[:12]})")
    return folder


def base_training_specs(home: Path, profile: dict, tokenizer: Path, *, exclude_prompts: Iterable[str] = ()) -> dict[str, dict]:
    """One `base` stage spec per competitor and the initial target, datasets written under home/data."""
    home = Path(home)
    excluded = set(exclude_prompts)
    seed = int(profile["seed"])
    members = {**{name: spec for name, spec in profile["competitors"].items()}, profile["initial_target"]["name"]: profile["initial_target"]}
    specs = {}
    for name, spec in members.items():
        check_name(name, "model name")
        items = _model_items(name, spec, seed, excluded)
        dataset = write_jsonl(home / "data" / f"{name}.jsonl", (chat_row(i.prompt, i.reference, family=i.family) for i in items))
        specs[name] = {
            "stage": "base",
            "round": 0,
            "name": name,
            "output_dir": str(home / "models" / name),
            "dataset_path": str(dataset),
            "tokenizer": str(tokenizer),
            "model_config": profile["model_config"],
            "hyperparams": {"seed": seed, **spec["hyperparams"]},
            "threads": int(profile["threads_per_process"]),
        }
    return specs


def build_base_models(
    home: Path,
    profile: dict | None = None,
    *,
    exclude_prompts: Iterable[str] = (),
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """Train (or reuse, or copy from the shared cache) the tokenizer, the competitors and the initial target under `home`.

    `profile` is the `models:` section of the profile (merged over DEFAULT_SKILLS_MODELS).
    `exclude_prompts`: prompts (e.g. the arena test set) that no base model may train on.
    `cache_dir`: the shared cache's root (default: model_cache.cache_root(), from ARENA_CACHE).
    Returns {"tokenizer": path, "competitors": {name: path}, "initial_target": path,
    "manifests": {name: manifest}, "datasets": {name: jsonl path}, "replay_dataset": path}.
    """
    from arena_dagster.training.runner import run_trainings

    resolved = resolve_profile(profile)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    try:
        cache = base_models_cache(Path(cache_dir) if cache_dir is not None else cache_root())
    except OSError as exc:
        log(f"base-model cache unavailable ({exc}); training in the home without it (set ARENA_CACHE to a writable folder, or off)")
        cache = None
    tokenizer = build_tokenizer_folder(home, resolved, cache=cache, log=log)
    specs = base_training_specs(home, resolved, tokenizer, exclude_prompts=exclude_prompts)
    target_name = resolved["initial_target"]["name"]
    # Longest runs first, so the pool does not end on one long run while a core idles.
    order = sorted(specs, key=lambda n: -int(specs[n]["hyperparams"].get("max_steps") or 0))
    manifests = run_trainings(
        [specs[n] for n in order],
        max_parallel=int(resolved["max_parallel"]),
        threads_per_process=int(resolved["threads_per_process"]),
        log=log,
        timeout_s=timeout_s,
        run=functools.partial(cached_training, cache=cache, root=home),
    )
    by_name = dict(zip(order, manifests))
    return {
        "tokenizer": str(tokenizer),
        "competitors": {name: specs[name]["output_dir"] for name in resolved["competitors"]},
        "initial_target": specs[target_name]["output_dir"],
        "manifests": {name: by_name[name] for name in specs},
        "datasets": {name: specs[name]["dataset_path"] for name in specs},
        "replay_dataset": specs[target_name]["dataset_path"],
    }
