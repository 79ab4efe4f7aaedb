"""Validate a table's suite with Great Expectations: an ephemeral context and a pandas batch of the round.

The batch is read from DuckDB (the suite's `batch` query, so cross-table columns come from a
join), the suite parameters are scalars computed in DuckDB, and GX validates every
expectation of the suite in one run. Each check's outcome carries its observed values as
plain metadata: for each expectation the unexpected-row count or the observed value, and
for a failed one the keys of a few failing rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import duckdb
import jinja2

from arena_dagster.quality.suites import Check, Expectation, Suite
from arena_dagster.warehouse import quote_ident, table_exists

EXAMPLES = 5  # failing rows named per failed expectation
FEW_ROWS = 3  # batches this small also report the checked values themselves


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


class BatchError(RuntimeError):
    pass


def render_sql(sql: str, suite: Suite, round_key: int | None) -> str:
    def stage_ref(name: str) -> str:
        if suite.stage is None:
            raise BatchError(f"stage_ref({name!r}) in a suite without stages")
        return quote_ident(f"{suite.stage}_{name}")

    template = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(sql)
    return template.render(
        this=quote_ident(suite.table), round="NULL" if round_key is None else int(round_key), stage=suite.stage,
        ref=quote_ident, stage_ref=stage_ref,
    )


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_batch(conn: duckdb.DuckDBPyConnection, suite: Suite, round_key: int | None):
    """(pandas frame of the rows validated, suite parameter values)."""
    try:
        frame = conn.execute(render_sql(suite.batch, suite, round_key)).df()
    except (duckdb.Error, jinja2.TemplateError) as exc:
        raise BatchError(f"the batch query of {suite.source()} failed: {exc}") from exc
    parameters = {}
    for name, parameter in suite.parameters.items():
        try:
            row = conn.execute(render_sql(parameter.sql, suite, round_key)).fetchone()
        except (duckdb.Error, jinja2.TemplateError) as exc:
            raise BatchError(f"parameter {name} of {suite.source()} failed: {exc}") from exc
        parameters[name] = _scalar(row[0]) if row else None
    return frame, parameters


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


@dataclass(frozen=True)
class Impossible:
    """An expectation whose limits cannot hold once the suite parameters are filled in."""

    reason: str


def impossible_expectations(suite: Suite, parameters: Mapping[str, Any]) -> dict[tuple[str, int], Impossible]:
    """Expectations GX refuses to build with these parameter values, e.g. at least 1 row and at most the
    raw rows when there are 0 raw rows (min above max). GX would fail the whole validation on one of
    them; they are reported as failed checks instead, and the others still run."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from pydantic.v1 import ValidationError

    found = {}
    for check in suite.checks:
        for index, expectation in enumerate(check.expectations):
            if not expectation.parameter_names():
                continue
            kwargs = {k: parameters.get(v["$PARAMETER"]) if isinstance(v, Mapping) and "$PARAMETER" in v else v
                      for k, v in expectation.kwargs.items()}
            try:
                ExpectationConfiguration(type=expectation.type, kwargs=kwargs).to_domain_obj()
            except ValidationError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                found[(check.name, index)] = Impossible(lines[-1].split(" (type=")[0] if lines else "invalid limits")
    return found


