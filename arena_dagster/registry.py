"""Model registry and promotions: which checkpoint is whose parent, and who is the target."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import duckdb
import polars as pl

from arena_dagster.training.schedule import STAGES, StagePlan
from arena_dagster.warehouse import read_frame, table_exists

REGISTRY_DDL = """
CREATE TABLE IF NOT EXISTS model_registry (
    model VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,          -- competitor | initial | sft | dpo | reward | rl
    round BIGINT NOT NULL,
    path VARCHAR NOT NULL,
    revision VARCHAR NOT NULL,      -- content hash that keys every cached answer of the model
    parent VARCHAR,
    dataset_hash VARCHAR,
    manifest JSON,
    registered_at TIMESTAMP NOT NULL
)
"""

PROMOTIONS_DDL = """
CREATE TABLE IF NOT EXISTS promotions (
    round BIGINT PRIMARY KEY,
    candidate VARCHAR NOT NULL,
    incumbent VARCHAR NOT NULL,
    promoted BOOLEAN NOT NULL,
    new_target VARCHAR NOT NULL,
    candidate_rating DOUBLE,
    incumbent_rating DOUBLE,
    reason VARCHAR NOT NULL,
    decided_at TIMESTAMP NOT NULL
)
"""

# Columns added after the first release; homes created before them gain them on first use.
PROMOTION_GATE_COLUMNS = {
    "diff": "DOUBLE",
    "ci_low": "DOUBLE",
    "ci_high": "DOUBLE",
    "margin": "DOUBLE",
    "gate": "VARCHAR",
    # The gate that picks the best stage (promotion.decide_promotion): how it chose and on how many prompts.
    "rule": "VARCHAR",              # best | last
    "candidates": "JSON",           # the round's stage checkpoints it considered, in stage order
    "selection": "JSON",            # [{model, diff, ci_low, ci_high}] of each candidate on the selection prompts
    "selection_fraction": "DOUBLE",
    "selection_prompts": "BIGINT",  # 0: no selection (one candidate, or rule last)
    "test_prompts": "BIGINT",       # prompts of the paired test of `candidate` (diff, ci_low, ci_high)
    "split_seed": "BIGINT",
    "ci_method": "VARCHAR",         # bootstrap | sandwich: how the interval of `diff` was computed
    "categories": "JSON",           # promotion.no_regression: [{category, battles, diff, ci_low, ci_high, reason}]
}


class RegistryError(LookupError):
    pass


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(REGISTRY_DDL)
    conn.execute(PROMOTIONS_DDL)
    for column, kind in PROMOTION_GATE_COLUMNS.items():
        conn.execute(f"ALTER TABLE promotions ADD COLUMN IF NOT EXISTS {column} {kind}")


def register_model(
    conn: duckdb.DuckDBPyConnection,
    *,
    model: str,
    kind: str,
    round_key: int,
    path: str,
    revision: str,
    parent: str | None = None,
    dataset_hash: str | None = None,
    manifest: dict[str, Any] | None = None,
) -> None:
    ensure_tables(conn)
    conn.execute(
        "INSERT OR REPLACE INTO model_registry VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            model,
            kind,
            round_key,
            path,
            revision,
            parent,
            dataset_hash,
            json.dumps(manifest or {}, default=str),
            datetime.now(timezone.utc),
        ],
    )


def get_model(conn: duckdb.DuckDBPyConnection, model: str) -> dict[str, Any]:
    ensure_tables(conn)
    frame = read_frame(conn, "SELECT * FROM model_registry WHERE model = ?", [model])
    if frame.is_empty():
        raise RegistryError(f"model {model!r} is not registered: materialize the asset that trains it first")
    return frame.row(0, named=True)


def models_of_kind(conn: duckdb.DuckDBPyConnection, kind: str) -> pl.DataFrame:
    ensure_tables(conn)
    return read_frame(conn, "SELECT * FROM model_registry WHERE kind = ? ORDER BY model", [kind])


def round_checkpoint(conn: duckdb.DuckDBPyConnection, kind: str, round_key: int) -> dict[str, Any]:
    ensure_tables(conn)
    frame = read_frame(conn, "SELECT * FROM model_registry WHERE kind = ? AND round = ?", [kind, round_key])
    if frame.is_empty():
        raise RegistryError(f"no {kind} checkpoint registered for round {round_key}")
    return frame.row(0, named=True)


def resolve_skipped(conn: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> dict[str, Any]:
    """The model a registry row really is: a skipped stage (no data that round) is its parent."""
    seen = set()
    while json.loads(row.get("manifest") or "{}").get("skipped") and row.get("parent") and row["model"] not in seen:
        seen.add(row["model"])
        row = get_model(conn, row["parent"])
    return row


def is_skipped(row: dict[str, Any]) -> bool:
    return bool(json.loads(row.get("manifest") or "{}").get("skipped"))


def round_target_decision(conn: duckdb.DuckDBPyConnection, round_key: int) -> dict[str, Any]:
    """The gate decision that names round `round_key`'s target: round r-1's row of `promotions`.

    Round 1's comes from the baseline. A missing row means round r-1 has not finished (or
    failed before its gate): round r must not start, or it would battle a stale target.
    """
    ensure_tables(conn)
    previous = int(round_key) - 1
    frame = read_frame(conn, "SELECT * FROM promotions WHERE round = ?", [previous])
    if frame.is_empty():
        what = "the baseline (round 0) has not been evaluated" if previous == 0 else f"round {previous}'s gate decision is not recorded"
        fix = ("materialize the setup job (flywheel_setup) first" if previous == 0 else
               f"run round {previous} to its end (target_model[{previous}]) before round {round_key}")
        raise RegistryError(f"round {round_key} cannot start: {what}; {fix}")
    return frame.row(0, named=True)


def current_target(conn: duckdb.DuckDBPyConnection, round_key: int) -> dict[str, Any]:
    """The model that plays the target in `round_key`: the one round r-1's gate kept (round 0: the initial target)."""
    ensure_tables(conn)
    if round_key == 0:
        initial = models_of_kind(conn, "initial")
        if initial.is_empty():
            raise RegistryError("no initial target registered: materialize the base models first")
        return initial.row(0, named=True)
    return get_model(conn, round_target_decision(conn, round_key)["new_target"])


