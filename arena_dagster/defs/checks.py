"""Asset checks of the round's checkpoints (SFT, DPO, reward model, RL): loads and answers, manifest, learning.

The checks live in quality/checkpoints.py; here they become one multi-asset check per
checkpoint asset, bound to the round partition, run after the asset in the same run.
"""


import warnings

import dagster as dg
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.resources import round_partitions
from arena_dagster.quality.checkpoints import check_checkpoint, checkpoint_checks
from arena_dagster.registry import round_checkpoint
from arena_dagster.warehouse import table_exists

CHECKPOINT_ASSETS = {"sft": "sft_checkpoint", "dpo": "dpo_checkpoint", "reward": "reward_model", "rl": "rl_checkpoint"}


def _reward_pair(conn, round_key: int) -> tuple[str, str, str] | None:
    if not table_exists(conn, "reward_pairs"):
        return None
    row = conn.execute(
        "SELECT prompt, chosen, rejected FROM reward_pairs WHERE round = ? ORDER BY pair_id LIMIT 1", [round_key]
    ).fetchone()
    return tuple(row) if row else None


def _checkpoint_check(stage: str, asset: str) -> dg.AssetChecksDefinition:
    checks = checkpoint_checks(stage)
    with warnings.catch_warnings():
        # Partitioned asset checks are a preview in Dagster 1.13; the warning would repeat on every load.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [
            dg.AssetCheckSpec(name=c.name, asset=asset, blocking=c.blocking, description=c.description,
                              partitions_def=round_partitions)
            for c in checks
        ]

    @dg.multi_asset_check(specs=specs, name=f"{asset}_checks", description=f"Checks of the round's {asset}.")
    def _checks(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
        round_key = int(context.partition_key)
        with duckdb.get_connection() as conn:
            row = round_checkpoint(conn, stage, round_key)
            pair = _reward_pair(conn, round_key) if stage == "reward" else None
        for outcome in check_checkpoint(stage, row, pair=pair):
            yield dg.AssetCheckResult(
                asset_key=asset,
                check_name=outcome.name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
                description=outcome.description,
                metadata={"model": row["model"], **outcome.metadata},
            )

    return _checks


def checkpoint_asset_checks() -> list[dg.AssetChecksDefinition]:
    return [_checkpoint_check(stage, asset) for stage, asset in CHECKPOINT_ASSETS.items()]
