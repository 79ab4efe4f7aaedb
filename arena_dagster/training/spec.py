"""A training run's spec: the stages, their default hyperparameters, validation and identity.

A spec is a JSON object (see training/entrypoint.py for the keys). `validate_spec` fills the
defaults and checks it without importing torch; `spec_hash` is the run's identity, and so the
`revision` of the checkpoint it makes (the key of every cached answer). The identity is what
the run reads, never where it lies: dataset content hashes, the base model's, reward model's
and tokenizer's own identities, the hyperparameters, the launch settings (a config file by its
content) and the model config. The same model trained in two homes has one identity.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from arena_dagster.errors import ArenaError

# The stages, their default hyperparameters and their checks are settings: the schema holds them.
from arena_dagster.profile_schema.training import (
    COMMON_HYPERPARAMS,
    DEFAULT_HYPERPARAMS,
    DEFAULT_MODEL_CONFIG,
    DEVICES,
    STAGES,
    TrainingSpecError,
    allowed_hyperparams,
    check_hyperparams,
)
from arena_dagster.training.launch_config import ray_worker_environment

MANIFEST = "manifest.json"
LAUNCH_KEYS = ("num_processes", "config_file", "mixed_precision")

# Keys that change how fast a run goes, or what it prints, not what it produces. `compute` (the
# engine: local, or Ray Train with `workers` workers sharing the same global batch) is where it runs;
# only its number of workers above one enters the identity (spec_hash).
_NON_IDENTITY_KEYS = ("threads", "name", "compute")
_NON_IDENTITY_HYPERPARAMS = ("logging_steps",)
# Where the inputs and the output lie: the identity holds what they contain instead (see spec_hash).
_PATH_KEYS = ("output_dir", "dataset_path", "base_model", "tokenizer", "reward_model")


class TrainingDataError(ArenaError, ValueError):
    """A training file that cannot be trained on (bad JSON, missing fields, too few pairs)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> dict | None:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def validate_spec(spec: dict) -> dict:
    """Fill defaults and check the spec; returns a new dict (the resolved spec)."""
    if not isinstance(spec, dict):
        raise TrainingSpecError(f"a training spec is a JSON object, got {type(spec).__name__}")
    stage = spec.get("stage")
    if stage not in STAGES:
        raise TrainingSpecError(f"spec.stage must be one of {STAGES}, got {stage!r}")
    for key in ("output_dir", "dataset_path"):
        if not spec.get(key):
            raise TrainingSpecError(f"spec.{key} is required")
    # Model inputs first: "stage X needs ..." is the more useful message when several are wrong.
    if stage == "base":
        if not spec.get("tokenizer") or not Path(spec["tokenizer"]).is_dir():
            raise TrainingSpecError(f"stage base needs spec.tokenizer, a tokenizer folder (got {spec.get('tokenizer')!r})")
    elif not spec.get("base_model") or not Path(spec["base_model"]).is_dir():
        raise TrainingSpecError(f"stage {stage} needs spec.base_model, a model folder (got {spec.get('base_model')!r})")
    if stage == "rl":
        _check_reward_model(spec.get("reward_model"))
    elif spec.get("reward_model"):
        raise TrainingSpecError(f"spec.reward_model is only used by stage rl, not {stage}")
    if not Path(spec["dataset_path"]).is_file():
        raise TrainingSpecError(f"spec.dataset_path {spec['dataset_path']} does not exist")
    replay = spec.get("replay")
    if replay:
        if stage != "sft":
            raise TrainingSpecError("spec.replay is only used by stage sft")
        if not Path(replay.get("dataset_path", "")).is_file() or int(replay.get("rows", -1)) < 0:
            raise TrainingSpecError(f"spec.replay needs an existing dataset_path and rows >= 0, got {replay}")
    hyper = {**COMMON_HYPERPARAMS, **DEFAULT_HYPERPARAMS[stage], **(spec.get("hyperparams") or {})}
    # Per stage: a key another stage uses (beta in an sft spec, say) would be silently ignored.
    allowed = allowed_hyperparams(stage)
    unknown = set(hyper) - allowed
    if unknown:
        raise TrainingSpecError(f"unknown hyperparameters for stage {stage}: {sorted(unknown)}")
    check_hyperparams(stage, hyper, _launch_processes(spec.get("launch")))
    resolved = {**spec, "round": int(spec.get("round", 0)), "hyperparams": hyper}
    device = resolved.pop("device", "auto")
    if device not in DEVICES:
        raise TrainingSpecError(f"spec.device must be one of {DEVICES}, got {device!r}")
    # "auto" stays out of the resolved spec (and so out of its hash) and is resolved in the
    # training process: resolving it here would import torch into the caller, and the runs made
    # before `device` existed keep their identity. An explicit "cpu"/"cuda" is part of the
    # identity, since a GPU run (bf16, other kernels) gives numerically different weights.
    if device != "auto":
        resolved["device"] = device
    launch = _check_launch(spec.get("launch"))
    _check_compute(spec.get("compute"), launch)
    resolved.pop("launch", None)
    # `launch` is identity: more processes means a larger effective batch, so a different model.
    if launch:
        resolved["launch"] = launch
    if stage == "base":
        resolved["model_config"] = {**DEFAULT_MODEL_CONFIG, **(spec.get("model_config") or {})}
    return resolved


