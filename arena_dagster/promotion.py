"""The promotion gate: does one of the round's checkpoints replace the current target?

Every trained stage checkpoint of the round (SFT-I{r}, DPO-I{r}, RL-I{r}) is a candidate.
Picking the best of several on the same prompts that then test it favours whichever one
got lucky on those prompts, so its measured lead is inflated and the gate promotes noise
more often than its nominal 2.5%. The `best` rule therefore splits the arena test set by a
seeded hash of the prompt id: the selection part picks the candidate with the largest
rating difference to the incumbent, and only that candidate is tested, on the held-out
test part. With a single candidate there is nothing to choose and the whole test set
tests it. The `last` rule is the paper's: the round's last trained stage is the candidate,
tested on the whole test set.

The test is paired: candidate and incumbent answered the same prompts and met the same
opponents, so the Bradley-Terry rating difference is bootstrapped over prompts with both
ratings taken from the same replicate. The candidate is promoted only when the lower bound
of the 95% interval of (candidate - incumbent) is above `margin` Elo.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import polars as pl

from arena_dagster.errors import ArenaError
from arena_dagster.ratings import rating_difference
from arena_dagster.ratings.categories import category_differences

RULES = ("best", "last")
GATES = {
    "best": "best stage on the selection prompts, paired prompt bootstrap on the held-out test prompts, lower bound > margin",
    "last": "paired prompt bootstrap, lower bound of the rating difference > margin",
}
MIN_BOOTSTRAP = 20
# Fewer prompts than this in a part of the split give an interval too coarse to decide on.
MIN_PART_PROMPTS = 10


class PromotionError(ArenaError, ValueError):
    pass


def split_prompts(prompt_ids: Sequence[str], *, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(selection, test) prompt ids: a prompt is in the selection part when its seeded hash falls below `fraction`.

    A hash, not a shuffle: a prompt stays on its side when the test set grows or other prompts go.
    """
    selection, test = [], []
    for prompt_id in sorted(set(prompt_ids)):
        digest = hashlib.sha256(f"promotion-split|{seed}|{prompt_id}".encode()).digest()
        (selection if int.from_bytes(digest[:8], "big") / 2**64 < fraction else test).append(prompt_id)
    return selection, test


