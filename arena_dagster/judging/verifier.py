"""The embedded default's judge: scores both answers against the item's checkable reference.

It writes the same text an LLM judge is asked to write ("Assistant A: 7\\nAssistant B: 3\\n
Explanation: ..."), so the parsing, two-game combination and lineage code paths are the same
for both. Each answer is scored on its own, which makes the verdict position-independent.
"""

from __future__ import annotations

from arena_dagster.prompts.skill_checks import check_answer


def format_verdict(score_a: int, score_b: int, explanation: str) -> str:
    return f"Assistant A: {score_a}\nAssistant B: {score_b}\nExplanation: {explanation}"


def judge_pair(*, family: str, reference: str, prompt: str, answer_a: str, answer_b: str) -> dict:
    """Score answer A and answer B 1-10 against `reference`; `prompt` is kept for the judge record's shape."""
    score_a, why_a = check_answer(family, reference, answer_a)
    score_b, why_b = check_answer(family, reference, answer_b)
    if score_a > score_b:
        verdict = "A is better"
    elif score_b > score_a:
        verdict = "B is better"
    else:
        verdict = "tie"
    explanation = f"A: {why_a}; B: {why_b}; {verdict}."
    return {
        "score_a": score_a,
        "score_b": score_b,
        "explanation": explanation,
        "raw": format_verdict(score_a, score_b, explanation),
    }
