"""A shared cache of base models: a second home with the same profile starts in seconds.

The embedded default's base models (the tokenizer, the competitors, the initial target) take
most of a first run. They depend only on their config (tokenizer settings and corpus,
architecture, data, steps, seed), so they are cached by its hash in a folder shared by every
home of the user:

    $ARENA_CACHE (default $XDG_CACHE_HOME/arena-dagster, else ~/.cache/arena-dagster)
      base-models/
        tokenizers/<fingerprint>/   a tokenizer folder; the fingerprint hashes its settings and corpus
        models/<spec hash>/         a trained base model and its manifest; the spec hash is the
                                    model's content identity (training/spec.py: dataset content,
                                    tokenizer content, architecture, hyperparameters, seed)
        <kind>/<key>.lock           held while one process fills the entry
        embeddings/<key>.npy        a curation test set's MiniLM vectors (prompts/curation/similarity.py:
                                    embed_test_set; the key hashes the model, its libraries and the texts)

`ARENA_CACHE=off` turns the cache off. A home never points into the cache: each entry is
copied into the home (large files hard-linked when the cache is on the same file system;
files are never modified in place, checkpoints are replaced as whole folders), so a home is
self-contained and every registry path stays inside it. Filling is atomic and locked: one
process builds into `<key>.tmp-<pid>` and renames it into place; a second process asking for
the same entry waits for the lock and then copies the finished entry. The cache root is the
only place outside the home the pipeline writes, and every path written is checked to lie
inside it (paths.inside).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from arena_dagster.paths import check_name, inside, remove_tree, replace_dir
from arena_dagster.training.spec import MANIFEST, read_manifest, spec_hash

# Files at least this large are hard-linked from the cache; smaller ones (configs, manifests) are copied.
LINK_MIN_BYTES = 64 * 1024
# Manifest keys that name where the run's inputs lay: rewritten to this home's paths on restore.
_INPUT_PATH_KEYS = ("base_model", "tokenizer", "dataset_path", "reward_model")


class CacheEntry:
    """One cached folder, `<cache>/<kind>/<key>`, with its lock."""

    def __init__(self, cache: Path, kind: str, key: str) -> None:
        self.cache = Path(cache)
        self.path = inside(self.cache, self.cache / check_name(kind, "cache kind") / check_name(key, "cache key"), "cache entry")

    def exists(self) -> bool:
        return self.path.is_dir()

    @contextlib.contextmanager
    def locked(self, log: Callable[[str], None]) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"{self.path.name[:12]}: another process is building this cache entry; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def restore(self, target: Path, root: Path) -> None:
        """Copy the entry to `target` (inside `root`), atomically: a killed copy leaves only `<target>.tmp`."""
        target = inside(root, target, "restored folder")
        tmp = Path(str(target) + ".tmp")
        if tmp.exists():
            remove_tree(root, tmp)
        _copy_tree(self.path, tmp)
        replace_dir(root, tmp, target)

    def publish(self, source: Path) -> None:
        """Copy the finished folder `source` into the cache, atomically (called under the lock)."""
        # Under the lock nobody else fills this entry: any `<key>.tmp-*` is a killed process's.
        for stale in self.path.parent.glob(f"{self.path.name}.tmp-*"):
            remove_tree(self.cache, stale)
        tmp = inside(self.cache, Path(f"{self.path}.tmp-{os.getpid()}"), "cache entry")
        _copy_tree(Path(source), tmp)
        replace_dir(self.cache, tmp, self.path)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy `source` to the new folder `target`: large files hard-linked where possible, the rest copied."""
    target.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(exist_ok=True)
            continue
        if path.stat().st_size >= LINK_MIN_BYTES:
            try:
                os.link(path, destination)
                continue
            except OSError:
                pass  # another file system, or links not allowed: copy
        shutil.copy2(path, destination)


def cached_folder(
    cache: Path | None,
    kind: str,
    key: str,
    target: Path,
    root: Path,
    *,
    build: Callable[[], None],
    log: Callable[[str], None],
) -> bool:
    """Make `target` (inside `root`) hold the folder cached as `kind/key`, building and publishing it when
    the cache lacks it (`build()` writes `target`). True when it came from the cache."""
    if cache is None:
        build()
        return False
    entry = CacheEntry(cache, kind, key)
    lock = contextlib.ExitStack()
    try:
        lock.enter_context(entry.locked(log))
    except OSError as exc:  # the cache is optional: a read-only or foreign folder only costs the build
        log(f"{kind}/{key[:12]}: the cache {cache} cannot be used ({exc}); building in the home without it")
        build()
        return False
    with lock:
        if entry.exists():
            entry.restore(target, root)
            return True
        build()
        try:
            entry.publish(target)
        except OSError as exc:
            log(f"{kind}/{key[:12]}: not stored in the cache ({exc}); the home keeps its trained copy")
        return False


def cached_training(
    spec: dict,
    *,
    cache: Path | None,
    root: Path,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
    launch=None,
) -> dict:
    """run_training(spec), through the cache: a model already trained from the same content (in any home)
    is copied into `spec.output_dir` instead of trained again; a new one is published for the next home."""
    from arena_dagster.training.runner import run_training

    identity = spec_hash(spec)
    output_dir = inside(root, spec["output_dir"], "model folder")
    existing = read_manifest(output_dir)
    if cache is None or (existing and existing.get("spec_hash") == identity):
        return run_training(spec, log=log, timeout_s=timeout_s, launch=launch)

    def build() -> None:
        run_training(spec, log=log, timeout_s=timeout_s, launch=launch)

    if cached_folder(cache, "models", identity, output_dir, root, build=build, log=log):
        _adopt_manifest(output_dir, spec)
        log(f"{output_dir.name}: copied from the base-model cache (spec {identity[:12]})")
    manifest = read_manifest(output_dir)
    if not manifest or manifest.get("spec_hash") != identity:
        from arena_dagster.training.runner import TrainingError

        raise TrainingError(f"{output_dir}: the cached model's manifest does not match spec {identity}",
                            fix=f"delete the cache entry {CacheEntry(cache, 'models', identity).path} and run again")
    return manifest


def _adopt_manifest(folder: Path, spec: dict) -> None:
    """Point a restored manifest's input paths at this home's files (the content, and so the spec hash, is the same)."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    for key in _INPUT_PATH_KEYS:
        if manifest.get(key):
            manifest[key] = str(spec[key]) if spec.get(key) else manifest[key]
    manifest["from_cache"] = True
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
