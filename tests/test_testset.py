from __future__ import annotations

from collections import Counter

import pytest

from arena_dagster.prompts.testset import TestSetError, build_testset, testset_version

TOPICS = {
    "cooking": ["Give me a recipe for banana bread.", "How long should I bake a chocolate cake?",
                "What spices go well in a vegetable curry recipe?", "How do I make fresh pasta dough at home?",
                "What is a good recipe for a quick weeknight dinner?"],
    "code": ["Write a Python function that reverses a linked list.", "How do I read a CSV file in Python with pandas?",
             "Write a Python function that checks if a string is a palindrome.",
             "Explain Python list comprehensions with a code example.", "Write a Python class for a simple bank account."],
    "travel": ["What should I pack for a holiday trip to Iceland?", "Plan a three-day travel itinerary for Rome.",
               "Which cities should I visit on a trip to Japan?", "What are the best tourist attractions in Lisbon?",
               "How should I plan a backpacking trip through Europe?"],
    "health": ["How many hours of sleep does an adult need to stay healthy?", "What are the symptoms of dehydration?",
               "How can I lower my blood pressure naturally?", "What are the health benefits of regular exercise?",
               "Which vitamins are important for a healthy immune system?"],
}


def candidates() -> list[dict]:
    return [{"prompt": p, "topic": topic, "difficulty": (i * 7 + len(p)) % 11}
            for topic, prompts in TOPICS.items() for i, p in enumerate(prompts)]


def test_diverse_part_spreads_over_topics_and_hard_part_takes_the_top_scores():
    rows = candidates() + [dict(candidates()[0])]  # a duplicate candidate is taken once at most
    testset = build_testset(rows, n_clusters=4, per_cluster=1, n_hard=3, difficulty="difficulty", seed=0, pick="central")
    diverse = [r for r in testset.rows if r["subset"] == "diverse"]
    hard = [r for r in testset.rows if r["subset"] == "hard"]
    assert Counter(r["topic"] for r in diverse) == {"cooking": 1, "code": 1, "travel": 1, "health": 1}
    assert len(hard) == 3 and not {r["prompt"] for r in hard} & {r["prompt"] for r in diverse}
    remaining = [r["difficulty"] for r in candidates() if r["prompt"] not in {d["prompt"] for d in diverse}]
    assert sorted((r["difficulty_score"] for r in hard), reverse=True) == sorted(remaining, reverse=True)[:3]
    assert {r["testset_version"] for r in testset.rows} == {testset.version}
    assert testset.stats["distinct_candidates"] == 20
    sampled = build_testset(rows, n_clusters=4, per_cluster=1, seed=0)
    assert len({r["topic"] for r in sampled.rows}) >= 3 and {r["cluster"] for r in sampled.rows} == {0, 1, 2, 3}


def test_version_is_a_content_hash():
    first = build_testset(candidates(), n_clusters=4, per_cluster=2, n_hard=2, difficulty="difficulty", seed=1)
    again = build_testset(candidates()[::-1], n_clusters=4, per_cluster=2, n_hard=2, difficulty="difficulty", seed=1)
    assert first.version == testset_version(first.rows)
    assert testset_version(first.rows[::-1]) == first.version
    changed = [dict(r) for r in first.rows]
    changed[0]["prompt"] += " Please be brief."
    assert testset_version(changed) != first.version
    assert {r["prompt"] for r in again.rows if r["subset"] == "hard"} <= {r["prompt"] for r in candidates()}


def test_callable_difficulty_and_errors():
    testset = build_testset(candidates(), n_clusters=2, per_cluster=1, n_hard=2,
                            difficulty=lambda row: len(row["prompt"]), seed=0)
    diverse = {r["prompt"] for r in testset.rows if r["subset"] == "diverse"}
    expected = sorted((len(r["prompt"]) for r in candidates() if r["prompt"] not in diverse), reverse=True)[:2]
    assert [r["difficulty_score"] for r in testset.rows if r["subset"] == "hard"] == expected
    with pytest.raises(TestSetError, match="needs a difficulty"):
        build_testset(candidates(), n_clusters=2, n_hard=1)
    with pytest.raises(TestSetError, match="fewer than n_clusters"):
        build_testset(candidates()[:3], n_clusters=4)
    bad = [dict(r, difficulty="hard") for r in candidates()]
    with pytest.raises(TestSetError, match="difficulty must be a number"):
        build_testset(bad, n_clusters=2, per_cluster=1, n_hard=30, difficulty="difficulty")
