"""The `models:` section: models built locally (`source: skills`) or declared (`source: declared`).

A declared model is a model config of `arena_dagster.backends.registry` (one class per backend,
each with that backend's options), so a typo in an option or a missing `base_url` fails at load.
A locally built section leaves out what it keeps of the embedded default's models
(SKILLS_DEFAULTS; `resolved_skills` merges the two). Training settings (hyperparameters, launch,
flywheel) are in flywheel.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, create_model, field_validator, model_validator

from arena_dagster.profile_schema.base import (
    Count,
    ModelName,
    Name,
    NonNegativeFloat,
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
from arena_dagster.profile_schema.flywheel import (  # noqa: F401 (the hyperparameter models are read from here too)
    HYPERPARAMETERS,
    BaseHyperparams,
    FlywheelSettings,
    LaunchSettings,
    hyperparameter_keys,
)
from arena_dagster.profile_schema.training import FAMILIES

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
    # Unset: SKILLS_DEFAULTS' value (resolved_skills). An unset threads_per_process is not a round's thread count.
    max_parallel: PositiveInt = None
    threads_per_process: PositiveInt = None
    round_threads: PositiveInt = None
    competitors: Annotated[dict[Name, SkillsCompetitor], Field(min_length=1)] = None
    initial_target: SkillsTarget = None
    flywheel: FlywheelSettings = None
    device: Literal[_training.DEVICES] = None  # unset: the entry point's "auto"
    launch: LaunchSettings | None = None  # null: no accelerate launch (drops the one of a profile it extends)

    @model_validator(mode="after")
    def _names(self) -> "SkillsModels":
        competitors = list(self.competitors or SKILLS_DEFAULTS.competitors)
        target = self.initial_target.name if self.initial_target else SKILLS_DEFAULTS.initial_target.name
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
    device: Literal[_training.DEVICES] = None  # unset: the entry point's "auto"
    launch: LaunchSettings | None = None  # null: no accelerate launch (drops the one of a profile it extends)

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


def model_names(models: SkillsModels | DeclaredModels | None) -> set[str]:
    """Names of the base models a (valid) `models:` section registers: competitors and the initial target."""
    if not isinstance(models, DeclaredModels):
        models = resolved_skills(models)
    return {*models.competitors, models.initial_target.name}


# The embedded default's models (assets/profiles/skills.yaml). Every value is set explicitly: the
# parts of a resolved section the training specs hold are its `model_dump(exclude_unset=True)`,
# these values and the profile's, which is what the checkpoints' identities always hashed.
SKILLS_DEFAULTS = SkillsModels.model_validate({
    "seed": 0,
    # "char": one token per character (letter tasks need it); "bpe": byte-level BPE, digits split.
    "tokenizer": {"kind": "char", "corpus_items": 3000},
    "model_config": dict(_training.DEFAULT_MODEL_CONFIG),
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
})
# What a competitor a profile names leaves out (a competitor map given in full replaces the default one).
COMPETITOR_DEFAULTS: dict[str, Any] = {"items": 5000, "hyperparams": {"max_steps": 550, "batch_size": 32, "learning_rate": 3e-3}}


def resolved_skills(models: SkillsModels | None) -> SkillsModels:
    """A locally built `models:` section merged key by key over SKILLS_DEFAULTS (each competitor a
    profile names over COMPETITOR_DEFAULTS). Its `flywheel` stays the profile's: `stage_settings`
    lays it over the small-model stage values."""

    def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in override.items():
            if key == "competitors":
                out[key] = {name: merge(COMPETITOR_DEFAULTS, spec) for name, spec in value.items()}
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    own = models.model_dump(by_alias=True, exclude_unset=True) if models is not None else {}
    launch = models.launch if models is not None else None
    processes = launch.num_processes if launch is not None and launch.num_processes else 1
    return SkillsModels.model_validate(merge(SKILLS_DEFAULTS.model_dump(by_alias=True, exclude_unset=True), own),
                                       context={"locally_built": True, "processes": processes})
