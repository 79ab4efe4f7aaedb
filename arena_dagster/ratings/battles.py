"""From a battles table of strings to the counts the Bradley-Terry fit works on.

A battle is one comparison of two models. Its order does not matter to the Bradley-Terry
likelihood, so every battle is folded onto the unordered pair (lo, hi) of model indices
(lo < hi, models sorted by name) with its outcome seen from `lo`: 2 = lo won, 1 = tie,
0 = hi won. The fit only ever needs how many battles fell into each (pair, outcome) cell,
and with an optional `weight` column, each battle's weight: a battle of weight 3 (an
arena-hard strong verdict) counts as three in the likelihood but stays one battle when a
bootstrap resamples battles, so cells are kept apart by weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from arena_dagster.ratings.errors import BattlesInputError

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
TIES = ("tie", "tie (bothbad)")
BATTLE_COLUMNS = ("model_a", "model_b", "winner")
# Up to this many possible (a, b, outcome) cells, or 4 per battle, counting them in a dense
# array beats sorting the battles.
_DENSE_CELL_LIMIT = 1 << 24


@dataclass(frozen=True)
class BattleCells:
    """The battles of a table, counted per (unordered pair, outcome, weight) cell.

    `pair_lo[k] < pair_hi[k]` index `models`; `outcome[k]` is 2 (lo won), 1 (tie) or 0
    (hi won); `count[k]` > 0 is how many battles fell in cell k and `weight[k]` what each
    of them weighs (1 without a weight column). With prompts, `question_cells` is a
    (questions x cells) sparse matrix of the same counts split by question_id, so a
    cluster bootstrap can resample whole prompts.
    """

    models: list[str]
    pair_lo: np.ndarray
    pair_hi: np.ndarray
    outcome: np.ndarray
    count: np.ndarray
    weight: np.ndarray
    battles_per_model: np.ndarray
    n_battles: int
    question_cells: object | None = None  # scipy.sparse.csr_matrix (n_questions x n_cells)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def total_weight(self) -> float:
        return float((self.count * self.weight).sum())


def check_columns(battles: pl.DataFrame, columns: tuple[str, ...]) -> None:
    if not isinstance(battles, pl.DataFrame):
        raise BattlesInputError(f"battles must be a polars DataFrame, got {type(battles).__name__}")
    missing = [c for c in columns if c not in battles.columns]
    if missing:
        raise BattlesInputError(f"battles table lacks column(s) {missing}; it has {battles.columns}")
    if battles.height == 0:
        raise BattlesInputError("battles table is empty: there is nothing to rate")
    for name in ("model_a", "model_b", "winner"):
        dtype = battles.schema[name]
        if not (dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))):
            raise BattlesInputError(f"column {name!r} must hold strings, got {dtype}")
    for name in columns:
        nulls = battles.get_column(name).null_count()
        if nulls:
            row = int(battles.get_column(name).is_null().arg_true()[0])
            raise BattlesInputError(f"column {name!r} has {nulls} null value(s), the first in row {row}")


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def battle_weights(battles: pl.DataFrame) -> np.ndarray | None:
    """The `weight` column as float64 (None when absent or all 1); BattlesInputError naming
    the first row whose weight is null, not a number, not finite or not above 0."""
    if "weight" not in battles.columns:
        return None
    column = battles.get_column("weight")
    if not column.dtype.is_numeric():
        raise BattlesInputError(f"column 'weight' must hold numbers, got {column.dtype}")
    weight = column.cast(pl.Float64).to_numpy()
    bad = ~(np.isfinite(weight) & (weight > 0))
    if bad.any():
        row = _first_row(bad)
        raise BattlesInputError(
            f"row {row}: weight {column[row]!r} is not a finite number above 0 ({int(bad.sum())} such rows)"
        )
    return None if (weight == 1.0).all() else weight


def code_battles(battles: pl.DataFrame) -> tuple[pl.Series, np.ndarray, np.ndarray, np.ndarray]:
    """The sorted model names, every battle's model_a and model_b as indices into them, and its
    outcome seen from model_a (2 won, 1 tie, 0 lost). BattlesInputError names the first row
    with an unknown winner or a model playing itself."""
    models = pl.concat(
        [battles.get_column(c).cast(pl.String).unique() for c in ("model_a", "model_b")]
    ).unique().sort()
    names = pl.Enum(models)
    winner = pl.col("winner").cast(pl.String)
    coded = battles.lazy().select(
        pl.col("model_a").cast(pl.String).cast(names).to_physical().alias("a"),
        pl.col("model_b").cast(pl.String).cast(names).to_physical().alias("b"),
        (winner == "model_a").alias("a_won"),
        (winner == "model_b").alias("b_won"),
        (winner == "tie").alias("tie"),
        (winner == "tie (bothbad)").alias("tie_bothbad"),
    ).collect()
    a, b = coded.get_column("a").to_numpy(), coded.get_column("b").to_numpy()
    a_won, b_won, tie, tie_bothbad = (coded.get_column(c).to_numpy() for c in ("a_won", "b_won", "tie", "tie_bothbad"))
    o = a_won.view(np.uint8) * np.uint8(2) + tie.view(np.uint8) + tie_bothbad.view(np.uint8)
    unknown = (o == 0) & ~b_won
    if unknown.any():
        row = _first_row(unknown)
        values = battles.get_column("winner").filter(pl.Series(unknown)).unique().sort().head(5).to_list()
        raise BattlesInputError(
            f"row {row}: winner {battles.get_column('winner')[row]!r} is not one of {list(WINNERS)} "
            f"({int(unknown.sum())} such rows; values seen: {values})"
        )
    same = a == b
    if same.any():
        row = _first_row(same)
        raise BattlesInputError(
            f"row {row}: model {models[int(a[row])]!r} plays itself ({int(same.sum())} such rows); "
            "a self-battle carries no information about ratings"
        )
    return models, a, b, o


def encode_battles(battles: pl.DataFrame, *, by_question: bool = False) -> BattleCells:
    """Validate a battles table and count its battles per (pair, outcome, weight) cell.

    Raises BattlesInputError naming the first bad row for a missing column, a null name,
    a winner outside `WINNERS`, a model playing itself, or a weight that is not a finite
    number above 0.
    """
    columns = BATTLE_COLUMNS + (("question_id",) if by_question else ())
    check_columns(battles, columns)
    weight = battle_weights(battles)
    models, a, b, o = code_battles(battles)

    n_models = len(models)
    weights, weight_index = np.ones(1), None
    if weight is not None:
        weights, weight_index = np.unique(weight, return_inverse=True)
        weight_index = weight_index.ravel()
    question_cells = None
    if by_question or weight is not None:
        code = _cell_code(a, b, o, n_models)
        if weight_index is not None:
            code = code * len(weights) + weight_index
        cell_codes, cell_of_battle = np.unique(code, return_inverse=True)
        cell_of_battle = cell_of_battle.ravel()
        counts = np.bincount(cell_of_battle, minlength=len(cell_codes))
        if by_question:
            from scipy import sparse

            question_idx, n_questions = question_index(battles.get_column("question_id"))
            question_cells = sparse.csr_matrix(
                (np.ones(len(code)), (question_idx, cell_of_battle)), shape=(n_questions, len(cell_codes))
            )
            question_cells.sum_duplicates()
    elif n_models * n_models * 3 <= max(_DENSE_CELL_LIMIT, 4 * len(a)):
        # count ordered (a, b, outcome) cells, then fold (hi, lo, o) onto (lo, hi, 2 - o)
        ordered = np.bincount(
            (a.astype(np.int64) * n_models + b) * 3 + o, minlength=n_models * n_models * 3
        ).reshape(n_models, n_models, 3)
        mirrored = ordered.transpose(1, 0, 2)[:, :, ::-1]
        upper = np.triu(np.ones((n_models, n_models), dtype=bool), k=1)[:, :, None]
        folded = (ordered + mirrored) * upper
        cell_codes = np.flatnonzero(folded)
        counts = folded.ravel()[cell_codes]
    else:
        cell_codes, counts = np.unique(_cell_code(a, b, o, n_models), return_counts=True)

    cell_codes, cell_weight = np.divmod(cell_codes, len(weights))
    pair, cell_outcome = np.divmod(cell_codes, 3)
    pair_lo, pair_hi = np.divmod(pair, n_models)
    per_model = np.bincount(pair_lo, weights=counts, minlength=n_models) + np.bincount(
        pair_hi, weights=counts, minlength=n_models
    )
    return BattleCells(
        models=models.to_list(),
        pair_lo=pair_lo,
        pair_hi=pair_hi,
        outcome=cell_outcome,
        count=counts.astype(np.int64),
        weight=weights[cell_weight].astype(np.float64),
        battles_per_model=per_model.astype(np.int64),
        n_battles=len(a),
        question_cells=question_cells,
    )


def _cell_code(a: np.ndarray, b: np.ndarray, o: np.ndarray, n_models: int) -> np.ndarray:
    """(lo * n_models + hi) * 3 + outcome seen from lo, per battle."""
    lo = np.minimum(a, b).astype(np.int64)
    hi = np.maximum(a, b).astype(np.int64)
    return (lo * n_models + hi) * 3 + np.where(a < b, o, 2 - o)


def question_index(question_id: pl.Series) -> tuple[np.ndarray, int]:
    """Dense 0..Q-1 index of each battle's question, whatever the id's type."""
    distinct = question_id.unique().sort()  # sorted: the replicates of a seed must not depend on hash order
    index = question_id.replace_strict(distinct, pl.Series(np.arange(len(distinct), dtype=np.int64)))
    return index.to_numpy(), len(distinct)

