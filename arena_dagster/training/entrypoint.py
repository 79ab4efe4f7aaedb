"""Training entry point, run in its own process: `python -m arena_dagster.training.entrypoint SPEC.json`.

Stages (the spec's `stage`):
- `base`: a fresh Llama-style model from `model_config` and the tokenizer folder `tokenizer`,
  trained by TRL `SFTTrainer` on a chat JSONL;
- `sft`: continues `base_model` with `SFTTrainer` (loss on the answer only), optionally mixing
  in `replay` rows from an earlier dataset so the model does not forget what it knew;
- `dpo`: TRL `DPOTrainer` from `base_model`, whose frozen copy is the reference model.

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

STAGES = ("base", "sft", "dpo")
MANIFEST = "manifest.json"

# Hyperparameters a spec may leave out.
DEFAULT_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "base": {"learning_rate": 3e-3, "max_steps": 700, "batch_size": 32, "warmup_ratio": 0.05},
    "sft": {"learning_rate": 1e-3, "max_steps": 200, "batch_size": 32, "warmup_ratio": 0.05},
    "dpo": {"learning_rate": 2e-4, "max_steps": 60, "batch_size": 16, "warmup_ratio": 0.1, "beta": 0.1},
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
    if not Path(spec["dataset_path"]).is_file():
        raise TrainingSpecError(f"spec.dataset_path {spec['dataset_path']} does not exist")
    if stage == "base":
        if not spec.get("tokenizer") or not Path(spec["tokenizer"]).is_dir():
            raise TrainingSpecError(f"stage base needs spec.tokenizer, a tokenizer folder (got {spec.get('tokenizer')!r})")
    elif not spec.get("base_model") or not Path(spec["base_model"]).is_dir():
        raise TrainingSpecError(f"stage {stage} needs spec.base_model, a model folder (got {spec.get('base_model')!r})")
    replay = spec.get("replay")
    if replay:
        if stage != "sft":
            raise TrainingSpecError("spec.replay is only used by stage sft")
        if not Path(replay.get("dataset_path", "")).is_file() or int(replay.get("rows", -1)) < 0:
            raise TrainingSpecError(f"spec.replay needs an existing dataset_path and rows >= 0, got {replay}")
    hyper = {**COMMON_HYPERPARAMS, **DEFAULT_HYPERPARAMS[stage], **(spec.get("hyperparams") or {})}
    unknown = set(hyper) - set(COMMON_HYPERPARAMS) - {k for d in DEFAULT_HYPERPARAMS.values() for k in d} - {"epochs"}
    if unknown:
        raise TrainingSpecError(f"unknown hyperparameters {sorted(unknown)}")
    resolved = {**spec, "round": int(spec.get("round", 0)), "hyperparams": hyper}
    if stage == "base":
        resolved["model_config"] = {**DEFAULT_MODEL_CONFIG, **(spec.get("model_config") or {})}
    return resolved


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
    if resolved.get("tokenizer"):
        identity["tokenizer_identity"] = _folder_fingerprint(Path(resolved["tokenizer"]))
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


def _training_kwargs(spec: dict, rows: int, output_dir: Path) -> dict:
    hyper = spec["hyperparams"]
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": int(hyper["batch_size"]),
        "learning_rate": float(hyper["learning_rate"]),
        "lr_scheduler_type": hyper["lr_scheduler_type"],
        "warmup_steps": max(0, round(float(hyper.get("warmup_ratio", 0.0)) * _total_steps(hyper, rows))),
        "weight_decay": float(hyper["weight_decay"]),
        "seed": int(hyper["seed"]),
        "data_seed": int(hyper["seed"]),
        "max_length": int(hyper["max_length"]),
        "logging_steps": int(hyper["logging_steps"]),
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataset_num_proc": None,
    }
    if hyper.get("max_steps"):
        kwargs["max_steps"] = int(hyper["max_steps"])
    else:
        kwargs["num_train_epochs"] = float(hyper.get("epochs") or 1.0)
    return kwargs


def _total_steps(hyper: dict, rows: int) -> int:
    if hyper.get("max_steps"):
        return int(hyper["max_steps"])
    per_epoch = max(1, -(-rows // int(hyper["batch_size"])))
    return max(1, round(per_epoch * float(hyper.get("epochs") or 1.0)))


def _replay_rows(spec: dict) -> list[dict]:
    replay = spec.get("replay")
    if not replay or not int(replay.get("rows", 0)):
        return []
    pool = sft_rows(Path(replay["dataset_path"]))
    rng = random.Random(f"replay-{replay.get('seed', 0)}")
    count = min(int(replay["rows"]), len(pool))
    return rng.sample(pool, count)


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


def train(spec: dict) -> dict:
    """Run one training stage as described by `spec`; returns the manifest written next to the model."""
    started = time.time()
    resolved = validate_spec(spec)
    identity = spec_hash(spec)
    stage = resolved["stage"]
    dataset_path = Path(resolved["dataset_path"])
    # Bad data fails here, before the slow imports.
    if stage == "dpo":
        rows = dpo_rows(dataset_path)
        dataset_rows, replay = len(rows), []
        if not rows:
            raise TrainingDataError(f"{dataset_path}: no preference pairs")
    else:
        rows = sft_rows(dataset_path)
        dataset_rows, replay = len(rows), _replay_rows(resolved)
        rows = rows + replay
        if not rows:
            raise TrainingDataError(f"{dataset_path}: no training rows (and no replay rows)")
    replay_count = len(replay)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    threads = int(spec.get("threads") or os.environ.get("ARENA_TORCH_THREADS") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    hyper = resolved["hyperparams"]
    output_dir = Path(resolved["output_dir"])
    tmp_dir = Path(str(output_dir) + ".tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    set_seed(int(hyper["seed"]))

    if stage == "base":
        tokenizer = AutoTokenizer.from_pretrained(resolved["tokenizer"])
        model = _fresh_model(resolved, tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolved["base_model"])
        model = AutoModelForCausalLM.from_pretrained(resolved["base_model"])

    if stage in ("base", "sft"):
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(
            **_training_kwargs(resolved, len(rows), tmp_dir), completion_only_loss=bool(hyper["completion_only_loss"])
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        ref_model = AutoModelForCausalLM.from_pretrained(resolved["base_model"])
        args = DPOConfig(**_training_kwargs(resolved, len(rows), tmp_dir), beta=float(hyper.get("beta", 0.1)))
        trainer = DPOTrainer(
            model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )

    print(f"[{stage}] {dataset_rows} rows (+{replay_count} replay), {torch.get_num_threads()} threads", flush=True)
    train_started = time.time()
    train_output = trainer.train()
    metrics = _metrics(trainer, train_output, time.time() - train_started)

    model = trainer.model
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(str(tmp_dir))
    tokenizer.save_pretrained(str(tmp_dir))
    for leftover in ("training_args.bin",):
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
        "metrics": metrics,
        "spec_hash": identity,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 2),
    }
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    replace_dir(tmp_dir, output_dir)
    print(f"[{stage}] wrote {output_dir} loss {metrics['first_loss']} -> {metrics['final_loss']}", flush=True)
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
