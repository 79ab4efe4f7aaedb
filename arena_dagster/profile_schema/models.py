"""The `models:` section: models built locally (`source: skills`) or declared (`source: declared`).

A declared model is a model config of `arena_dagster.backends.registry` (one class per backend,
each with that backend's options), so a typo in an option or a missing `base_url` fails at load.
Training hyperparameters are checked per stage against the key sets of the training entry
point (a key another stage uses, `beta` in an SFT stage, would be silently ignored there), and
the stage settings as merged with their defaults go through the entry point's own value rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationInfo, create_model, field_validator, model_validator

from arena_dagster.profile_schema.base import (
    Count,
    ModelName,
    Name,
    NonNegativeFloat,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    Probability,
    Section,
    Seed,
    Text,
    check_distinct_keys,
    rule,
)
from arena_dagster.names import fold

from arena_dagster.profile_schema import training as _training
from arena_dagster.profile_schema.training import DEFAULT_SKILLS_MODELS, FAMILIES, stage_settings

# A checkpoint's registry name; a base model with such a name would collide with a round's checkpoint.
CHECKPOINT_NAME = re.compile(r"^(SFT|DPO|RM|RL)-I\d+$")


# ---------------------------------------------------------------- sampling and model configs


class SamplingSettings(Section):
    max_tokens: PositiveInt = 64
    temperature: NonNegativeFloat = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Seed = 0


class TransformersOptions(Section):
    batch_size: PositiveInt = 64
    threads: PositiveInt = None
    device: Text = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    gguf_file: Text = None
    hub_revision: Text = None
    response_format: dict[str, Any] = None


class VllmOptions(Section):
    engine: dict[str, Any] = None
    hub_revision: Text = None
    stop: list[str] = None
    response_format: dict[str, Any] = None


class OpenAIOptions(Section):
    timeout_s: PositiveFloat = 60.0
    max_retries: Count = 5
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0
    requests_per_minute: PositiveFloat | None = None
    response_format: dict[str, Any] = None
    extra_body: dict[str, Any] = None
    stop: list[str] = None
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


class RecordedOptions(Section):
    answer_field: Text = None
    model_id: ModelName = None


class _Served(Section):
    """What every model config has: where the weights (or the served name, or the file) are, and sampling."""

    path: Text = None
    model: Text = None
    revision: str = None
    sampling: SamplingSettings = None
    api_key: Any = None

    @field_validator("api_key")
    @classmethod
    def _no_keys_in_files(cls, value: Any) -> Any:
        raise ValueError("keys are never read from profiles: put the key in an environment variable and name it in api_key_env")

    @model_validator(mode="after")
    def _path_or_model(self) -> "_Served":
        if self.path is None and self.model is None:
            raise ValueError("give `path` (a folder, hub id or file) or `model` (a served model name)")
        if self.path is not None and self.model is not None and self.path != self.model:
            raise ValueError("give `path` or `model`, not both")
        return self


class TransformersModel(_Served, TransformersOptions):
    backend: Literal["transformers"]


class VllmModel(_Served, VllmOptions):
    backend: Literal["vllm"]


class OpenAIModel(_Served, OpenAIOptions):
    backend: Literal["openai"]
    base_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = None
    concurrency: PositiveInt = 4


class RecordedModel(_Served, RecordedOptions):
    """Answers recorded earlier (`path`: a JSONL file); without a file, a model known only through a
    recorded judge's verdicts (a replay): it answers nothing, and only `judge.kind: recorded` judges it."""

    backend: Literal["recorded"]

    @model_validator(mode="after")
    def _path_or_model(self) -> "RecordedModel":
        if self.path is not None and self.model is not None and self.path != self.model:
            raise ValueError("give `path` or `model`, not both")
        return self

    @property
    def answers_recorded(self) -> bool:
        return self.path is not None or self.model is not None


def _tag(field: str, default: str | None = None):
    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get(field, default)
        return getattr(value, field, default)

    return pick


def _union(field: str, classes: dict[str, type], default: str | None = None) -> Any:
    known = ", ".join(classes)
    return Annotated[
        Union[tuple(Annotated[cls, Tag(tag)] for tag, cls in classes.items())],
        Discriminator(_tag(field, default), custom_error_type=field,
                      custom_error_message=f"`{field}` must be one of {known}"),
    ]


_BACKEND_CLASSES = {"transformers": TransformersModel, "vllm": VllmModel, "openai": OpenAIModel, "recorded": RecordedModel}
ModelConfig = _union("backend", _BACKEND_CLASSES)
DeclaredTarget = _union("backend", {
    tag: create_model(f"{cls.__name__}Target", __base__=cls, name=(Name, ...)) for tag, cls in _BACKEND_CLASSES.items()
})


# ---------------------------------------------------------------- training hyperparameters


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
        own = self.model_dump(exclude_unset=True)
        merged = stage_settings({"flywheel": {self.stage: own}}, self.stage, locally_built=context.get("locally_built", True))
        spec = _training
        hyper = {**spec.COMMON_HYPERPARAMS, **spec.DEFAULT_HYPERPARAMS[self.stage], **merged["hyperparams"]}
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


# ---------------------------------------------------------------- locally built models (skills)


