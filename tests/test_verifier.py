from __future__ import annotations

import re

from arena_dagster.judging.verifier import judge_pair
from arena_dagster.prompts.skills import make_items


def _judge(answer_a: str, answer_b: str, family: str = "add", reference: str = "71") -> dict:
    return judge_pair(family=family, reference=reference, prompt="Add 23 and 48.", answer_a=answer_a, answer_b=answer_b)


def test_verdict_shape_and_raw_text():
    verdict = _judge("71", "70")
    assert set(verdict) == {"score_a", "score_b", "explanation", "raw"}
    assert verdict["score_a"] == 10 and 1 < verdict["score_b"] < 10
    match = re.fullmatch(r"Assistant A: (\d+)\nAssistant B: (\d+)\nExplanation: (.+)", verdict["raw"], re.S)
    assert match and (int(match[1]), int(match[2])) == (verdict["score_a"], verdict["score_b"])
    assert match[3] == verdict["explanation"] and "A is better" in verdict["explanation"]


def test_position_independent_and_deterministic():
    for item in make_items(60, seed=11):
        wrong = item.reference[::-1] + "x"
        forward = judge_pair(family=item.family, reference=item.reference, prompt=item.prompt, answer_a=item.reference, answer_b=wrong)
        backward = judge_pair(family=item.family, reference=item.reference, prompt=item.prompt, answer_a=wrong, answer_b=item.reference)
        assert (forward["score_a"], forward["score_b"]) == (backward["score_b"], backward["score_a"])
        assert forward["score_a"] == 10 and forward["score_b"] < 10
        assert forward == judge_pair(family=item.family, reference=item.reference, prompt=item.prompt, answer_a=item.reference, answer_b=wrong)


def test_ties_and_empty_answers():
    assert _judge("", "")["score_a"] == _judge("", "")["score_b"] == 1
    assert "tie" in _judge("71", "71.")["explanation"]
    verdict = _judge("", "71")
    assert (verdict["score_a"], verdict["score_b"]) == (1, 10) and "B is better" in verdict["explanation"]
