"""Expectation suites of the warehouse tables, read from the versioned files in assets/expectations/.

Each file is one table's Great Expectations 1.x suite, grouped into the asset checks Dagster
shows (one check = one or more GX expectations with a shared verdict):

    description: what the table is
    stages: [sft, dpo, rl]      # optional: one suite per training stage, tables `<stage>_<file stem>`
    round_scoped: true          # the batch is one round's rows (the asset is round-partitioned)
    key: [battle_id]            # columns that name a failing row in the check metadata
    batch: SELECT ...           # optional: the rows validated (default: the table, or the round's rows)
    parameters:                 # optional: GX suite parameters ({$PARAMETER: name}) computed in DuckDB
      expected_rows: {sql: SELECT ..., means: "2 games per battle"}
    checks:
      unique_key:
        blocks: true            # a failure stops the downstream steps (else a warning)
        why: what breaks when it fails
        expect:
          - expect_compound_columns_to_be_unique: {column_list: [battle_id, game]}

The SQL is Jinja like dbt_like_sql/: `{{ this }}` is the table, `{{ round }}` the round,
`{{ ref('t') }}` another table and `{{ stage_ref('t') }}` the stage's copy of one. Cross-table
expectations (referential integrity) run on columns the batch query adds with a join.
This module reads and describes the files; `quality.validation` runs them with GX.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from arena_dagster.config import ASSETS_DIR, UniqueKeyLoader
from arena_dagster.errors import ArenaError
from arena_dagster.profile_schema.sections import JudgeHealthSettings

EXPECTATIONS_DIR = ASSETS_DIR / "expectations"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SUITE_KEYS = {"description", "stages", "round_scoped", "key", "batch", "parameters", "checks"}
_CHECK_KEYS = {"blocks", "why", "expect"}


class SuiteError(ArenaError, ValueError):
    """A suite file that cannot be read, or a limit a profile may not move."""


@dataclass(frozen=True)
class Expectation:
    """One GX expectation: its snake_case type name and its GX arguments."""

    type: str
    kwargs: Mapping[str, Any]

    def describe(self, parameters: Mapping[str, "Parameter"] | None = None) -> str:
        """The expectation in words, with its limits (a suite parameter shown by its meaning)."""
        args = {k: _value_text(v, parameters or {}) for k, v in self.kwargs.items()}
        template = _TEMPLATES.get(self.type)
        if template is None:
            return f"{self.type}({', '.join(f'{k}={v}' for k, v in args.items())})"
        text = template(args)
        if "mostly" in self.kwargs:
            text += f" (in at least {float(self.kwargs['mostly']):.0%} of rows)"
        return text

    def parameter_names(self) -> set[str]:
        return {v["$PARAMETER"] for v in self.kwargs.values() if isinstance(v, Mapping) and "$PARAMETER" in v}


@dataclass(frozen=True)
class Parameter:
    sql: str
    means: str


@dataclass(frozen=True)
class Check:
    """One asset check: a named group of expectations that pass or fail together."""

    name: str
    blocking: bool
    why: str
    expectations: tuple[Expectation, ...]

    def limits(self, parameters: Mapping[str, Parameter] | None = None) -> str:
        return "; ".join(e.describe(parameters) for e in self.expectations)


@dataclass(frozen=True)
class Suite:
    table: str
    path: Path
    description: str
    round_scoped: bool
    key: tuple[str, ...]
    batch: str
    parameters: Mapping[str, Parameter]
    checks: tuple[Check, ...]
    stage: str | None = None

    def check(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise SuiteError(f"{self.table} has no check named {name!r}", str(self.path), f"known: {', '.join(self.check_names())}")

    def check_names(self) -> list[str]:
        return [c.name for c in self.checks]

    def describe(self, check: Check) -> str:
        """The static description Dagster shows: the limits, and why the check blocks or warns."""
        verdict = "Blocks the round's downstream steps" if check.blocking else "Warns only"
        level, _, column = check.name.partition("_")
        movable = self.path.stem == "judge_health" and _limit_check(self, level, column) is check  # the stages' only
        moved = f" (default limit: a profile's judge_health.{level}.{column} moves it)" if movable else ""
        return f"{check.limits(self.parameters)}{moved}. {verdict}: {check.why} (suite: {self.source()})"

    def source(self) -> str:
        return f"assets/expectations/{self.path.name}"


def _value_text(value: Any, parameters: Mapping[str, Parameter]) -> str:
    if isinstance(value, Mapping) and "$PARAMETER" in value:
        name = value["$PARAMETER"]
        return parameters[name].means if name in parameters else name
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(str(v) for v in value) + "}"
    return str(value)


def _between(args: dict[str, str], subject: str) -> str:
    low, high = args.get("min_value", "None"), args.get("max_value", "None")
    if low == "None":
        return f"{subject} <= {high}"
    if high == "None":
        return f"{subject} >= {low}"
    return f"{subject} in [{low}, {high}]"


_TEMPLATES = {
    "expect_column_to_exist": lambda a: f"column {a['column']} exists",
    "expect_column_values_to_not_be_null": lambda a: f"{a['column']} is never null",
    "expect_column_values_to_be_null": lambda a: f"{a['column']} is always null",
    "expect_column_values_to_be_unique": lambda a: f"{a['column']} is unique",
    "expect_column_unique_value_count_to_be_between": lambda a: _between(a, f"distinct {a['column']}"),
    "expect_compound_columns_to_be_unique": lambda a: f"{a['column_list'].replace('{', '(').replace('}', ')')} is unique",
    "expect_column_values_to_be_between": lambda a: _between(a, a["column"]),
    "expect_column_values_to_be_in_set": lambda a: (
        f"{a['column']} = {a['value_set'][1:-1]}" if "," not in a["value_set"] else f"{a['column']} in {a['value_set']}"
    ),
    "expect_column_values_to_not_be_in_set": lambda a: f"{a['column']} not in {a['value_set']}",
    "expect_column_values_to_be_of_type": lambda a: f"{a['column']} is {a['type_']}",
    "expect_column_values_to_be_in_type_list": lambda a: f"{a['column']} is one of {a['type_list']}",
    "expect_column_values_to_match_regex": lambda a: f"{a['column']} matches {a['regex']}",
    "expect_column_value_lengths_to_be_between": lambda a: _between(a, f"length of {a['column']}"),
    "expect_column_pair_values_a_to_be_greater_than_b": lambda a: (
        f"{a['column_A']} {'>=' if a.get('or_equal') == 'True' else '>'} {a['column_B']}"
    ),
    "expect_column_pair_values_to_be_equal": lambda a: f"{a['column_A']} = {a['column_B']}",
    "expect_table_row_count_to_be_between": lambda a: _between(a, "rows"),
    "expect_table_row_count_to_equal": lambda a: f"rows = {a['value']}",
    "expect_table_columns_to_match_set": lambda a: f"columns are {a['column_set']}",
}


def _fail(path: Path, what: str, fix: str = "see the format in arena_dagster/quality/suites.py") -> SuiteError:
    return SuiteError(what, f"assets/expectations/{path.name}", fix)


def _expectation(path: Path, check: str, item: Any) -> Expectation:
    if not (isinstance(item, Mapping) and len(item) == 1):
        raise _fail(path, f"check {check}: each `expect` item is one mapping {{expectation_type: {{arguments}}}}, got {item!r}")
    ((kind, kwargs),) = item.items()
    if not (isinstance(kind, str) and kind.startswith("expect_") and isinstance(kwargs, Mapping)):
        raise _fail(path, f"check {check}: {kind!r} is not a GX expectation type (expect_...) with a mapping of arguments")
    return Expectation(type=kind, kwargs=dict(kwargs))


def _check(path: Path, name: str, spec: Any) -> Check:
    if not (isinstance(name, str) and _NAME.match(name)):
        raise _fail(path, f"check name {name!r} is not a lowercase identifier")
    if not isinstance(spec, Mapping) or set(spec) - _CHECK_KEYS or not spec.get("expect") or not spec.get("why"):
        raise _fail(path, f"check {name}: needs `why` and a list `expect` (keys: {sorted(_CHECK_KEYS)}), got {spec!r}")
    if not isinstance(spec.get("blocks", False), bool):
        raise _fail(path, f"check {name}: `blocks` is true or false")
    expectations = tuple(_expectation(path, name, item) for item in spec["expect"])
    return Check(name=name, blocking=bool(spec.get("blocks", False)), why=" ".join(str(spec["why"]).split()), expectations=expectations)


def parse_suites(path: Path) -> list[Suite]:
    """The suites of one file: one, or one per stage of a `stages:` file."""
    try:
        # A check written twice is an error, not the last one silently kept (as in profiles).
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _fail(path, f"cannot read the suite: {exc}", "fix the YAML") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("checks"), Mapping) or not data["checks"]:
        raise _fail(path, "a suite file is a mapping with a non-empty `checks:` mapping")
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}", f"known keys: {sorted(_SUITE_KEYS)}")
    parameters = {}
    for name, spec in (data.get("parameters") or {}).items():
        if not (isinstance(spec, Mapping) and isinstance(spec.get("sql"), str) and isinstance(spec.get("means"), str)):
            raise _fail(path, f"parameter {name}: needs `sql` (one scalar) and `means` (its meaning in words)")
        parameters[str(name)] = Parameter(sql=spec["sql"], means=" ".join(spec["means"].split()))
    checks = tuple(_check(path, name, spec) for name, spec in data["checks"].items())
    used = set().union(*(e.parameter_names() for c in checks for e in c.expectations))
    if used - set(parameters):
        raise _fail(path, f"expectations use undefined parameters {sorted(used - set(parameters))}", "declare them under `parameters:`")
    round_scoped = bool(data.get("round_scoped", False))
    default_batch = "SELECT * FROM {{ this }}" + (" WHERE round = {{ round }}" if round_scoped else "")
    base = Suite(
        table=path.stem,
        path=path,
        description=" ".join(str(data.get("description", "")).split()),
        round_scoped=round_scoped,
        key=tuple(data.get("key") or ()),
        batch=str(data.get("batch") or default_batch),
        parameters=parameters,
        checks=checks,
    )
    stages = data.get("stages") or []
    if not stages:
        return [base]
    return [dataclasses.replace(base, table=f"{stage}_{path.stem}", stage=str(stage)) for stage in stages]


@lru_cache(maxsize=4)
def load_suites(directory: Path = EXPECTATIONS_DIR) -> dict[str, Suite]:
    """Every table's suite, by table name."""
    suites: dict[str, Suite] = {}
    for path in sorted(directory.glob("*.yaml")):
        for suite in parse_suites(path):
            if suite.table in suites:
                raise _fail(path, f"a second suite for table {suite.table} (also in {suites[suite.table].path.name})")
            suites[suite.table] = suite
    return suites


