"""Training entry point, run in its own process: `python -m arena_dagster.training.entrypoint SPEC.json`.

Stages (the spec's `stage`):
- `base`: a fresh Llama-style model from `model_config` and the tokenizer folder `tokenizer`,
  trained by TRL `SFTTrainer` on a chat JSONL;
- `sft`: continues `base_model` with `SFTTrainer` (loss on the answer only), optionally mixing
  in `replay` rows from an earlier dataset so the model does not forget what it knew;
- `dpo`: TRL `DPOTrainer` from `base_model`, whose frozen copy is the reference model;
- `reward`: a reward model (`AutoModelForSequenceClassification`, one output) initialised from
  `base_model`, trained by TRL `RewardTrainer` on preference pairs; a seeded, prompt-grouped
  share of the pairs is held out and the trained model's pair accuracy on it is measured;
- `rl`: TRL `RLOOTrainer` from `base_model` (also the frozen KL reference) with the `reward`
  stage's model in `reward_model` as the reward function.

Optional spec keys: `device` ("auto" (default): CUDA when available, else CPU; "cpu"; "cuda")
and `launch` ({num_processes, config_file, mixed_precision}: the runner starts the entry point
through `accelerate launch`; only the main process saves, writes the manifest and renames).

The model and tokenizer are written to `output_dir + ".tmp"` and renamed to `output_dir` only
when complete, with `manifest.json` (dataset hash, base model, hyperparameters, metrics):
a killed run leaves no half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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

# Keys that change how fast a run goes, not what it produces.
_NON_IDENTITY_KEYS = ("threads", "name")


class TrainingSpecError(ValueError):
    pass


class TrainingDataError(ValueError):
    pass


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
    allowed = (
        set(COMMON_HYPERPARAMS) | set(DEFAULT_HYPERPARAMS[stage]) | set(OPTIONAL_HYPERPARAMS)
        | set(STAGE_OPTIONAL_HYPERPARAMS.get(stage, {}))
    )
    unknown = set(hyper) - allowed
    if unknown:
        raise TrainingSpecError(f"unknown hyperparameters for stage {stage}: {sorted(unknown)}")
    _check_hyperparams(stage, hyper, _launch_processes(spec.get("launch")))
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


def _check_hyperparams(stage: str, hyper: dict, processes: int) -> None:
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
    """Identity of a training run: the resolved spec plus the content of every input it reads."""
    resolved = validate_spec(spec)
    identity = {k: v for k, v in resolved.items() if k not in _NON_IDENTITY_KEYS}
    identity["dataset_sha256"] = file_sha256(Path(resolved["dataset_path"]))
    if resolved.get("replay"):
        identity["replay_sha256"] = file_sha256(Path(resolved["replay"]["dataset_path"]))
    if resolved.get("base_model"):
        base_manifest = read_manifest(Path(resolved["base_model"])) or {}
        identity["base_model_identity"] = base_manifest.get("spec_hash") or _folder_fingerprint(Path(resolved["base_model"]))
    if resolved.get("reward_model"):
        reward_manifest = read_manifest(Path(resolved["reward_model"])) or {}
        identity["reward_model_identity"] = reward_manifest.get("spec_hash") or _folder_fingerprint(Path(resolved["reward_model"]))
    if resolved.get("tokenizer"):
        identity["tokenizer_identity"] = _folder_fingerprint(Path(resolved["tokenizer"]))
    if resolved.get("launch", {}).get("config_file"):
        identity["launch_config_sha256"] = file_sha256(Path(resolved["launch"]["config_file"]))
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- data


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    return rows


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f"{where}: 'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") or not isinstance(
            message.get("content"), str
        ):
            raise TrainingDataError(f"{where}: every message needs a role (system/user/assistant) and a string content")
    if messages[-1]["role"] != "assistant":
        raise TrainingDataError(f"{where}: the last message must be the assistant's answer")
    if not messages[-1]["content"].strip():
        raise TrainingDataError(f"{where}: the assistant's answer is empty")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def sft_rows(path: Path) -> list[dict]:
    """Chat rows as TRL prompt/completion pairs, so the loss covers the answer only."""
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        messages = _check_messages(row.get("messages"), f"{path} row {i}")
        out.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return out


def _as_turns(value: Any, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return [{"role": m.get("role", role), "content": m["content"]} for m in value]
    raise TrainingDataError(f"{where}: expected a string or a list of messages, got {type(value).__name__}")


def dpo_rows(path: Path) -> list[dict]:
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path} row {i}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise TrainingDataError(f"{where}: missing {missing}")
        chosen, rejected = _as_turns(row["chosen"], "assistant", where), _as_turns(row["rejected"], "assistant", where)
        if chosen == rejected:
            raise TrainingDataError(f"{where}: chosen and rejected are identical")
        out.append({"prompt": _as_turns(row["prompt"], "user", where), "chosen": chosen, "rejected": rejected})
    return out


# ---------------------------------------------------------------------------- training


def _training_kwargs(spec: dict, rows: int, output_dir: Path, runtime: dict) -> dict:
    """TrainingArguments shared by every stage; `rows` counts the samples one epoch sees."""
    hyper = spec["hyperparams"]
    accumulation = int(hyper.get("gradient_accumulation_steps") or 1)
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": int(hyper["batch_size"]),
        "gradient_accumulation_steps": accumulation,
        "learning_rate": float(hyper["learning_rate"]),
        "lr_scheduler_type": hyper["lr_scheduler_type"],
        "warmup_steps": max(0, round(float(hyper.get("warmup_ratio", 0.0)) * _total_steps(hyper, rows, runtime["processes"]))),
        "weight_decay": float(hyper["weight_decay"]),
        "seed": int(hyper["seed"]),
        "data_seed": int(hyper["seed"]),
        "logging_steps": int(hyper["logging_steps"]),
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": runtime["device"] == "cpu",
        "bf16": runtime["bf16"],
        "fp16": False,
        "gradient_checkpointing": bool(hyper.get("gradient_checkpointing", False)),
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    if spec["stage"] != "rl":  # RLOOConfig has neither: it tokenizes prompts as they come.
        kwargs["max_length"] = int(hyper["max_length"])
        kwargs["dataset_num_proc"] = None
    if hyper.get("max_steps"):
        kwargs["max_steps"] = int(hyper["max_steps"])
    else:
        kwargs["num_train_epochs"] = float(hyper.get("epochs") or 1.0)
    return kwargs


def _total_steps(hyper: dict, rows: int, processes: int = 1) -> int:
    if hyper.get("max_steps"):
        return int(hyper["max_steps"])
    global_batch = int(hyper["batch_size"]) * processes * int(hyper.get("gradient_accumulation_steps") or 1)
    per_epoch = max(1, -(-rows // global_batch))
    return max(1, round(per_epoch * float(hyper.get("epochs") or 1.0)))


def _runtime(resolved: dict) -> dict:
    """Where this process trains: device, bf16 and the number of processes (after `accelerate launch`)."""
    import torch

    requested = resolved.get("device", "auto")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingSpecError("spec.device is 'cuda' but torch sees no CUDA device")
    device = "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"
    bf16_supported = device == "cuda" and torch.cuda.is_bf16_supported()
    bf16 = resolved["hyperparams"].get("bf16", "auto")
    if bf16 is True and not bf16_supported:
        raise TrainingSpecError(f"hyperparams.bf16 is true but the {device} device here has no bf16 support")
    processes = int(os.environ.get("WORLD_SIZE") or 1)
    return {"device": device, "bf16": bf16_supported if bf16 == "auto" else bool(bf16), "processes": processes}


def _is_main_process() -> bool:
    # Before a trainer exists: torchrun (behind `accelerate launch`) sets RANK on every process.
    return int(os.environ.get("RANK") or 0) == 0


def _replay_rows(spec: dict) -> list[dict]:
    replay = spec.get("replay")
    if not replay or not int(replay.get("rows", 0)):
        return []
    pool = sft_rows(Path(replay["dataset_path"]))
    rng = random.Random(f"replay-{replay.get('seed', 0)}")
    count = min(int(replay["rows"]), len(pool))
    return rng.sample(pool, count)


def prompt_rows(path: Path) -> list[dict]:
    """RL prompts: each row's `prompt` (a string or a list of messages); other keys are ignored."""
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path} row {i}"
        if "prompt" not in row:
            raise TrainingDataError(f"{where}: missing 'prompt'")
        turns = _as_turns(row["prompt"], "user", where)
        if turns[-1]["role"] == "assistant":
            raise TrainingDataError(f"{where}: the prompt ends with an assistant turn; the policy answers the last user turn")
        if not any(t["content"].strip() for t in turns):
            raise TrainingDataError(f"{where}: the prompt is empty")
        out.append({"prompt": turns})
    return out


