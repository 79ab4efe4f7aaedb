"""Every section of a profile and the rules between sections; `Profile` is the whole file
(the `judge:` section is in judges.py, `models:` in models.py and flywheel.py).

The code reads the validated sections' attributes; these models say what each key may hold, so a
wrong key, type or range fails at load with its key path instead of minutes into a run.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from arena_dagster.profile_schema.base import (
    Count,
    Name,
    NonNegativeFloat,
    OpenFraction,
    PositiveInt,
    Probability,
    Section,
    Seed,
    Text,
    existing_path,
    rule,
)
from arena_dagster.profile_schema.compute import ComputeSettings
from arena_dagster.profile_schema.judges import JudgeSettings
from arena_dagster.profile_schema.models import (
    CHECKPOINT_NAME,
    ModelsSettings,
    SamplingSettings,
    TransformersOptions,
    VllmOptions,
    _union,
    model_names,
    unrecorded_models,
)
from arena_dagster.profile_schema.curation import PRESETS, CurationConfig, CurationError
from arena_dagster.profile_schema.constants import JUDGE_HEALTH_LIMITS, JUDGMENTS_SOURCE, REAL_SOURCES, SKILLS_SOURCE
from arena_dagster.profile_schema.evaluation import EvaluationSettings, PromotionSettings
from arena_dagster.profile_schema.training import DEFAULT_SCHEDULE

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


# A replay (source judgments) trains nothing: its prompts are the recorded judge's questions.
JUDGMENTS_PROMPT_KEYS = {"source", "rounds", "seed", "curation", "questions"}


class PromptsSettings(Section):
    source: Literal[(SKILLS_SOURCE, *REAL_SOURCES, JUDGMENTS_SOURCE)]
    rounds: Count
    # judgments: the benchmark's question file, for the test prompts' texts (else they are unknown)
    questions: Text = None
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

    @field_validator("questions")
    @classmethod
    def _questions_exist(cls, value: str) -> str:
        return existing_path(value, "question file")

    def curation_config(self) -> CurationConfig:
        """The curation steps' settings: the preset, then the keys the profile sets."""
        return CurationConfig.from_dict(self.curation.model_dump(exclude_unset=True) if self.curation else None)

    @model_validator(mode="after")
    def _source_rules(self) -> "PromptsSettings":
        given = self.model_fields_set
        if self.source == JUDGMENTS_SOURCE:
            foreign = sorted(given - JUDGMENTS_PROMPT_KEYS)
            if self.curation is not None:
                foreign += sorted(f"curation.{key}" for key in self.curation.model_fields_set - {"seed"})
            if foreign:
                raise rule(f"prompts.{foreign[0]}", f"prompts.{foreign[0]} is not a setting of source {JUDGMENTS_SOURCE}",
                           f"a replay takes its test prompts from the recorded judge's files and trains nothing; its "
                           f"settings: {', '.join(sorted(JUDGMENTS_PROMPT_KEYS - {'curation'}))}")
            if self.rounds != 0:
                raise rule("prompts.rounds", f"source {JUDGMENTS_SOURCE} trains nothing: prompts.rounds must be 0, "
                           f"got {self.rounds}", "set rounds: 0 and run `arena-dagster flywheel --rounds 0`")
            return self
        if self.rounds < 1:
            raise rule("prompts.rounds", f"prompts.rounds must be at least 1, got {self.rounds}",
                       "slice the pool into one round or more")
        if "questions" in given:
            raise rule("prompts.questions", f"prompts.questions is a setting of source {JUDGMENTS_SOURCE}, not {self.source}")
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
        if source == JUDGMENTS_SOURCE:
            keys, required = {"seed"}, ()
        elif source == SKILLS_SOURCE:
            keys, required = SKILLS_TESTSET_KEYS, ("candidates", "diverse_per_family", "hard")
        else:
            keys, required = REAL_TESTSET_KEYS, ()
        foreign = sorted(self.model_fields_set - keys)
        if foreign:
            raise rule(f"testset.{foreign[0]}", f"testset.{foreign[0]} is not a setting of prompt source {source}",
                       "the test set of a replay is every question the recorded judge's files judged"
                       if source == JUDGMENTS_SOURCE else f"the test set of source {source} takes {', '.join(sorted(keys))}")
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

    def of(self, stage: str) -> ScheduleStage:
        """The stage's schedule: DEFAULT_SCHEDULE's, with what the profile sets over it."""
        chosen = getattr(self, stage)
        return ScheduleStage(**{**DEFAULT_SCHEDULE[stage], **(chosen.model_dump(exclude_none=True) if chosen else {})})


class RewardModelSettings(Section):
    min_eval_accuracy: Probability = 0.6


Bounds = Annotated[list[Probability], Field(min_length=2, max_length=2)]


def _limits_model(level: str) -> type[Section]:
    fields = {column: (Bounds, None) for column in JUDGE_HEALTH_LIMITS[level]}
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


# ---------------------------------------------------------------- the whole profile


