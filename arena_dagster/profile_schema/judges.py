"""The `judge:` section: the verifier (skills), an LLM judge, or verdicts recorded elsewhere (a replay)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from arena_dagster.paths import ASSETS_DIR
from arena_dagster.profile_schema.base import Count, Name, PositiveInt, Section, Text, existing_path, rule
from arena_dagster.profile_schema.constants import DEFAULT_RETRY_SUFFIX, RECORDED_FORMATS, VERDICT_SCORES
from arena_dagster.profile_schema.models import ModelConfig, _union

JUDGMENT_FIELDS = ("explanation", "score_a", "score_b")


class VerifierJudge(Section):
    kind: Literal["verifier"] = "verifier"
    name: Name = "verifier"


class MaxChars(Section):
    instruction: PositiveInt | None = None
    history: PositiveInt | None = None
    answer: PositiveInt | None = None


def _template_exists(value: str, folder: str = "judge_templates") -> str:
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
    retry_suffix: str = DEFAULT_RETRY_SUFFIX
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
    baseline: Name = None  # a declared model, as the judgment files spell it
    turn: PositiveInt = 1
    scores: dict[Literal[tuple(VERDICT_SCORES)], VerdictScores] = None

    @field_validator("paths")
    @classmethod
    def _paths_exist(cls, value: str | list[str]) -> str | list[str]:
        for path in [value] if isinstance(value, str) else value:
            existing_path(path, "judgment file or folder")
        return value

    @field_validator("scores")
    @classmethod
    def _every_verdict(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        missing = [verdict for verdict in VERDICT_SCORES if verdict not in value]
        if missing:
            raise ValueError(f"give the score pair of every verdict: {', '.join(missing)} missing")
        return value


MemberJudge = _union("kind", {"verifier": VerifierJudge, "llm": LLMJudge}, default="verifier")


class EnsembleJudge(Section):
    """Several judges on every game, their scores combined (judging/ensemble.py)."""

    kind: Literal["ensemble"]
    name: Name = "ensemble"
    judges: Annotated[list[MemberJudge], Field(min_length=2)]
    combine: Literal["mean", "majority"] = "mean"

    @model_validator(mode="after")
    def _distinct_names(self) -> "EnsembleJudge":
        names = [member.name for member in self.judges]
        if len(set(names)) != len(names):
            raise rule("judge.judges", f"judge.judges: members need distinct names, got {names}",
                       "give each member its own name")
        return self


# The judge kinds `judging.judges.make_judge` builds.
JUDGE_KINDS: dict[str, type[Section]] = {"verifier": VerifierJudge, "llm": LLMJudge, "recorded": RecordedJudge,
                                         "ensemble": EnsembleJudge}
JudgeSettings = _union("kind", JUDGE_KINDS, default="verifier")


def judge_settings(data: dict) -> VerifierJudge | LLMJudge | RecordedJudge:
    """A `judge:` section validated on its own (a tool or test that builds a judge without a profile)."""
    return TypeAdapter(JudgeSettings).validate_python(data)