def table_suite(table: str) -> Suite:
    suites = load_suites()
    if table not in suites:
        raise SuiteError(f"no expectation suite for table {table}", "assets/expectations/", f"add {table}.yaml")
    return suites[table]


# ---------------------------------------------------------------- judge health limits a profile may move

JUDGE_HEALTH_LEVELS = ("block", "warn")


def _limit_check(suite: Suite, level: str, column: str) -> Check | None:
    for check in suite.checks:
        (expectation, *rest) = check.expectations
        if (
            check.name == f"{level}_{column}" and not rest and check.blocking == (level == "block")
            and expectation.type == "expect_column_values_to_be_between" and expectation.kwargs.get("column") == column
        ):
            return check
    return None


def judge_health_limits(suite: Suite | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """{level: {column: (low, high)}} of the judge-health suite: the limits a profile's `judge_health:` moves."""
    suite = suite or table_suite("sft_judge_health")
    limits: dict[str, dict[str, tuple[float, float]]] = {level: {} for level in JUDGE_HEALTH_LEVELS}
    for check in suite.checks:
        level, _, column = check.name.partition("_")
        if level in limits and _limit_check(suite, level, column) is check:
            kwargs = check.expectations[0].kwargs
            limits[level][column] = (float(kwargs["min_value"]), float(kwargs["max_value"]))
    return limits


def judge_health_suite(table: str, overrides: JudgeHealthSettings | None) -> Suite:
    """The table's judge-health suite with a profile's `judge_health: {block: {...}, warn: {...}}` limits.

    A profile moves the limits of existing checks; it cannot add or remove checks (the schema
    names the levels and limits it may move, and orders each pair).
    """
    suite = table_suite(table)
    if overrides is None:
        return suite
    known = judge_health_limits(suite)
    replaced: dict[str, Check] = {}
    for level, values in overrides.model_dump(exclude_none=True).items():
        for column, (low, high) in values.items():
            if column not in known[level]:
                raise SuiteError(
                    f"judge_health.{level}: no limit named {column!r}", "profile", f"known: {', '.join(sorted(known[level]))}"
                )
            check = _limit_check(suite, level, column)
            expectation = dataclasses.replace(check.expectations[0], kwargs={**check.expectations[0].kwargs, "min_value": low, "max_value": high})
            replaced[check.name] = dataclasses.replace(check, expectations=(expectation,))
    return dataclasses.replace(suite, checks=tuple(replaced.get(c.name, c) for c in suite.checks))
