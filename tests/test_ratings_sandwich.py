"""Sandwich (robust) intervals: the covariance against a direct NumPy computation, the board's
intervals, ranks and win rates from it, the paired difference of the gate, and the command."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import polars as pl
import pytest

from arena_dagster.commands import leaderboard as cli
from arena_dagster.ratings import rate, rating_difference
from arena_dagster.ratings.bradley_terry import fit
from arena_dagster.ratings.sandwich import Z_95
from arena_dagster.ratings.style import fit_style

PER_UNIT = 400 / math.log(10)


def random_battles(n=600, m=5, questions=60, seed=1, weights=False, style=False):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    strength = rng.normal(0, 0.8, m)
    p = 1 / (1 + np.exp(-(strength[a] - strength[b])))
    winner = np.where(rng.random(n) < 0.2, "tie", np.where(rng.random(n) < p, "model_a", "model_b")).astype(object)
    winner[rng.random(n) < 0.05] = "tie (bothbad)"
    names = np.array([f"m{i}" for i in range(m)])
    frame = pl.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winner,
                          "question_id": rng.integers(0, questions, n).astype(str)})
    if weights:
        frame = frame.with_columns(pl.Series("weight", np.where(rng.random(n) < 0.3, 3.0, 1.0)))
    if style:
        frame = frame.with_columns(pl.Series("length_a", rng.integers(10, 400, n).astype(float)),
                                   pl.Series("length_b", rng.integers(10, 400, n).astype(float)))
    return frame


def direct_covariance(frame: pl.DataFrame, strength: np.ndarray, models: list[str], unit: str,
                      features: np.ndarray | None = None, beta: np.ndarray | None = None) -> np.ndarray:
    """H^+ S H^+ summed battle by battle (or prompt by prompt), as the textbook writes it."""
    index = {name: i for i, name in enumerate(models)}
    a = np.array([index[x] for x in frame["model_a"]])
    b = np.array([index[x] for x in frame["model_b"]])
    n, m = frame.height, len(models)
    x = np.zeros((n, m))
    x[np.arange(n), a], x[np.arange(n), b] = 1.0, -1.0
    params = strength
    if features is not None:
        x, params = np.hstack([x, features]), np.concatenate([strength, beta])
    weight = frame["weight"].to_numpy() if "weight" in frame.columns else np.ones(n)
    y = np.select([frame["winner"].to_numpy() == "model_a", frame["winner"].to_numpy() == "model_b"], [1.0, 0.0], 0.5)
    p = 1 / (1 + np.exp(-(x @ params)))
    hessian = (x * (weight * p * (1 - p))[:, None]).T @ x
    scores = x * (weight * (y - p))[:, None]
    if unit == "prompt":
        _, cluster = np.unique(frame["question_id"].to_numpy(), return_inverse=True)
        summed = np.zeros((cluster.max() + 1, x.shape[1]))
        np.add.at(summed, cluster, scores)
        scores = summed
    inverse = np.linalg.pinv(hessian)
    return inverse @ (scores.T @ scores) @ inverse


@pytest.mark.parametrize("unit", ["battle", "prompt"])
@pytest.mark.parametrize("weights", [False, True])
def test_sandwich_covariance_matches_a_direct_numpy_computation(unit, weights):
    frame = random_battles(weights=weights)
    result = fit(frame, sandwich=unit)
    expected = direct_covariance(frame, result.strength, result.models, unit)
    assert np.allclose(result.covariance, expected, rtol=1e-6, atol=1e-10)
    assert np.allclose(result.covariance.sum(axis=1), 0, atol=1e-10)  # strengths against their mean


def test_style_controlled_sandwich_matches_a_direct_numpy_computation():
    frame = random_battles(n=800, style=True)
    styled = fit_style(frame, "length", sandwich="battle")
    raw = ((frame["length_a"] - frame["length_b"]) / (frame["length_a"] + frame["length_b"] + 1)).to_numpy()
    rms = np.sqrt((raw * raw).mean())
    expected = direct_covariance(frame, styled.strength, styled.models, "battle", (raw / rms)[:, None],
                                 styled.coefficients)
    assert np.allclose(styled.covariance, expected[:5, :5], rtol=1e-6, atol=1e-10)
    assert styled.coefficient_sd[0] == pytest.approx(math.sqrt(expected[5, 5]), rel=1e-6)


def test_board_intervals_ranks_and_win_rates_come_from_the_covariance():
    frame = random_battles(n=3000, m=6, seed=3)
    result = fit(frame, sandwich="battle")
    ratings = rate(frame, ci="sandwich", anchor="m0=1200", baseline="m1")
    board = ratings.board.sort("model")
    se = np.sqrt(np.diag(result.covariance)) * PER_UNIT
    assert np.allclose((board["ci_high"] - board["ci_low"]).to_numpy(), 2 * Z_95 * se)
    assert np.allclose((board["ci_high"] + board["ci_low"]).to_numpy() / 2, board["rating"].to_numpy())
    assert board.filter(pl.col("model") == "m0")["rating"][0] == pytest.approx(1200)
    assert ratings.settings["ci"] == "sandwich"
    baseline = board.filter(pl.col("model") == "m1").row(0, named=True)
    assert baseline["win_rate"] == baseline["win_rate_low"] == baseline["win_rate_high"] == pytest.approx(0.5)
    # paired ranks: i above j when its difference minus z standard errors of the difference is above 0
    s, c = result.strength, result.covariance
    for j in range(6):
        above = sum((s[i] - s[j]) - Z_95 * math.sqrt(c[i, i] + c[j, j] - 2 * c[i, j]) > 0 for i in range(6))
        assert board["rank"][j] == 1 + above
    # a win-rate interval is the rating gap's interval mapped through the win-rate curve
    row = board.filter(pl.col("model") == "m2").row(0, named=True)
    sd = math.sqrt(c[2, 2] + c[1, 1] - 2 * c[2, 1]) * PER_UNIT
    gap = row["rating"] - baseline["rating"]
    assert row["win_rate_low"] == pytest.approx(1 / (1 + 10 ** (-(gap - Z_95 * sd) / 400)))
    # the bootstrap measures the same spread on a large sample
    booted = rate(frame, bootstrap=400).board.sort("model")
    ratio = (booted["ci_high"] - booted["ci_low"]) / (board["ci_high"] - board["ci_low"])
    assert ratio.min() > 0.8 and ratio.max() < 1.25


def test_paired_difference_for_the_gate_is_cluster_robust_by_prompt():
    frame = random_battles(n=2000, questions=40, seed=4)
    battle = rating_difference(frame, "m0", "m1", ci="sandwich", bootstrap_unit="battle")
    prompt = rating_difference(frame, "m0", "m1", ci="sandwich", bootstrap_unit="prompt")
    result = fit(frame, sandwich="prompt")
    c = result.covariance
    sd = math.sqrt(c[0, 0] + c[1, 1] - 2 * c[0, 1]) * PER_UNIT
    assert prompt["sd"] == pytest.approx(sd)
    assert prompt["ci_low"] == pytest.approx(prompt["diff"] - Z_95 * sd)
    assert prompt["diff"] == battle["diff"] and prompt["n_bootstrap"] == 0 and prompt["ci"] == "sandwich"
    # every battle of a prompt copied three times: the prompt unit sees one prompt, the battle unit three battles
    tripled = pl.concat([frame] * 3)
    assert rating_difference(tripled, "m0", "m1", ci="sandwich", bootstrap_unit="prompt")["sd"] == pytest.approx(
        sd, rel=1e-6)
    assert rating_difference(tripled, "m0", "m1", ci="sandwich", bootstrap_unit="battle")["sd"] == pytest.approx(
        battle["sd"] / math.sqrt(3), rel=1e-6)


def test_unknown_interval_method_is_refused():
    with pytest.raises(ValueError, match="ci must be one of"):
        rate(random_battles(), ci="jackknife")


# --- the command ---------------------------------------------------------------------------


def parser():
    p = argparse.ArgumentParser(prog="arena-dagster leaderboard")
    p.add_argument("--json", action="store_true")
    cli.add_arguments(p)
    return p


def test_command_prints_sandwich_intervals(tmp_path, capsys):
    path = tmp_path / "battles.json"
    frame = random_battles(n=1000)
    path.write_text(json.dumps(frame.select("model_a", "model_b", "winner", "question_id").to_dicts()))
    assert cli.run(parser().parse_args(["--battles", str(path), "--ci", "sandwich", "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    expected = rate(frame.select("model_a", "model_b", "winner"), ci="sandwich").board
    assert [row["ci_low"] for row in report["models"]] == pytest.approx(expected["ci_low"].to_list())
    assert report["ci"] == "sandwich"
    assert cli.run(parser().parse_args(["--battles", str(path), "--ci", "sandwich", "--bootstrap", "50"])) == 2
    assert capsys.readouterr().err.splitlines() == [
        "arena-dagster: --bootstrap 50 does not apply with --ci sandwich (its intervals come from the fit's "
        "covariance, not from resampling): drop --bootstrap, or use --ci bootstrap"]


@pytest.mark.parametrize("ci", ["bootstrap", "sandwich"])
def test_models_with_identical_results_share_a_rank(ci):
    # b, c and d lose to a on every prompt and tie each other: the battles cannot tell them apart, and the
    # solver's tolerance between their replicate ratings must not rank one above another
    rows = []
    for q in range(12):
        rows += [("a", x, "model_a" if q % 4 else "tie", str(q)) for x in "bcd"]
        rows += [("b", "c", "tie", str(q)), ("c", "d", "tie", str(q)), ("b", "d", "tie", str(q))]
    frame = pl.DataFrame(rows, schema=["model_a", "model_b", "winner", "question_id"], orient="row")
    board = rate(frame, bootstrap=50, bootstrap_unit="prompt", ci=ci).board
    assert dict(zip(board["model"], board["rank"])) == {"a": 1, "b": 2, "c": 2, "d": 2}


@pytest.mark.parametrize("ci, words", [("bootstrap", "95% bootstrap interval over test prompts"),
                                       ("sandwich", "95% sandwich (robust covariance) interval, test prompts")])
def test_the_ui_and_the_plot_name_the_interval_method(ci, words, monkeypatch):
    from arena_dagster import plots
    from arena_dagster.defs.leaderboards import leaderboard_table, rate_categories
    from arena_dagster.ratings.sandwich import interval_description

    frame = random_battles(seed=4)
    board = rate(frame, ci=ci, bootstrap=20, anchor="m0=1000").board
    interval = interval_description(ci, "prompt")
    column = {c.name: c.description for c in leaderboard_table(board, interval).schema.columns}["ci_95"]
    assert column == words + ("" if ci == "bootstrap" else " as the independent units")
    testset = pl.DataFrame({"prompt_id": [str(q) for q in range(60)], "family": ["a", "b"] * 30})
    by_category = rate_categories(frame, testset, {"ci": ci, "bootstrap_unit": "prompt", "bootstrap": 20, "anchor": "m0=1000"})
    columns = by_category["metadata"]["leaderboard_by_category"].schema.columns
    assert {c.name: c.description for c in columns}["ci_95"] == column
    monkeypatch.setattr(plots, "_png", lambda fig: fig.axes[0].get_xlabel().encode())  # the figure's axis, not its pixels
    assert plots.leaderboard_png(board, interval=interval).decode() == f"Bradley-Terry rating (Elo scale), {column}"
