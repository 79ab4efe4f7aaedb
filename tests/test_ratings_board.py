"""Weighted battles, intervals and ranks that do not depend on the anchor, the win rate against a
baseline, and unbounded ratings flagged (issue 14)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from arena_dagster.ratings import (
    BattlesInputError,
    RatingsError,
    RatingsWarning,
    alignment,
    fit,
    leaderboard,
    rate,
    rating_difference,
)
from test_ratings import ELO_PER_NAT, battles, ratings_of, simulate

TRUTH = {"alpha": 1250.0, "beta": 1180.0, "gamma": 1100.0, "delta": 1040.0, "eps": 1000.0, "zeta": 930.0}


def weighted(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Every battle with a weight of 1 or 3 (arena-hard's weak and strong verdicts)."""
    rng = np.random.default_rng(seed)
    return frame.with_columns(pl.Series("weight", np.where(rng.random(frame.height) < 0.4, 3.0, 1.0)))


# --- weights -----------------------------------------------------------------------------


def test_a_weighted_battle_counts_like_repeated_battles_in_the_fit():
    frame = weighted(simulate(TRUTH, 3000, seed=1, questions=200), seed=2)
    repeated = frame.select(pl.all().repeat_by(pl.col("weight").cast(pl.Int64)).explode()).drop("weight")
    assert repeated.height == int(frame["weight"].sum())
    assert ratings_of(leaderboard(frame, bootstrap=0)) == pytest.approx(ratings_of(leaderboard(repeated, bootstrap=0)),
                                                                       abs=1e-6)


def test_the_battle_bootstrap_resamples_a_weighted_battle_as_one_battle():
    frame = simulate(TRUTH, 3000, seed=3, questions=300)
    tripled = frame.with_columns(pl.lit(3.0).alias("weight"))
    repeated = pl.concat([frame] * 3)
    for unit in ("battle", "prompt"):
        plain = leaderboard(frame, bootstrap=100, bootstrap_unit=unit, seed=4)
        heavy = leaderboard(tripled, bootstrap=100, bootstrap_unit=unit, seed=4)
        # weight 3 on every battle changes nothing in the maximum likelihood ratings, and the
        # resamples draw the same battles: the same intervals
        for column in ("rating", "ci_low", "ci_high"):
            assert heavy[column].to_list() == pytest.approx(plain[column].to_list(), abs=1e-4)
    # three copies resampled as independent battles claim sqrt(3) times more precision
    width = {name: (board["ci_high"] - board["ci_low"]).mean()
             for name, board in (("weighted", leaderboard(tripled, bootstrap=200, seed=5)),
                                 ("repeated", leaderboard(repeated, bootstrap=200, seed=5)))}
    assert 1.4 < width["weighted"] / width["repeated"] < 2.1


def test_every_weighted_bootstrap_replicate_is_the_fit_of_its_resample():
    from arena_dagster.ratings.battles import encode_battles
    from arena_dagster.ratings.resampling import draw_counts

    frame = weighted(simulate(TRUTH, 1500, seed=6), seed=7)
    replicates = fit(frame, bootstrap=5, seed=8).bootstrap_strength
    cells = encode_battles(frame)
    counts = draw_counts(cells.count, None, 5, "battle", np.random.default_rng(8))
    models = cells.models
    for replicate, drawn in zip(replicates, counts):
        rows = pl.DataFrame({
            "model_a": [models[i] for i in cells.pair_lo], "model_b": [models[i] for i in cells.pair_hi],
            "winner": [("model_b", "tie", "model_a")[o] for o in cells.outcome], "weight": drawn * cells.weight,
        }).filter(pl.col("weight") > 0)
        expected = fit(rows).strength
        assert replicate * ELO_PER_NAT == pytest.approx(expected * ELO_PER_NAT, abs=2e-3)


@pytest.mark.parametrize(("weights", "message"), [
    ([1.0, None], r"row 1: weight None is not a finite number above 0"),
    ([1.0, -2.0], r"row 1: weight -2.0"),
    ([0.0, 1.0], r"row 0: weight 0.0"),
    ([1.0, float("nan")], r"row 1: weight nan"),
    (["1", "3"], "must hold numbers"),
])
def test_bad_weights_name_the_row(weights, message):
    frame = pl.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "a"], "winner": ["model_a", "tie"], "weight": weights})
    with pytest.raises(BattlesInputError, match=message):
        leaderboard(frame, bootstrap=0)


# --- the anchor only shifts the scale ----------------------------------------------------


def test_ranks_intervals_and_separability_do_not_depend_on_the_anchor():
    frame = weighted(simulate(TRUTH, 4000, seed=9, questions=400), seed=10)
    boards = {anchor: rate(frame, anchor=anchor, bootstrap=100, bootstrap_unit="prompt", seed=1).board
              for anchor in (None, "alpha=1000", "delta=1500", "zeta=0")}
    free = boards[None]
    for anchor, board in boards.items():
        assert board["model"].to_list() == free["model"].to_list()
        assert board["rank"].to_list() == free["rank"].to_list()
        shift = board["rating"] - free["rating"]
        assert shift.to_list() == pytest.approx([shift[0]] * board.height, abs=1e-9)  # one constant
        for column in ("ci_low", "ci_high"):
            assert (board[column] - board["rating"]).to_list() == pytest.approx(
                (free[column] - free["rating"]).to_list(), abs=1e-9)
        assert alignment(board, free)["separability"] == alignment(free, free)["separability"]
        if anchor:
            name, value = anchor.split("=")
            row = board.filter(pl.col("model") == name).row(0, named=True)
            assert row["rating"] == pytest.approx(float(value))
            assert row["ci_low"] < row["rating"] < row["ci_high"]  # a real interval
    assert free["rank"].to_list()[:2] == [1, 2]  # 70 Elo apart with 4000 battles: separated


