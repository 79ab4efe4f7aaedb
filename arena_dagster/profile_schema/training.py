"""The training settings: stages, the entry point's default hyperparameters and their checks,
the embedded default's small models, and the paper's stage schedule.

Plain values: the schema types `models:` and `schedule:` from them, and the training
package (training/spec.py, base_models.py, stages.py, schedule.py) reads them from here.
"""

from __future__ import annotations

import copy
from typing import Any

from arena_dagster.errors import ArenaError

STAGES = ("base", "sft", "dpo", "reward", "rl")
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
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 192,
    "tie_word_embeddings": True,
}


class TrainingSpecError(ArenaError, ValueError):
    """A spec that cannot run (missing input, unknown key, value out of range)."""


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


FAMILIES: tuple[str, ...] = (
    "reverse_word",
    "uppercase",
    "sort_numbers",
    "add",
    "count_letter",
    "acronym",
    "last_letter",
    "max_number",
    "min_number",
    "word_length",
)  # the skill families of the embedded default's prompts (prompts/skills.py generates them)

DEFAULT_SKILLS_MODELS: dict = {
    "seed": 0,
    # "char": one token per character (letter tasks need it); "bpe": byte-level BPE, digits split.
    "tokenizer": {"kind": "char", "corpus_items": 3000},
    "model_config": dict(DEFAULT_MODEL_CONFIG),
    "max_parallel": 2,  # base-model training processes at once
    "threads_per_process": 1,
    # A round trains one stage at a time, so each gets two threads (30% faster than one on two
    # cores); a fixed count, not torch's default of every core, so a seed gives the same weights
    # on any machine with two cores or more.
    "round_threads": 2,
    # Steps per model are what a 2-core machine affords (~6 steps/s per process at batch 32).
    # Letter-copying families (reverse, uppercase, acronym) learn slowly at this size; the
    # digit families and the position/counting ones (last letter, word length) learn fast.
    "competitors": {
        "letters": {
            "families": ["reverse_word", "uppercase", "last_letter"],
            "items": 5000,
            "hyperparams": {"max_steps": 650, "batch_size": 32, "learning_rate": 3e-3},
        },
        "counting": {
            "families": ["word_length", "count_letter", "acronym"],
            "items": 5000,
            "hyperparams": {"max_steps": 550, "batch_size": 32, "learning_rate": 3e-3},
        },
        "numbers": {
            "families": ["max_number", "min_number", "add", "sort_numbers"],
            "items": 5000,
            "hyperparams": {"max_steps": 500, "batch_size": 32, "learning_rate": 3e-3},
        },
    },
    # Every family, few steps: weak everywhere but not hopeless, so it wins some battles.
    "initial_target": {
        "name": "target_r0",
        "families": list(FAMILIES),
        "items": 5000,
        "hyperparams": {"max_steps": 200, "batch_size": 32, "learning_rate": 3e-3},
    },
    # Per-round training of the flywheel (training.stages.stage_training_spec): a fixed number of
    # steps, so a round costs the same whatever the number of harvested rows. These small-model
    # values replace the paper's (the entry point's defaults, meant for real models); the
    # measurements behind them are in benchmarks/README.md (bench_flywheel_lift.py).
    "flywheel": {
        # The lift comes from here: ~600 harvested rows a round (accumulated over rounds) and
        # enough steps to learn them; replayed rows of the initial target's data keep what it knew.
        "sft": {
            "hyperparams": {"max_steps": 240, "batch_size": 32, "learning_rate": 2e-3},
            "replay_rows": 800,  # rows of the initial target's training data mixed into every SFT round
        },
        # Gentle on purpose: plain DPO on a tiny model pushes its own answers down without raising
        # the chosen ones and reshuffles half its greedy answers (+-20 Elo of noise a round, -45 at
        # lr 1e-3); the NLL term on the chosen answers (rpo_alpha) and a low rate keep it from
        # undoing SFT.
        "dpo": {
            "hyperparams": {
                "max_steps": 30, "batch_size": 16, "learning_rate": 3e-5, "beta": 0.1, "rpo_alpha": 1.0, "logging_steps": 10,
            },
        },
        "reward": {
            "hyperparams": {"max_steps": 60, "batch_size": 16, "learning_rate": 1e-3, "eval_fraction": 0.2, "logging_steps": 10},
        },
        # Gentle too: the reward model agrees with the verifier on ~75% of held-out pairs, and a
        # policy pushed harder (lr 1e-3) raises its reward while losing ~90 Elo.
        "rl": {
            "hyperparams": {
                "max_steps": 8, "batch_size": 16, "learning_rate": 1e-5, "beta": 0.1,
                "num_generations": 4, "max_completion_length": 24, "temperature": 1.0, "logging_steps": 2,
            },
        },
    },
}


def stage_settings(models_settings: dict[str, Any], stage: str, *, locally_built: bool) -> dict[str, Any]:
    """`models.flywheel.<stage>` of the profile.

    The embedded default's models are tiny, so their stage settings start from the small-model
    values in DEFAULT_SKILLS_MODELS; declared (real) models start from the entry point's
    defaults, which are the paper's hyperparameters.
    """
    base = copy.deepcopy(DEFAULT_SKILLS_MODELS["flywheel"].get(stage, {})) if locally_built else {}
    override = (models_settings.get("flywheel") or {}).get(stage) or {}
    merged = {**base, **{k: v for k, v in override.items() if k != "hyperparams"}}
    merged["hyperparams"] = {**base.get("hyperparams", {}), **override.get("hyperparams", {})}
    return merged


DEFAULT_SCHEDULE: dict[str, dict[str, Any]] = {
    "sft": {"slice": "sft", "accumulate_rounds": True},
    "dpo": {"slice": "dpo", "accumulate_rounds": False},
    "rl": {"slice": "rl", "accumulate_rounds": False},
}
