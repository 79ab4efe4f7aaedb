"""Real judge output in arena-hard's format (ko-arena-hard-v0.1: 76 models judged against
claude-3.7-sonnet on 500 questions, two games each, by an ensemble of three LLM judges)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from arena_dagster.cli import main
from arena_dagster.ratings import alignment, rate
from arena_dagster.ratings.judgments import read_arena_hard

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JUDGMENTS = SHARED / "ko-arena-hard-v0.1" / "model_judgment" / "ensemble"
BASELINE = "claude-3.7-sonnet"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not JUDGMENTS.is_dir(), reason=f"shared data absent: needs {JUDGMENTS}"),
]


def independent_ratings() -> dict[str, float]:
    """Ratings with the baseline at 1000 by a logistic regression written apart from the package:
    its own reading of the files (game 1 shows the baseline as A; >> weighs 3; a tie is half a
    win each), one weighted row per (model, won/lost), scikit-learn unpenalised."""
    from sklearn.linear_model import LogisticRegression

    points_of_model_as_a = {"A>>B": (1.0, 3), "A>B": (1.0, 1), "A=B": (0.5, 1), "B>A": (0.0, 1), "B>>A": (0.0, 3)}
    won: dict[str, float] = {}
    played: dict[str, float] = {}
    for path in JUDGMENTS.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["model"] == BASELINE or len(row["games"]) != 2:
                continue
            for game, seen_from_model in ((row["games"][0], False), (row["games"][1], True)):
                score, weight = points_of_model_as_a[game["score"]]
                won[row["model"]] = won.get(row["model"], 0.0) + weight * (score if seen_from_model else 1 - score)
                played[row["model"]] = played.get(row["model"], 0.0) + weight
    models = sorted(won)
    x = np.vstack([np.eye(len(models)), np.eye(len(models))])  # the baseline's strength is 0
    y = np.r_[np.ones(len(models)), np.zeros(len(models))]
    weight = np.r_[[won[m] for m in models], [played[m] - won[m] for m in models]]
    fitted = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000).fit(x, y, sample_weight=weight)
    ratings = {m: 1000 + 400 / math.log(10) * c for m, c in zip(models, fitted.coef_[0])}
    # a check of the check: against one baseline the fit is the log-odds of the score share
    for m in models:
        share = won[m] / played[m]
        assert ratings[m] == pytest.approx(1000 + 400 * math.log10(share / (1 - share)), abs=2e-3)
    return {**ratings, BASELINE: 1000.0}


def test_the_command_rates_the_judgments_like_an_independent_fit(capsys):
    code = main(["leaderboard", "--battles", str(JUDGMENTS), "--input-format", "arena-hard", "--baseline", BASELINE,
                 "--anchor", f"{BASELINE}=1000", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["models"]) == 76
    assert report["rejected"] == {"baseline_vs_itself": 500, "missing_game": 1}  # o4-mini-high, one game
    assert report["unbounded"] == [] and report["battles"] == 74_998
    assert report["total_weight"] == 142_616  # + the baseline's 1000 self-games = arena-hard's 143,616
    expected = independent_ratings()
    ours = {row["model"]: row["rating"] for row in report["models"]}
    assert ours.keys() == expected.keys()
    assert max(abs(ours[m] - expected[m]) for m in ours) < 0.01
    for row in report["models"]:
        assert 0 < row["win_rate_low"] <= row["win_rate"] <= row["win_rate_high"] < 1
        assert row["win_rate"] == pytest.approx(1 / (1 + 10 ** ((1000 - row["rating"]) / 400)))


def test_ranks_and_interval_widths_do_not_depend_on_the_anchor():
    battles, _ = read_arena_hard(JUDGMENTS, baseline=BASELINE)
    boards = [rate(battles, anchor=anchor, baseline=BASELINE, bootstrap=100, seed=0).board
              for anchor in (f"{BASELINE}=1000", "llama-3.1-8b-instruct=1000", "o3-high=1500")]
    first = boards[0]
    for board in boards[1:]:
        assert board["model"].to_list() == first["model"].to_list()
        assert board["rank"].to_list() == first["rank"].to_list()
        for low, high in (("ci_low", "ci_high"), ("win_rate_low", "win_rate_high")):
            assert (board[high] - board[low]).to_list() == pytest.approx((first[high] - first[low]).to_list(), abs=1e-6)
        assert board["win_rate"].to_list() == pytest.approx(first["win_rate"].to_list())
        assert alignment(board, first)["separability"] == pytest.approx(alignment(first, first)["separability"])
    anchored = first.filter(pl.col("model") == BASELINE).row(0, named=True)
    assert anchored["ci_low"] < 1000 < anchored["ci_high"]  # the anchor's interval is a real one
    assert first["rank"].n_unique() > 30