ROUND_TARGETS_DDL = """
CREATE TABLE IF NOT EXISTS round_targets (
    round BIGINT PRIMARY KEY,
    target VARCHAR NOT NULL,
    revision VARCHAR NOT NULL,
    decided_in_round BIGINT NOT NULL,
    decision VARCHAR NOT NULL
)
"""


def record_round_target(conn: duckdb.DuckDBPyConnection, round_key: int, decision: dict[str, Any], target: dict[str, Any]) -> None:
    """Round r's target as a fact of its own (the `round_target` asset): which model, decided by which gate."""
    conn.execute(ROUND_TARGETS_DDL)
    conn.execute(
        "INSERT OR REPLACE INTO round_targets VALUES (?, ?, ?, ?, ?)",
        [round_key, target["model"], target["revision"], int(decision["round"]), decision["reason"]],
    )


def record_promotion(conn: duckdb.DuckDBPyConnection, round_key: int, decision: dict[str, Any]) -> None:
    ensure_tables(conn)
    values = {
        "round": round_key,
        "candidate": decision["candidate"],
        "incumbent": decision["incumbent"],
        "promoted": decision["promoted"],
        "new_target": decision["new_target"],
        "candidate_rating": decision.get("candidate_rating"),
        "incumbent_rating": decision.get("incumbent_rating"),
        "reason": decision["reason"],
        "decided_at": datetime.now(timezone.utc),
        **{
            column: json.dumps(decision.get(column)) if kind == "JSON" and decision.get(column) is not None else decision.get(column)
            for column, kind in PROMOTION_GATE_COLUMNS.items()
        },
    }
    columns = ", ".join(values)
    conn.execute(
        f"INSERT OR REPLACE INTO promotions ({columns}) VALUES ({', '.join('?' for _ in values)})", list(values.values())
    )


def promotions(conn: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    if not table_exists(conn, "promotions"):
        return pl.DataFrame()
    return read_frame(conn, "SELECT * FROM promotions ORDER BY round")


# ---------------------------------------------------------------- a round's stages over the registry


def stage_battle_target(conn: duckdb.DuckDBPyConnection, plan: StagePlan) -> dict[str, Any]:
    """The model a stage battles with: the round's target, or this round's previous-stage checkpoint.

    A stage skipped for lack of data stands for its parent, so the next stage battles the parent.
    """
    if plan.battle_target_stage is None:
        return current_target(conn, plan.round)
    return resolve_skipped(conn, round_checkpoint(conn, plan.battle_target_stage, plan.round))


def round_candidate(conn: duckdb.DuckDBPyConnection, round_key: int) -> dict[str, Any]:
    """The model a round offers for promotion: its last stage's checkpoint (round 0: the initial target)."""
    if round_key == 0:
        return current_target(conn, 0)
    return resolve_skipped(conn, round_checkpoint(conn, STAGES[-1], round_key))


def round_checkpoints(conn: duckdb.DuckDBPyConnection, round_key: int) -> list[dict[str, Any]]:
    """The round's trained policy checkpoints in stage order, skipped stages left out."""
    if round_key == 0:
        return []
    out = []
    for stage in STAGES:
        row = round_checkpoint(conn, stage, round_key)
        if resolve_skipped(conn, row)["model"] == row["model"]:
            out.append(row)
    return out
