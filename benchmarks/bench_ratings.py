"""Speed and memory of the Bradley-Terry leaderboard against FastChat's two methods.

Each measurement runs in a fresh subprocess that builds the same synthetic battles table
(a polars DataFrame of strings: model_a, model_b, winner), then times the whole way from
that table to a finished leaderboard (rating, 95% interval, rank) with `--bootstrap`
rounds, and reports its peak resident memory above the table itself.

Methods:
- ours: `arena_dagster.ratings.leaderboard`.
- newer: a re-implementation of FastChat's current method (fastchat/serve/monitor/
  rating_systems.py: pandas factorize, unique (a, b, outcome) cells with np.unique,
  L-BFGS-B with gtol 1e-6 on the weighted cells, multinomial bootstrap weights, fits
  spread over a multiprocessing pool of os.cpu_count() workers).
- published: the released fschat==0.2.36, `fastchat.serve.monitor.elo_analysis`
  `compute_elo_mle_with_tie` and `get_bootstrap_result` (sklearn logistic regression on a
  dense design matrix, resampled battles). Needs fschat importable: `pip install
  fschat==0.2.36 plotly` into the environment, or `pip install --no-deps --target DIR
  fschat==0.2.36 plotly narwhals` and `--fastchat-path DIR`.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_ratings.py                      # the full table
    .venv/bin/python benchmarks/bench_ratings.py --sizes 1e5 --models 60 --peers newer   # quick
    # with LMArena's arena-rank (sandwich path) in its own venv, as the README's benchmark section shows:
    .venv/bin/python benchmarks/bench_ratings.py --sizes 1e6 --models 60 --peers newer \
        --arena-rank-python /work/cache/venv-arena-rank/bin/python
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# --- the synthetic arena -----------------------------------------------------------------


WINNERS = ["model_a", "model_b", "tie", "tie (bothbad)"]


def battle_codes(n_battles: int, n_models: int, seed: int = 0):
    """Model names, model_a and model_b indices and winner codes (into WINNERS) of the synthetic arena."""
    rng = np.random.default_rng(seed)
    rating = rng.normal(1000, 100, n_models)
    names = [f"model-{i:04d}-chat" for i in range(n_models)]
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    p_a = 1 / (1 + 10 ** ((rating[b] - rating[a]) / 400))
    tie = rng.random(n_battles) < 0.2
    outcome = np.where(tie, np.where(rng.random(n_battles) < 0.7, 2, 3), np.where(rng.random(n_battles) < p_a, 0, 1))
    return names, a, b, outcome


def make_battles(n_battles: int, n_models: int, seed: int = 0):
    """Battles drawn from Bradley-Terry with ratings ~ N(1000, 100) and 20% ties, as strings."""
    import polars as pl

    names, a, b, outcome = battle_codes(n_battles, n_models, seed)
    names, winners = pl.Series(names), pl.Series(WINNERS)
    return pl.DataFrame(
        {"model_a": names.gather(a), "model_b": names.gather(b), "winner": winners.gather(outcome)}
    ).rechunk()


def make_pandas_battles(n_battles: int, n_models: int, seed: int = 0):
    """The same battles as a pandas DataFrame of strings (arena-rank's input; its venv has no polars)."""
    import pandas as pd

    names, a, b, outcome = battle_codes(n_battles, n_models, seed)
    names, winners = np.array(names, dtype=object), np.array(WINNERS, dtype=object)
    return pd.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winners[outcome]})


# --- the peers -----------------------------------------------------------------------------


def _newer_cells(frame):
    """pandas factorize + np.unique over (a, b, outcome) rows, as FastChat's preprocess_for_bt."""
    import pandas as pd

    n = len(frame)
    codes, models = pd.factorize(pd.concat([frame["model_a"], frame["model_b"]]))
    rows = np.full((n, 3), 1, dtype=np.int32)
    rows[:, 0], rows[:, 1] = codes[:n], codes[n:]
    rows[(frame["winner"] == "model_a").to_numpy(), 2] = 2
    rows[(frame["winner"] == "model_b").to_numpy(), 2] = 0
    cells, counts = np.unique(rows, return_counts=True, axis=0)
    return cells[:, :2], cells[:, 2] / 2.0, list(models), counts.astype(np.float64)