def split_preference_pairs(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict], dict]:
    """Hold out about `eval_fraction` of the pairs, whole prompts at a time (seeded).

    Pairs sharing a prompt are near-duplicates for a reward model: split apart, the held-out
    accuracy would measure memorised prompts, not preferences.
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row["prompt"], sort_keys=True), []).append(row)
    if len(groups) < 2:
        raise TrainingDataError(
            f"stage reward holds out whole prompts for evaluation, so it needs pairs from at least 2 distinct prompts; "
            f"got {len(rows)} pair(s) from {len(groups)} prompt(s)"
        )
    keys = sorted(groups)
    random.Random(f"reward-split-{seed}").shuffle(keys)
    target = max(1, round(eval_fraction * len(rows)))
    held_out: list[str] = []
    held_pairs = 0
    # At least one prompt each side; add held-out prompts until the held-out pairs reach the target.
    for key in keys[:-1]:
        if held_pairs >= target:
            break
        held_out.append(key)
        held_pairs += len(groups[key])
    held = set(held_out)
    train_rows = [row for key in keys if key not in held for row in groups[key]]
    eval_rows = [row for key in held_out for row in groups[key]]
    split = {"prompts": len(keys), "eval_prompts": len(held_out), "train_prompts": len(keys) - len(held_out)}
    return train_rows, eval_rows, split


def _pair_scores(model, tokenized, pad_token_id: int, batch_size: int) -> tuple[list[float], list[float]]:
    """Rewards of the chosen and rejected sequences of a tokenized preference dataset."""
    import torch

    device = next(model.parameters()).device
    chosen_scores: list[float] = []
    rejected_scores: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(tokenized), batch_size):
            batch = tokenized[start : start + batch_size]
            sequences = batch["chosen_ids"] + batch["rejected_ids"]
            width = max(len(seq) for seq in sequences)
            input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(sequences), width), dtype=torch.long)
            for i, seq in enumerate(sequences):
                input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                attention[i, : len(seq)] = 1
            scores = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits[:, 0].float().cpu()
            half = len(sequences) // 2
            chosen_scores += scores[:half].tolist()
            rejected_scores += scores[half:].tolist()
    model.train(was_training)
    return chosen_scores, rejected_scores


def preference_accuracy(model, tokenized, pad_token_id: int, batch_size: int = 16) -> dict:
    """Share of pairs the model scores chosen > rejected, and the mean margin chosen - rejected."""
    if len(tokenized) == 0:
        return {"pairs": 0, "accuracy": None, "margin": None}
    chosen, rejected = _pair_scores(model, tokenized, pad_token_id, batch_size)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    margin = sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)
    return {"pairs": len(chosen), "accuracy": wins / len(chosen), "margin": margin}


def _fresh_model(spec: dict, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **spec["model_config"],
    )
    return AutoModelForCausalLM.from_config(config)


def _metrics(trainer, train_output, wall_s: float) -> dict:
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    metrics = {
        "train_loss": float(train_output.training_loss),
        "final_loss": float(history[-1]["loss"]) if history else None,
        "first_loss": float(history[0]["loss"]) if history else None,
        "steps": int(train_output.global_step),
        "train_wall_s": round(wall_s, 2),
    }
    if history:
        for key, value in history[-1].items():
            if key.startswith("rewards/") or key.startswith("logps/"):
                metrics[key] = float(value)
    return metrics


def _rl_metrics(trainer) -> dict:
    """Reward and KL from RLOOTrainer's logs (keys `reward`, `kl`; `kl` only when beta > 0)."""
    history = trainer.state.log_history
    rewards = [float(e["reward"]) for e in history if e.get("reward") is not None]
    kls = [float(e["kl"]) for e in history if e.get("kl") is not None]
    return {
        "first_mean_reward": rewards[0] if rewards else None,
        "last_mean_reward": rewards[-1] if rewards else None,
        "last_kl": kls[-1] if kls else None,
    }


