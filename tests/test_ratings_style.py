"""Style control on constructed arenas whose true style effect is known."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from arena_dagster.ratings import (
    BattlesInputError,
    RatingsError,
    answer_style,
    fit_style,
    rate,
    rating_difference,
    read_fastchat_battles,
    with_style_features,
)

ELO_PER_NAT = 400 / math.log(10)
MODELS = ["concise", "plain", "verbose", "weak", "wordy"]
THETA = np.array([0.5, 0.2, 0.0, -0.5, -0.2])  # true strengths (natural-log odds) without style
MEDIAN_LENGTH = np.array([150, 300, 900, 300, 1500])
HEADER_RATE = np.array([0.2, 0.5, 3.0, 0.5, 1.0])
BETA = {"length": 0.6, "header_count": 0.25}  # log-odds per root mean square of the normalised difference


def normalised(x_a, x_b):
    return (x_a - x_b) / (x_a + x_b + 1.0)


def styled_arena(n: int, seed: int, beta=BETA) -> pl.DataFrame:
    """Battles drawn from style-controlled Bradley-Terry: a model's answers vary in length
    (log-normal around its median) and headers, and the judge rewards both by `beta`."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(MODELS), n)
    b = (a + rng.integers(1, len(MODELS), n)) % len(MODELS)
    length = [np.round(MEDIAN_LENGTH[m] * np.exp(rng.normal(0, 0.7, n))) for m in (a, b)]
    headers = [rng.poisson(HEADER_RATE[m]) for m in (a, b)]
    f_length, f_headers = normalised(*length), normalised(*headers)
    eta = (THETA[a] - THETA[b] + beta["length"] * f_length / np.sqrt(np.mean(f_length**2))
           + beta["header_count"] * f_headers / np.sqrt(np.mean(f_headers**2)))
    u = rng.random(n)
    p_a = 1 / (1 + np.exp(-eta))
    winner = np.where(u < p_a, "model_a", "model_b")
    names = np.array(MODELS)
    return pl.DataFrame({
        "question_id": rng.integers(0, n // 10, n).astype(str), "model_a": names[a], "model_b": names[b],
        "winner": winner, "length_a": length[0], "length_b": length[1], "header_count_a": headers[0],
        "header_count_b": headers[1], "list_count_a": rng.poisson(2, n), "list_count_b": rng.poisson(2, n),
        "bold_count_a": np.zeros(n, dtype=np.int64), "bold_count_b": np.zeros(n, dtype=np.int64),
    })


def true_ratings() -> dict[str, float]:
    elo = THETA * ELO_PER_NAT
    return dict(zip(MODELS, elo - elo.mean() + 1000))


def test_answer_style_counts_markdown_outside_code_blocks():
    text = (
        "# Title\n\nSome **bold** words and __more__.\n\n## Steps\n1. first\n2. second\n- a bullet\n  * nested\n"
        "```python\n# not a header\n- not a list\n**not bold**\n```\n#not a header either\n"
    )
    style = answer_style(text)
    assert style == {"length": style["length"], "header_count": 2, "list_count": 4, "bold_count": 2}
    assert answer_style("one, two three.")["length"] == 5  # words and punctuation
    assert answer_style("") == {"length": 0, "header_count": 0, "list_count": 0, "bold_count": 0}


def test_style_features_come_from_the_answer_texts():
    battles = pl.DataFrame({"question_id": ["q1", "q1"], "model_a": ["x", "y"], "model_b": ["y", "z"],
                            "winner": ["model_a", "tie"]})
    answers = pl.DataFrame({"question_id": ["q1"] * 3, "model": ["x", "y", "z"],
                            "answer": ["# H\n- a\n- b", "plain words here", "**b**"]})
    out = with_style_features(battles, answers)
    assert out.select("header_count_a", "list_count_a", "length_b", "bold_count_b").rows() == [(1, 2, 3, 0), (0, 0, 5, 1)]
    with pytest.raises(BattlesInputError, match=r"1 battle\(s\) have no answer .* 'y' vs 'z'"):
        with_style_features(battles, answers.filter(pl.col("model") != "z"))


def test_recovers_the_true_style_effect_and_the_style_free_ratings():
    frame = styled_arena(40_000, seed=1)
    result = rate(frame, bootstrap=100, style_control=["length", "header_count"], seed=2)
    coefficients = {row["feature"]: row for row in result.style_coefficients.iter_rows(named=True)}
    for feature, true in BETA.items():
        row = coefficients[feature]
        assert row["ci_low"] < true < row["ci_high"], row
        assert row["coefficient"] == pytest.approx(true, abs=0.08)
    truth = true_ratings()
    board = {row["model"]: row for row in result.board.iter_rows(named=True)}
    for model, true in truth.items():
        assert board[model]["ci_low_sc"] - 5 < true < board[model]["ci_high_sc"] + 5, (model, board[model])
    # the raw board credits the long, formatted answers: "verbose" (true 3rd) looks best
    assert board["verbose"]["rating"] - truth["verbose"] > 60
    assert abs(board["verbose"]["rating_sc"] - truth["verbose"]) < 25
    assert max(board, key=lambda m: board[m]["rating"]) == "verbose"
    assert max(board, key=lambda m: board[m]["rating_sc"]) == "concise"


def test_no_style_effect_gives_coefficients_near_zero_and_the_raw_ratings():
    frame = styled_arena(20_000, seed=3, beta={"length": 0.0, "header_count": 0.0})
    result = rate(frame, bootstrap=50, style_control="style", seed=4)
    for row in result.style_coefficients.iter_rows(named=True):
        if row["feature"] == "bold_count":  # never varies in this arena: not estimable
            assert row["coefficient"] is None and row["rms"] == 0
        else:  # beside the 0.6 and 0.25 of the arenas above
            assert abs(row["coefficient"]) < 0.1, row
    diff = (result.board["rating"] - result.board["rating_sc"]).abs().max()
    assert diff < 20


def test_the_style_fit_is_the_maximum_likelihood_of_an_independent_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    frame = styled_arena(6000, seed=5)
    styled = fit_style(frame, ["length", "header_count"])
    index = {m: i for i, m in enumerate(MODELS)}
    a = frame["model_a"].replace_strict(index).to_numpy()
    b = frame["model_b"].replace_strict(index).to_numpy()
    x = np.zeros((frame.height, len(MODELS) + 2))
    x[np.arange(frame.height), a] = 1.0
    x[np.arange(frame.height), b] = -1.0
    for k, feature in enumerate(("length", "header_count")):
        f = normalised(frame[f"{feature}_a"].to_numpy().astype(float), frame[f"{feature}_b"].to_numpy().astype(float))
        x[:, len(MODELS) + k] = f / np.sqrt(np.mean(f**2))
    y = (frame["winner"] == "model_a").to_numpy()
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000).fit(x, y)
    theta = model.coef_[0][: len(MODELS)]
    assert styled.strength == pytest.approx(theta - theta.mean(), abs=1e-5)
    assert styled.coefficients == pytest.approx(model.coef_[0][len(MODELS):], abs=1e-5)