class TokenizerSettings(Section):
    kind: Literal["char", "bpe"] = "char"
    corpus_items: PositiveInt = 3000
    vocab_size: PositiveInt = 512


# Llama config keys: the entry point's defaults and a few more LlamaConfig knobs (any other key
# would be stored on the config and silently ignored).
ArchitectureSettings = create_model(
    "ArchitectureSettings", __base__=Section,
    **{key: (bool if isinstance(value, bool) else PositiveInt, None) for key, value in _training.DEFAULT_MODEL_CONFIG.items()},
    head_dim=(PositiveInt, None), rope_theta=(PositiveFloat, None), rms_norm_eps=(PositiveFloat, None),
    hidden_act=(Literal["silu", "gelu", "relu", "gelu_new"], None), attention_dropout=(Probability, None),
    initializer_range=(PositiveFloat, None),
)

Family = Literal[FAMILIES]


class SkillsCompetitor(Section):
    families: Annotated[list[Family], Field(min_length=1)]
    items: PositiveInt = 5000
    hyperparams: BaseHyperparams = None


class SkillsTarget(Section):
    name: Name = "target_r0"
    families: Annotated[list[Family], Field(min_length=1)] = None
    items: PositiveInt = 5000
    hyperparams: BaseHyperparams = None


def check_model_names(names: list[str], where: str) -> None:
    """Model names are folder names: unique (also ignoring case) and never a round checkpoint's name."""
    seen: dict[str, str] = {}
    for name in names:
        if CHECKPOINT_NAME.match(name):
            raise rule(where, f"model name {name!r} is the name of a round's checkpoint (SFT-I1, DPO-I2 ...)", "rename it")
        if fold(name) in seen:
            same = seen[fold(name)] == name
            raise rule(where, f"model name {name!r} is given to two models" if same else
                       f"model names {seen[fold(name)]!r} and {name!r} differ only in case (and name one folder)",
                       "rename one of them")
        seen[fold(name)] = name


class _ModelsSection(Section):
    @model_validator(mode="before")
    @classmethod
    def _distinct_competitors(cls, data: Any) -> Any:  # before: a dict keeps one of two keys that normalize alike
        check_distinct_keys(data, "competitors", "models.competitors")
        return data


class SkillsModels(_ModelsSection):
    source: Literal["skills"] = "skills"
    seed: Seed = 0
    tokenizer: TokenizerSettings = None
    model_config_: ArchitectureSettings = Field(None, alias="model_config")
    max_parallel: PositiveInt = 2
    threads_per_process: PositiveInt = 1
    round_threads: PositiveInt = None
    competitors: Annotated[dict[Name, SkillsCompetitor], Field(min_length=1)] = None
    initial_target: SkillsTarget = None
    flywheel: FlywheelSettings = None
    device: Literal[_training.DEVICES] = "auto"
    launch: LaunchSettings = None

    @model_validator(mode="after")
    def _names(self) -> "SkillsModels":
        competitors = list(self.competitors or DEFAULT_SKILLS_MODELS["competitors"])
        target = self.initial_target.name if self.initial_target else DEFAULT_SKILLS_MODELS["initial_target"]["name"]
        check_model_names([*competitors, target], "models")
        config = {**_training.DEFAULT_MODEL_CONFIG, **(self.model_config_.model_dump(exclude_none=True) if self.model_config_ else {})}
        if config["hidden_size"] % config["num_attention_heads"] or config["num_attention_heads"] % config["num_key_value_heads"]:
            raise rule("models.model_config", "hidden_size must be a multiple of num_attention_heads, and num_attention_heads "
                       f"of num_key_value_heads (got {config['hidden_size']}, {config['num_attention_heads']}, "
                       f"{config['num_key_value_heads']})")
        return self



class DeclaredModels(_ModelsSection):
    source: Literal["declared"]
    initial_target: DeclaredTarget
    competitors: Annotated[dict[Name, ModelConfig], Field(min_length=1)]
    seed: Seed = 0
    threads_per_process: PositiveInt = None
    round_threads: PositiveInt = None
    flywheel: FlywheelSettings = None
    device: Literal[_training.DEVICES] = "auto"
    launch: LaunchSettings = None

    @model_validator(mode="after")
    def _names(self) -> "DeclaredModels":
        check_model_names([*self.competitors, self.initial_target.name], "models")
        return self


ModelsSettings = _union("source", {"skills": SkillsModels, "declared": DeclaredModels}, default="skills")


def unrecorded_models(models: Any) -> list[str]:
    """Declared models whose answers were not recorded (`backend: recorded` without a file), sorted."""
    if not isinstance(models, DeclaredModels):
        return []
    entries = [(models.initial_target.name, models.initial_target), *models.competitors.items()]
    return sorted(name for name, config in entries if not getattr(config, "answers_recorded", True))


def model_names(models: dict[str, Any] | None) -> set[str]:
    """Names of the base models a (valid) `models:` section registers: competitors and the initial target."""
    models = models or {}
    if models.get("source") == "declared":
        return {*models["competitors"], models["initial_target"]["name"]}
    competitors = models.get("competitors") or DEFAULT_SKILLS_MODELS["competitors"]
    target = (models.get("initial_target") or {}).get("name") or DEFAULT_SKILLS_MODELS["initial_target"]["name"]
    return {*competitors, target}
