"""What a person looks at on a leaderboard asset: the table, the picture, and figures the Plots view charts."""

from typing import Any

import dagster as dg
import polars as pl

LEADERBOARD_COLUMNS = [
    dg.TableColumn("rank", "int", description="1 + the number of models rated above this one with 95% confidence"),
    dg.TableColumn("model", "string"),
    dg.TableColumn("kind", "string", description="candidate (a stage checkpoint of the round), incumbent (the round's "
                   "target), initial (the initial target), competitor"),
    dg.TableColumn("rating", "float", description="Bradley-Terry rating (Elo scale), anchored on a fixed competitor"),
    dg.TableColumn("ci_95", "string", description="95% bootstrap interval over test prompts"),
    dg.TableColumn("battles", "int"),
]


def leaderboard_table(board: pl.DataFrame) -> dg.TableMetadataValue:
    rows = [
        dg.TableRecord({
            "rank": int(r["rank"]), "model": r["model"], "kind": r.get("kind") or "", "rating": round(float(r["rating"]), 1),
            "ci_95": f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]" if r.get("ci_low") is not None else "",
            "battles": int(r["battles"]),
        })
        for r in board.sort("rating", descending=True).iter_rows(named=True)
    ]
    return dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=LEADERBOARD_COLUMNS))


def rating_figures(board: pl.DataFrame) -> dict[str, float]:
    """One float per model under a name that is the same every round, so the Plots view draws learning curves.

    Stage checkpoints are keyed by their stage (rating/sft is SFT-I1 in round 1, SFT-I2 in round 2),
    the incumbent and the initial target by their kind, competitors by their name.
    """
    out: dict[str, float] = {}
    for row in board.iter_rows(named=True):
        kind = row.get("kind") or ""
        key = row.get("stage") if kind == "candidate" else (row["model"] if kind == "competitor" else kind)
        if key:
            out[f"rating/{key}"] = round(float(row["rating"]), 2)
    return out


def leaderboard_metadata(board: pl.DataFrame, battles: pl.DataFrame) -> dict[str, Any]:
    return {"leaderboard": leaderboard_table(board), **rating_figures(board)}