def _newer_loss(theta, pairs, outcome, weight, alpha):
    from scipy.special import expit

    prob = expit(alpha * (theta[pairs[:, 0]] - theta[pairs[:, 1]]))
    loss = -((np.log(prob) * outcome + np.log(1.0 - prob) * (1.0 - outcome)) * weight).sum()
    per_cell = -alpha * (outcome - prob) * weight
    grad = np.zeros_like(theta)
    np.add.at(grad, pairs, per_cell[:, None] * np.array([1.0, -1.0]))
    return loss, grad


def _newer_fit(pairs, outcome, n_models, weight, alpha=math.log(10.0)):
    from scipy.optimize import minimize

    result = minimize(
        _newer_loss, np.zeros(n_models), args=(pairs, outcome, weight, alpha), jac=True, method="L-BFGS-B",
        options={"maxiter": 100, "gtol": 1e-6},
    )
    return result.x


def newer_fastchat(frame_pl, rounds: int):
    """FastChat's current method, end to end from the polars table; returns (models, rating, low, high)."""
    import multiprocessing as mp
    from functools import partial

    frame = frame_pl.to_pandas()
    pairs, outcome, models, weight = _newer_cells(frame)
    point = _newer_fit(pairs, outcome, len(models), weight) * 400 + 1000
    rng = np.random.default_rng(0)
    resampled = rng.multinomial(len(frame), weight / weight.sum(), size=rounds) / len(frame)
    with mp.Pool(os.cpu_count()) as pool:
        replicates = np.array(pool.map(partial(_newer_fit, pairs, outcome, len(models)), resampled))
    low, high = np.percentile(replicates * 400 + 1000, [2.5, 97.5], axis=0)
    return models, point, low, high


def published_fastchat(frame_pl, rounds: int):
    """fschat 0.2.36's compute_elo_mle_with_tie + get_bootstrap_result, end to end."""
    from fastchat.serve.monitor import elo_analysis

    frame = frame_pl.to_pandas()
    np.random.seed(0)  # get_bootstrap_result samples with pandas' global random state
    point = elo_analysis.compute_elo_mle_with_tie(frame)
    started = time.perf_counter()
    boot = elo_analysis.get_bootstrap_result(frame, elo_analysis.compute_elo_mle_with_tie, rounds)
    BOOTSTRAP_SECONDS.append(time.perf_counter() - started)
    models = list(point.index)
    low, high = boot[models].quantile(0.025).to_numpy(), boot[models].quantile(0.975).to_numpy()
    return models, point.to_numpy(), low, high


def ours(frame_pl, rounds: int):
    from arena_dagster.ratings import leaderboard

    board = leaderboard(frame_pl, bootstrap=rounds)
    return board["model"].to_list(), board["rating"].to_numpy(), board["ci_low"].to_numpy(), board["ci_high"].to_numpy()


def ours_sandwich(frame_pl, rounds: int):
    """Ours with sandwich intervals (`rounds` unused: no resampling)."""
    from arena_dagster.ratings import leaderboard

    board = leaderboard(frame_pl, ci="sandwich")
    return board["model"].to_list(), board["rating"].to_numpy(), board["ci_low"].to_numpy(), board["ci_high"].to_numpy()


def arena_rank_sandwich(frame_pd, rounds: int):
    """arena-rank 0.1.1 (LMArena's library), end to end from the pandas table: PairDataset.from_pandas,
    BradleyTerry.compute_ratings_and_cis(ci_method="sandwich"). Its bootstrap path forks a
    multiprocessing pool under JAX (which can hang), so only the sandwich path is timed."""
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    dataset = PairDataset.from_pandas(frame_pd)
    result = BradleyTerry(n_competitors=len(dataset.competitors)).compute_ratings_and_cis(dataset, ci_method="sandwich")
    low, high = np.asarray(result["rating_lower"]), np.asarray(result["rating_upper"])
    return list(result["competitors"]), np.asarray(result["ratings"]), low, high


