from __future__ import annotations

import re
from collections import Counter

import pytest

from arena_dagster.prompts.skills import (
    FAMILIES,
    TEMPLATES,
    UnknownFamilyError,
    make_items,
    make_raw_pool,
)
from arena_dagster.prompts.skill_checks import check_answer, normalize_answer


def test_at_least_eight_families_each_with_several_templates():
    assert len(FAMILIES) >= 8
    for family in FAMILIES:
        assert len(TEMPLATES[family]) >= 3, family


def test_make_items_is_deterministic_and_balanced():
    first = make_items(500, seed=7)
    assert first == make_items(500, seed=7)
    assert first != make_items(500, seed=8)
    counts = Counter(item.family for item in first)
    assert set(counts) == set(FAMILIES)
    assert max(counts.values()) - min(counts.values()) <= 1
    for item in first:
        assert 0 <= item.difficulty <= 10
        assert item.prompt and item.reference
        assert item.item_id.startswith(item.family)
        assert check_answer(item.family, item.reference, item.reference)[0] == 10


def test_make_items_uses_every_template_and_a_spread_of_difficulty():
    items = make_items(2000, seed=1)
    for family in FAMILIES:
        of_family = [i for i in items if i.family == family]
        assert {i.template_id for i in of_family} == set(range(len(TEMPLATES[family])))
        difficulties = {i.difficulty for i in of_family}
        assert min(difficulties) <= 3 and max(difficulties) >= 8, (family, difficulties)


@pytest.mark.parametrize("family", ["count_letter", "word_length", "last_letter", "max_number", "add"])
def test_answer_distribution_is_not_dominated_by_one_answer(family):
    items = make_items(1000, seed=3, families=[family])
    counts = Counter(i.reference for i in items)
    assert counts.most_common(1)[0][1] / len(items) < 0.3, counts.most_common(3)


def test_count_letter_answers_cover_zero_to_three():
    items = make_items(300, seed=4, families=["count_letter"])
    assert {i.reference for i in items} == {"0", "1", "2", "3"}
    for item in items:
        match = re.search(r"(?:letter|does|of|many) ([a-z]) .*: ([a-z ]+)$", item.prompt)
        letter, phrase = match[1], match[2]
        assert phrase.count(letter) == int(item.reference), item


def test_family_subset_and_unknown_family():
    items = make_items(40, seed=0, families=["add", "uppercase"])
    assert {i.family for i in items} == {"add", "uppercase"}
    with pytest.raises(UnknownFamilyError, match="nope"):
        make_items(5, seed=0, families=["add", "nope"])


def test_raw_pool_contains_duplicates_near_duplicates_and_junk():
    pool = make_raw_pool(1000, seed=5)
    assert len(pool) == 1000
    assert pool == make_raw_pool(1000, seed=5)
    assert len({r["source_id"] for r in pool}) == 1000
    assert set(pool[0]) == {"source_id", "family", "prompt", "reference", "difficulty"}
    prompts = Counter(r["prompt"] for r in pool)
    assert sum(c - 1 for c in prompts.values()) >= 60  # the 8% exact duplicates (plus natural repeats)
    short = [r for r in pool if len(r["prompt"]) < 10]
    assert 10 <= len(short) <= 30
    squashed = Counter(" ".join(r["prompt"].lower().rstrip(".? ").removeprefix("please ").split()) for r in pool)
    assert len(squashed) < len(prompts) - 40  # near duplicates collapse once normalized
    by_family = Counter(r["family"] for r in pool)
    assert set(by_family) == set(FAMILIES)


def test_raw_pool_rejects_bad_rates():
    with pytest.raises(ValueError, match="exact_dup_rate"):
        make_raw_pool(10, seed=0, exact_dup_rate=1.5)
    with pytest.raises(ValueError, match="below 1"):
        make_raw_pool(10, seed=0, exact_dup_rate=0.5, near_dup_rate=0.5)


@pytest.mark.parametrize(
    "family, reference, answer, expected",
    [
        ("add", "71", "71", 10),
        ("add", "71", " 71. ", 10),
        ("reverse_word", "elppa", "Elppa", 10),
        ("uppercase", "RED CAT", "RED  CAT.", 10),
        ("acronym", "PNG", '"PNG"', 10),
        ("sort_numbers", "2 5 9", "2 5 9", 10),
        ("add", "71", "", 1),
        ("reverse_word", "elppa", "   ", 1),
        ("add", "71", "banana", 1),
        ("reverse_word", "elppa", "xyzqw", 1),
    ],
)
def test_check_answer_extremes(family, reference, answer, expected):
    score, rationale = check_answer(family, reference, answer)
    assert score == expected, rationale
    assert rationale


def test_check_answer_partial_credit_is_ordered():
    assert check_answer("add", "71", "70")[0] > check_answer("add", "71", "17")[0] > 1
    assert check_answer("reverse_word", "elppa", "elppx")[0] > check_answer("reverse_word", "elppa", "exxxa")[0]
    assert 1 < check_answer("uppercase", "RED CAT", "red cat")[0] < 10
    assert check_answer("sort_numbers", "2 5 9", "2 9 5")[0] > check_answer("sort_numbers", "2 5 9", "7 8")[0]
    assert 1 < check_answer("count_letter", "3", "2")[0] < 10
    for family, reference, answer in [("add", "71", "72"), ("last_letter", "t", "s"), ("sort_numbers", "2 5 9", "2, 5, 9")]:
        assert check_answer(family, reference, answer)[0] < 10


def test_case_rules_per_family():
    assert normalize_answer("uppercase", " Red. ") == "Red"
    assert normalize_answer("last_letter", " T. ") == "t"
    assert check_answer("acronym", "PNG", "png")[0] < 10
    with pytest.raises(UnknownFamilyError):
        check_answer("poetry", "x", "x")
