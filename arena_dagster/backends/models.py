"""How registered models are served, and models declared by configuration instead of trained.

A profile either trains its base models locally (`models.source: skills`, the embedded
default) or declares them (`models.source: declared`): each entry of `models.competitors`
and `models.initial_target` is a model config of `arena_dagster.backends.registry`
(backend, path or model, revision, base_url, api_key_env, sampling ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arena_dagster.backends.base import ModelSpec, SamplingParams
from arena_dagster.paths import remove_tree, replace_dir

if TYPE_CHECKING:
    from arena_dagster.profile_schema.models import DeclaredModels
    from arena_dagster.profile_schema.sections import GenerationSettings


class DeclaredModelError(ValueError):
    pass


def declared_models(models: DeclaredModels) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, config) of every declared model; kind is "competitor" or "initial".

    Each config as the profile writes it (only the keys it sets): `declared_revision` hashes that form.
    """
    from arena_dagster.backends.registry import model_spec_from_config

    def written(config: Any) -> dict[str, Any]:
        return config.model_dump(by_alias=True, exclude_unset=True)

    target = {k: v for k, v in written(models.initial_target).items() if k != "name"}
    entries = [(models.initial_target.name, "initial", target)]
    entries += [(name, "competitor", written(config)) for name, config in models.competitors.items()]
    for entry_name, _, config in entries:
        model_spec_from_config(entry_name, config)  # a bad config fails here, before any generation
    return entries


def declared_revision(config: dict[str, Any]) -> str:
    """A declared model's cache identity: its config as written in the profile, minus secrets' names and
    throughput knobs.

    Give it the config as written: `prepare_model_config` pins this revision into the config it
    returns before `{home}` becomes a path, so the identity does not depend on where the home is.
    """
    identity = {k: v for k, v in config.items() if k not in {"api_key_env", "concurrency", "base_url", "timeout_s"}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generation_spec(row: dict[str, Any], generation: GenerationSettings | None) -> ModelSpec:
    """The ModelSpec that answers with a registered model (a row of model_registry); `generation` is
    the profile's section: how the round's own checkpoints answer."""
    manifest = row.get("manifest") or {}
    if isinstance(manifest, str):
        manifest = json.loads(manifest)
    if "declared" in manifest:
        from arena_dagster.backends.registry import model_spec_from_config

        spec = model_spec_from_config(row["model"], manifest["declared"])
        return ModelSpec(**{**spec.__dict__, "revision": spec.revision or row["revision"]})
    # Only the keys the profile sets: unset sampling keys take SamplingParams' defaults, and a backend
    # reads an absent option as its own default (the cache key holds the sampling, so it stays as written).
    sampling = generation.sampling if generation is not None else None
    options = generation.options if generation is not None else None
    return ModelSpec(
        name=row["model"],
        backend=generation.backend if generation is not None else "transformers",
        path=row["path"],
        revision=row["revision"],
        sampling=SamplingParams(**(sampling.model_dump(exclude_unset=True) if sampling is not None else {})),
        options=options.model_dump(exclude_unset=True) if options is not None else {},
    )


def prepare_model_config(config: dict[str, Any], home: Path) -> dict[str, Any]:
    """A declared model config made ready to serve and train from this home folder.

    - `{home}` in `path` becomes the flywheel's home folder (e.g. recorded answers written there);
    - whenever the config changes here, its `revision` (absent from the profile) is pinned first
      to `declared_revision` of the config as written, so the model's identity (and every cached
      answer's key) is the same in every home;
    - a `transformers` model given as a GGUF file (`gguf_file` inside `path`, which may be
      `package:NAME`) is dequantized once into an HF folder under `home/models/gguf/`, keyed
      by the file's hash, and the config points there instead: loading a GGUF costs ~30 s
      every time, and TRL trains from HF folders only. `converted_from` records the source.
    """
    out = dict(config)
    written_revision = str(config.get("revision") or declared_revision(config))
    if isinstance(out.get("path"), str) and "{home}" in out["path"]:
        out["path"] = out["path"].replace("{home}", str(home))
    if out.get("backend") == "transformers" and out.get("gguf_file"):
        folder, source = gguf_to_hf_folder(str(out.get("path") or out.get("model")), str(out.pop("gguf_file")),
                                           home / "models" / "gguf")
        out.pop("model", None)
        out["path"] = str(folder)
        out["converted_from"] = source
    if out != config:
        out["revision"] = written_revision
    return out


def gguf_to_hf_folder(path: str, gguf_file: str, root: Path) -> tuple[Path, dict[str, Any]]:
    """Dequantize `path/gguf_file` into `root/<stem>-<hash>/` once (atomic, locked); returns (folder, source)."""
    import fcntl

    from arena_dagster.backends.transformers_backend import resolve_model_path

    folder = Path(resolve_model_path(path))
    gguf = folder / gguf_file
    if not gguf.is_file():
        raise DeclaredModelError(f"GGUF file {gguf} not found (path {path!r}, gguf_file {gguf_file!r})")
    digest = hashlib.sha256()
    with gguf.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    source = {"path": path, "gguf_file": gguf_file, "sha256": digest.hexdigest()}
    target = root / f"{gguf.stem}-{source['sha256'][:12]}"
    marker = target / "converted_from.json"
    if marker.is_file():
        return target, source
    root.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return target, source
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = Path(str(target) + ".tmp")
        if tmp.exists():
            remove_tree(root, tmp)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
        # The weights are dequantized already; without the GGUF marker save_pretrained writes safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "converted_from.json").write_text(json.dumps(source, indent=2))
        replace_dir(root, tmp, target)
    return target, source
