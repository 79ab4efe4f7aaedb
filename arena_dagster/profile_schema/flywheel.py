"""The training settings of `models:`: per-stage hyperparameters, `launch`, and `flywheel` (how
each round's stages train), with the small-model stage values of the embedded default.

Hyperparameters are checked per stage against the key sets of the training entry point (a key
another stage uses, `beta` in an SFT stage, would be silently ignored there), and the stage
settings as merged with their defaults go through the entry point's own value rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import Field, ValidationInfo, create_model, field_validator, model_validator

from arena_dagster.profile_schema import training as _training
from arena_dagster.profile_schema.base import (
    Count,
    NonNegativeFloat,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    Probability,
    Section,
    Seed,
    Text,
)


def hyperparameter_keys(stage: str) -> set[str]:
    """The hyperparameters the training entry point accepts for `stage`."""
    spec = _training
    return spec.allowed_hyperparams(stage)


_HYPERPARAMETER_TYPES: dict[str, Any] = {
    "seed": Seed,
    "learning_rate": PositiveFloat,
    "max_steps": PositiveInt | None,
    "epochs": PositiveFloat | None,
    "batch_size": PositiveInt,
    "warmup_ratio": Probability,
    "weight_decay": NonNegativeFloat,
    "lr_scheduler_type": Text,
    "max_length": PositiveInt,
    "logging_steps": PositiveInt,
    "completion_only_loss": bool,
    "beta": NonNegativeFloat,
    "eval_fraction": OpenFraction,
    "num_generations": Annotated[int, Field(ge=2)],
    "max_completion_length": PositiveInt,
    "temperature": PositiveFloat,
    "gradient_accumulation_steps": PositiveInt,
    "gradient_checkpointing": bool,
    "bf16": Literal["auto"] | bool,
}


class _Hyperparams(Section):
    stage: ClassVar[str] = ""

    @classmethod
    def unknown_key_hint(cls, key: str) -> str:
        owners = [stage for stage in _training.STAGES if key in hyperparameter_keys(stage)]
        return f"{key} is a hyperparameter of stage {' and '.join(owners)}, not {cls.stage}" if owners else ""


HYPERPARAMETERS = {
    stage: create_model(
        f"{stage.capitalize()}Hyperparams", __base__=type(f"_{stage.capitalize()}Stage", (_Hyperparams,), {"stage": stage}),
        # A key the entry point gains later is accepted with any value until it is typed here.
        **{key: (_HYPERPARAMETER_TYPES.get(key, Any), None) for key in sorted(hyperparameter_keys(stage))},
    )
    for stage in _training.STAGES
}


class LaunchSettings(Section):
    num_processes: PositiveInt = None
    config_file: Text = None
    mixed_precision: Literal["no", "fp16", "bf16"] = None

    @field_validator("config_file")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not Path(value).expanduser().is_file():
            raise ValueError(f"accelerate config file {value} does not exist")
        return value


class _FlywheelStage(Section):
    stage: ClassVar[str]

    @model_validator(mode="after")
    def _entry_point_accepts(self, info: ValidationInfo) -> "_FlywheelStage":
        # The stage's hyperparameters as the entry point will see them: its defaults, the
        # profile's base values (small-model ones for locally built models), then these.
        context = info.context or {}
        base = getattr(SKILLS_FLYWHEEL, self.stage) if context.get("locally_built", True) else None
        spec = _training
        hyper = {**spec.COMMON_HYPERPARAMS, **spec.DEFAULT_HYPERPARAMS[self.stage], **_merged(base, self).hyperparams}
        spec.check_hyperparams(self.stage, hyper, int(context.get("processes", 1)))  # a ValueError: reported at this stage
        return self


SftHyperparams, DpoHyperparams = HYPERPARAMETERS["sft"], HYPERPARAMETERS["dpo"]
RewardHyperparams, RlHyperparams, BaseHyperparams = HYPERPARAMETERS["reward"], HYPERPARAMETERS["rl"], HYPERPARAMETERS["base"]


class FlywheelSft(_FlywheelStage):
    stage: ClassVar[str] = "sft"
    hyperparams: SftHyperparams = None
    replay_rows: Count = 0  # rows of the initial target's training data mixed into every SFT round


class FlywheelDpo(_FlywheelStage):
    stage: ClassVar[str] = "dpo"
    hyperparams: DpoHyperparams = None


class FlywheelReward(_FlywheelStage):
    stage: ClassVar[str] = "reward"
    hyperparams: RewardHyperparams = None


class FlywheelRl(_FlywheelStage):
    stage: ClassVar[str] = "rl"
    hyperparams: RlHyperparams = None


class FlywheelSettings(Section):
    sft: FlywheelSft = None
    dpo: FlywheelDpo = None
    reward: FlywheelReward = None
    rl: FlywheelRl = None



class StageSettings(NamedTuple):
    """One stage's settings as its training spec takes them."""

    hyperparams: dict[str, Any]  # the keys the profile (and the base values) set, nothing else: the spec hashes them
    replay_rows: int


def _merged(base: _FlywheelStage | None, own: _FlywheelStage | None) -> StageSettings:
    # Only the keys each layer sets: an unset key keeps the layer below (and stays out of the spec).
    layers = [layer.model_dump(exclude_unset=True) for layer in (base, own) if layer is not None]
    replay = [layer["replay_rows"] for layer in layers if "replay_rows" in layer]
    return StageSettings({key: value for layer in layers for key, value in (layer.get("hyperparams") or {}).items()},
                         int(replay[-1]) if replay else 0)


def stage_settings(flywheel: FlywheelSettings | None, stage: str, *, locally_built: bool) -> StageSettings:
    """`models.flywheel.<stage>` of the profile over its base values.

    The embedded default's models are tiny, so their stage settings start from the small-model
    values of SKILLS_FLYWHEEL; declared (real) models start from the entry point's defaults,
    which are the paper's hyperparameters.
    """
    return _merged(getattr(SKILLS_FLYWHEEL, stage) if locally_built else None,
                   getattr(flywheel, stage) if flywheel is not None else None)


# Per-round training of the embedded default's tiny models (training.stages.stage_training_spec): a
# fixed number of steps, so a round costs the same whatever the number of harvested rows. These
# small-model values replace the paper's (the entry point's defaults, meant for real models); the
# measurements behind them are in benchmarks/README.md (bench_flywheel_lift.py). Checked against the
# entry point's defaults (locally_built False: they are the base of the locally built ones).
SKILLS_FLYWHEEL = FlywheelSettings.model_validate({
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
}, context={"locally_built": False})
