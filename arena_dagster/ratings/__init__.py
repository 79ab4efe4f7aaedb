"""Arena statistics: Bradley-Terry ratings with bootstrap intervals, online Elo, win rates,
agreement with a reference leaderboard, and importers for battle and grade files.

A pure module (no Dagster import): the evaluation assets and the command line call it.
"""

from __future__ import annotations

from arena_dagster.ratings.alignment import alignment
from arena_dagster.ratings.battles import WINNERS, encode_battles
from arena_dagster.ratings.bradley_terry import fit, leaderboard, parse_anchor, rating_difference
from arena_dagster.ratings.elo import online_elo, predicted_win_rate, win_rate_matrix
from arena_dagster.ratings.errors import (
    BattlesInputError,
    DisconnectedComparisonsError,
    InputFileError,
    RatingsError,
    RatingsWarning,
)
from arena_dagster.ratings.importers import apply_rename, read_fastchat_battles, read_grades, read_rename

__all__ = [
    "WINNERS",
    "BattlesInputError",
    "DisconnectedComparisonsError",
    "InputFileError",
    "RatingsError",
    "RatingsWarning",
    "alignment",
    "apply_rename",
    "encode_battles",
    "fit",
    "leaderboard",
    "online_elo",
    "parse_anchor",
    "predicted_win_rate",
    "rating_difference",
    "read_fastchat_battles",
    "read_grades",
    "read_rename",
    "win_rate_matrix",
]
