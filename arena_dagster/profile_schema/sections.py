"""Every section of a profile and the rules between sections; `Profile` is the whole file.

The code reads profiles as plain dicts; these models say what each key may hold, so a wrong
key, type or range fails at load with its key path instead of minutes into a run.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from arena_dagster.judging.recorded import FORMATS as RECORDED_FORMATS
from arena_dagster.judging.recorded import VERDICT_SCORES
from arena_dagster.profile_schema.base import (
    Count,
    Finite,
    Name,
    NonNegativeFloat,
    OpenFraction,
    PositiveInt,
    Probability,
    Section,
    Seed,
    Text,
    rule,
)
from arena_dagster.profile_schema.models import (
    CHECKPOINT_NAME,
    ModelConfig,
    ModelsSettings,
    SamplingSettings,
    TransformersOptions,
    VllmOptions,
    _union,
    model_names,
)
from arena_dagster.prompts.curation import PRESETS, CurationConfig, CurationError
from arena_dagster.prompts.pools import REAL_SOURCES
from arena_dagster.quality.suites import judge_health_limits
from arena_dagster.training.schedule import DEFAULT_SCHEDULE

SKILLS_SOURCE = "skills"
MIN_BOOTSTRAP = 20  # the gate's paired interval needs at least this many replicates, and so does every leaderboard

# Every sub-seed a profile may set; the ones it leaves out follow the top-level `seed` (config.with_seed).
SEED_PATHS = ("prompts.seed", "prompts.curation.seed", "testset.seed", "models.seed", "evaluation.seed", "promotion.seed")


# ---------------------------------------------------------------- prompts


def _curation_model() -> type[Section]:
    hints = typing.get_type_hints(CurationConfig)
    fields = {f.name: (hints[f.name], None) for f in dataclasses.fields(CurationConfig)}
    return create_model("CurationFields", __base__=Section, preset=(Literal[tuple(PRESETS)], "paper"), **fields)


class CurationSettings(_curation_model()):
    @model_validator(mode="after")
    def _ranges(self) -> "CurationSettings":
        try:
            CurationConfig.from_dict(self.model_dump(exclude_unset=True))
        except CurationError as exc:
            raise ValueError(str(exc).replace("CurationConfig.", "")) from None
        return self


Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
DupRate = Annotated[float, Field(ge=0.0, lt=1.0)]

SKILLS_PROMPT_KEYS = {"raw_pool_size", "exact_dup_rate", "near_dup_rate", "short_rate"}
REAL_PROMPT_KEYS = {
    "files", "max_conversations", "max_user_turns", "require_recorded_answer", "max_prompt_chars", "max_answer_chars",
    "max_conversation_chars", "recorded_model", "testset_fraction", "against",
}


class PromptsSettings(Section):
    source: Literal[(SKILLS_SOURCE, *REAL_SOURCES)]
    rounds: PositiveInt
    seed: Seed = None
    stage_fractions: dict[Label, Annotated[float, Field(gt=0.0, le=1.0)]] = None
    curation: CurationSettings = None
    # skills: the generated task suite
    raw_pool_size: PositiveInt = None
    exact_dup_rate: DupRate = 0.08
    near_dup_rate: DupRate = 0.08
    short_rate: DupRate = 0.02
    # sharegpt / files: real conversations
    files: list[Text] = None
    max_conversations: PositiveInt | None = None
    max_user_turns: PositiveInt | None = None
    require_recorded_answer: bool = True
    max_prompt_chars: PositiveInt | None = None
    max_answer_chars: PositiveInt | None = None
    max_conversation_chars: PositiveInt | None = None
    recorded_model: Name = "recorded"
    testset_fraction: OpenFraction = 0.2
    against: list[Text] = None

    @model_validator(mode="after")
    def _source_rules(self) -> "PromptsSettings":
        given = self.model_fields_set
        foreign = sorted(given & (REAL_PROMPT_KEYS if self.source == SKILLS_SOURCE else SKILLS_PROMPT_KEYS))
        if foreign:
            owner = ", ".join(REAL_SOURCES) if self.source == SKILLS_SOURCE else SKILLS_SOURCE
            raise rule(f"prompts.{foreign[0]}", f"prompts.{foreign[0]} is a setting of source {owner}, not {self.source}")
        if self.source == SKILLS_SOURCE and self.raw_pool_size is None:
            raise rule("prompts.raw_pool_size", "missing setting prompts.raw_pool_size (source skills)",
                       "set how many raw prompts to generate, e.g. raw_pool_size: 2400")
        if self.source == "files" and not self.files:
            raise rule("prompts.files", "source files needs prompts.files", "name the JSON/JSONL/Parquet files (or hub datasets) to read")
        if self.exact_dup_rate + self.near_dup_rate + self.short_rate >= 1.0:
            raise rule("prompts", "exact_dup_rate + near_dup_rate + short_rate must stay below 1")
        if self.stage_fractions is not None:
            total = sum(self.stage_fractions.values())
            if not math.isclose(total, 1.0, abs_tol=1e-6):
                raise rule("prompts.stage_fractions", f"prompts.stage_fractions must sum to 1, they sum to {total:g}",
                           "e.g. {sft: 0.34, dpo: 0.33, rl: 0.33}")
        return self


# ---------------------------------------------------------------- the arena test set

SKILLS_TESTSET_KEYS = {"seed", "candidates", "diverse_per_family", "hard"}
REAL_TESTSET_KEYS = {"seed", "clusters", "per_cluster", "pick", "hard", "hard_candidates", "hard_by"}


class ArenaTestsetSettings(Section):
    seed: Seed = None
    hard: Count = None
    # skills
    candidates: PositiveInt = None
    diverse_per_family: Count = None
    # sharegpt / files
    clusters: PositiveInt = 8
    per_cluster: PositiveInt = 2
    pick: Literal["random", "central"] = "random"
    hard_candidates: PositiveInt = None
    hard_by: Literal["judge", "proxy"] = "judge"

    def check_source(self, source: str) -> None:
        keys, required = (SKILLS_TESTSET_KEYS, ("candidates", "diverse_per_family", "hard")) if source == SKILLS_SOURCE \
            else (REAL_TESTSET_KEYS, ())
        foreign = sorted(self.model_fields_set - keys)
        if foreign:
            raise rule(f"testset.{foreign[0]}", f"testset.{foreign[0]} is not a setting of prompt source {source}",
                       f"the test set of source {source} takes {', '.join(sorted(keys))}")
        for key in required:
            if getattr(self, key) is None:
                raise rule(f"testset.{key}", f"missing setting testset.{key} (source {source})")
        if source == SKILLS_SOURCE and self.hard + self.diverse_per_family > self.candidates:
            raise rule("testset.candidates", "testset.candidates must cover the diverse and hard parts")
        if self.hard_candidates is not None and self.hard is not None and self.hard_candidates < self.hard:
            raise rule("testset.hard_candidates", f"testset.hard_candidates ({self.hard_candidates}) is fewer than hard ({self.hard})")


# ---------------------------------------------------------------- generation and the judge


class _Generation(Section):
    sampling: SamplingSettings = None


class TransformersGeneration(_Generation):
    backend: Literal["transformers"] = "transformers"
    options: TransformersOptions = None


class VllmGeneration(_Generation):
    backend: Literal["vllm"]
    options: VllmOptions = None


# How the round's own checkpoints answer: from their folders, so only the in-process backends.
GenerationSettings = _union("backend", {"transformers": TransformersGeneration, "vllm": VllmGeneration}, default="transformers")

JUDGMENT_FIELDS = ("explanation", "score_a", "score_b")


class VerifierJudge(Section):
    kind: Literal["verifier"] = "verifier"
    name: Name = "verifier"


class MaxChars(Section):
    instruction: PositiveInt | None = None
    history: PositiveInt | None = None
    answer: PositiveInt | None = None


def _template_exists(value: str, folder: str = "judge_templates") -> str:
    from arena_dagster.config import ASSETS_DIR

    path = Path(value)
    if path.suffix in (".yaml", ".yml"):
        if not path.expanduser().is_file():
            raise ValueError(f"template file {value} does not exist")
    elif not (ASSETS_DIR / folder / f"{value}.yaml").is_file():
        known = sorted(p.stem for p in (ASSETS_DIR / folder).glob("*.yaml"))
        raise ValueError(f"no judge template named {value!r} (known: {', '.join(known)}; or a .yaml path)")
    return value


class LLMJudge(Section):
    kind: Literal["llm"]
    name: Name = "llm-judge"
    model: ModelConfig
    template: Text = "pairwise_v1"
    structured: Literal["auto", "on", "off"] | bool = "auto"
    integers: Literal["argmax", "expected"] = "argmax"
    explanation_tokens: PositiveInt = 64
    retries: Count = 2
    retry_suffix: str = None
    max_chars: MaxChars = None
    batch_size: PositiveInt = 8
    difficulty_template: Text = "difficulty_v1"
    field_order: list[Literal[JUDGMENT_FIELDS]] = None

    @field_validator("template", "difficulty_template")
    @classmethod
    def _template_exists(cls, value: str) -> str:
        return _template_exists(value)

    @model_validator(mode="after")
    def _consistent(self) -> "LLMJudge":
        if self.field_order is not None and sorted(self.field_order) != sorted(JUDGMENT_FIELDS):
            raise rule("judge.field_order", f"judge.field_order must order {', '.join(JUDGMENT_FIELDS)} (each once)")
        if self.integers == "expected" and (self.model.backend != "transformers" or self.structured in ("off", False)):
            raise rule("judge.integers", "judge.integers: expected needs structured output on the transformers backend",
                       "use integers: argmax with other backends")
        return self


VerdictScores = Annotated[list[Annotated[int, Field(ge=1, le=10)]], Field(min_length=2, max_length=2)]


class RecordedJudge(Section):
    """Verdicts replayed from arena-hard or MT-Bench judgment files (judging/recorded.py)."""

    kind: Literal["recorded"]
    name: Name = None
    format: Literal[RECORDED_FORMATS]
    paths: Text | Annotated[list[Text], Field(min_length=1)]
    baseline: Text = None  # a model name as the judgment files spell it
    turn: PositiveInt = 1
    scores: dict[Literal[tuple(VERDICT_SCORES)], VerdictScores] = None

    @field_validator("paths")
    @classmethod
    def _paths_exist(cls, value: str | list[str]) -> str | list[str]:
        for path in [value] if isinstance(value, str) else value:
            if not Path(path).expanduser().exists():
                raise ValueError(f"judgment file or folder {path} does not exist")
        return value

    @field_validator("scores")
    @classmethod
    def _every_verdict(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        missing = [verdict for verdict in VERDICT_SCORES if verdict not in value]
        if missing:
            raise ValueError(f"give the score pair of every verdict: {', '.join(missing)} missing")
        return value


# The judge kinds `judging.judges.make_judge` builds.
JUDGE_KINDS: dict[str, type[Section]] = {"verifier": VerifierJudge, "llm": LLMJudge, "recorded": RecordedJudge}
JudgeSettings = _union("kind", JUDGE_KINDS, default="verifier")


# ---------------------------------------------------------------- battles, schedule, checks

Score = Annotated[float, Field(ge=1.0, le=10.0)]


class SqlVars(Section):
    """The `{{ var(...) }}` values of dbt_like_sql/ (a test keeps the two in step)."""

    tie_margin: NonNegativeFloat
    sft_min_margin: NonNegativeFloat
    sft_min_winner_score: Score
    dpo_min_margin: NonNegativeFloat
    dpo_min_winner_score: Score
    rm_min_margin: NonNegativeFloat


class ScheduleStage(Section):
    slice: Label = None
    accumulate_rounds: bool = None


class ScheduleSettings(Section):
    sft: ScheduleStage = None
    dpo: ScheduleStage = None
    rl: ScheduleStage = None


class RewardModelSettings(Section):
    min_eval_accuracy: Probability = 0.6


Bounds = Annotated[list[Probability], Field(min_length=2, max_length=2)]


def _limits_model(level: str) -> type[Section]:
    fields = {column: (Bounds, None) for column in judge_health_limits()[level]}
    model = create_model(f"JudgeHealth{level.capitalize()}", __base__=Section, **fields)

    def ordered(self):
        for column, bounds in self.model_dump(exclude_none=True).items():
            if bounds[0] > bounds[1]:
                raise ValueError(f"{column}: the lower limit {bounds[0]} is above the upper {bounds[1]}")
        return self

    return create_model(model.__name__, __base__=model, __validators__={"ordered": model_validator(mode="after")(ordered)})


JudgeHealthBlock, JudgeHealthWarn = _limits_model("block"), _limits_model("warn")


class JudgeHealthSettings(Section):
    block: JudgeHealthBlock = None
    warn: JudgeHealthWarn = None


class EvaluationSettings(Section):
    bootstrap: Annotated[int, Field(ge=MIN_BOOTSTRAP)] = 200
    bootstrap_unit: Literal["prompt", "battle"] = "prompt"
    seed: Seed = None
    anchor: Annotated[str, Field(pattern=r"^[^=]+=-?[0-9]+(\.[0-9]+)?$")] | None = None
    style_control: bool = False
    baseline: Name | None = None


class PromotionSettings(Section):
    margin: Finite = 0.0
    bootstrap: Annotated[int, Field(ge=MIN_BOOTSTRAP)] = None
    seed: Seed = None
    candidate: Literal["best", "last"] = "best"
    selection_fraction: OpenFraction = 0.5


# ---------------------------------------------------------------- the whole profile


class Profile(Section):
    name: Name
    seed: Seed = 0
    derived_seeds: list[Literal[SEED_PATHS]] = None
    prompts: PromptsSettings
    testset: ArenaTestsetSettings
    generation: GenerationSettings = None
    judge: JudgeSettings
    sql_vars: SqlVars
    schedule: ScheduleSettings = None
    reward_model: RewardModelSettings = None
    judge_health: JudgeHealthSettings = None
    evaluation: EvaluationSettings = None
    promotion: PromotionSettings = None
    models: ModelsSettings = None

    @model_validator(mode="after")
    def _between_sections(self) -> "Profile":
        source = self.prompts.source
        self.testset.check_source(source)
        if self.judge.kind == "verifier" and source != SKILLS_SOURCE:
            raise rule("judge.kind", f"the verifier judge checks skills answers against references; source {source} has none",
                       "use judge kind llm")
        if source != SKILLS_SOURCE and self.testset.hard and self.testset.hard_by == "judge" and self.judge.kind != "llm":
            raise rule("testset.hard_by", "testset.hard_by: judge needs an llm judge to rate difficulty", "use hard_by: proxy")
        if self.prompts.stage_fractions is not None:
            labels = set(self.prompts.stage_fractions)
            for stage, default in DEFAULT_SCHEDULE.items():
                chosen = getattr(self.schedule, stage) if self.schedule else None
                label = chosen.slice if chosen and chosen.slice else default["slice"]
                if label not in labels:
                    raise rule(f"schedule.{stage}.slice", f"stage {stage} battles slice {label!r}, which "
                               f"prompts.stage_fractions does not cut (it cuts {', '.join(sorted(labels))})")
        known = model_names(self.models.model_dump(by_alias=True, exclude_unset=True) if self.models else None)
        evaluation = self.evaluation
        if evaluation is not None:
            named = [("evaluation.baseline", evaluation.baseline)]
            if evaluation.anchor:
                named.append(("evaluation.anchor", evaluation.anchor.split("=")[0]))
            for path, model in named:
                if model is not None and model not in known and not CHECKPOINT_NAME.match(model):
                    raise rule(path, f"{path} names model {model!r}, which the profile does not register",
                               f"models here: {', '.join(sorted(known))}")
        return self


def validation_context(data: dict[str, Any]) -> dict[str, Any]:
    """What nested checks need from elsewhere in the profile (training stage checks: source and processes)."""
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    launch = models.get("launch") if isinstance(models.get("launch"), dict) else {}
    processes = launch.get("num_processes")
    return {"locally_built": models.get("source") != "declared", "processes": processes if isinstance(processes, int) and processes > 0 else 1}
