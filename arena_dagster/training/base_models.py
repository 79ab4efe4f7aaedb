"""The embedded default's starting models: a shared tokenizer, specialist competitors, a weak target.

Each competitor is trained on its own subset of skill families, so it is strong there and
weak elsewhere; the initial target sees every family but is trained briefly, so it is
weak but not hopeless (it wins some battles). Everything is cached: a second call with the
same profile reuses every folder whose manifest matches, and a home with the same profile
copies the tokenizer and the models from the shared cache (training/model_cache.py) instead
of training them again.

The settings are the profile's `models:` section merged over the embedded default's models
(profile_schema.models: SKILLS_DEFAULTS, resolved_skills).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from arena_dagster.paths import base_models_cache, cache_root, remove_tree, replace_dir
from arena_dagster.profile_schema.models import SkillsCompetitor, SkillsModels, SkillsTarget, resolved_skills
from arena_dagster.prompts.skills import make_items
from arena_dagster.training.model_cache import cached_folder, cached_training



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


def _model_items(name: str, spec: SkillsCompetitor | SkillsTarget, seed: int, excluded: set[str]):
    # A name-derived seed: each model sees its own sample of the families it learns.
    model_seed = int(hashlib.sha256(f"{seed}-{name}".encode()).hexdigest()[:8], 16)
    items = make_items(spec.items + len(excluded), seed=model_seed, families=list(spec.families))
    return [item for item in items if item.prompt not in excluded][: spec.items]


def build_tokenizer_folder(
    home: Path, models: SkillsModels, *, cache: Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """Train (or reuse, or copy from the cache) the shared tokenizer on suite text covering every family and template.

    `models`: a resolved section (resolved_skills)."""
    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    settings = models.tokenizer
    items = make_items(settings.corpus_items, seed=models.seed + 7919)
    texts = [i.prompt for i in items] + [i.reference for i in items]
    identity = settings.model_dump(exclude_unset=True)  # the keys set (defaults' and profile's): what it always hashed
    fingerprint = hashlib.sha256(json.dumps([identity, texts], sort_keys=True).encode()).hexdigest()
    folder = Path(home) / "tokenizer"
    stamp = folder / "tokenizer_fingerprint.txt"
    if stamp.is_file() and stamp.read_text() == fingerprint:
        return folder

    def build() -> None:
        tokenizer = build_tokenizer(texts, kind=settings.kind, vocab_size=settings.vocab_size)
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            remove_tree(home, tmp)
        save_tokenizer(tokenizer, tmp)
        (tmp / "tokenizer_fingerprint.txt").write_text(fingerprint)
        replace_dir(home, tmp, folder)

    if cached_folder(cache, "tokenizers", fingerprint, folder, Path(home), build=build, log=log):
        log(f"tokenizer: copied from the base-model cache ({fingerprint[:12]})")
    return folder


def base_training_specs(home: Path, models: SkillsModels, tokenizer: Path, *, exclude_prompts: Iterable[str] = ()) -> dict[str, dict]:
    """One `base` stage spec per competitor and the initial target (of a resolved section), datasets written under home/data."""
    home = Path(home)
    excluded = set(exclude_prompts)
    seed = models.seed
    members = {**models.competitors, models.initial_target.name: models.initial_target}
    specs = {}
    for name, spec in members.items():
        items = _model_items(name, spec, seed, excluded)
        dataset = write_jsonl(home / "data" / f"{name}.jsonl", (chat_row(i.prompt, i.reference, family=i.family) for i in items))
        specs[name] = {
            "stage": "base",
            "round": 0,
            "name": name,
            "output_dir": str(home / "models" / name),
            "dataset_path": str(dataset),
            "tokenizer": str(tokenizer),
            # The keys set (defaults' and profile's): what the specs, and so the checkpoints' identities, always held.
            "model_config": models.model_config_.model_dump(exclude_unset=True),
            "hyperparams": {"seed": seed, **spec.hyperparams.model_dump(exclude_unset=True)},
            "threads": models.threads_per_process,
        }
    return specs


def build_base_models(
    home: Path,
    models: SkillsModels | None = None,
    *,
    exclude_prompts: Iterable[str] = (),
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """Train (or reuse, or copy from the shared cache) the tokenizer, the competitors and the initial target under `home`.

    `models` is the `models:` section of the profile (merged here over SKILLS_DEFAULTS).
    `exclude_prompts`: prompts (e.g. the arena test set) that no base model may train on.
    `cache_dir`: the shared cache's root (default: model_cache.cache_root(), from ARENA_CACHE).
    Returns {"tokenizer": path, "competitors": {name: path}, "initial_target": path,
    "manifests": {name: manifest}, "datasets": {name: jsonl path}, "replay_dataset": path}.
    """
    from arena_dagster.training.runner import run_trainings

    resolved = resolved_skills(models)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    try:
        cache = base_models_cache(Path(cache_dir) if cache_dir is not None else cache_root())
    except OSError as exc:
        log(f"base-model cache unavailable ({exc}); training in the home without it (set ARENA_CACHE to a writable folder, or off)")
        cache = None
    tokenizer = build_tokenizer_folder(home, resolved, cache=cache, log=log)
    specs = base_training_specs(home, resolved, tokenizer, exclude_prompts=exclude_prompts)
    target_name = resolved.initial_target.name
    # Longest runs first, so the pool does not end on one long run while a core idles.
    order = sorted(specs, key=lambda n: -int(specs[n]["hyperparams"].get("max_steps") or 0))
    manifests = run_trainings(
        [specs[n] for n in order],
        max_parallel=resolved.max_parallel,
        threads_per_process=resolved.threads_per_process,
        log=log,
        timeout_s=timeout_s,
        run=functools.partial(cached_training, cache=cache, root=home),
    )
    by_name = dict(zip(order, manifests))
    return {
        "tokenizer": str(tokenizer),
        "competitors": {name: specs[name]["output_dir"] for name in resolved.competitors},
        "initial_target": specs[target_name]["output_dir"],
        "manifests": {name: by_name[name] for name in specs},
        "datasets": {name: specs[name]["dataset_path"] for name in specs},
        "replay_dataset": specs[target_name]["dataset_path"],
    }
