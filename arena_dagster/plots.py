"""Pictures of the flywheel: a round's leaderboard, the target across rounds, who beats whom.

Pure functions from warehouse frames (leaderboard, leaderboard_history, promotions,
arena_battles) to PNG bytes, sized for the Dagster UI's metadata view (about 800 px wide),
plus the reader and writer the CLI uses. matplotlib (Agg backend) is imported inside the
functions that draw, so importing this module stays cheap.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from arena_dagster.errors import ArenaError
from arena_dagster.profile_schema.evaluation import EvaluationSettings
from arena_dagster.warehouse import read_frame, table_exists

# One colour per leaderboard `kind` (colour-blind safe Okabe-Ito hues); any other kind is grey.
KIND_COLORS = {
    "candidate": "#D55E00",
    "stage": "#E69F00",
    "incumbent": "#0072B2",
    "initial": "#009E73",
    "competitor": "#6B6B6B",
}
OTHER_COLOR = "#999999"
WIDTH_IN, DPI = 8.0, 100  # 800 px: what the Dagster UI shows without scaling


class PlotError(ArenaError, ValueError):
    """Nothing to draw (no leaderboard yet, an empty round)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    return buffer.getvalue()


def _frame(rows: pl.DataFrame | list[dict[str, Any]]) -> pl.DataFrame:
    return rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)


def leaderboard_png(board: pl.DataFrame | list[dict[str, Any]], *, title: str | None = None,
                    interval: str = "95% interval") -> bytes:
    """One round's leaderboard: each model's rating with its 95% interval, best on top, coloured by kind.

    `board`: rows with model, rating, ci_low, ci_high and optionally kind, rank, battles; `interval`:
    how the intervals were made (ratings.sandwich.interval_description), the x axis says it.
    """
    board = _frame(board)
    if board.is_empty():
        raise PlotError("the leaderboard has no rows", title, "materialize the round's leaderboard first")
    if "kind" not in board.columns:
        board = board.with_columns(pl.lit("competitor").alias("kind"))
    board = board.sort(["rating", "model"], descending=[False, True])  # bottom to top: best ends on top
    plt = _pyplot()
    rows = board.to_dicts()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.3 + 0.42 * len(rows)), layout="constrained")
    for y, row in enumerate(rows):
        color = KIND_COLORS.get(row["kind"] or "", OTHER_COLOR)
        low = row["ci_low"] if row.get("ci_low") is not None else row["rating"]
        high = row["ci_high"] if row.get("ci_high") is not None else row["rating"]
        ax.hlines(y, low, high, color=color, linewidth=3, alpha=0.45)
        ax.plot(row["rating"], y, "o", color=color, markersize=8, zorder=3)
        note = f"{row['rating']:.0f}  [{low:.0f}, {high:.0f}]"
        ax.annotate(note, (high, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=9, color="#333333")
    anchor = str(rows[0].get("anchor") or "").split("=")[0]  # the model whose rating sets the scale
    labels = [(f"{row['rank']}. " if row.get("rank") is not None else "") + row["model"]
              + (" (anchor)" if row["model"] == anchor else "") for row in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=10)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    lows = [r["ci_low"] if r.get("ci_low") is not None else r["rating"] for r in rows]
    highs = [r["ci_high"] if r.get("ci_high") is not None else r["rating"] for r in rows]
    span = max(max(highs) - min(lows), 1.0)
    ax.set_xlim(min(lows) - 0.05 * span, max(highs) + 0.28 * span)  # room for the interval labels
    ax.set_xlabel(f"Bradley-Terry rating (Elo scale), {interval}")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    kinds = [k for k in KIND_COLORS if k in set(board["kind"].to_list())]
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=KIND_COLORS[k], label=k) for k in kinds]
    ax.legend(handles=handles, loc="lower right", fontsize=9, frameon=True, framealpha=0.9)
    ax.set_title(title or "Leaderboard", fontsize=12, loc="left")
    return _png(fig)


