"""The leaderboard of a real offline arena (GPT-4 grades of 11 chat models on 300 questions,
arena-bench-v1) and its agreement with the human Chatbot Arena of 2024-03-29.

The figures below are the ones this code produced; they are pinned so that any change in
the fit, the importers or the bootstrap shows up. Point ratings are deterministic; the
interval bounds depend on numpy's random streams for the seed (stable across numpy
releases so far; re-pin if a numpy upgrade changes them).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from arena_dagster.ratings import alignment, apply_rename, leaderboard, rating_difference, read_grades

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARENA = SHARED / "arena-bench-v1"
HUMAN = SHARED / "human-arena-bt-2024-03-29.csv"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not (ARENA / "model_judgment").is_dir() or not HUMAN.is_file(),
        reason=f"shared data absent: needs {ARENA}/model_judgment and {HUMAN}",
    ),
]

# model: (rating, ci_low, ci_high, rank, battles) with a prompt bootstrap of 100 rounds, seed 0.
# Ranks come from paired differences since issue 14 (i above j when the interval of r_i - r_j
# lies above 0): claude-1 moved from 2 to 3 and llama-2-70b-chat, vicuna-33b from 7 to 8.
PINNED = {
    "gpt-4-0314": (1265.3988, 1243.0658, 1286.3436, 1, 2944),
    "gpt-3.5-turbo-0613": (1092.5786, 1071.1550, 1114.1075, 2, 2962),
    "claude-2.0": (1080.6554, 1059.0445, 1102.0545, 2, 2962),
    "claude-instant-1": (1075.6306, 1054.9814, 1097.1525, 2, 2945),
    "gpt-3.5-turbo-1106": (1072.1515, 1054.6705, 1090.5252, 2, 2963),
    "claude-1": (1058.2339, 1035.1112, 1080.5487, 3, 2954),
    "openchat-3.5": (954.5381, 935.3108, 981.2903, 7, 2937),
    "llama-2-70b-chat": (916.8395, 894.3603, 939.7132, 8, 2962),
    "vicuna-33b": (913.5501, 890.6008, 940.7229, 8, 2927),
    "mistral-7b-instruct": (795.5171, 777.9648, 816.4632, 10, 2955),
    "palm-2": (774.9064, 756.3276, 800.4912, 10, 2921),
}


@pytest.fixture(scope="module")
def arena_battles():
    battles, rejected = read_grades(sorted((ARENA / "model_judgment").glob("*.jsonl")))
    return apply_rename(battles, ARENA / "model_names.csv"), rejected


def test_grades_import_keeps_every_valid_score_and_counts_the_rest(arena_battles):
    battles, rejected = arena_battles
    # 27 null scores and 2 scores of -1.0 (README); 9.5 is kept as a valid score
    assert rejected == {"score_missing": 27, "score_out_of_range": 2}
    assert battles.height == 16216  # 3271 valid grades, all pairs per question
    assert dict(battles["winner"].value_counts().rows()) == {"model_a": 7592, "model_b": 5026, "tie": 3598}
    assert 9.5 in set(battles["score_a"]) | set(battles["score_b"])


def test_leaderboard_and_agreement_with_the_human_arena(arena_battles):
    battles, _ = arena_battles
    board = leaderboard(battles, bootstrap=100, bootstrap_unit="prompt", seed=0)
    assert board["model"].to_list() == list(PINNED)
    for row in board.iter_rows(named=True):
        rating, low, high, rank, count = PINNED[row["model"]]
        assert row["rating"] == pytest.approx(rating, abs=1e-3)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=0.05)
        assert (row["rank"], row["battles"]) == (rank, count)

    result = alignment(board, pl.read_csv(HUMAN))
    assert result["n_common"] == 11
    assert result["spearman"] == pytest.approx(0.781818, abs=1e-6)  # 1 - 6 * 48 / (11 * 120)
    assert result["kendall"] == pytest.approx(0.6, abs=1e-9)  # 44 of 55 pairs concordant
    assert result["agreement_ci"] == pytest.approx(43 / 51)  # of the 51 pairs humans separate
    assert result["separability"] == pytest.approx(41 / 55)


def test_point_ratings_match_a_general_purpose_fit_on_real_data(arena_battles):
    from test_ratings import reference_mle  # the sibling test module (pytest puts tests/ on sys.path)

    battles, _ = arena_battles
    ours = dict(zip(*leaderboard(battles, bootstrap=0).select("model", "rating").to_dict(as_series=False).values()))
    assert ours == pytest.approx(reference_mle(battles), abs=1e-3)


def test_paired_rating_difference_for_the_promotion_gate(arena_battles):
    battles, _ = arena_battles
    result = rating_difference(battles, "gpt-4-0314", "gpt-3.5-turbo-0613", bootstrap=200, seed=0)
    assert result["diff"] == pytest.approx(172.8202, abs=1e-3)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((141.4236, 200.4238), abs=0.05)
    assert result["n_bootstrap"] == 200
