"""Plots of constructed leaderboards: real PNGs of a sensible size, and the numbers behind them."""

from __future__ import annotations

import io
import random

import polars as pl
import pytest
from PIL import Image

from arena_dagster import plots


def constructed_history(rounds: int = 4, rejected_round: int = 2) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Leaderboards of `rounds` rounds (two competitors, stage checkpoints) and the gate's decisions."""
    rows, decisions = [], []
    target, rating = "target-I0", 850.0
    for r in range(rounds):
        for name, value in (("letters", 1000.0), ("numbers", 1030.0)):
            rows.append({"round": r, "model": name, "kind": "competitor", "stage": "competitor", "rating": value,
                         "ci_low": value - 60, "ci_high": value + 55, "rank": 1, "anchor": "letters=1000"})
        if r == 0:
            rows.append({"round": 0, "model": target, "kind": "initial", "stage": "initial", "rating": rating,
                         "ci_low": rating - 50, "ci_high": rating + 50, "rank": 3, "anchor": "letters=1000"})
            decisions.append({"round": 0, "candidate": target, "incumbent": target, "promoted": True,
                              "new_target": target, "diff": None, "ci_low": None, "ci_high": None})
            continue
        rows.append({"round": r, "model": target, "kind": "incumbent", "stage": "rl", "rating": rating,
                     "ci_low": rating - 50, "ci_high": rating + 50, "rank": 5, "anchor": "letters=1000"})
        gain = -10.0 if r == rejected_round else 80.0
        for i, stage in enumerate(("sft", "dpo", "rl")):
            value = rating + gain * (i + 1) / 3
            rows.append({"round": r, "model": f"{stage.upper()}-I{r}", "kind": "candidate" if stage == "rl" else "stage",
                         "stage": stage, "rating": value, "ci_low": value - 45, "ci_high": value + 45, "rank": 2,
                         "anchor": "letters=1000"})
        promoted = gain > 0
        decisions.append({"round": r, "candidate": f"RL-I{r}", "incumbent": target, "promoted": promoted,
                          "new_target": f"RL-I{r}" if promoted else target, "diff": gain, "ci_low": gain - 40,
                          "ci_high": gain + 40})
        if promoted:
            target, rating = f"RL-I{r}", rating + gain
    return pl.DataFrame(rows), pl.DataFrame(decisions)


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    return image


def test_leaderboard_png_is_readable_at_the_ui_width():
    history, _ = constructed_history()
    image = decode(plots.leaderboard_png(history.filter(pl.col("round") == 3), title="round 3"))
    width, height = image.size
    assert width == 800 and 250 <= height <= 800
    # A larger leaderboard grows in height, not in width.
    many = pl.DataFrame([{"model": f"m{i}", "rating": 900.0 + 10 * i, "ci_low": 880.0 + 10 * i, "ci_high": 920.0 + 10 * i}
                         for i in range(20)])
    tall = decode(plots.leaderboard_png(many))
    assert tall.size[0] == 800 and tall.size[1] > height


def test_history_png_with_a_rejected_round():
    history, promotions = constructed_history(rounds=4, rejected_round=2)
    image = decode(plots.history_png(history, promotions))
    assert image.size == (800, 480)


def test_target_history_follows_the_gate():
    history, promotions = constructed_history(rounds=4, rejected_round=2)
    targets = plots.target_history(history, promotions)
    assert targets["model"].to_list() == ["target-I0", "RL-I1", "RL-I1", "RL-I3"]
    assert targets["rating"].to_list() == [850.0, 930.0, 930.0, 1010.0]


def test_win_rates_count_ties_as_half():
    battles = pl.DataFrame({
        "model_a": ["x", "x", "y", "x"],
        "model_b": ["y", "y", "x", "z"],
        "winner": ["model_a", "tie", "model_a", "model_b"],
    })
    rates = {(r["model"], r["opponent"]): (r["win_rate"], r["battles"]) for r in plots.win_rates(battles).iter_rows(named=True)}
    assert rates[("x", "y")] == (pytest.approx(0.5), 3)  # a win, a tie, a loss
    assert rates[("y", "x")] == (pytest.approx(0.5), 3)
    assert rates[("x", "z")] == (0.0, 1) and rates[("z", "x")] == (1.0, 1)


def test_win_rate_png_from_many_models():
    rng = random.Random(0)
    models = [f"model-{i}" for i in range(14)]
    battles = pl.DataFrame([{"model_a": a, "model_b": b, "winner": rng.choice(["model_a", "model_b", "tie"])}
                            for a in models for b in models if a < b for _ in range(3)])
    image = decode(plots.win_rate_png(battles, order=list(reversed(models))))
    assert image.size[0] == 800 and 300 <= image.size[1] <= 800


def test_nothing_to_draw_is_a_user_error():
    with pytest.raises(plots.PlotError, match="no rows"):
        plots.leaderboard_png(pl.DataFrame())
    with pytest.raises(plots.PlotError, match="no battles"):
        plots.win_rate_png(pl.DataFrame())


def test_plot_files_and_markdown(tmp_path):
    history, promotions = constructed_history(rounds=2)
    battles = pl.DataFrame({"model_a": ["RL-I1", "letters"], "model_b": ["letters", "numbers"], "winner": ["model_a", "tie"]})
    tables = {"round": 1, "board": history.filter(pl.col("round") == 1), "history": history,
              "promotions": promotions, "battles": battles}
    written = plots.write_plots(plots.render_plots(tables), tmp_path / "out.png")
    assert [p.name for p in written] == ["out.png", "out-history.png", "out-winrate.png"]
    for path in written:
        decode(path.read_bytes())
    assert plots.png_markdown(b"\x89PNG", "leaderboard").startswith("![leaderboard](data:image/png;base64,")


def test_plotted_figures_are_stable_roles_and_no_constants():
    from arena_dagster.defs.gate import gate_figures
    from arena_dagster.defs.leaderboards import rating_figures

    history, decisions = constructed_history()
    board = history.filter(pl.col("round") == 1).with_columns(
        pl.when(pl.col("stage").is_in(["sft", "dpo", "rl"]) & (pl.col("kind") != "incumbent")).then(pl.lit("candidate"))
        .otherwise(pl.col("kind")).alias("kind"))
    figures = rating_figures(board)
    # The anchor (letters) is 1000 by definition and the incumbent is another model each round: neither is plotted.
    assert set(figures) == {"rating/sft", "rating/dpo", "rating/rl", "rating/best_candidate", "rating/numbers"}
    assert figures["rating/best_candidate"] == max(figures["rating/sft"], figures["rating/dpo"], figures["rating/rl"])
    decision = decisions.filter(pl.col("round") == 1).row(0, named=True) | {"margin": 0.0}
    ratings = dict(zip(board["model"], board["rating"]))
    gate = gate_figures(decision, ratings, ["SFT-I1", "DPO-I1", "RL-I1"])
    assert set(gate) == {"gate/diff", "gate/ci_low", "gate/ci_high", "rating/target", "rating/best_candidate"}
    assert gate["rating/target"] == round(ratings[decision["new_target"]], 2)
    # A rejected round: the target stays the incumbent, and rating/target is the incumbent's rating that round.
    rejected = decisions.filter(pl.col("round") == 2).row(0, named=True)
    board2 = history.filter(pl.col("round") == 2)
    assert gate_figures(rejected, dict(zip(board2["model"], board2["rating"])), ["RL-I2"])["rating/target"] == round(
        board2.filter(pl.col("kind") == "incumbent")["rating"][0], 2)