# --- win rate against a baseline ---------------------------------------------------------


def test_win_rate_is_the_predicted_rate_against_the_baseline_from_the_same_replicates():
    frame = simulate(TRUTH, 3000, seed=11, questions=300)
    board = rate(frame, baseline="eps", anchor="alpha=1200", bootstrap=100, seed=2).board
    rating = ratings_of(board)
    rows = {row["model"]: row for row in board.iter_rows(named=True)}
    for name, row in rows.items():
        assert row["win_rate"] == pytest.approx(1 / (1 + 10 ** ((rating["eps"] - rating[name]) / 400)))
        assert row["win_rate_low"] <= row["win_rate"] <= row["win_rate_high"]
    assert (rows["eps"]["win_rate"], rows["eps"]["win_rate_low"], rows["eps"]["win_rate_high"]) == (0.5, 0.5, 0.5)
    replicates = fit(frame, bootstrap=100, seed=2).bootstrap_strength * ELO_PER_NAT
    models = sorted(TRUTH)
    gap = replicates[:, models.index("alpha")] - replicates[:, models.index("eps")]
    expected = np.percentile(1 / (1 + 10 ** (-gap / 400)), [2.5, 97.5])
    assert (rows["alpha"]["win_rate_low"], rows["alpha"]["win_rate_high"]) == pytest.approx(tuple(expected))
    assert "win_rate" not in leaderboard(frame, bootstrap=0).columns
    no_bootstrap = leaderboard(frame, baseline="eps", bootstrap=0)
    assert no_bootstrap["win_rate_low"].null_count() == no_bootstrap.height
    with pytest.raises(RatingsError, match="baseline model 'nobody' has no battles"):
        leaderboard(frame, baseline="nobody", bootstrap=0)


def test_against_a_single_baseline_the_win_rate_is_the_observed_weighted_score():
    rng = np.random.default_rng(12)
    rows = []
    for model, p in (("x", 0.8), ("y", 0.55), ("z", 0.2)):
        for game in range(400):
            outcome = rng.choice(["model_a", "model_b", "tie"], p=[p * 0.8, (1 - p) * 0.8, 0.2])
            rows.append({"model_a": model, "model_b": "base", "winner": outcome,
                         "weight": 3.0 if rng.random() < 0.3 and outcome != "tie" else 1.0})
    frame = pl.DataFrame(rows)
    board = rate(frame, baseline="base", bootstrap=0).board
    for model in ("x", "y", "z"):
        games = frame.filter(pl.col("model_a") == model)
        won = (games["weight"] * games["winner"].replace_strict({"model_a": 1.0, "model_b": 0.0, "tie": 0.5})).sum()
        assert board.filter(pl.col("model") == model)["win_rate"][0] == pytest.approx(won / games["weight"].sum(),
                                                                                      abs=1e-7)


# --- unbounded ratings -------------------------------------------------------------------


def test_a_model_that_never_lost_is_flagged_in_the_board_and_beside_it():
    frame = pl.concat([battles(("champ", "a", "model_a", 30), ("b", "champ", "model_b", 30)),
                       simulate({"a": 1000, "b": 1000}, 200, seed=3)])
    with pytest.warns(RatingsWarning, match=r"never lost or tied: \['champ'\]"):
        result = rate(frame, bootstrap=20)
    assert result.unbounded == ["champ"]
    assert dict(zip(result.board["model"], result.board["unbounded"])) == {"champ": True, "a": False, "b": False}
    assert "champ" in result.unbounded_reason and result.summary()["unbounded"] == ["champ"]
    assert rating_difference(frame, "champ", "a", bootstrap=20, bootstrap_unit="battle")["unbounded"] is True
    assert rating_difference(frame, "a", "b", bootstrap=20, bootstrap_unit="battle")["unbounded"] is False


def test_two_groups_that_never_lost_to_each_other_flag_every_model():
    frame = pl.concat([simulate({"a": 1000, "b": 1000}, 100, seed=1), simulate({"c": 1000, "d": 1000}, 100, seed=2),
                       battles(("a", "c", "model_a", 5), ("d", "b", "model_b", 5))])
    with pytest.warns(RatingsWarning):
        result = rate(frame, bootstrap=0)
    assert result.unbounded == ["a", "b", "c", "d"]
    assert math.isfinite(result.board["rating"].max())


def test_paired_ranks_are_the_same_when_formed_in_chunks(monkeypatch):
    from arena_dagster.ratings import board

    rng = np.random.default_rng(13)
    replicates = rng.normal(scale=0.3, size=(40, 9)) + np.linspace(0, 2, 9)
    whole = board.paired_ranks(replicates.mean(axis=0), replicates)
    monkeypatch.setattr(board, "_CHUNK_VALUES", 50)  # one model's differences at a time
    assert board.paired_ranks(replicates.mean(axis=0), replicates).tolist() == whole.tolist()
    assert whole.tolist()[-1] == 1 and whole.tolist()[0] > 1
