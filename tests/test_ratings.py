"""Bradley-Terry fit, bootstrap, online Elo, win rates and alignment on cases with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
import pytest

from arena_dagster.ratings import (
    BattlesInputError,
    DisconnectedComparisonsError,
    RatingsError,
    RatingsWarning,
    alignment,
    fit,
    leaderboard,
    online_elo,
    predicted_win_rate,
    rating_difference,
    win_rate_matrix,
)
from arena_dagster.ratings.battles import encode_battles
from arena_dagster.ratings.resampling import categorical as _categorical, draw_counts, multinomial as _multinomial

ELO_PER_NAT = 400 / math.log(10)


def battles(*groups: tuple[str, str, str, int], question_ids: bool = False) -> pl.DataFrame:
    """(model_a, model_b, winner, count) groups -> a battles table."""
    rows = [(a, b, w) for a, b, w, n in groups for _ in range(n)]
    frame = pl.DataFrame(rows, schema={"model_a": pl.String, "model_b": pl.String, "winner": pl.String}, orient="row")
    if question_ids:
        frame = frame.with_columns(pl.format("q{}", pl.int_range(pl.len())).alias("question_id"))
    return frame


def simulate(strength: dict[str, float], n: int, seed: int, *, questions: int | None = None) -> pl.DataFrame:
    """Battles among models with the given Elo ratings, drawn from the Bradley-Terry model itself."""
    rng = np.random.default_rng(seed)
    names = np.array(sorted(strength))
    rating = np.array([strength[name] for name in names])
    a = rng.integers(0, len(names), n)
    b = (a + rng.integers(1, len(names), n)) % len(names)
    p_a = 1 / (1 + 10 ** ((rating[b] - rating[a]) / 400))
    winner = np.where(rng.random(n) < p_a, "model_a", "model_b")
    frame = pl.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winner})
    if questions:
        frame = frame.with_columns(pl.Series("question_id", rng.integers(0, questions, n)))
    return frame


def ratings_of(board: pl.DataFrame) -> dict[str, float]:
    return dict(zip(board["model"].to_list(), board["rating"].to_list()))


def reference_mle(frame: pl.DataFrame) -> dict[str, float]:
    """Maximum likelihood over single battles with a general-purpose optimiser (no shortcuts)."""
    from scipy.optimize import minimize
    from scipy.special import log_expit

    models = sorted(set(frame["model_a"]) | set(frame["model_b"]))
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[m] for m in frame["model_a"]])
    b = np.array([index[m] for m in frame["model_b"]])
    score = np.select([frame["winner"] == "model_a", frame["winner"] == "model_b"], [1.0, 0.0], 0.5)

    def loss(theta):
        gap = theta[a] - theta[b]
        value = -(score * log_expit(gap) + (1 - score) * log_expit(-gap)).sum()
        residual = score - 1 / (1 + np.exp(-gap))
        grad = -np.bincount(a, residual, len(models)) + np.bincount(b, residual, len(models))
        return value, grad

    theta = minimize(loss, np.zeros(len(models)), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15}).x
    elo = (theta - theta.mean()) * ELO_PER_NAT + 1000
    return dict(zip(models, elo))


# --- the point estimate ------------------------------------------------------------------


def test_two_models_with_a_known_win_rate():
    board = leaderboard(battles(("A", "B", "model_a", 300), ("A", "B", "model_b", 100)), bootstrap=0)
    gap = 400 * math.log10(3)  # 3:1 odds
    assert ratings_of(board) == pytest.approx({"A": 1000 + gap / 2, "B": 1000 - gap / 2}, abs=1e-4)
    assert board.columns == ["model", "rating", "ci_low", "ci_high", "rank", "battles", "unbounded"]
    assert board["battles"].to_list() == [400, 400]
    assert board["ci_low"].to_list() == [None, None]  # no bootstrap, no interval


def test_a_tie_is_half_a_win_for_each_side():
    with_ties = battles(("A", "B", "model_a", 200), ("A", "B", "tie", 100), ("B", "A", "tie (bothbad)", 100))
    without = battles(("A", "B", "model_a", 300), ("A", "B", "model_b", 100))
    assert ratings_of(leaderboard(with_ties, bootstrap=0)) == pytest.approx(
        ratings_of(leaderboard(without, bootstrap=0)), abs=1e-6
    )


def test_anchor_pins_one_model_in_both_forms():
    frame = battles(("A", "B", "model_a", 300), ("A", "B", "model_b", 100))
    gap = 400 * math.log10(3)
    free = leaderboard(frame, bootstrap=20)
    for anchor in ("B=1114", ("B", 1114.0)):
        board = leaderboard(frame, anchor=anchor, bootstrap=20)
        assert ratings_of(board) == pytest.approx({"A": 1114 + gap, "B": 1114}, abs=1e-4)
        # the anchor only shifts the scale: its own interval is a real interval (issue 14;
        # it used to be the single point 1114), as wide as without an anchor
        row = board.filter(pl.col("model") == "B").row(0, named=True)
        assert row["ci_low"] < 1114 < row["ci_high"]
        shift = 1114 - free.filter(pl.col("model") == "B")["rating"][0]
        assert (board["ci_low"] - shift).to_list() == pytest.approx(free["ci_low"].to_list())
        assert (board["ci_high"] - shift).to_list() == pytest.approx(free["ci_high"].to_list())
    with pytest.raises(RatingsError, match="'C' has no battles"):
        leaderboard(frame, anchor="C=1000", bootstrap=0)
    with pytest.raises(RatingsError, match="MODEL=RATING"):
        leaderboard(frame, anchor="B:1000", bootstrap=0)


def test_matches_a_general_purpose_maximum_likelihood_fit_with_ties():
    rng = np.random.default_rng(3)
    frame = simulate({f"m{i}": float(r) for i, r in enumerate(rng.normal(1000, 150, 7))}, 3000, seed=4)
    frame = frame.with_columns(
        pl.when(pl.Series(rng.random(frame.height) < 0.2)).then(pl.lit("tie")).otherwise(pl.col("winner")).alias("winner")
    )
    ours = ratings_of(leaderboard(frame, bootstrap=0))
    assert ours == pytest.approx(reference_mle(frame), abs=1e-3)
    assert np.mean(list(ours.values())) == pytest.approx(1000, abs=1e-9)


def test_order_within_a_battle_does_not_matter():
    frame = simulate({"a": 1100, "b": 1000, "c": 950, "d": 900}, 2000, seed=1)
    flipped = frame.select(
        pl.col("model_b").alias("model_a"),
        pl.col("model_a").alias("model_b"),
        pl.col("winner").replace({"model_a": "model_b", "model_b": "model_a"}),
    )
    assert ratings_of(leaderboard(frame, bootstrap=0)) == pytest.approx(ratings_of(leaderboard(flipped, bootstrap=0)))


def test_categorical_columns_rate_like_strings():
    frame = simulate({"a": 1100, "b": 1000, "c": 950}, 500, seed=2)
    as_categories = frame.with_columns(pl.all().cast(pl.Categorical))
    assert ratings_of(leaderboard(as_categories, bootstrap=0)) == pytest.approx(ratings_of(leaderboard(frame, bootstrap=0)))


def test_recovers_a_known_population_within_its_intervals():
    truth = {"alpha": 1250.0, "beta": 1180.0, "gamma": 1100.0, "delta": 1040.0, "eps": 1000.0, "zeta": 930.0,
             "eta": 850.0, "theta": 760.0}
    mean = np.mean(list(truth.values()))
    board = leaderboard(simulate(truth, 20_000, seed=7), bootstrap=200, seed=1)
    inside = 0
    for row in board.iter_rows(named=True):
        true = truth[row["model"]] - mean + 1000
        half_width = (row["ci_high"] - row["ci_low"]) / 2
        assert 5 < half_width < 40
        assert abs(row["rating"] - true) < 3 * half_width, row
        inside += row["ci_low"] <= true <= row["ci_high"]
    assert inside >= 6  # 95% intervals: 7.6 of 8 expected
    assert board["model"].to_list() == sorted(truth, key=truth.get, reverse=True)


def test_rank_counts_models_above_by_their_paired_difference():
    # issue 14: i is above j when the bootstrap interval of r_i - r_j (paired: the same
    # replicate) lies above 0; it used to be when i's interval lay wholly above j's
    frame = simulate({"a": 1300, "b": 1290, "c": 1000, "d": 700}, 4000, seed=5)
    board = leaderboard(frame, bootstrap=100)
    replicates = fit(frame, bootstrap=100).bootstrap_strength * ELO_PER_NAT
    order = [sorted(set(frame["model_a"]) | set(frame["model_b"])).index(m) for m in board["model"]]
    low = np.percentile(replicates[:, :, None] - replicates[:, None, :], 2.5, axis=0)[np.ix_(order, order)]
    expected = [1 + sum(low[j, i] > 0 for j in range(len(order))) for i in range(len(order))]
    assert board["rank"].to_list() == expected
    assert expected[:2] == [1, 1] and expected[2:] == [3, 4]  # a and b are not separated; the others are


def test_a_model_that_never_loses_tops_the_board_with_a_warning():
    frame = pl.concat(
        [
            battles(("champ", "a", "model_a", 30), ("b", "champ", "model_b", 30)),
            simulate({"a": 1000, "b": 1000}, 200, seed=3),
        ]
    )
    with pytest.warns(RatingsWarning, match=r"never lost or tied: \['champ'\]"):
        board = leaderboard(frame, bootstrap=50)
    assert board["model"][0] == "champ" and board["rank"].to_list() == [1, 2, 2]
    top, runner_up = board.row(0, named=True), board.row(1, named=True)
    assert math.isfinite(top["rating"]) and math.isfinite(top["ci_high"])
    assert top["ci_low"] > runner_up["ci_high"] + 400  # unbounded by the data, held only by the ridge


def test_disconnected_comparison_graphs_are_reported_by_component():
    frame = battles(("a", "b", "model_a", 3), ("b", "a", "model_a", 2), ("c", "d", "tie", 1), ("d", "e", "model_b", 4))
    with pytest.raises(DisconnectedComparisonsError) as caught:
        leaderboard(frame)
    assert caught.value.components == [["c", "d", "e"], ["a", "b"]]
    assert isinstance(caught.value, ValueError)
    assert "{c, d, e}" in str(caught.value) and "{a, b}" in str(caught.value)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pl.DataFrame({"model_a": ["a"], "model_b": ["b"]}), r"lacks column\(s\) \['winner'\]"),
        (pl.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "a"], "winner": ["model_a", "a"]}),
         r"row 1: winner 'a' is not one of"),
        (pl.DataFrame({"model_a": ["a", None], "model_b": ["b", "a"], "winner": ["tie", "tie"]}),
         r"'model_a' has 1 null value\(s\), the first in row 1"),
        (pl.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "b"], "winner": ["tie", "tie"]}),
         r"row 1: model 'b' plays itself"),
        (pl.DataFrame(schema={"model_a": pl.String, "model_b": pl.String, "winner": pl.String}), "empty"),
        (pl.DataFrame({"model_a": [1], "model_b": [2], "winner": ["tie"]}), "must hold strings"),
    ],
)
def test_malformed_battles_name_the_problem(frame, message):
    with pytest.raises(BattlesInputError, match=message):
        leaderboard(frame, bootstrap=0)


# --- the bootstrap -----------------------------------------------------------------------


def test_bootstrap_is_reproducible_by_seed():
    frame = simulate({"a": 1100, "b": 1000, "c": 900}, 600, seed=8, questions=50)
    for unit in ("battle", "prompt"):
        first = leaderboard(frame, bootstrap=30, bootstrap_unit=unit, seed=3)
        assert first.equals(leaderboard(frame, bootstrap=30, bootstrap_unit=unit, seed=3))
        assert not first.equals(leaderboard(frame, bootstrap=30, bootstrap_unit=unit, seed=4))
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=0)
        assert leaderboard(shuffled, bootstrap=30, bootstrap_unit=unit, seed=3).equals(first)


def test_prompt_bootstrap_widens_intervals_when_battles_of_a_prompt_move_together():
    # every prompt is played 10 times with the same result: 10x fewer independent observations
    base = simulate({"a": 1100, "b": 1000, "c": 950, "d": 900}, 400, seed=9)
    base = base.with_columns(pl.format("q{}", pl.int_range(pl.len())).alias("question_id"))
    frame = pl.concat([base] * 10)
    widths = {}
    for unit in ("battle", "prompt"):
        board = leaderboard(frame, bootstrap=200, bootstrap_unit=unit)
        widths[unit] = (board["ci_high"] - board["ci_low"]).mean()
    assert 2.2 < widths["prompt"] / widths["battle"] < 4.5  # sqrt(10) = 3.2 in theory
    with pytest.raises(BattlesInputError, match="question_id"):
        leaderboard(frame.drop("question_id"), bootstrap=5, bootstrap_unit="prompt")
    with pytest.raises(RatingsError, match="bootstrap_unit"):
        leaderboard(frame, bootstrap_unit="question")


def test_multinomial_draws_are_exact_in_total_and_moments():
    rng = np.random.default_rng(0)
    counts = np.array([500, 20, 3, 1, 2000, 7000, 476])
    n = int(counts.sum())
    drawn = _multinomial(rng, n, counts, 4000)
    assert (drawn.sum(axis=1) == n).all() and (drawn >= 0).all()
    p = counts / n
    assert drawn.mean(axis=0) == pytest.approx(n * p, rel=0.02, abs=0.1)
    assert drawn.var(axis=0) == pytest.approx(n * p * (1 - p), rel=0.1)
    assert np.corrcoef(drawn[:, 4], drawn[:, 5])[0, 1] == pytest.approx(-np.sqrt(p[4] * p[5] / ((1 - p[4]) * (1 - p[5]))), abs=0.05)


def test_categorical_draws_follow_their_probabilities():
    rng = np.random.default_rng(1)
    p = np.array([0.5, 0.0, 1e-4, 0.2999, 0.0, 0.2])
    drawn = np.bincount(_categorical(rng, p, 200_000), minlength=len(p))
    assert drawn[1] == drawn[4] == 0  # an empty category is never drawn
    assert drawn / 200_000 == pytest.approx(p, abs=0.004)
    assert _multinomial(rng, 3, np.array([1, 1, 1]), 50).sum(axis=1).tolist() == [3] * 50


@pytest.mark.parametrize(("n", "models", "seed"), [(240, 6, 1), (5000, 8, 2)])
def test_every_bootstrap_replicate_is_the_maximum_likelihood_fit_of_its_resample(n, models, seed):
    from scipy.optimize import minimize
    from scipy.special import log_expit

    frame = simulate({f"m{i}": 1000 + 60 * i for i in range(models)}, n, seed=seed)
    replicates = fit(frame, bootstrap=20, seed=seed, warn=False).bootstrap_strength
    cells = encode_battles(frame)
    counts = draw_counts(cells.count, None, 20, "battle", np.random.default_rng(seed))  # the same draws
    score_lo = cells.outcome / 2.0
    for replicate, weight in zip(replicates, counts):

        def loss(theta):
            gap = theta[cells.pair_lo] - theta[cells.pair_hi]
            value = -(weight * (score_lo * log_expit(gap) + (1 - score_lo) * log_expit(-gap))).sum()
            residual = weight * (score_lo - 1 / (1 + np.exp(-gap)))
            grad = -np.bincount(cells.pair_lo, residual, models) + np.bincount(cells.pair_hi, residual, models)
            return value + 0.5e-6 * theta @ theta, grad + 1e-6 * theta

        expected = minimize(loss, np.zeros(models), jac=True, method="L-BFGS-B", options={"gtol": 1e-11, "ftol": 1e-16}).x
        assert replicate * ELO_PER_NAT == pytest.approx((expected - expected.mean()) * ELO_PER_NAT, abs=2e-3)


def test_rating_difference_is_paired():
    frame = simulate({"a": 1060, "b": 1050, "c": 900, "d": 800}, 3000, seed=11, questions=300)
    board = leaderboard(frame, bootstrap=0)
    result = rating_difference(frame, "a", "b", bootstrap=200, seed=2)
    assert result["diff"] == pytest.approx(ratings_of(board)["a"] - ratings_of(board)["b"])
    assert result["n_bootstrap"] == 200
    assert result["ci_low"] < result["diff"] < result["ci_high"]
    # the same replicates feed both ratings: the interval of the difference is the spread of
    # the paired differences, not the sum of the two separate intervals
    replicates = fit(frame, bootstrap=200, bootstrap_unit="prompt", seed=2).bootstrap_strength * ELO_PER_NAT
    paired = np.percentile(replicates[:, 0] - replicates[:, 1], [2.5, 97.5])
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(tuple(paired))
    assert rating_difference(frame, "a", "b", bootstrap=0)["ci_low"] is None
    with pytest.raises(RatingsError, match="'zz' has no battles"):
        rating_difference(frame, "a", "zz")


# --- online Elo, win rates ---------------------------------------------------------------


def test_online_elo_follows_battle_order():
    frame = battles(("a", "b", "model_a", 1), ("b", "c", "tie", 1), ("c", "a", "model_a", 1))
    expected = {"a": 1000.0, "b": 1000.0, "c": 1000.0}
    for x, y, score in (("a", "b", 1.0), ("b", "c", 0.5), ("c", "a", 1.0)):
        e = 1 / (1 + 10 ** ((expected[y] - expected[x]) / 400))
        expected[x] += 4 * (score - e)
        expected[y] -= 4 * (score - e)
    assert online_elo(frame) == pytest.approx(expected)
    assert expected["a"] == pytest.approx(1000 + 2 - 4 * (1 - 1 / (1 + 10 ** ((1002 - 1000) / 400))))
    assert online_elo(frame.reverse()) != pytest.approx(expected)
    assert online_elo(frame, k=32, init=1500)["a"] != expected["a"]


def test_win_rate_matrix_counts_ties_as_half():
    frame = battles(("a", "b", "model_a", 3), ("b", "a", "tie", 2), ("b", "c", "model_b", 1))
    matrix = win_rate_matrix(frame, order=["a", "b", "c"])
    assert matrix.columns == ["model", "a", "b", "c"]
    rows = {row["model"]: row for row in matrix.iter_rows(named=True)}
    assert rows["a"]["b"] == pytest.approx(4 / 5) and rows["b"]["a"] == pytest.approx(1 / 5)
    assert rows["c"]["b"] == 1.0 and rows["b"]["c"] == 0.0
    assert rows["a"]["c"] is None and rows["a"]["a"] is None  # never met; diagonal
    assert win_rate_matrix(frame)["model"].to_list() == ["c", "a", "b"]  # by mean over opponents met: 1.0, 0.8, 0.1


def test_predicted_win_rate_uses_base_10_scale_400():
    matrix = predicted_win_rate({"x": 1400.0, "y": 1000.0})
    rows = {row["model"]: row for row in matrix.iter_rows(named=True)}
    assert rows["x"]["y"] == pytest.approx(10 / 11) and rows["y"]["x"] == pytest.approx(1 / 11)
    assert rows["x"]["x"] == 0.5


# --- alignment ---------------------------------------------------------------------------


def board_of(rows):
    return pl.DataFrame(rows, schema=["model", "rating", "ci_low", "ci_high"], orient="row")


def test_alignment_figures_on_a_hand_made_case():
    ours = board_of([("a", 1300, 1290, 1310), ("b", 1200, 1150, 1250), ("c", 1210, 1200, 1220), ("d", 900, 890, 910),
                     ("only_ours", 1000, 990, 1010)])
    reference = pl.DataFrame({
        "model": ["a", "b", "c", "d", "only_ref"],
        "rating": [1250.0, 1220.0, 1100.0, 1000.0, 1.0],
        "rating_q025": [1240.0, 1215.0, 1090.0, 990.0, 0.0],
        "rating_q975": [1260.0, 1225.0, 1110.0, 1010.0, 2.0],
    })
    result = alignment(ours, reference)
    assert result["n_common"] == 4
    # reference order a > b > c > d; ours a > c > b > d: one discordant pair of six
    assert result["kendall"] == pytest.approx(4 / 6)
    assert result["spearman"] == pytest.approx(0.8)
    # the reference separates all six pairs; we order five of them the same way
    assert result["agreement_ci"] == pytest.approx(5 / 6)
    # our intervals: b overlaps c; the other five pairs are apart
    assert result["separability"] == pytest.approx(5 / 6)


def test_alignment_without_intervals_and_without_common_models():
    ours = pl.DataFrame({"model": ["a", "b", "c"], "rating": [3.0, 2.0, 1.0]})
    result = alignment(ours, pl.DataFrame({"model": ["c", "b", "a"], "rating": [1.0, 2.0, 3.0]}))
    assert result == {"spearman": 1.0, "kendall": 1.0, "pairs_same_order": 1.0, "agreement_ci": None,
                      "separability": None, "n_common": 3}
    with pytest.raises(RatingsError, match="only 1 model"):
        alignment(ours, pl.DataFrame({"model": ["a", "x"], "rating": [1.0, 2.0]}))


def test_the_fit_never_warns_on_an_ordinary_arena():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        leaderboard(simulate({"a": 1100, "b": 1000, "c": 900}, 3000, seed=12), bootstrap=20)