def converged_peers(n_battles: int, n_models: int, seed: int) -> dict[str, float]:
    """Max |rating difference| between ours and each peer's objective solved to convergence.

    Both peers stop early by default (the newer one on L-BFGS-B's relative-reduction test
    ftol=2.2e-9, the published one on sklearn's tol=1e-4, with an L2 penalty C=1 as well),
    which is where their gaps to ours come from; run to convergence they agree with ours.
    """
    import warnings

    import pandas as pd
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression

    from arena_dagster.ratings import leaderboard

    warnings.filterwarnings("ignore")
    frame_pl = make_battles(n_battles, n_models, seed)
    board = leaderboard(frame_pl, bootstrap=0)
    mine = dict(zip(board["model"].to_list(), board["rating"].to_list()))
    frame = frame_pl.to_pandas()
    pairs, outcome, models, weight = _newer_cells(frame)
    theta = minimize(
        _newer_loss, np.zeros(len(models)), args=(pairs, outcome, weight, math.log(10.0)), jac=True,
        method="L-BFGS-B", options={"maxiter": 10_000, "gtol": 1e-10, "ftol": 1e-16},
    ).x
    found = {"newer, converged": _agreement(mine, dict(zip(models, theta * 400 + 1000)))}
    # the published design: every battle twice, a tie as one win for each side
    index = pd.Series(np.arange(len(models)), index=models)
    doubled = pd.concat([frame, frame], ignore_index=True)
    design = np.zeros((len(doubled), len(models)))
    design[np.arange(len(doubled)), index[doubled["model_a"]].to_numpy()] = math.log(10)
    design[np.arange(len(doubled)), index[doubled["model_b"]].to_numpy()] = -math.log(10)
    label = (doubled["winner"] == "model_a").to_numpy().astype(float)
    tie = doubled["winner"].isin(["tie", "tie (bothbad)"]).to_numpy().copy()
    tie[len(tie) // 2 :] = False
    label[tie] = 1.0
    unpenalised = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=10_000).fit(design, label)
    found["published design, unpenalised, converged"] = _agreement(
        mine, dict(zip(models, unpenalised.coef_[0] * 400 + 1000))
    )
    return found


def _ranks(low, high):
    return 1 + (np.asarray(low)[None, :] > np.asarray(high)[:, None]).sum(axis=1)


BOOTSTRAP_SECONDS: list[float] = []  # the published method's bootstrap loop, for extrapolating fewer rounds
METHODS = {"ours": ours, "sandwich": ours_sandwich, "newer": newer_fastchat, "published": published_fastchat,
           "arena-rank": arena_rank_sandwich}


# --- one measurement, in a child process ---------------------------------------------------


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(method: str, n_battles: int, n_models: int, rounds: int, repeat: int, seed: int) -> dict:
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    run = METHODS[method]
    if method == "published":
        from fastchat.serve.monitor import elo_analysis  # noqa: F401  (import time is not the method's)
    make = make_pandas_battles if method == "arena-rank" else make_battles
    frame = make(n_battles, n_models, seed)
    run(make(2000, min(n_models, 20), seed + 1), 2)  # warm up imports and caches (JAX compiles again per shape)
    times = []
    reset = _reset_peak()
    baseline = _memory_kib("VmRSS")
    for _ in range(repeat):
        start = time.perf_counter()
        models, rating, low, high = run(frame, rounds)
        _ranks(low, high)
        times.append(time.perf_counter() - start)
        if sum(times) > 20:  # slow cases: one or two timings are enough
            break
    peak = _memory_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "method": method, "battles": n_battles, "models": n_models, "rounds": rounds,
        "seconds": times, "peak_extra_mib": max(0, peak - baseline) / 1024, "table_rss_mib": baseline / 1024,
        "worker_peak_mib": workers / 1024 if method == "newer" else None,
        "bootstrap_seconds": BOOTSTRAP_SECONDS[-1] if BOOTSTRAP_SECONDS else None,
        "ratings": dict(zip(models, np.asarray(rating, dtype=float).tolist())),
        "half_widths": dict(zip(models, ((np.asarray(high, dtype=float) - np.asarray(low, dtype=float)) / 2).tolist())),
    }


