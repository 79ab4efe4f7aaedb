"""The loop made visible: round r's target (a fact at the start of the round) and the gate at its end.

Dagster's asset graph has no cycles, so the loop closes through the warehouse: `target_model[r]`
records round r's decision in `promotions`, and `round_target[r+1]` reads exactly that row (and
refuses to start while it is missing). The schedule and the sensors start round r+1 after
round r; a backfill of several rounds runs them one at a time through the run queue, in order.
"""

import json

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from arena_dagster.defs.common import OWNERS, table_metadata
from arena_dagster.defs.evaluation import arena_battles_for_rating
from arena_dagster.defs.resources import ArenaHome, round_of, round_partitions
from arena_dagster.promotion import decide_promotion
from arena_dagster.ratings.categories import categories_of_testset, with_categories
from arena_dagster.registry import (
    RegistryError,
    get_model,
    record_promotion,
    record_round_target,
    round_candidate,
    round_checkpoints,
    round_target_decision,
)
from arena_dagster.sql_models import create_views
from arena_dagster.warehouse import read_frame, read_table


@dg.asset(
    group_name="round",
    kinds={"python", "duckdb"},
    owners=OWNERS,
    partitions_def=round_partitions,
    deps=["baseline_leaderboard"],  # round 1 reads the baseline's gate record; later rounds the previous gate's
    description=(
        "Round r's target: the model round r-1's gate kept or promoted (round 1: the initial target, through the "
        "baseline's record). Round r refuses to start until round r-1's gate decision is recorded in `promotions`; "
        "the metadata links to that decision and the checkpoint. Written to the `round_targets` table."
    ),
)
def round_target(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    round_key = round_of(context)
    with duckdb.get_connection() as conn:
        try:
            decision = round_target_decision(conn, round_key)
        except RegistryError as exc:
            raise dg.Failure(str(exc)) from None
        target = get_model(conn, decision["new_target"])
        record_round_target(conn, round_key, decision, target)
    context.log.info(f"round {round_key}: target {target['model']} ({decision['reason']})")
    return dg.MaterializeResult(
        metadata={
            **arena.provenance(),
            "target": target["model"],
            "target_path": dg.MetadataValue.path(target["path"]),
            "target_revision": target["revision"],
            "decided_in_round": int(decision["round"]),
            "decision": decision["reason"],
            "previous_gate": dg.MetadataValue.asset(dg.AssetKey("target_model" if decision["round"] else "baseline_leaderboard")),
        }
    )


def gate_figures(decision: dict, ratings: dict[str, float], candidates: list[str]) -> dict[str, float]:
    """The gate's floats for the Plots view, each a stable role across rounds (the margin, a constant, is not one).

    rating/target: round r+1's target (the promoted candidate or the kept incumbent) rated on round r's board;
    rating/best_candidate: the best-rated stage checkpoint of round r; gate/diff, gate/ci_low, gate/ci_high: the
    tested candidate minus the incumbent, in Elo, with the paired bootstrap interval.
    """
    figures = {f"gate/{k}": round(float(decision[k]), 2) for k in ("diff", "ci_low", "ci_high")
               if decision.get(k) is not None}
    if decision.get("new_target") in ratings:
        figures["rating/target"] = round(float(ratings[decision["new_target"]]), 2)
    rated = [float(ratings[c]) for c in candidates if c in ratings]
    if rated:
        figures["rating/best_candidate"] = round(max(rated), 2)
    return figures


_DECISION_FIELDS = ("candidate", "incumbent", "promoted", "new_target", "diff", "ci_low", "ci_high", "margin", "reason")


def _gate_spec(key: str, kind: str, description: str) -> dg.AssetSpec:
    # All three are written by the gate, after every checkpoint of the round is on the leaderboard.
    return dg.AssetSpec(key, group_name="gate", kinds={kind}, owners=OWNERS, partitions_def=round_partitions,
                        deps=["leaderboard", "arena_battles"], description=description)


@dg.multi_asset(
    specs=[
        _gate_spec("target_model", "python", (
            "Round r's promotion gate: the candidate replaces the target only if the lower bound of the paired "
            "prompt-bootstrap interval of (candidate - target) Elo on the arena test set is above the margin. "
            "The model it names is round r+1's target. Plots across rounds: rating/target (round r+1's target, "
            "rated on round r's leaderboard), rating/best_candidate (the round's best stage checkpoint), gate/diff "
            "(tested candidate minus incumbent, Elo) with gate/ci_low and gate/ci_high (its 95% interval).")),
        _gate_spec("promotions", "duckdb",
                   "Round r's row of the promotions table: candidate, incumbent, difference, interval, margin, decision."),
        _gate_spec("model_registry", "duckdb", (
            "Round r's checkpoints in the model registry (SFT-Ir, DPO-Ir, RM-Ir, RL-Ir): parent, training-dataset "
            "hash, manifest and metrics; skipped stages with the reason.")),
    ],
)
def promotion_gate(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource):
    round_key = round_of(context)
    settings = arena.typed_settings()
    gate, evaluation = settings.promotion, settings.evaluation
    with duckdb.get_connection() as conn:
        board = read_table(conn, "leaderboard", round_key=round_key)
        style_control = gate.style_control
        battles, _dropped = arena_battles_for_rating(conn, round_key, evaluation.model_copy(update={"style_control": style_control}))
        if gate.no_regression:
            battles, _uncategorized = with_categories(battles, categories_of_testset(read_table(conn, "arena_testset")))
        incumbent = get_model(conn, round_target_decision(conn, round_key)["new_target"])
        # Every stage checkpoint of the round is a candidate (skipped stages left out); rule `last` keeps the paper's.
        candidates = [row["model"] for row in round_checkpoints(conn, round_key)] or [round_candidate(conn, round_key)["model"]]
        ratings = dict(zip(board["model"].to_list(), board["rating"].to_list()))
        decision = decide_promotion(
            battles,
            incumbent=incumbent["model"],
            candidates=candidates,
            rule=gate.candidate,
            selection_fraction=gate.selection_fraction,
            margin=gate.margin,
            # The gate's own bootstrap and seed, else the evaluation's.
            bootstrap=gate.bootstrap if gate.bootstrap is not None else evaluation.bootstrap,
            seed=gate.seed if gate.seed is not None else evaluation.seed,
            ratings=ratings,
            style_control=style_control,
            ci=evaluation.ci,
            no_regression=gate.no_regression or (),
        )
        record_promotion(conn, round_key, decision)
        create_views(conn)
        target = get_model(conn, decision["new_target"])
        registry = read_frame(conn, "SELECT model, kind, parent, dataset_hash, revision, manifest FROM model_registry "
                                    "WHERE round = ? ORDER BY model", [round_key])
        promotions_meta = table_metadata(conn, "promotions", None)
    context.log.info(f"round {round_key}: {decision['reason']} -> next target {target['model']}")
    figures = gate_figures(decision, ratings, candidates)
    selection = decision.get("selection") or []
    yield dg.MaterializeResult(
        asset_key="target_model",
        metadata={
            **arena.provenance(),
            **figures,
            "promoted": bool(decision["promoted"]),
            "margin": str(decision.get("margin")),  # a profile setting, the same every round: text, not a figure
            "decision": decision["reason"],
            "rule": str(decision.get("rule") or ""),
            "tested_candidate": decision["candidate"],
            "selection_prompts": int(decision.get("selection_prompts") or 0),
            "test_prompts": int(decision.get("test_prompts") or 0),
            **({"no_regression": dg.MetadataValue.json(decision["categories"])} if decision.get("categories") else {}),
            **({"selection": dg.MetadataValue.table(
                [dg.TableRecord({"model": row["model"], "diff": round(float(row["diff"]), 1),
                                 "ci_95": f"[{row['ci_low']:+.1f}, {row['ci_high']:+.1f}]"}) for row in selection],
                schema=dg.TableSchema(columns=[dg.TableColumn("model"), dg.TableColumn("diff", "float",
                    description="rating difference to the incumbent on the selection prompts"), dg.TableColumn("ci_95")]),
            )} if selection else {}),
            "next_round_target": target["model"],
            "next_round_target_path": dg.MetadataValue.path(target["path"]),
        },
    )
    yield dg.MaterializeResult(
        asset_key="promotions",
        metadata={**arena.provenance(), **{k: v for k, v in figures.items() if k.startswith("gate/")},
                  "dagster/row_count": promotions_meta.get("dagster/row_count", 0),
                  "decision": dg.MetadataValue.json({k: decision.get(k) for k in _DECISION_FIELDS})},
    )
    yield dg.MaterializeResult(
        asset_key="model_registry",
        metadata={**arena.provenance(), "checkpoints": dg.MetadataValue.table(
            [dg.TableRecord({
                "model": r["model"], "kind": r["kind"], "parent": r["parent"] or "",
                "dataset_hash": (r["dataset_hash"] or "")[:12],
                "skipped": json.loads(r["manifest"] or "{}").get("skipped") or "",
            }) for r in registry.iter_rows(named=True)],
            schema=dg.TableSchema(columns=[dg.TableColumn(c) for c in ("model", "kind", "parent", "dataset_hash", "skipped")]),
        )},
    )


@dg.asset(
    group_name="gate",
    kinds={"duckdb"},
    owners=OWNERS,
    deps=["leaderboard", "promotions", "model_registry"],
    description=(
        "Every round's leaderboard rows with the model's registry entry and the gate's decision (the view "
        "`leaderboard_history`, dbt_like_sql/views/): the target's rating from the baseline through the last round."
    ),
)
def leaderboard_history(context: dg.AssetExecutionContext, arena: ArenaHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    from arena_dagster.defs.leaderboards import image, save_png
    from arena_dagster.plots import history_png, win_rate_png

    with duckdb.get_connection() as conn:
        create_views(conn)
        history = read_frame(conn, "SELECT * FROM leaderboard_history ORDER BY round, rating DESC")
        promotions = read_frame(conn, "SELECT * FROM promotions ORDER BY round")
        last = int(history["round"].max()) if history.height else 0
        battles = read_table(conn, "arena_battles", round_key=last).select("model_a", "model_b", "winner")
    chart = history_png(history, promotions)
    chart_file = save_png(chart, arena.folder("plots") / "history.png")
    order = history.filter(pl.col("round") == last).sort("rating", descending=True)["model"].to_list()
    wins = win_rate_png(battles, order=order, title=f"Who beats whom, round {last} (arena test set)")
    targets = history.filter(pl.col("kind").is_in(["initial", "incumbent"]) | pl.col("promoted").fill_null(False))
    rows = [
        dg.TableRecord({"round": int(r["round"]), "model": r["model"], "kind": r["kind"] or "",
                        "rating": round(float(r["rating"]), 1), "ci_95": f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]",
                        "decision": r["decision"] or ""})
        for r in targets.iter_rows(named=True)
    ]
    return dg.MaterializeResult(metadata={
        **arena.provenance(),
        "dagster/row_count": history.height,
        "rounds": int(history["round"].max()) if history.height else 0,
        "target_across_rounds": image(chart, "the target's rating across rounds"),
        "who_beats_whom_last_round": image(wins, f"win rates, round {last}"),
        "plot_file": dg.MetadataValue.path(str(chart_file)),
        "targets": dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=[
            dg.TableColumn(c) for c in ("round", "model", "kind", "rating", "ci_95", "decision")])),
    })