def _check_reward_model(path: Any) -> None:
    if not path or not Path(path).is_dir():
        raise TrainingSpecError(f"stage rl needs spec.reward_model, a folder written by stage reward (got {path!r})")
    manifest = read_manifest(Path(path))
    if manifest is None:
        raise TrainingSpecError(f"spec.reward_model {path} has no {MANIFEST}: it was not written by stage reward")
    if manifest.get("stage") != "reward":
        raise TrainingSpecError(
            f"spec.reward_model {path} is a {manifest.get('stage')!r} checkpoint, not a reward model (stage reward)"
        )


def _check_compute(compute: Any, launch: dict | None) -> None:
    """`compute`: the profile's compute section (training/ray_train.py reads it); Ray Train starts the processes."""
    if compute is None:
        return
    from pydantic import ValidationError

    from arena_dagster.profile_schema.compute import ComputeSettings

    try:
        settings = ComputeSettings.model_validate(compute)
    except ValidationError as err:
        raise TrainingSpecError(f"spec.compute: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None
    if settings.engine == "ray" and launch:
        if not launch.get("config_file"):
            raise TrainingSpecError("spec.launch (accelerate launch) and compute.engine ray both start the training processes: "
                                    "leave launch out and set compute.workers")
        # Ray Train starts the processes; each applies the accelerate config itself (DeepSpeed, mixed precision).
        ray_worker_environment(launch)


def _launch_processes(launch: Any) -> int:
    return int(launch.get("num_processes") or 1) if isinstance(launch, dict) else 1


def _check_launch(launch: Any) -> dict | None:
    """The launch settings that matter, or None for a plain single process."""
    if launch is None:
        return None
    if not isinstance(launch, dict):
        raise TrainingSpecError(f"spec.launch must be an object with {LAUNCH_KEYS}, got {type(launch).__name__}")
    unknown = set(launch) - set(LAUNCH_KEYS)
    if unknown:
        raise TrainingSpecError(f"spec.launch: unknown keys {sorted(unknown)} (known: {LAUNCH_KEYS})")
    processes = launch.get("num_processes")
    if processes is not None and (not isinstance(processes, int) or processes < 1):
        raise TrainingSpecError(f"spec.launch.num_processes must be an integer >= 1, got {processes!r}")
    config_file = launch.get("config_file")
    if config_file is not None and not Path(config_file).is_file():
        raise TrainingSpecError(f"spec.launch.config_file {config_file} does not exist")
    precision = launch.get("mixed_precision")
    if precision is not None and precision not in ("no", "fp16", "bf16"):
        raise TrainingSpecError(f"spec.launch.mixed_precision must be no, fp16 or bf16, got {precision!r}")
    if (processes or 1) == 1 and config_file is None:
        return None
    # Without num_processes a config file's own count applies.
    return {k: v for k, v in {"num_processes": processes, "config_file": config_file, "mixed_precision": precision}.items() if v is not None}


def spec_hash(spec: dict) -> str:
    """Identity of a training run: the resolved spec without paths, plus the content of every input it reads.

    Paths (output_dir, dataset_path, base_model, tokenizer, reward_model, replay.dataset_path,
    launch.config_file) are replaced by the identity of what they hold, so the same run in
    another home, or with its inputs moved, has the same hash.
    """
    resolved = validate_spec(spec)
    identity = {k: v for k, v in resolved.items() if k not in _NON_IDENTITY_KEYS + _PATH_KEYS}
    identity["hyperparams"] = {k: v for k, v in resolved["hyperparams"].items() if k not in _NON_IDENTITY_HYPERPARAMS}
    identity["dataset_sha256"] = file_sha256(Path(resolved["dataset_path"]))
    if resolved.get("replay"):
        replay = resolved["replay"]
        identity["replay"] = {k: v for k, v in replay.items() if k != "dataset_path"}
        identity["replay_sha256"] = file_sha256(Path(replay["dataset_path"]))
    for key in ("base_model", "reward_model"):
        if resolved.get(key):
            identity[f"{key}_identity"] = model_identity(Path(resolved[key]))
    if resolved.get("tokenizer"):
        identity["tokenizer_identity"] = folder_fingerprint(Path(resolved["tokenizer"]))
    if resolved.get("launch"):
        launch = resolved["launch"]
        identity["launch"] = {k: v for k, v in launch.items() if k != "config_file"}
        if launch.get("config_file"):
            identity["launch_config_sha256"] = file_sha256(Path(launch["config_file"]))
    compute = resolved.get("compute") or {}
    if compute.get("engine") == "ray" and int(compute.get("workers", 1)) > 1:
        # N DDP workers sum the gradients in another order than one process: other weights in the last digits,
        # so another revision (the completion cache must not serve their answers for the local run's). One
        # worker trains the local weights bit for bit and keeps the local revision.
        identity["world_size"] = int(compute["workers"])
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def model_identity(folder: Path) -> str:
    """A model folder's identity: the spec hash in its manifest (a run of ours), else its content."""
    manifest = read_manifest(folder) or {}
    return manifest.get("spec_hash") or folder_fingerprint(folder)


def folder_fingerprint(folder: Path) -> str:
    """A hash of every file's relative name and content under `folder` (memoised by size and mtime)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    signature = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint(str(Path(folder).resolve()), signature)


@functools.lru_cache(maxsize=64)
def _fingerprint(folder: str, signature: tuple) -> str:
    # A declared base model can be gigabytes: hashed once per process, not at every spec_hash call.
    digest = hashlib.sha256()
    for relative, _, _ in signature:
        digest.update(relative.encode())
        digest.update(file_sha256(Path(folder) / relative).encode())
    return digest.hexdigest()