def decide_promotion(
    battles: pl.DataFrame,
    *,
    incumbent: str,
    candidates: Sequence[str] = (),
    rule: str = "best",
    selection_fraction: float = 0.5,
    margin: float = 0.0,
    bootstrap: int = 200,
    seed: int = 0,
    ratings: dict[str, float] | None = None,
    baseline: bool = False,
    style_control: bool = False,
    ci: str = "bootstrap",
    no_regression: Sequence[str] = (),
) -> dict[str, Any]:
    """The decision as a dict: promoted, new_target, candidate, diff, ci_low, ci_high, reason, selection, ...

    `battles`: the round's arena battles (model_a, model_b, winner, question_id).
    `candidates`: the round's trained stage checkpoints in stage order (skipped stages left out).
    `rule`: "best" (select on one part of the prompts, test on the other) or "last" (the
    paper's: the last candidate, tested on every prompt).
    `seed`: seeds the prompt split and the bootstrap.
    `ratings`: the leaderboard's ratings, recorded beside the decision for the history.
    `baseline`: round 0, where the initial target is both candidate and incumbent.
    `style_control`: compare style-controlled ratings (the battles carry the answers' style
    columns, see ratings.with_style_features), so a candidate is not promoted for writing longer
    or more formatted answers that a judge happens to prefer.
    `ci`: "bootstrap" (the paired prompt bootstrap) or "sandwich" (the fit's covariance,
    cluster-robust by prompt: no resampling, `bootstrap` unused).
    `no_regression`: categories (the battles' `category` column) in which the tested candidate
    must not lose significantly to the incumbent (the 95% interval of its difference there lies
    below 0), else it is not promoted; each category's difference is in `categories`.
    """
    if rule not in RULES:
        raise PromotionError(f"unknown promotion rule {rule!r}", "promotion.candidate", f"use one of {', '.join(RULES)}")
    if not 0 < selection_fraction < 1:
        raise PromotionError(
            f"the selection share of the test prompts must be between 0 and 1, got {selection_fraction!r}",
            "promotion.selection_fraction",
            "use e.g. 0.5",
        )
    names = [name for name in candidates if name != incumbent]
    if rule == "last":
        names = names[-1:]
    ratings = ratings or {}
    decision: dict[str, Any] = {
        "rule": rule,
        "candidates": names,
        "incumbent": incumbent,
        "incumbent_rating": ratings.get(incumbent),
        "margin": float(margin),
        "gate": GATES[rule] if ci == "bootstrap" else GATES[rule].replace("paired prompt bootstrap", "paired sandwich interval clustered by prompt"),
        "selection_fraction": float(selection_fraction) if rule == "best" else None,
        "split_seed": int(seed),
        "selection": [],
        "selection_prompts": 0,
        "style_control": bool(style_control),
    }
    if not names:
        return {**decision, "candidate": incumbent, "candidate_rating": ratings.get(incumbent), "promoted": True,
                "new_target": incumbent, "diff": None, "ci_low": None, "ci_high": None, "test_prompts": 0,
                "reason": "baseline: the initial target" if baseline else "no new checkpoint this round: the target stays"}
    models = set(battles["model_a"].to_list()) | set(battles["model_b"].to_list())
    for name in (*names, incumbent):
        if name not in models:
            raise PromotionError(f"{name!r} has no arena battles this round", "arena_battles",
                                 "evaluate every candidate and the incumbent on the arena test set before the gate")
    if no_regression:
        known = set(battles.get_column("category").drop_nulls().unique().to_list()) if "category" in battles.columns else set()
        if unknown := [c for c in no_regression if c not in known]:
            raise PromotionError(f"promotion.no_regression names categories without arena battles: {unknown}",
                                 "promotion.no_regression", f"use categories of the arena test set: {sorted(known)}")
    if ci == "bootstrap" and bootstrap < MIN_BOOTSTRAP:
        raise PromotionError(f"the gate needs a bootstrap of at least {MIN_BOOTSTRAP} replicates for its interval, got {bootstrap}",
                             "promotion.bootstrap", f"set it to {MIN_BOOTSTRAP} or more (200 is the default)")

    def difference(model: str, part: pl.DataFrame) -> dict[str, Any]:
        return rating_difference(part, model, incumbent, bootstrap=bootstrap, bootstrap_unit="prompt", seed=seed,
                                 style_control="style" if style_control else False, ci=ci)

    tested = battles
    chosen = names[-1]
    if len(names) > 1:
        selection_ids, test_ids = split_prompts(battles["question_id"].to_list(), fraction=selection_fraction, seed=seed)
        if min(len(selection_ids), len(test_ids)) < MIN_PART_PROMPTS:
            raise PromotionError(
                f"the arena test set's {len(selection_ids) + len(test_ids)} prompts split into {len(selection_ids)} selection "
                f"and {len(test_ids)} test prompts; each part needs at least {MIN_PART_PROMPTS}",
                "promotion.selection_fraction",
                "use a larger test set, a selection_fraction nearer 0.5, or promotion.candidate: last",
            )
        selecting = battles.filter(pl.col("question_id").is_in(selection_ids))
        tested = battles.filter(pl.col("question_id").is_in(test_ids))
        selection = [{"model": name, **_figures(difference(name, selecting))} for name in names]
        # Ties go to the later stage: the one that carries more of the round's training.
        chosen = max(reversed(selection), key=lambda row: row["diff"])["model"]
        decision.update(selection=selection, selection_prompts=len(selection_ids))
    result = difference(chosen, tested)
    # A difference the battles do not bound (a model that never lost, or never won) says nothing: no promotion on it.
    promoted = result["ci_low"] > margin and not result.get("unbounded")
    part = f"on {tested['question_id'].n_unique()} held-out prompts" if decision["selection"] else "on every test prompt"
    chosen_how = f" (best of {len(names)} on {decision['selection_prompts']} selection prompts)" if decision["selection"] else ""
    controlled = " (style-controlled)" if style_control else ""
    reason = (
        f"{chosen}{chosen_how} - {incumbent} = {result['diff']:+.1f} Elo{controlled} {part}, 95% CI "
        f"[{result['ci_low']:+.1f}, {result['ci_high']:+.1f}]; lower bound {'>' if result['ci_low'] > margin else '<='} "
        f"margin {margin:.1f}" + ("; not promoted: the battles do not bound the ratings" if result.get("unbounded") else "")
    )
    categories = None
    if no_regression:
        categories = category_differences(
            tested, chosen, incumbent, no_regression,
            dict(bootstrap=bootstrap, bootstrap_unit="prompt", seed=seed, style_control="style" if style_control else False, ci=ci))
        if lost := [row for row in categories if row["ci_high"] is not None and row["ci_high"] < 0]:
            promoted = False
            reason += "; not promoted: loses significantly in " + ", ".join(
                f"{row['category']} ({row['diff']:+.1f} [{row['ci_low']:+.1f}, {row['ci_high']:+.1f}])" for row in lost)
        if unmeasured := [row["category"] for row in categories if row["diff"] is None]:
            reason += f"; no_regression not measured in {', '.join(unmeasured)} (no comparable battles on the tested prompts)"
    return {
        **decision,
        "candidate": chosen,
        "candidate_rating": ratings.get(chosen),
        "promoted": promoted,
        "new_target": chosen if promoted else incumbent,
        **_figures(result),
        "test_prompts": tested["question_id"].n_unique(),
        "reason": reason,
        "ci_method": ci,
        **({"categories": [{k: row.get(k) for k in ("category", "battles", "diff", "ci_low", "ci_high", "reason")}
                           for row in categories]} if categories is not None else {}),
    }


def _figures(result: dict[str, Any]) -> dict[str, float]:
    return {key: result[key] for key in ("diff", "ci_low", "ci_high")}
