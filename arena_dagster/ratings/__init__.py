"""Arena statistics: Bradley-Terry ratings with bootstrap intervals, win rates against a
baseline, style control, online Elo, agreement with a reference leaderboard, and importers
for battle, grade and judgment files (arena-hard, MT-Bench).

A pure module (no Dagster import): the evaluation assets and the command line call it.
"""

from __future__ import annotations

from arena_dagster.ratings.alignment import alignment
from arena_dagster.ratings.battles import WINNERS, encode_battles
from arena_dagster.ratings.board import Ratings, leaderboard, parse_anchor, rate, rating_difference
from arena_dagster.ratings.bradley_terry import fit
from arena_dagster.ratings.elo import online_elo, predicted_win_rate, win_rate_matrix
from arena_dagster.ratings.errors import (
    BattlesInputError,
    DisconnectedComparisonsError,
    InputFileError,
    RatingsError,
    RatingsWarning,
)
from arena_dagster.ratings.importers import apply_rename, read_fastchat_battles, read_grades, read_rename
from arena_dagster.ratings.style import STYLE_FEATURES, answer_style, fit_style, with_style_features

__all__ = [
    "STYLE_FEATURES",
    "WINNERS",
    "BattlesInputError",
    "DisconnectedComparisonsError",
    "InputFileError",
    "Ratings",
    "RatingsError",
    "RatingsWarning",
    "alignment",
    "answer_style",
    "apply_rename",
    "encode_battles",
    "fit",
    "fit_style",
    "leaderboard",
    "online_elo",
    "parse_anchor",
    "predicted_win_rate",
    "rate",
    "rating_difference",
    "read_fastchat_battles",
    "read_grades",
    "read_rename",
    "win_rate_matrix",
    "with_style_features",
]
