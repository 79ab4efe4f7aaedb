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
        kwargs["accelerator_config"] = {"split_batches": True, "dispatch_batches": True}
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


class PairsForDispatch:
    """A preference stage's collator (DPO, reward) laid out for accelerate's dispatching loader (`split_batches`).

    TRL stacks a batch of pairs as [every chosen row; every rejected row] and each process splits its rows in two
    halves, chosen and rejected. The dispatching loader hands process r the r-th contiguous slice of the rows: with 2
    processes, one would get every chosen row and the other every rejected one, and each would pair answers of
    different prompts. Here the rows are reordered so that each slice is [its pairs' chosen rows; their rejected
    rows], the local run's pairs. A batch whose pairs do not divide by the processes (an epoch's short last one) is
    completed with its own first pairs, as accelerate completes any other uneven batch.
    """

    def __init__(self, collate, processes: int) -> None:
        self.collate, self.processes = collate, processes

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        share = -(-len(examples) // self.processes)
        examples = [*examples, *examples[: share * self.processes - len(examples)]]
        batch = self.collate(examples)
        pairs = len(examples)
        order = torch.tensor([row for rank in range(self.processes) for start in (0, pairs)
                              for row in range(start + rank * share, start + (rank + 1) * share)])
        laid_out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] != 2 * pairs:
                # A per-pair column (a margin, precomputed reference log-probs) would be sliced at other rows.
                raise TrainingSpecError(f"the preference batch's {key!r} has {value.shape[0]} rows, not 2 per pair: "
                                        "it cannot be split between Ray Train workers; train it with compute.workers 1")
            laid_out[key] = value[order] if isinstance(value, torch.Tensor) and value.dim() else value
        return laid_out


# One TRL trainer (and its config class) per stage; `base` trains a fresh model like SFT.
TRAINERS = {"base": _sft_trainer, "sft": _sft_trainer, "dpo": _dpo_trainer, "reward": _reward_trainer, "rl": _rl_trainer}


def build_trainer(resolved: dict, rows: list[dict], eval_rows: list[dict], tmp_dir: Path, runtime: dict):
    """(trainer, tokenizer) of the spec's stage, its model loaded or created."""
    stage, hyper = resolved["stage"], resolved["hyperparams"]
    model, tokenizer = _model_and_tokenizer(resolved)
    train_rows = len(rows) * (int(hyper["num_generations"]) if stage == "rl" else 1)
    training_kwargs = _training_kwargs(resolved, train_rows, tmp_dir, runtime)
    trainer = TRAINERS[stage](model, tokenizer, resolved, rows, eval_rows, training_kwargs, runtime)
    if stage in ("dpo", "reward") and hyper.get("split_batches"):
        trainer.data_collator = PairsForDispatch(trainer.data_collator, runtime["processes"])
    return trainer, tokenizer
