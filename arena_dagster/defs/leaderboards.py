"""What a person looks at on a leaderboard asset: the table, the picture, and figures the Plots view charts."""

from pathlib import Path
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


def image(png: bytes, alt: str) -> dg.MetadataValue:
    from arena_dagster.plots import png_markdown

    return dg.MetadataValue.md(png_markdown(png, alt))


def save_png(png: bytes, path: Path) -> Path:
    """Write a plot under the home atomically (the same picture the metadata shows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    return path


def leaderboard_metadata(board: pl.DataFrame, battles: pl.DataFrame, round_key: int, plots: Path) -> dict[str, Any]:
    """The table, the ratings picture, the who-beats-whom map (also as PNG files in `plots`), and per-model figures."""
    from arena_dagster.plots import leaderboard_png, win_rate_png

    title = "Baseline (round 0)" if round_key == 0 else f"Round {round_key}"
    ratings = leaderboard_png(board, title=f"{title}: ratings with 95% intervals")
    order = board.sort("rating", descending=True)["model"].to_list()
    wins = win_rate_png(battles.select("model_a", "model_b", "winner"), order=order, title=f"{title}: who beats whom")
    ratings_file = save_png(ratings, plots / f"round-{round_key}-leaderboard.png")
    save_png(wins, plots / f"round-{round_key}-winrate.png")
    return {
        "leaderboard": leaderboard_table(board),
        "ratings_plot": image(ratings, f"{title} leaderboard"),
        "who_beats_whom": image(wins, f"{title} win rates"),
        "plot_file": dg.MetadataValue.path(str(ratings_file)),
        **rating_figures(board),
    }
