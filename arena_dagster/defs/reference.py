"""The baseline leaderboard's agreement with a reference leaderboard (`evaluation.reference`, e.g. the
human Chatbot Arena), measured as the Arena Learning paper does: Spearman, Kendall, the share of model
pairs ordered the same way, agreement with the reference's 95% intervals, and separability."""

from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from arena_dagster.profile_schema.sections import EvaluationSettings
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.warehouse import read_table

FIGURES = ("spearman", "kendall", "pairs_same_order", "agreement_ci", "separability", "n_common")


def reference_agreement(board, reference_path: str) -> tuple[bool, str, dict[str, Any]]:
    """(passed, description, figures) of `board` against the reference CSV; not passed when the file cannot
    be read or fewer than two models are in common (the names do not match: the figures would say nothing)."""
    from arena_dagster.ratings import alignment
    from arena_dagster.ratings.importers import read_reference

    try:
        reference, rejected = read_reference(reference_path)
        figures = alignment(board, reference)
    except (RatingsError, OSError) as error:
        return False, f"no agreement measured with {reference_path}: {error}", {}
    shown = ", ".join(f"{k} {figures[k]:.3f}" for k in FIGURES[:-1] if figures[k] is not None)
    metadata: dict[str, Any] = {k: figures[k] for k in FIGURES if figures[k] is not None}
    if rejected:
        metadata["reference_rejected"] = dg.MetadataValue.json(rejected)
    return True, f"over {figures['n_common']} models in common with {reference_path}: {shown}", metadata


def reference_checks(settings: EvaluationSettings) -> list[dg.AssetChecksDefinition]:
    """The agreement check on baseline_leaderboard when the profile names a reference leaderboard, else none."""
    path = settings.reference
    if not path:
        return []

    @dg.asset_check(asset="baseline_leaderboard", name="agreement_with_reference", blocking=False,
                    description=f"Agreement of the baseline leaderboard with the reference leaderboard {path}: "
                    "Spearman, Kendall, pairs in the same order, agreement with its 95% intervals, separability.")
    def agreement_with_reference(duckdb: DuckDBResource) -> dg.AssetCheckResult:
        with duckdb.get_connection() as conn:
            board = read_table(conn, "leaderboard", round_key=0)
        passed, description, metadata = reference_agreement(board, path)
        return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN, description=description,
                                   metadata=metadata)

    return [agreement_with_reference]
