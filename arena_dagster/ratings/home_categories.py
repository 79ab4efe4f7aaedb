"""`arena-dagster leaderboard --home H --by category`: the per-category boards every round's
leaderboard asset stored in the warehouse (table leaderboard_by_category)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arena_dagster.ratings.errors import RatingsError

TABLE = "leaderboard_by_category"


def read_home_categories(home: Path) -> dict[str, list[dict[str, Any]]]:
    """{category: rows of every round (round, rank, model, rating, ci_low, ci_high, battles, unbounded, ...)}."""
    from arena_dagster.warehouse import open_readonly, table_exists

    with open_readonly(home) as conn:
        if not table_exists(conn, TABLE):
            raise RatingsError(f"{home}: no per-category leaderboards ({TABLE} is absent: the home's leaderboards were "
                               "built before per-category boards existed): rebuild them with `arena-dagster flywheel "
                               "--home H --rounds N` on this version")
        frame = conn.execute(f"SELECT * FROM {TABLE}").pl()
    if frame.height == 0:
        raise RatingsError(f"{home}: the arena test set's prompts carry no category (no family or cluster), so no "
                           "per-category leaderboard was stored")
    out: dict[str, list[dict[str, Any]]] = {}
    for row in frame.sort(["category", "round", "rating"], descending=[False, False, True]).iter_rows(named=True):
        out.setdefault(row.pop("category"), []).append(row)
    return out


def format_home_categories(by_category: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for category, rows in by_category.items():
        lines.append(f"\ncategory {category}")
        lines.append(f"{'round':>5} {'rank':>4}  {'model':<24} {'rating':>8}  {'95% CI':<19} {'battles':>7}")
        for r in rows:
            ci = f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]" if r.get("ci_low") is not None else ""
            mark = "*" if r.get("unbounded") else " "
            lines.append(f"{r['round']:>5} {r['rank']:>4}  {r['model']:<24} {r['rating']:>8.1f}{mark} {ci:<19} "
                         f"{r['battles']:>7}")
    return "\n".join(lines).lstrip("\n")


def print_home_categories(home: Path, as_json: bool, plot: str | None = None) -> int:
    if plot:
        raise RatingsError("--plot does not apply to --by category (it draws the overall leaderboards): drop one of them")
    by_category = read_home_categories(home)
    print(json.dumps({"by_category": by_category}, indent=2, default=str) if as_json else format_home_categories(by_category))
    return 0
