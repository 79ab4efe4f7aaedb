"""A judge ensemble: every member judges every game; the game's scores combine theirs.

`judge: {kind: ensemble, judges: [...], combine: mean | majority}`. Members are verifier or
LLM judges with distinct names. A game's verdict needs every member's: a member whose output
still does not parse after its retries leaves the game unparsed (the battle is incomplete and
judge health counts it, as for a single judge), never decided by the others alone.

- mean: each side's score is the members' mean, rounded half to even onto the 1-10 scale
  (members scoring 7-6 and 6-7 give 6.5-6.5: a tie at 6-6).
- majority: each member votes A, B or tie (the sign of its score difference); a verdict more
  than half the members give wins, with the rounded mean scores of the members who gave it
  (the loser kept at least one point below the winner, so rounding never turns a win into a
  tie); without a majority the game is a tie at the members' rounded mean score.

The members' own scores travel in the game's `raw` text as JSON ({"members": [{judge,
score_a, score_b, parse_ok, error}]}); judge health reads them there for the members'
agreement and each member's position consistency (dbt_like_sql/macros/judge_health.sql).
"""

from __future__ import annotations

import json
from typing import Sequence

from arena_dagster.judging.battles import Judge, JudgeItem, JudgeResult
from arena_dagster.profile_schema.judges import EnsembleJudge as EnsembleSettings

VERSION_PREFIX = "ensemble("  # judge health finds ensemble games by it


def _sign(a: float, b: float) -> int:
    return (a > b) - (a < b)


def combine_scores(scores: Sequence[tuple[int, int]], how: str) -> tuple[int, int]:
    """One game's (score_a, score_b) from every member's (see the module docstring)."""
    if how == "mean":
        return round(sum(a for a, _ in scores) / len(scores)), round(sum(b for _, b in scores) / len(scores))
    votes = [_sign(a, b) for a, b in scores]
    winner = next((v for v in (1, -1, 0) if votes.count(v) * 2 > len(votes)), None)
    if winner is None or winner == 0:
        level = round(sum(a + b for a, b in scores) / (2 * len(scores)))
        return level, level
    chosen = [pair for pair, vote in zip(scores, votes) if vote == winner]
    mean_a = round(sum(a for a, _ in chosen) / len(chosen))
    mean_b = round(sum(b for _, b in chosen) / len(chosen))
    if winner == 1:
        return mean_a, max(1, min(mean_b, mean_a - 1))
    return max(1, min(mean_a, mean_b - 1)), mean_b


class EnsembleJudge:
    """Every member judges every game; see the module docstring."""

    def __init__(self, settings: EnsembleSettings, members: Sequence[Judge]) -> None:
        # The schema has checked the members (two or more, verifier or llm, distinct names) and `combine`;
        # `judges.make_judge` builds them.
        self.combine = settings.combine
        self.members = list(members)
        self.name = settings.name
        self.version = f"{VERSION_PREFIX}{self.combine})|" + "|".join(f"{m.name}={m.version}" for m in self.members)

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        items = list(items)
        verdicts = []
        for member in self.members:
            results = member.judge(items)
            if len(results) != len(items):
                raise RuntimeError(f"judge {member.name} returned {len(results)} results for {len(items)} games")
            verdicts.append(results)
        return [self._combined([results[k] for results in verdicts]) for k in range(len(items))]

    def _combined(self, results: list[JudgeResult]) -> JudgeResult:
        raw = json.dumps({"members": [
            {"judge": member.name, "score_a": r.score_a if r.parse_ok else None,
             "score_b": r.score_b if r.parse_ok else None, "parse_ok": r.parse_ok, "error": r.error, "raw": r.raw}
            for member, r in zip(self.members, results)]})
        explanation = "\n".join(f"{member.name}: {r.explanation}" for member, r in zip(self.members, results))
        attempts = max(r.attempts for r in results)
        failed = [f"{member.name}: {r.error or 'unparsed'}" for member, r in zip(self.members, results) if not r.parse_ok]
        if failed:
            return JudgeResult(None, None, explanation, raw, False, error="; ".join(failed), attempts=attempts)
        score_a, score_b = combine_scores([(r.score_a, r.score_b) for r in results], self.combine)
        return JudgeResult(score_a, score_b, explanation, raw, True, attempts=attempts)
