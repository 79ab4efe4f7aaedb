"""Leaderboard of real arena-hard judgments: ours against arena-hard-auto's own scoring, in one run.

Data: ../shared/data/ko-arena-hard-v0.1/model_judgment/ensemble (76 models, 500 questions,
two games each against claude-3.7-sonnet; 142,616 weighted battles from 74,998 games).

- ours: the whole way from the judgment folder to the finished leaderboard, as the command
  runs it: `read_arena_hard` (one battle per game, a strong verdict weighs 3) and `rate`
  (maximum likelihood ratings anchored at the baseline = 1000, win rates against it,
  `--rounds` bootstrap replicates, paired ranks).
- arena-hard: arena-hard-auto v0.1's scoring, re-implemented here from its code
  (lmarena/arena-hard-auto, show_result.py `get_battles_from_judgment` / `get_battles_from_row`
  and utils_math.py `compute_mle_elo`, `get_bootstrap_result`, `predict_win_rate`,
  `get_win_rate_column`): pandas rows, a strong verdict written as three battles, every
  battle written twice into a dense design matrix, scikit-learn's unpenalised
  LogisticRegression (tol 1e-8) per fit, and bootstrap rounds that resample the exploded
  battles with `DataFrame.sample`. Two departures, both forced: rows with one game are
  dropped (its `games[1]` raises IndexError on the one such row), and the baseline's own file
  is left out (its self-battles would put -ln(10) in the baseline's column of the design
  matrix; arena-hard's released data has no file for the baseline). `penalty=None` is
  written `C=inf` (the same fit; scikit-learn 1.8 deprecated the former).

Its bootstrap is timed over `--arena-hard-rounds` rounds and extrapolated linearly to
`--rounds` (one round takes about as long as the point fit); `--arena-hard-rounds` equal to
`--rounds` runs them all.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_arena_hard.py
    .venv/bin/python benchmarks/bench_arena_hard.py --repeat 5 --arena-hard-rounds 5
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ko-arena-hard-v0.1" / "model_judgment" / "ensemble"
BASELINE = "claude-3.7-sonnet"


# --- ours --------------------------------------------------------------------------------


def ours(folder: Path, rounds: int):
    from arena_dagster.ratings import rate
    from arena_dagster.ratings.judgments import read_arena_hard

    start = time.perf_counter()
    battles, rejected = read_arena_hard(folder, baseline=BASELINE)
    read = time.perf_counter()
    result = rate(battles, anchor=f"{BASELINE}=1000", baseline=BASELINE, bootstrap=rounds, seed=0)
    done = time.perf_counter()
    return result, rejected, read - start, done - read


# --- arena-hard-auto v0.1, re-implemented from its code ----------------------------------


def arena_hard_battles(folder: Path, multiplier: int = 3):
    """show_result.py get_battles_from_judgment / get_battles_from_row (v0.1)."""
    import pandas as pd

    files = [f for f in glob.glob(f"{folder}/*jsonl") if Path(f).stem != BASELINE]
    judgments = pd.concat([pd.read_json(f, lines=True) for f in files])
    judgments = judgments[judgments["games"].map(len) == 2]  # arena-hard raises IndexError on a one-game row

    def from_row(row):
        results = []
        for index, flip in ((0, False), (1, True)):
            output = {"question_id": row["question_id"], "model_a": BASELINE, "model_b": row["model"]}
            score = row["games"][index]["score"]
            weight = 1
            if score == "A=B":
                output["winner"] = "tie"
            elif score in ("A>B", "A>>B"):
                output["winner"] = "model_b" if flip else "model_a"
                weight = multiplier if score == "A>>B" else 1
            elif score in ("B>A", "B>>A"):
                output["winner"] = "model_a" if flip else "model_b"
                weight = multiplier if score == "B>>A" else 1
            else:
                weight = 0
            if weight:
                results += [output] * weight
        return results

    battles = judgments.apply(from_row, axis=1)
    return pd.DataFrame(battles[battles.map(len) > 0].explode().tolist())


def compute_mle_elo(df, SCALE=400, BASE=10, INIT_RATING=1000, baseline_model=BASELINE):
    """utils_math.py compute_mle_elo."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    p = len(models.index)
    n = df.shape[0]
    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]]] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]]] = -math.log(BASE)
    Y = np.zeros(n)
    Y[df["winner"] == "model_a"] = 1.0
    tie_idx = ((df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")).to_numpy().copy()
    tie_idx[len(tie_idx) // 2:] = False
    Y[tie_idx] = 1.0
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    lr.fit(X, Y)
    elo_scores = SCALE * lr.coef_[0] + INIT_RATING
    if baseline_model in models.index:
        elo_scores += 1000 - elo_scores[models[baseline_model]]
    return pd.Series(elo_scores, index=models.index).sort_values(ascending=False)


def get_bootstrap_result(battles, num_round):
    """utils_math.py get_bootstrap_result."""
    import pandas as pd

    rows = [compute_mle_elo(battles.sample(frac=1.0, replace=True)) for _ in range(num_round)]
    df = pd.DataFrame(rows)
    return df[df.median().sort_values(ascending=False).index]


def win_rate_column(ratings: dict[str, float], baseline=BASELINE, SCALE=400, BASE=10):
    """utils_math.py predict_win_rate + get_win_rate_column: P(model beats the baseline), in %."""
    return {m: round(100 / (1 + BASE ** ((ratings[baseline] - r) / SCALE)), 2) for m, r in ratings.items()}


def arena_hard(folder: Path, rounds: int):
    import warnings

    np.random.seed(42)  # utils_math.py seeds numpy at import
    start = time.perf_counter()
    battles = arena_hard_battles(folder)
    read = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = compute_mle_elo(battles)
        fitted = time.perf_counter()
        bootstrap = get_bootstrap_result(battles, rounds) if rounds else None
    done = time.perf_counter()
    return battles, point, bootstrap, read - start, fitted - read, done - fitted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=100, help="bootstrap rounds of the leaderboard")
    parser.add_argument("--arena-hard-rounds", type=int, default=3, help="arena-hard bootstrap rounds actually run")
    parser.add_argument("--repeat", type=int, default=5, help="runs of ours (best and median are printed)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data} (../shared/data is absent on this machine)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    print(f"data: {args.data}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    runs = [ours(args.data, args.rounds) for _ in range(args.repeat)]
    result, rejected, _, _ = runs[-1]
    totals = [r + f for _, _, r, f in runs]
    fits = [f for _, _, _, f in runs]
    print(f"ours: {result.n_battles} battles (total weight {result.total_weight:.0f}), {result.board.height} models, "
          f"rejected {rejected}")
    print(f"ours, {args.rounds} bootstrap rounds: total {min(totals):.2f} s best / {statistics.median(totals):.2f} s median "
          f"of {args.repeat} (reading {min(r for _, _, r, _ in runs):.2f} s, leaderboard {min(fits):.2f} s best)")

    battles, point, bootstrap, read, fit_s, boot_s = arena_hard(args.data, args.arena_hard_rounds)
    per_round = boot_s / args.arena_hard_rounds if args.arena_hard_rounds else fit_s
    estimated = read + fit_s + per_round * args.rounds
    print(f"arena-hard: {len(battles)} exploded battles; reading {read:.2f} s, point fit {fit_s:.2f} s, "
          f"{per_round:.2f} s per bootstrap round ({args.arena_hard_rounds} run) -> {estimated:.0f} s for "
          f"{args.rounds} rounds" + (" (est.)" if args.arena_hard_rounds < args.rounds else ""))
    print(f"ratio arena-hard / ours (best): {estimated / min(totals):.0f}x whole; "
          f"{(fit_s + per_round * args.rounds) / min(fits):.0f}x without reading")

    board = result.board
    ours_rating = dict(zip(board["model"], board["rating"]))
    theirs = point.to_dict()
    gap = max(abs(ours_rating[m] - theirs[m]) for m in theirs)
    ours_rate = dict(zip(board["model"], board["win_rate"] * 100))
    rate_gap = max(abs(ours_rate[m] - w) for m, w in win_rate_column(theirs).items())
    print(f"largest rating gap to arena-hard's point fit: {gap:.4f} Elo; win rate gap {rate_gap:.3f} points "
          f"(theirs rounded to 0.01)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