def target_history(history: pl.DataFrame, promotions: pl.DataFrame) -> pl.DataFrame:
    """Per round: the model that is the target after the round's gate, with its rating there.

    `history`: leaderboard rows of every round (round, model, rating, ci_low, ci_high);
    `promotions`: the gate's decisions (round, new_target, promoted, candidate).
    """
    if promotions.is_empty():
        return pl.DataFrame(schema={"round": pl.Int64, "model": pl.String, "rating": pl.Float64,
                                    "ci_low": pl.Float64, "ci_high": pl.Float64})
    targets = promotions.select("round", pl.col("new_target").alias("model"))
    return (
        targets.join(history.select("round", "model", "rating", "ci_low", "ci_high"), on=["round", "model"], how="inner")
        .sort("round")
    )


def history_png(history: pl.DataFrame | list[dict[str, Any]], promotions: pl.DataFrame | list[dict[str, Any]],
                *, title: str | None = None) -> bytes:
    """The target's rating across rounds (the paper's I0 -> In chart).

    `history`: leaderboard rows of every round (round, model, rating, ci_low, ci_high, kind,
    stage); `promotions`: the gate's decisions (round, candidate, incumbent, promoted,
    new_target, diff, ci_low, ci_high). The line joins the target after each round's gate,
    with its 95% interval; each round's stage checkpoints are lighter points to its left; the
    gate's decision is written under each round (a rejected candidate is crossed out);
    competitors are thin grey lines for reference.
    """
    history, promotions = _frame(history), _frame(promotions)
    if history.is_empty():
        raise PlotError("no leaderboard rows", title, "materialize a round's leaderboard first")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.8), layout="constrained")
    rounds = sorted(set(history["round"].to_list()))
    kind = pl.col("kind") if "kind" in history.columns else pl.lit("competitor")
    for (name,), rows in history.filter(kind == "competitor").group_by("model", maintain_order=True):
        rows = rows.sort("round")
        ax.plot(rows["round"], rows["rating"], color="#BBBBBB", linewidth=1, zorder=1)
        first = rows.row(0, named=True)
        ax.annotate(name, (first["round"], first["rating"]), xytext=(-8, 0), textcoords="offset points",
                    ha="right", va="center", fontsize=8, color="#888888")
    stage_x = {"sft": -0.3, "dpo": -0.2, "rl": -0.1}
    for row in history.filter(kind.is_in(["stage", "candidate"])).iter_rows(named=True):
        x = row["round"] + stage_x.get(row.get("stage") or "", -0.1)
        ax.errorbar(x, row["rating"], yerr=[[row["rating"] - row["ci_low"]], [row["ci_high"] - row["rating"]]],
                    fmt="o", color=KIND_COLORS["stage"], alpha=0.45, markersize=5, capsize=2, zorder=2)
        ax.annotate(row["model"], (x, row["ci_low"]), xytext=(0, -4), textcoords="offset points", ha="center",
                    va="top", fontsize=7, color="#8A5A00", rotation=90)
    targets = target_history(history, promotions)
    if not targets.is_empty():
        ax.errorbar(targets["round"], targets["rating"],
                    yerr=[targets["rating"] - targets["ci_low"], targets["ci_high"] - targets["rating"]],
                    fmt="-o", color=KIND_COLORS["incumbent"], linewidth=2.2, markersize=8, capsize=4, zorder=4,
                    label="target after the gate (95% interval)")
        for row in targets.iter_rows(named=True):
            ax.annotate(f"{row['model']}\n{row['rating']:.0f}", (row["round"], row["ci_high"]), xytext=(0, 4),
                        textcoords="offset points", ha="center", va="bottom", fontsize=9,
                        color=KIND_COLORS["incumbent"], fontweight="bold")
    _mark_gates(ax, history, promotions, stage_x)
    ax.plot([], [], "o", color=KIND_COLORS["stage"], alpha=0.45, label="the round's stage checkpoints")
    ax.set_xticks(rounds, [f"I{r}" for r in rounds])
    ax.set_xlim(min(rounds) - 0.75, max(rounds) + 0.45)
    low, high = min(history["ci_low"].min(), history["rating"].min()), max(history["ci_high"].max(), history["rating"].max())
    span = max(high - low, 1.0)
    ax.set_ylim(low - 0.22 * span, high + 0.15 * span)  # room for the gate notes below and the names above
    ax.set_xlabel("flywheel round")
    ax.set_ylabel("rating (Elo scale)")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_title(title or "Target rating across rounds", fontsize=12, loc="left")
    return _png(fig)


