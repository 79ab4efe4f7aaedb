"""The training settings: stages, the entry point's default hyperparameters and their checks,
the skill families, and the paper's stage schedule.

Plain values: the schema types `models:` and `schedule:` from them, and the training
package (training/spec.py, base_models.py, stages.py, schedule.py) reads them from here. The
embedded default's small models are typed values of the schema (models.SKILLS_DEFAULTS,
flywheel.SKILLS_FLYWHEEL).
"""

from __future__ import annotations

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

DEFAULT_SCHEDULE: dict[str, dict[str, Any]] = {
    "sft": {"slice": "sft", "accumulate_rounds": True},
    "dpo": {"slice": "dpo", "accumulate_rounds": False},
    "rl": {"slice": "rl", "accumulate_rounds": False},
}