class Profile(Section):
    name: Name
    seed: Seed = 0
    derived_seeds: list[Literal[SEED_PATHS]] = None
    prompts: PromptsSettings
    testset: ArenaTestsetSettings  # a replay (source judgments) may leave it out: its test set is the judge's
    generation: GenerationSettings = None
    judge: JudgeSettings
    sql_vars: SqlVars
    schedule: ScheduleSettings = None
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings)
    judge_health: JudgeHealthSettings = None
    evaluation: EvaluationSettings = None
    promotion: PromotionSettings = None
    models: ModelsSettings = None
    compute: ComputeSettings = None

    @model_validator(mode="before")
    @classmethod
    def _replay_testset(cls, data: Any) -> Any:
        prompts = data.get("prompts") if isinstance(data, dict) else None
        if isinstance(prompts, dict) and prompts.get("source") == JUDGMENTS_SOURCE and "testset" not in data:
            return {**data, "testset": {}}  # every question of the recorded judge's files
        return data

    @model_validator(mode="after")
    def _between_sections(self) -> "Profile":
        source = self.prompts.source
        self._replay_rules()
        self.testset.check_source(source)
        if self.judge.kind == "verifier" and source != SKILLS_SOURCE:
            raise rule("judge.kind", f"the verifier judge checks skills answers against references; source {source} has none",
                       "use judge kind llm")
        if self.judge.kind == "ensemble" and source != SKILLS_SOURCE and any(m.kind == "verifier" for m in self.judge.judges):
            raise rule("judge.judges", f"the verifier judge checks skills answers against references; source {source} "
                       "has none", "use llm judges as the ensemble's members")
        if source in REAL_SOURCES and self.testset.hard and self.testset.hard_by == "judge" and self.judge.kind != "llm":
            raise rule("testset.hard_by", "testset.hard_by: judge needs an llm judge to rate difficulty", "use hard_by: proxy")
        if self.prompts.stage_fractions is not None:
            labels = set(self.prompts.stage_fractions)
            for stage, default in DEFAULT_SCHEDULE.items():
                chosen = getattr(self.schedule, stage) if self.schedule else None
                label = chosen.slice if chosen and chosen.slice else default["slice"]
                if label not in labels:
                    raise rule(f"schedule.{stage}.slice", f"stage {stage} battles slice {label!r}, which "
                               f"prompts.stage_fractions does not cut (it cuts {', '.join(sorted(labels))})")
        launch = getattr(self.models, "launch", None)
        if self.compute is not None and self.compute.engine == "ray" and launch is not None and launch.num_processes:
            raise rule("models.launch.num_processes", "models.launch.num_processes and compute.engine ray both count "
                       "the training processes", "leave num_processes out: Ray Train runs compute.workers of them")
        known = model_names(self.models)
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

    def _replay_rules(self) -> None:
        """A recorded judge, prompts of its files, models without answers and rating games go together."""
        recorded = self.judge.kind == "recorded"
        if (self.prompts.source == JUDGMENTS_SOURCE) != recorded:
            raise rule("prompts.source" if recorded else "judge.kind",
                       "a recorded judge replays only the games of its files, so the test prompts must be theirs"
                       if recorded else f"prompts.source {JUDGMENTS_SOURCE} takes its test prompts from a recorded judge's files",
                       f"use prompts.source {JUDGMENTS_SOURCE}" if recorded else "use judge kind recorded")
        unrecorded = unrecorded_models(self.models)
        if unrecorded and not recorded:
            raise rule("models", f"model {unrecorded[0]!r} (backend recorded) has no recorded answers (no `path`), so "
                       f"judge kind {self.judge.kind} cannot judge it", "give its answers file as `path`, or use a recorded judge")
        evaluation = self.evaluation
        if evaluation is None:
            return
        if evaluation.rate == "games" and not recorded:
            raise rule("evaluation.rate", "evaluation.rate: games rates the verdict labels of a recorded judge",
                       "use rate: battles with this judge")
        if "strong_weight" in evaluation.model_fields_set and evaluation.rate != "games":
            raise rule("evaluation.strong_weight", "evaluation.strong_weight weighs strong verdicts of rate: games")
        if evaluation.style_control and unrecorded:
            raise rule("evaluation.style_control", f"style control measures answers; model {unrecorded[0]!r} has none",
                       "give the models' answer files as `path`, or turn style_control off")
        if recorded and self.judge.baseline is not None and self.judge.baseline not in model_names(self.models):
            raise rule("judge.baseline", f"judge.baseline {self.judge.baseline!r} is not a declared model",
                       "declare it (every recorded arena-hard game is against it)")


def validation_context(data: dict[str, Any]) -> dict[str, Any]:
    """What nested checks need from elsewhere in the profile (training stage checks: source and processes)."""
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    launch = models.get("launch") if isinstance(models.get("launch"), dict) else {}
    processes = launch.get("num_processes")
    return {"locally_built": models.get("source") != "declared", "processes": processes if isinstance(processes, int) and processes > 0 else 1}