def _load_rows(resolved: dict) -> tuple[list[dict], int, list[dict]]:
    """The stage's training rows, its dataset's row count and the replay rows; bad data fails here."""
    stage, dataset_path = resolved["stage"], Path(resolved["dataset_path"])
    if stage in ("dpo", "reward"):
        rows = dpo_rows(dataset_path)
        if not rows:
            raise TrainingDataError(f"{dataset_path}: no preference pairs")
        return rows, len(rows), []
    if stage == "rl":
        rows = prompt_rows(dataset_path)
        if not rows:
            raise TrainingDataError(f"{dataset_path}: no prompts")
        return rows, len(rows), []
    rows = sft_rows(dataset_path)
    replay = _replay_rows(resolved)
    if not rows + replay:
        raise TrainingDataError(f"{dataset_path}: no training rows (and no replay rows)")
    return rows + replay, len(rows), replay


def train(spec: dict) -> dict | None:
    """Run one training stage as described by `spec`; returns the manifest written next to the model.

    Under `accelerate launch` every process trains; only the main one writes and renames the
    folder, and every process returns the manifest once it is in place.
    """
    started = time.time()
    resolved = validate_spec(spec)
    identity = spec_hash(spec)
    stage = resolved["stage"]
    dataset_path = Path(resolved["dataset_path"])
    # Bad data fails here, before the slow imports.
    rows, dataset_rows, replay = _load_rows(resolved)
    replay_count = len(replay)
    hyper = resolved["hyperparams"]
    split: dict = {}
    eval_rows: list[dict] = []
    if stage == "reward":
        rows, eval_rows, split = split_preference_pairs(rows, float(hyper["eval_fraction"]), int(hyper["seed"]))

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

    threads = int(spec.get("threads") or os.environ.get("ARENA_TORCH_THREADS") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    runtime = _runtime(resolved)
    output_dir = Path(resolved["output_dir"])
    tmp_dir = Path(str(output_dir) + ".tmp")
    if _is_main_process() and tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    set_seed(int(hyper["seed"]))
    # Frozen models (DPO reference, RL reward model) can live in bf16 when training is bf16.
    frozen_kwargs: dict[str, Any] = {"dtype": torch.bfloat16} if runtime["bf16"] else {}

    if stage == "base":
        tokenizer = AutoTokenizer.from_pretrained(resolved["tokenizer"])
        model = _fresh_model(resolved, tokenizer)
    elif stage == "reward":
        tokenizer = AutoTokenizer.from_pretrained(resolved["base_model"])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The score head is new (random): seeded above, so the same spec starts from the same head.
        model = AutoModelForSequenceClassification.from_pretrained(resolved["base_model"], num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolved["base_model"])
        model = AutoModelForCausalLM.from_pretrained(resolved["base_model"])

    train_rows = len(rows) * (int(hyper["num_generations"]) if stage == "rl" else 1)
    training_kwargs = _training_kwargs(resolved, train_rows, tmp_dir, runtime)
    if stage in ("base", "sft"):
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**training_kwargs, completion_only_loss=bool(hyper["completion_only_loss"]))
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    elif stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        ref_model = AutoModelForCausalLM.from_pretrained(resolved["base_model"], **frozen_kwargs)
        rpo = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, float(hyper["rpo_alpha"])]} if hyper.get("rpo_alpha") else {}
        args = DPOConfig(**training_kwargs, beta=float(hyper.get("beta", 0.1)), **rpo)
        trainer = DPOTrainer(
            model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
    elif stage == "reward":
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(**training_kwargs, eval_strategy="no")
        # The held-out pairs go through the trainer only to be tokenized exactly like the training pairs.
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(eval_rows),
            processing_class=tokenizer,
        )
    else:
        from trl import RLOOConfig, RLOOTrainer

        reward_tokenizer = AutoTokenizer.from_pretrained(resolved["reward_model"])
        reward_model = AutoModelForSequenceClassification.from_pretrained(
            resolved["reward_model"], num_labels=1, **frozen_kwargs
        )
        reward_model.eval()
        args = RLOOConfig(
            **training_kwargs,
            beta=float(hyper["beta"]),
            num_generations=int(hyper["num_generations"]),
            max_completion_length=int(hyper["max_completion_length"]),
            temperature=float(hyper["temperature"]),
        )
        # RLOOTrainer rebuilds the frozen KL reference from `model.config._name_or_path`, i.e. base_model.
        trainer = RLOOTrainer(
            model=model,
            reward_funcs=reward_model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            reward_processing_classes=reward_tokenizer,
        )
    is_main = trainer.accelerator.is_main_process

    if is_main:
        print(
            f"[{stage}] {dataset_rows} rows (+{replay_count} replay), {torch.get_num_threads()} threads, "
            f"{runtime['device']} x {runtime['processes']} process(es), bf16={runtime['bf16']}",
            flush=True,
        )
    train_started = time.time()
    train_output = trainer.train()
    metrics = _metrics(trainer, train_output, time.time() - train_started)

    model = trainer.model
    if stage == "reward":
        # TRL drops pairs longer than max_length; counted here, not lost silently.
        train_scores = preference_accuracy(model, trainer.train_dataset, tokenizer.pad_token_id)
        eval_scores = preference_accuracy(model, trainer.eval_dataset, tokenizer.pad_token_id)
        if eval_scores["pairs"] == 0:
            raise TrainingDataError(f"{dataset_path}: every held-out pair is longer than max_length={hyper['max_length']}")
        metrics.update(
            eval_accuracy=eval_scores["accuracy"],
            eval_margin=eval_scores["margin"],
            eval_pairs=eval_scores["pairs"],
            train_accuracy=train_scores["accuracy"],
            train_margin=train_scores["margin"],
            train_pairs=train_scores["pairs"],
            pairs_over_max_length=len(rows) + len(eval_rows) - train_scores["pairs"] - eval_scores["pairs"],
        )
    else:
        if stage == "rl":
            metrics.update(_rl_metrics(trainer))
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = None
    # On every process: under DeepSpeed ZeRO-3 the weights are gathered collectively; only the
    # main process writes the files.
    trainer.save_model(str(tmp_dir))
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        trainer.accelerator.wait_for_everyone()  # the main process renames the folder into place
        return read_manifest(output_dir)
    for leftover in ("training_args.bin", "README.md"):
        (tmp_dir / leftover).unlink(missing_ok=True)
    manifest = {
        "stage": stage,
        "round": resolved["round"],
        "name": spec.get("name", output_dir.name),
        "base_model": resolved.get("base_model") or None,
        "tokenizer": resolved.get("tokenizer") or None,
        "dataset_path": str(dataset_path),
        "dataset_hash": file_sha256(dataset_path),
        "dataset_rows": dataset_rows,
        "replay": (
            {**resolved["replay"], "dataset_hash": file_sha256(Path(resolved["replay"]["dataset_path"])), "rows_used": replay_count}
            if resolved.get("replay")
            else None
        ),
        "model_config": resolved.get("model_config") or model.config.to_diff_dict(),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "hyperparams": hyper,
        "runtime": runtime,
        "metrics": metrics,
        "spec_hash": identity,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 2),
    }
    if stage == "reward":
        manifest["split"] = split
    if stage == "rl":
        reward_manifest = read_manifest(Path(resolved["reward_model"])) or {}
        manifest["reward_model"] = resolved["reward_model"]
        manifest["reward_model_spec_hash"] = reward_manifest.get("spec_hash")
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    replace_dir(tmp_dir, output_dir)
    trainer.accelerator.wait_for_everyone()
    summary = {"reward": f"held-out accuracy {metrics.get('eval_accuracy')}", "rl": f"reward {metrics.get('first_mean_reward')} -> {metrics.get('last_mean_reward')}"}
    print(f"[{stage}] wrote {output_dir} loss {metrics['first_loss']} -> {metrics['final_loss']} {summary.get(stage, '')}".rstrip(), flush=True)
    return manifest


def replace_dir(source: Path, target: Path) -> None:
    """Swap a finished folder into place; a stale `target` is moved aside first, then removed."""
    if target.exists():
        stale = Path(str(target) + ".old")
        if stale.exists():
            shutil.rmtree(stale)
        os.rename(target, stale)
        os.rename(source, target)
        shutil.rmtree(stale)
    else:
        os.rename(source, target)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m arena_dagster.training.entrypoint SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    try:
        train(spec)
    except (TrainingSpecError, TrainingDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
