"""What a person looks at on a leaderboard asset: the table, the picture, and figures the Plots view charts."""

from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

def leaderboard_columns(interval: str) -> list[dg.TableColumn]:
    """The board's UI columns; `interval` says how its intervals were made (ratings.sandwich.interval_description)."""
    return [
        dg.TableColumn("rank", "int", description="1 + the number of models rated above this one with 95% confidence"),
        dg.TableColumn("model", "string", description="`*`: the battles do not bound this rating (it never lost or never won)"),
        dg.TableColumn("kind", "string", description="candidate (a stage checkpoint of the round), incumbent (the round's "
                       "target), initial (the initial target), competitor"),
        dg.TableColumn("rating", "float", description="Bradley-Terry rating (Elo scale), anchored on a fixed competitor"),
        dg.TableColumn("ci_95", "string", description=interval),
        dg.TableColumn("battles", "int"),
    ]


OPTIONAL_COLUMNS = {
    "win_rate": dg.TableColumn("win_rate", "string", description="predicted win rate against the baseline, with its 95% interval"),
    "rating_sc": dg.TableColumn("rating_sc", "string", description="style-controlled rating (length and markdown held "
                                "equal), with its 95% interval"),
}


def _interval(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    if value is None:
        return ""
    text = f"{value:.{digits}f}"
    return text if low is None else f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def leaderboard_table(board: pl.DataFrame, interval: str) -> dg.TableMetadataValue:
    """The board as the UI's table; a model whose rating the battles do not bound is marked with `*`."""
    optional = [c for c in OPTIONAL_COLUMNS if c in board.columns]
    rows = []
    for r in board.sort("rating", descending=True).iter_rows(named=True):
        record = {
            "rank": int(r["rank"]), "model": r["model"] + (" *" if r.get("unbounded") else ""), "kind": r.get("kind") or "",
            "rating": round(float(r["rating"]), 1),
            "ci_95": f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]" if r.get("ci_low") is not None else "",
            "battles": int(r["battles"]),
        }
        if "win_rate" in optional:
            record["win_rate"] = _interval(r.get("win_rate"), r.get("win_rate_low"), r.get("win_rate_high"), 3)
        if "rating_sc" in optional:
            record["rating_sc"] = _interval(r.get("rating_sc"), r.get("ci_low_sc"), r.get("ci_high_sc"), 1)
        rows.append(dg.TableRecord(record))
    columns = [*leaderboard_columns(interval), *(OPTIONAL_COLUMNS[c] for c in optional)]
    return dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=columns))


def rating_figures(board: pl.DataFrame) -> dict[str, float]:
    """Floats the Plots view draws across rounds, each under a name that means the same thing every round.

    rating/sft, rating/dpo, rating/rl: the round's stage checkpoints (SFT-I1 in round 1, SFT-I2 in round 2);
    rating/best_candidate: the best of them; rating/initial: the initial target; rating/<competitor>: each
    competitor but the anchor, whose rating is fixed by definition. The round's incumbent is left out: it is
    another model each round (the gate's `rating/target` on target_model is the comparable series).
    """
    anchor = str(board["anchor"][0]).rpartition("=")[0] if "anchor" in board.columns and board.height else None
    out: dict[str, float] = {}
    candidates: list[float] = []
    for row in board.iter_rows(named=True):
        kind, rating = row.get("kind") or "", round(float(row["rating"]), 2)
        if kind == "candidate" and row.get("stage"):
            out[f"rating/{row['stage']}"] = rating
            candidates.append(rating)
        elif kind == "initial":
            out["rating/initial"] = rating
        elif kind == "competitor" and row["model"] != anchor:
            out[f"rating/{row['model']}"] = rating
    if candidates:
        out["rating/best_candidate"] = max(candidates)
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


def leaderboard_metadata(board: pl.DataFrame, battles: pl.DataFrame, round_key: int, plots: Path,
                         interval: str) -> dict[str, Any]:
    """The table, the ratings picture, the who-beats-whom map (also as PNG files in `plots`), and per-model figures;
    `interval` says how the board's intervals were made."""
    from arena_dagster.plots import leaderboard_png, win_rate_png

    title = "Baseline (round 0)" if round_key == 0 else f"Round {round_key}"
    ratings = leaderboard_png(board, title=f"{title}: ratings with 95% intervals", interval=interval)
    order = board.sort("rating", descending=True)["model"].to_list()
    wins = win_rate_png(battles.select("model_a", "model_b", "winner"), order=order, title=f"{title}: who beats whom")
    ratings_file = save_png(ratings, plots / f"round-{round_key}-leaderboard.png")
    save_png(wins, plots / f"round-{round_key}-winrate.png")
    return {
        "leaderboard": leaderboard_table(board, interval),
        "ratings_plot": image(ratings, f"{title} leaderboard"),
        "who_beats_whom": image(wins, f"{title} win rates"),
        "plot_file": dg.MetadataValue.path(str(ratings_file)),
        **rating_figures(board),
    }


def rate_categories(battles: pl.DataFrame, testset: pl.DataFrame, rate_options: dict[str, Any]) -> dict[str, Any]:
    """One board per category of test prompt (ratings/categories.py): `table`, every board's rows with a `category`
    column for the warehouse's leaderboard_by_category, and `metadata`, the same as a UI table (and the categories
    that get no board, with the reason)."""
    from arena_dagster.ratings.categories import categories_of_testset, category_boards, category_table, with_categories
    from arena_dagster.ratings.sandwich import interval_description

    tagged, uncategorized = with_categories(battles, categories_of_testset(testset))
    boards, skipped = category_boards(tagged, rate_options)
    table = category_table(boards)
    rows = [
        dg.TableRecord({"category": r["category"], "rank": int(r["rank"]), "model": r["model"] + (" *" if r["unbounded"] else ""),
                        "rating": round(float(r["rating"]), 1),
                        "ci_95": f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]" if r.get("ci_low") is not None else "",
                        "battles": int(r["battles"])})
        for r in (table.sort(["category", "rating"], descending=[False, True]) if boards else table).iter_rows(named=True)
    ]
    metadata: dict[str, Any] = {"categories": len(boards)}
    if rows:
        metadata["leaderboard_by_category"] = dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=[
            dg.TableColumn("category", "string", description="the test prompts' family (or cluster)"),
            *(c for c in leaderboard_columns(interval_description(rate_options["ci"], rate_options["bootstrap_unit"]))
              if c.name != "kind")]))
    if skipped:
        metadata["categories_without_board"] = dg.MetadataValue.json(skipped)
    if uncategorized and boards:
        metadata["battles_without_category"] = uncategorized
    return {"table": table, "metadata": metadata}
