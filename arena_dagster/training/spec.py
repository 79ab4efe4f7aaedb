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


STAGES = ("base", "sft", "dpo", "reward", "rl")
MANIFEST = "manifest.json"
DEVICES = ("auto", "cpu", "cuda")

# Hyperparameters a spec may leave out. For sft/dpo/reward/rl these are the Arena Learning
# paper's values for real (7B-class) models: SFT lr 5e-6 for 3 epochs, DPO lr 5e-7 with
# beta 0.3 for 2 epochs, reward model lr 1e-6 for 1 epoch, RL (PPO in the paper, RLOO here)
# lr 1e-7 with KL coefficient 0.4. They train by epochs; a spec's `max_steps` wins when given.
# The embedded tiny-model profile (training/base_models.py) overrides them with its own
# max_steps / learning rates, since a 1M-parameter model trained from scratch needs far larger
# steps. `base` keeps its small-model values: it only ever trains those from scratch.
# `batch_size` is per device; the effective batch is batch_size x processes x accumulation.
DEFAULT_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "base": {"learning_rate": 3e-3, "max_steps": 700, "batch_size": 32, "warmup_ratio": 0.05},
    "sft": {"learning_rate": 5e-6, "epochs": 3, "batch_size": 8, "warmup_ratio": 0.05},
    "dpo": {"learning_rate": 5e-7, "epochs": 2, "batch_size": 4, "warmup_ratio": 0.1, "beta": 0.3},
    "reward": {"learning_rate": 1e-6, "epochs": 1, "batch_size": 8, "warmup_ratio": 0.05, "eval_fraction": 0.2},
    "rl": {
        "learning_rate": 1e-7,
        "epochs": 1,
        # Completions per device and step (RLOO counts completions, not prompts): 2 prompts x 4 samples.
        "batch_size": 8,
        "warmup_ratio": 0.0,
        "beta": 0.4,
        "num_generations": 4,
        "max_completion_length": 256,
        "temperature": 1.0,
    },
}
COMMON_HYPERPARAMS: dict[str, Any] = {
    "seed": 0,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.0,
    "max_length": 160,
    "logging_steps": 25,
    # False: the loss also covers the prompt (more signal per sequence for a model trained from scratch).
    "completion_only_loss": True,
}
# Knobs any stage accepts whose default keeps the behaviour runs had before they existed. They
# are only written into a resolved spec when a spec sets them to something else, so the spec
# hashes (and cached checkpoints) of earlier runs stay valid.
OPTIONAL_HYPERPARAMS: dict[str, Any] = {
    "max_steps": None,
    "epochs": None,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    # "auto": bf16 mixed precision exactly when training on a CUDA device that supports it.
    "bf16": "auto",
}
# Stage-specific knobs written into a resolved spec only when set (same reason as above).
# rpo_alpha (dpo): weight of an NLL term on the chosen answers added to the DPO loss (RPO,
# Pang et al. 2024; TRL's loss_type ["sigmoid", "sft"]): it keeps DPO from lowering the
# likelihood of the chosen answers along with the rejected ones.
STAGE_OPTIONAL_HYPERPARAMS: dict[str, dict[str, Any]] = {"dpo": {"rpo_alpha": None}}


def allowed_hyperparams(stage: str) -> set[str]:
    """Every hyperparameter a spec of `stage` may set (a key another stage uses would be silently ignored)."""
    return (set(COMMON_HYPERPARAMS) | set(DEFAULT_HYPERPARAMS[stage]) | set(OPTIONAL_HYPERPARAMS)
            | set(STAGE_OPTIONAL_HYPERPARAMS.get(stage, {})))
LAUNCH_KEYS = ("num_processes", "config_file", "mixed_precision")

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 192,
    "tie_word_embeddings": True,
}

# Keys that change how fast a run goes, or what it prints, not what it produces.
_NON_IDENTITY_KEYS = ("threads", "name")
_NON_IDENTITY_HYPERPARAMS = ("logging_steps",)
# Where the inputs and the output lie: the identity holds what they contain instead (see spec_hash).
_PATH_KEYS = ("output_dir", "dataset_path", "base_model", "tokenizer", "reward_model")


class TrainingSpecError(ArenaError, ValueError):
    """A spec that cannot run (missing input, unknown key, value out of range)."""


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


def check_hyperparams(stage: str, hyper: dict, processes: int) -> None:
    if hyper.get("bf16", "auto") not in ("auto", True, False):
        raise TrainingSpecError(f"hyperparams.bf16 must be 'auto', true or false, got {hyper['bf16']!r}")
    if stage == "reward":
        fraction = hyper["eval_fraction"]
        if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise TrainingSpecError(f"hyperparams.eval_fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if stage == "rl":
        generations = int(hyper["num_generations"])
        if generations < 2:
            raise TrainingSpecError(f"hyperparams.num_generations must be >= 2 (RLOO's baseline is the other samples), got {generations}")
        completions = int(hyper["batch_size"]) * processes * int(hyper.get("gradient_accumulation_steps") or 1)
        if completions % generations:
            raise TrainingSpecError(
                f"stage rl: batch_size x processes x gradient_accumulation_steps ({completions}) must be a multiple of "
                f"num_generations ({generations}): every prompt's samples go in one batch"
            )


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