def test_style_control_with_weights_and_a_prompt_bootstrap_is_reproducible():
    frame = styled_arena(3000, seed=6).with_columns(
        pl.Series("weight", np.where(np.arange(3000) % 4 == 0, 3.0, 1.0)))
    first = rate(frame, bootstrap=30, bootstrap_unit="prompt", style_control="length", seed=7)
    again = rate(frame, bootstrap=30, bootstrap_unit="prompt", style_control="length", seed=7)
    assert first.board.equals(again.board) and first.style_coefficients.equals(again.style_coefficients)
    repeated = frame.select(pl.all().repeat_by(pl.col("weight").cast(pl.Int64)).explode()).drop("weight")
    assert fit_style(frame, "length").strength == pytest.approx(fit_style(repeated, "length").strength, abs=1e-8)


def test_rating_difference_can_use_the_style_controlled_ratings():
    frame = styled_arena(8000, seed=8)
    board = rate(frame, bootstrap=0, style_control="style").board
    rating = dict(zip(board["model"], board["rating_sc"]))
    result = rating_difference(frame, "concise", "verbose", bootstrap=40, style_control="style")
    assert result["diff"] == pytest.approx(rating["concise"] - rating["verbose"])
    assert result["style_control"] == ["length", "header_count", "list_count", "bold_count"]
    assert result["ci_low"] < result["diff"] < result["ci_high"]
    raw = rating_difference(frame, "concise", "verbose", bootstrap=0)
    assert raw["diff"] < result["diff"] - 50  # the raw difference favours the verbose model


def test_style_control_needs_the_style_columns():
    frame = styled_arena(500, seed=9)
    with pytest.raises(BattlesInputError, match=r"style control needs columns \['length_a', 'length_b'\]"):
        rate(frame.drop("length_a", "length_b"), bootstrap=0, style_control="length")
    with pytest.raises(BattlesInputError, match="row 3: style feature length_b is -1"):
        rate(frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(-1).otherwise(pl.col("length_b"))
                                .alias("length_b")), bootstrap=0, style_control="length")
    with pytest.raises(RatingsError, match="style_control must be one of"):
        rate(frame, style_control="colour")
    with pytest.raises(RatingsError, match="distinct names"):
        rate(frame, style_control=["length", "length"])


def test_fastchat_conv_metadata_feeds_style_control(tmp_path):
    frame = styled_arena(2000, seed=10)
    records = [
        {"question_id": r["question_id"], "model_a": r["model_a"], "model_b": r["model_b"], "winner": r["winner"],
         "conv_metadata": {
             "sum_assistant_a_tokens": r["length_a"], "sum_assistant_b_tokens": r["length_b"],
             "header_count_a": {"h1": r["header_count_a"], "h2": 0}, "header_count_b": {"h1": 0, "h2": r["header_count_b"]},
             "list_count_a": {"ordered": r["list_count_a"], "unordered": 0},
             "list_count_b": {"ordered": 0, "unordered": r["list_count_b"]},
             "bold_count_a": {"**": 0, "__": 0}, "bold_count_b": {"**": 0, "__": 0}}}
        for r in frame.iter_rows(named=True)
    ]
    path = tmp_path / "clean_battle.json"
    path.write_text(json.dumps(records))
    battles, rejected = read_fastchat_battles(path)
    assert rejected == {}
    assert battles["header_count_b"].to_list() == frame["header_count_b"].cast(pl.Float64).to_list()
    expected = fit_style(frame, "style")
    assert fit_style(battles, "style").strength == pytest.approx(expected.strength, abs=1e-9)
