"""Judges behind one interface: the verifier (embedded default) and, later, LLM judges."""

from __future__ import annotations

from typing import Any, Sequence

from arena_dagster.judging.battles import Judge, JudgeItem, JudgeResult


class JudgeConfigError(ValueError):
    pass


class VerifierJudge:
    """Scores both answers 1-10 against the checkable reference of a skills prompt."""

    version = "verifier-v1"

    def __init__(self, name: str = "verifier") -> None:
        self.name = name

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        from arena_dagster.judging.verifier import judge_pair

        results = []
        for item in items:
            if not item.reference:
                raise JudgeConfigError(f"prompt {item.prompt_id} has no reference: the verifier judge cannot score it")
            verdict = judge_pair(
                family=item.family,
                reference=item.reference,
                prompt=item.prompt,
                answer_a=item.answer_a,
                answer_b=item.answer_b,
            )
            scores_ok = all(isinstance(verdict[k], int) and 1 <= verdict[k] <= 10 for k in ("score_a", "score_b"))
            results.append(
                JudgeResult(
                    score_a=verdict["score_a"] if scores_ok else None,
                    score_b=verdict["score_b"] if scores_ok else None,
                    explanation=verdict["explanation"],
                    raw=verdict["raw"],
                    parse_ok=scores_ok,
                    error="" if scores_ok else "score outside 1-10",
                )
            )
        return results


def make_judge(config: dict[str, Any]) -> Judge:
    kind = config.get("kind", "verifier")
    if kind == "verifier":
        return VerifierJudge(name=config.get("name", "verifier"))
    raise JudgeConfigError(f"unknown judge kind {kind!r} (known: verifier)")