def run_child(args, method, n_battles, n_models, rounds, repeat) -> dict | None:
    command = [
        args.arena_rank_python if method == "arena-rank" else sys.executable, __file__, "--child", method, "--battles-n", str(n_battles), "--models-n", str(n_models),
        "--rounds", str(rounds), "--repeat", str(repeat), "--seed", str(args.seed),
    ]
    env = dict(os.environ)
    extra = [str(ROOT)] + ([args.fastchat_path] if args.fastchat_path else [])
    env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  {method} at {n_battles:.0e} battles / {n_models} models failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the report ----------------------------------------------------------------------------


def _fmt_time(result, rounds_wanted, seconds):
    if result["rounds"] < rounds_wanted:
        return f"{seconds:8.3f} s (est. from {result['rounds']} rounds)"
    return f"{seconds:8.3f} s"


def _agreement(reference: dict, other: dict) -> float:
    shared = sorted(set(reference) & set(other))
    a = np.array([reference[m] for m in shared])
    b = np.array([other[m] for m in shared])
    return float(np.abs((a - a.mean()) - (b - b.mean())).max())


def _parse_counts(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e5,1e6,1e7", help="battle counts at 60 models")
    parser.add_argument("--models", default="60,200,1000", help="model counts at 1e6 battles")
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--peers", default="newer,published", help="comma list of newer, published (or empty)")
    parser.add_argument("--peer-max-battles", type=float, default=1e6, help="largest table the peers are run on")
    parser.add_argument("--published-rounds", type=int, default=None,
                        help="bootstrap rounds for the published FastChat (default: --bootstrap); fewer rounds "
                        "are timed as such and extrapolated in the ratio column")
    parser.add_argument("--fastchat-path", help="a folder holding fschat 0.2.36 (pip install --target)")
    parser.add_argument("--arena-rank-python", metavar="PATH",
                        help="the python of a separate venv with arena-rank==0.1.1 (it pins numpy and jax): adds "
                        "arena-rank's sandwich path as a peer, and ours with sandwich intervals beside it")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of ours (the best is reported)")
    parser.add_argument("--no-check-converged", dest="check_converged", action="store_false",
                        help="skip fitting the peers' objectives to convergence at the smallest size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--battles-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--models-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.battles_n, args.models_n, args.rounds, args.repeat, args.seed)))
        return 0

    peers = [p for p in args.peers.split(",") if p]
    cases = [(n, 60) for n in _parse_counts(args.sizes)]
    cases += [(1_000_000, m) for m in _parse_counts(args.models) if (1_000_000, m) not in cases]
    print(f"# bench_ratings: {args.bootstrap} bootstrap rounds, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(f"# time: table of strings -> leaderboard with intervals; memory: peak RSS above the input table")
    header = f"{'battles':>8} {'models':>6}  {'method':<10} {'time':>31} {'peak MiB':>9}  {'x ours':>7}  {'max |diff| Elo':>14}"
    print(header)
    print("-" * len(header))
    timings: dict[tuple[int, int], float] = {}
    peer_times: dict[tuple[str, int, int], dict] = {}
    sandwiches: list[tuple] = []
    for n_battles, n_models in cases:
        repeat = 1 if n_battles >= 10_000_000 else args.repeat  # the largest table is heavy: time it once
        mine = run_child(args, "ours", n_battles, n_models, args.bootstrap, repeat)
        if mine is None:
            continue
        timings[(n_battles, n_models)] = min(mine["seconds"])
        rows = [(mine, "")]
        if n_battles <= args.peer_max_battles and n_models == 60:
            for peer in peers:
                rounds = args.published_rounds if peer == "published" and args.published_rounds else args.bootstrap
                # best of 3 for the newer method too (it takes seconds); the published one, once
                result = run_child(args, peer, n_battles, n_models, rounds, 3 if peer == "newer" else 1)
                if result is not None:
                    rows.append((result, f"{_agreement(mine['ratings'], result['ratings']):14.5f}"))
                    peer_times[(peer, n_battles, n_models)] = result
            if args.arena_rank_python:
                # rounds are not used by either sandwich; passed so that no row reads as extrapolated
                robust = run_child(args, "sandwich", n_battles, n_models, args.bootstrap, args.repeat)
                theirs = run_child(args, "arena-rank", n_battles, n_models, args.bootstrap, 3)
                if robust is not None:
                    rows.append((robust, f"{_agreement(mine['ratings'], robust['ratings']):14.5f}"))
                if robust is not None and theirs is not None:
                    rows.append((theirs, f"{_agreement(robust['ratings'], theirs['ratings']):14.5f}"))
                    sandwiches.append((n_battles, n_models, mine, robust, theirs))
        for result, diff in rows:
            seconds = min(result["seconds"])
            if result["rounds"] < args.bootstrap and result["bootstrap_seconds"]:
                # the bootstrap loop is rounds x one fit: extrapolate that part linearly
                seconds += result["bootstrap_seconds"] * (args.bootstrap / result["rounds"] - 1)
            ratio = f"{seconds / timings[(n_battles, n_models)]:6.1f}x" if result is not mine else ""
            memory = f"{result['peak_extra_mib']:9.0f}"
            if result.get("worker_peak_mib"):
                memory += f" (+{result['worker_peak_mib']:.0f} per worker)"
            print(f"{n_battles:8.0e} {n_models:6d}  {result['method']:<10} {_fmt_time(result, args.bootstrap, seconds):>31} "
                  f"{memory}  {ratio:>7}  {diff:>14}")
        sys.stdout.flush()

    for n_battles, n_models, mine, robust, theirs in sandwiches:
        shared = sorted(set(robust["half_widths"]) & set(theirs["half_widths"]))
        relative = max(abs(robust["half_widths"][m] / theirs["half_widths"][m] - 1) for m in shared)
        print(f"# at {n_battles:.0e} battles / {n_models} models, ours --ci sandwich vs arena-rank 0.1.1 sandwich: "
              f"max |rating diff| {_agreement(robust['ratings'], theirs['ratings']):.2e} Elo, max relative half-width "
              f"diff {relative:.2%} (arena-rank adds 1e-5 x battles to the Hessian's diagonal; ours is exact)")
        fast = min(mine["seconds"])
        line = (f"# at {n_battles:.0e} battles / {n_models} models, ours fit + {args.bootstrap} bootstrap rounds "
                f"{fast:.3f} s: x{min(theirs['seconds']) / fast:.1f} faster than arena-rank's sandwich path "
                f"({min(theirs['seconds']):.2f} s)")
        if ("newer", n_battles, n_models) in peer_times:
            newer = min(peer_times[("newer", n_battles, n_models)]["seconds"])
            line += f", x{newer / fast:.1f} faster than the FastChat method ({newer:.2f} s)"
        print(line + f"; ours with sandwich intervals {min(robust['seconds']):.3f} s")

    if peers and args.check_converged:
        smallest = min(n for n, m in cases if m == 60 and n <= args.peer_max_battles)
        for label, gap in converged_peers(smallest, 60, args.seed).items():
            print(f"# at {smallest:.0e} battles, max |diff| of ours vs {label}: {gap:.2e} Elo")

    by_battles = sorted((n, t) for (n, m), t in timings.items() if m == 60)
    by_models = sorted((m, t) for (n, m), t in timings.items() if n == 1_000_000)
    for label, series in (("battles", by_battles), ("models", by_models)):
        if len(series) > 1:
            steps = ", ".join(
                f"{x0:.0e}->{x1:.0e}: x{t1 / t0:.1f} (exponent {math.log(t1 / t0) / math.log(x1 / x0):.2f})"
                for (x0, t0), (x1, t1) in zip(series, series[1:])
            )
            print(f"# ours, time growth with {label}: {steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
