"""The TRL trainer of each training stage, built from a resolved spec (see training/entrypoint.py).

One builder per stage, each with its TRL config class: SFTTrainer (base, sft), DPOTrainer
(dpo, the frozen reference from base_model), RewardTrainer (reward) and RLOOTrainer (rl,
rewarded by the reward stage's model). The TrainingArguments they share, the device and the
number of processes are set here once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from arena_dagster.training.spec import TrainingSpecError


def _training_kwargs(spec: dict, rows: int, output_dir: Path, runtime: dict) -> dict:
    """TrainingArguments shared by every stage; `rows` counts the samples one epoch sees."""
    hyper = spec["hyperparams"]
    accumulation = int(hyper.get("gradient_accumulation_steps") or 1)
    # A Ray Train worker's `split_batches` (training/ray_train.py): batch_size is the global batch, one slice a process.
    split = bool(hyper.get("split_batches"))
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": int(hyper["batch_size"]),
        "gradient_accumulation_steps": accumulation,
        "learning_rate": float(hyper["learning_rate"]),
        "lr_scheduler_type": hyper["lr_scheduler_type"],
        "warmup_steps": max(0, round(float(hyper.get("warmup_ratio", 0.0)) * _total_steps(hyper, rows, 1 if split else runtime["processes"]))),
        "weight_decay": float(hyper["weight_decay"]),
        "seed": int(hyper["seed"]),
        "data_seed": int(hyper["seed"]),
        # Every step: the manifest's figures and curves must not depend on logging_steps, which
        # only sets how often a progress line is printed (training/metrics.py).
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": runtime["device"] == "cpu",
        "bf16": runtime["bf16"],
        "fp16": False,
        "gradient_checkpointing": bool(hyper.get("gradient_checkpointing", False)),
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    if split:
        # Each process collates its own rows of the global batch: a preference batch is collated as its chosen rows
        # then its rejected rows, so slicing collated tensors (dispatch_batches) would part chosen from rejected.
        kwargs["accelerator_config"] = {"split_batches": True, "dispatch_batches": False}
        share_short_batches()
    if spec["stage"] != "rl":  # RLOOConfig has neither: it tokenizes prompts as they come.
        kwargs["max_length"] = int(hyper["max_length"])
        kwargs["dataset_num_proc"] = None
    if hyper.get("max_steps"):
        kwargs["max_steps"] = int(hyper["max_steps"])
    else:
        kwargs["num_train_epochs"] = float(hyper.get("epochs") or 1.0)
    return kwargs


def _short_batch_share(self):
    """accelerate's BatchSamplerShard._iter_with_split, except for an epoch's short last batch: accelerate fills it
    up to a whole global batch with rows of the epoch's start; here it gets only the rows that make it divide among
    the processes (none when it divides), so that step learns from the local run's rows, or one or a few more."""
    share = self.batch_size // self.num_processes
    first: list = []
    for batch in self.batch_sampler:
        first = first or list(batch)
        if len(batch) < self.batch_size:
            if self.drop_last:
                return
            missing = -len(batch) % self.num_processes
            batch = list(batch) + (first * (missing // len(first) + 1))[:missing]
            share = len(batch) // self.num_processes
        yield batch[share * self.process_index : share * (self.process_index + 1)]


def share_short_batches() -> None:
    """Make accelerate's split_batches share an epoch's short last batch (`_short_batch_share`), in this process."""
    from accelerate.data_loader import BatchSamplerShard

    if not hasattr(BatchSamplerShard, "_iter_with_split"):
        raise TrainingSpecError("this accelerate version has no BatchSamplerShard._iter_with_split: "
                                "pin accelerate to a version arena-dagster supports (pyproject.toml)")
    BatchSamplerShard._iter_with_split = _short_batch_share


def _total_steps(hyper: dict, rows: int, processes: int = 1) -> int:
    if hyper.get("max_steps"):
        return int(hyper["max_steps"])
    global_batch = int(hyper["batch_size"]) * processes * int(hyper.get("gradient_accumulation_steps") or 1)
    per_epoch = max(1, -(-rows // global_batch))
    return max(1, round(per_epoch * float(hyper.get("epochs") or 1.0)))


def runtime_of(resolved: dict) -> dict:
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


def _model_and_tokenizer(resolved: dict):
    """The model the stage trains and its tokenizer: new (base), with a new score head (reward), or loaded."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    stage = resolved["stage"]
    if stage == "base":
        tokenizer = AutoTokenizer.from_pretrained(resolved["tokenizer"])
        model = _fresh_model(resolved, tokenizer)
    elif stage == "reward":
        tokenizer = AutoTokenizer.from_pretrained(resolved["base_model"])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The score head is new (random): seeded before, so the same spec starts from the same head.
        model = AutoModelForSequenceClassification.from_pretrained(resolved["base_model"], num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolved["base_model"])
        model = AutoModelForCausalLM.from_pretrained(resolved["base_model"])
    return model, tokenizer


def _frozen_kwargs(runtime: dict) -> dict[str, Any]:
    # Frozen models (DPO reference, RL reward model) can live in bf16 when training is bf16.
    import torch

    return {"dtype": torch.bfloat16} if runtime["bf16"] else {}


def _sft_trainer(model, tokenizer, resolved, rows, eval_rows, training_kwargs, runtime):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**training_kwargs, completion_only_loss=bool(resolved["hyperparams"]["completion_only_loss"]))
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def _dpo_trainer(model, tokenizer, resolved, rows, eval_rows, training_kwargs, runtime):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    hyper = resolved["hyperparams"]
    ref_model = AutoModelForCausalLM.from_pretrained(resolved["base_model"], **_frozen_kwargs(runtime))
    # RPO: DPO's loss plus rpo_alpha x the NLL of the chosen answers (TRL 1.16 has no rpo_alpha field).
    rpo = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, float(hyper["rpo_alpha"])]} if hyper.get("rpo_alpha") else {}
    args = DPOConfig(**training_kwargs, beta=float(hyper.get("beta", 0.1)), **rpo)
    return DPOTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def _reward_trainer(model, tokenizer, resolved, rows, eval_rows, training_kwargs, runtime):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**training_kwargs, eval_strategy="no")
    # The held-out pairs go through the trainer only to be tokenized exactly like the training pairs.
    return RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows),
        processing_class=tokenizer,
    )


def _rl_trainer(model, tokenizer, resolved, rows, eval_rows, training_kwargs, runtime):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    hyper = resolved["hyperparams"]
    reward_tokenizer = AutoTokenizer.from_pretrained(resolved["reward_model"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        resolved["reward_model"], num_labels=1, **_frozen_kwargs(runtime)
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
    return RLOOTrainer(
        model=model,
        reward_funcs=reward_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
    )


# One TRL trainer (and its config class) per stage; `base` trains a fresh model like SFT.
TRAINERS = {"base": _sft_trainer, "sft": _sft_trainer, "dpo": _dpo_trainer, "reward": _reward_trainer, "rl": _rl_trainer}


def build_trainer(resolved: dict, rows: list[dict], eval_rows: list[dict], tmp_dir: Path, runtime: dict):
    """(trainer, tokenizer) of the spec's stage, its model loaded or created."""
    stage, hyper = resolved["stage"], resolved["hyperparams"]
    model, tokenizer = _model_and_tokenizer(resolved)
    train_rows = len(rows) * (int(hyper["num_generations"]) if stage == "rl" else 1)
    training_kwargs = _training_kwargs(resolved, train_rows, tmp_dir, runtime)
    return TRAINERS[stage](model, tokenizer, resolved, rows, eval_rows, training_kwargs, runtime), tokenizer