def gx_suite(suite: Suite, skip: set[tuple[str, int]] | frozenset = frozenset()):
    """The suite as a GX ExpectationSuite (less the expectations `skip` names); each expectation's meta names its check."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for check in suite.checks:
        for index, expectation in enumerate(check.expectations):
            if (check.name, index) in skip:
                continue
            config = ExpectationConfiguration(
                type=expectation.type,
                kwargs=dict(expectation.kwargs),
                meta={"check": check.name, "index": index},
                severity="critical" if check.blocking else "warning",
            )
            expectations.append(config.to_domain_obj())
    return gx.ExpectationSuite(name=suite.table, expectations=expectations)


def run_gx(frame, suite: Suite, parameters: Mapping[str, Any]) -> dict[tuple[str, int], Any]:
    """GX results by (check name, expectation index); an `Impossible` for an expectation that cannot hold."""
    impossible = impossible_expectations(suite, parameters)
    context = _context()
    batch = (
        context.data_sources.add_pandas("warehouse")
        .add_dataframe_asset(suite.table)
        .add_batch_definition_whole_dataframe("round")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    key = [c for c in suite.key if c in frame.columns]
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}
    if key:
        result_format["unexpected_index_column_names"] = key
    validation = batch.validate(gx_suite(suite, set(impossible)), expectation_parameters=dict(parameters),
                                result_format=result_format)
    return {**impossible,
            **{(r.expectation_config.meta["check"], r.expectation_config.meta["index"]): r for r in validation.results}}


def _plain(value: Any) -> Any:
    """A metadata-friendly value: int, float, bool or short text."""
    value = _scalar(value)
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return value
    return str(value)[:200]


def _examples(result: Mapping[str, Any], key: tuple[str, ...]) -> str:
    rows = result.get("partial_unexpected_index_list") or []
    if rows and isinstance(rows[0], Mapping):
        texts = []
        for row in rows[:EXAMPLES]:
            named = [f"{c}={row[c]}" for c in key if c in row]
            others = [f"{c}={_plain(v)}" for c, v in row.items() if c not in key]
            texts.append(", ".join(named + others))
        return "; ".join(texts)
    return ", ".join(str(_plain(v)) for v in (result.get("partial_unexpected_list") or [])[:EXAMPLES])


def _columns(expectation: Expectation) -> list[str]:
    kwargs = expectation.kwargs
    named = [kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B"), *(kwargs.get("column_list") or [])]
    return [c for c in named if isinstance(c, str)]


def _error(result: Any) -> str:
    info = result.exception_info or {}
    found = [info] if info.get("raised_exception") else [v for v in info.values() if isinstance(v, Mapping)]
    messages = [str(m.get("exception_message") or "").strip() for m in found]
    return next((m.splitlines()[0] for m in messages if m), "GX could not compute it")[:200]


def _expectation_outcome(
    label: str, expectation: Expectation, result: Any, key: tuple[str, ...], columns: set[str]
) -> tuple[bool, dict[str, Any], str]:
    """(passed, metadata entries, one-line failure text) of one expectation's GX result."""
    missing = [c for c in _columns(expectation) if c not in columns]
    if missing:
        text = f"column {', '.join(missing)} is missing from the table"
        return False, {f"{label}: error": text}, f"{label}: {text}"
    if result is None:
        return False, {f"{label}: error": "not run"}, f"{label}: GX returned no result"
    if isinstance(result, Impossible):
        text = f"cannot hold with these parameters: {result.reason}"
        return False, {f"{label}: error": text}, f"{label}: {text}"
    details = dict(result.result or {})
    if not details and not result.success:
        text = _error(result)
        return False, {f"{label}: error": text}, f"{label}: {text}"
    metadata: dict[str, Any] = {}
    if "unexpected_count" in details:
        metadata[f"{label}: unexpected rows"] = int(details.get("unexpected_count") or 0)
    if "observed_value" in details:
        metadata[f"{label}: observed"] = _plain(details["observed_value"])
    failure = ""
    if not result.success:
        if "unexpected_count" in details:
            examples = _examples(details, key)
            metadata[f"{label}: examples"] = examples or "(none listed)"
            failure = f"{label}: {int(details.get('unexpected_count') or 0)} of {details.get('element_count')} rows fail ({examples})"
        else:
            failure = f"{label}: observed {_plain(details.get('observed_value'))}"
    return bool(result.success), metadata, failure


def _observed_values(frame, suite: Suite, check: Check) -> dict[str, Any]:
    """The checked columns' values themselves when the batch is a few rows (judge health: one per judge),
    so the UI plots them across rounds."""
    if not 0 < len(frame) <= FEW_ROWS:
        return {}
    values: dict[str, Any] = {}
    for column in dict.fromkeys(e.kwargs.get("column") for e in check.expectations):
        if column not in frame.columns:
            continue
        for _, row in frame.iterrows():
            name = " ".join(str(row[k]) for k in suite.key if k in frame.columns)
            values[column if len(frame) == 1 else f"{column} ({name})"] = _plain(row[column])
    return values


def _check_outcome(suite: Suite, check: Check, results: Mapping[tuple[str, int], Any], frame,
                   parameters: Mapping[str, Any]) -> CheckOutcome:
    metadata: dict[str, Any] = {"rows checked": len(frame), **_observed_values(frame, suite, check)}
    for name in sorted(set().union(*(e.parameter_names() for e in check.expectations))):
        metadata[f"parameter {name}"] = _plain(parameters.get(name))
    failures = []
    passed = True
    for index, expectation in enumerate(check.expectations):
        label = expectation.describe()
        ok, entries, failure = _expectation_outcome(
            label, expectation, results.get((check.name, index)), suite.key, set(frame.columns)
        )
        passed &= ok
        metadata.update(entries)
        if not ok:
            failures.append(failure)
    metadata["failed expectations"] = len(failures)
    if failures:
        metadata["failed"] = " | ".join(failures)[:1000]
    metadata["suite"] = suite.source()
    verdict = "passed" if passed else ("failed" if check.blocking else "warning")
    description = f"{verdict}: " + ("; ".join(failures) if failures else check.limits(suite.parameters))
    return CheckOutcome(check.name, passed, check.blocking, description[:1000], metadata)


def validate_suite(conn: duckdb.DuckDBPyConnection, suite: Suite, round_key: int | None) -> list[CheckOutcome]:
    """Every check of the suite on the table's rows (one round's rows when the suite is round-scoped)."""
    if suite.round_scoped and round_key is None:
        raise ValueError(f"{suite.table}: a round-scoped suite needs a round")
    if not table_exists(conn, suite.table):
        return _failed(suite, f"table {suite.table} was not written")
    try:
        frame, parameters = read_batch(conn, suite, round_key)
    except BatchError as exc:
        return _failed(suite, str(exc))
    results = run_gx(frame, suite, parameters)
    return [_check_outcome(suite, check, results, frame, parameters) for check in suite.checks]


def _failed(suite: Suite, reason: str) -> list[CheckOutcome]:
    return [
        CheckOutcome(c.name, False, c.blocking, f"failed: {reason}", {"error": reason[:500], "suite": suite.source()})
        for c in suite.checks
    ]