def _mark_gates(ax, history: pl.DataFrame, promotions: pl.DataFrame, stage_x: dict[str, float]) -> None:
    """Under each round, the gate's decision; a rejected candidate's point is crossed out."""
    if promotions.is_empty():
        return
    rows = {(r["round"], r["model"]): r for r in history.iter_rows(named=True)}
    for decision in promotions.iter_rows(named=True):
        x = decision["round"]
        if decision["candidate"] == decision["incumbent"]:
            note, color = ("baseline" if x == 0 else "no new checkpoint"), "#666666"
        else:
            promoted = bool(decision["promoted"])
            color = "#007A55" if promoted else "#CC0000"
            interval = ""
            if decision.get("diff") is not None:
                interval = f"\n{decision['diff']:+.0f} [{decision['ci_low']:+.0f}, {decision['ci_high']:+.0f}]"
            note = f"gate: {'promoted' if promoted else 'rejected'}{interval}"
            candidate = rows.get((x, decision["candidate"]))
            if candidate is not None and not promoted:
                cx = x + stage_x.get(candidate.get("stage") or "", -0.1)
                ax.plot(cx, candidate["rating"], "X", color=color, markersize=10, zorder=5)
        ax.annotate(note, (x, 0.02), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8,
                    color=color)


def win_rates(battles: pl.DataFrame) -> pl.DataFrame:
    """Row model's win rate against column model over `battles` (model_a, model_b, winner), ties as half.

    Long form: model, opponent, battles, win_rate (one row per ordered pair that met).
    """
    winner = pl.col("winner")
    score_a = pl.when(winner == "model_a").then(1.0).when(winner == "model_b").then(0.0).otherwise(0.5)
    sides = pl.concat([
        battles.select(pl.col("model_a").alias("model"), pl.col("model_b").alias("opponent"), score_a.alias("score")),
        battles.select(pl.col("model_b").alias("model"), pl.col("model_a").alias("opponent"), (1.0 - score_a).alias("score")),
    ])
    return (
        sides.group_by("model", "opponent")
        .agg(pl.len().alias("battles"), pl.col("score").mean().alias("win_rate"))
        .sort("model", "opponent")
    )


def win_rate_png(battles: pl.DataFrame | list[dict[str, Any]], *, order: list[str] | None = None,
                 title: str | None = None) -> bytes:
    """Heat map of who beats whom: cell (row, column) is the row model's win rate against the column model.

    `order`: the models top to bottom (e.g. by rating); default: by overall win rate.
    """
    battles = _frame(battles)
    if battles.is_empty():
        raise PlotError("no battles", title, "materialize the round's arena_battles first")
    rates = win_rates(battles)
    if order is None:
        overall = rates.group_by("model").agg(
            ((pl.col("win_rate") * pl.col("battles")).sum() / pl.col("battles").sum()).alias("overall")
        )
        order = overall.sort(["overall", "model"], descending=[True, False])["model"].to_list()
    else:
        order = [m for m in order if m in set(rates["model"].to_list())]
    index = {m: i for i, m in enumerate(order)}
    import numpy as np

    grid = np.full((len(order), len(order)), np.nan)
    counts = np.zeros_like(grid)
    for row in rates.iter_rows(named=True):
        if row["model"] in index and row["opponent"] in index:
            grid[index[row["model"]], index[row["opponent"]]] = row["win_rate"]
            counts[index[row["model"]], index[row["opponent"]]] = row["battles"]
    plt = _pyplot()
    size = min(WIDTH_IN, 2.8 + 0.62 * len(order))
    fig, ax = plt.subplots(figsize=(WIDTH_IN, size), layout="constrained")
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#F0F0F0")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    # Cell labels while they fit: rate and battle count, then the rate alone, then none (colour only).
    font = 9 if len(order) <= 8 else 7
    for i in range(len(order) if len(order) <= 20 else 0):
        for j in range(len(order)):
            if np.isnan(grid[i, j]):
                continue
            value = grid[i, j]
            label = f"{value:.0%}\n({int(counts[i, j])})" if len(order) <= 12 else f"{value:.0%}"
            ax.text(j, i, label, ha="center", va="center", fontsize=font,
                    color="white" if abs(value - 0.5) > 0.3 else "#222222")
    ax.set_xticks(range(len(order)), order, rotation=35, ha="right", fontsize=9)
    ax.set_yticks(range(len(order)), order, fontsize=9)
    ax.set_xlabel("opponent")
    ax.set_ylabel("model")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    colorbar.set_label("win rate of the row model (ties count half)", fontsize=9)
    colorbar.ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_title(title or "Who beats whom", fontsize=12, loc="left")
    return _png(fig)


def read_plot_tables(conn: duckdb.DuckDBPyConnection, round_key: int | None = None) -> dict[str, Any]:
    """The frames the plots draw, from a warehouse: the round's leaderboard (default: the last round),
    every round's leaderboard rows, the gate's decisions and the round's arena battles."""
    if not table_exists(conn, "leaderboard"):
        raise PlotError("no leaderboard in the warehouse", None, "run `arena-dagster flywheel` first")
    history = read_frame(conn, "SELECT * FROM leaderboard ORDER BY round, rating DESC")
    if history.is_empty():
        raise PlotError("the leaderboard table has no rows", None, "run `arena-dagster flywheel` first")
    rounds = set(history["round"].to_list())
    round_key = max(rounds) if round_key is None else round_key
    if round_key not in rounds:
        raise PlotError(f"round {round_key} has no leaderboard", None, f"rounds with one: {sorted(rounds)}")
    promotions = (read_frame(conn, "SELECT * FROM promotions ORDER BY round") if table_exists(conn, "promotions")
                  else pl.DataFrame())
    battles = (read_frame(conn, "SELECT model_a, model_b, winner FROM arena_battles WHERE round = ?", [round_key])
               if table_exists(conn, "arena_battles") else pl.DataFrame())
    return {"round": round_key, "board": history.filter(pl.col("round") == round_key), "history": history,
            "promotions": promotions, "battles": battles}


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that shows `png` inline (a data URI): what the Dagster UI renders for MetadataValue.md."""
    import base64

    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def plot_paths(out: Path) -> dict[str, Path]:
    """out.png -> {leaderboard: out.png, history: out-history.png, win_rate: out-winrate.png}."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() == ".png" else out
    return {
        "leaderboard": stem.with_name(stem.name + ".png"),
        "history": stem.with_name(stem.name + "-history.png"),
        "win_rate": stem.with_name(stem.name + "-winrate.png"),
    }


def render_plots(tables: dict[str, Any], interval: str = "95% interval") -> dict[str, bytes]:
    """The three PNGs of `read_plot_tables`'s frames (no win-rate map when the round has no battles)."""
    round_key = tables["round"]
    board = tables["board"]
    pictures = {
        "leaderboard": leaderboard_png(board, title=f"Leaderboard, round {round_key}", interval=interval),
        "history": history_png(tables["history"], tables["promotions"]),
    }
    if not tables["battles"].is_empty():
        order = board.sort("rating", descending=True)["model"].to_list()
        pictures["win_rate"] = win_rate_png(tables["battles"], order=order,
                                            title=f"Who beats whom, round {round_key} (arena test set)")
    return pictures


def write_plots(pictures: dict[str, bytes], out: Path) -> list[Path]:
    """Write `render_plots`'s PNGs next to `out` (see plot_paths); returns the files written."""
    paths = plot_paths(out)
    written = []
    for name, png in pictures.items():
        path = paths[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(png)
        tmp.replace(path)
        written.append(path)
    return written


def write_home_plots(home: Path, out: Path, round_key: int | None = None,
                     evaluation: EvaluationSettings | None = None) -> list[Path]:
    """`arena-dagster leaderboard --plot OUT.png`: the home's plots (see plot_paths), read read-only;
    `evaluation`, the home's profile's section, names how the intervals were made."""
    from arena_dagster.ratings.sandwich import interval_description
    from arena_dagster.warehouse import open_readonly

    with open_readonly(home) as conn:
        tables = read_plot_tables(conn, round_key)
    interval = interval_description(evaluation.ci, evaluation.bootstrap_unit) if evaluation is not None else "95% interval"
    return write_plots(render_plots(tables, interval), out)
