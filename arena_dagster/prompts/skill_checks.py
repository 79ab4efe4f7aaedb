"""How a skill item's answer is checked: a deterministic score 1-10 against its reference.

The verifier judge (judging/verifier.py) scores both answers of a battle with `check_answer`;
the items and their references come from prompts/skills.py.
"""

from __future__ import annotations

import re

from arena_dagster.profile_schema.training import FAMILIES
from arena_dagster.prompts.skills import UnknownFamilyError

# Families whose reference is a single integer: scored by numeric closeness.
NUMERIC_FAMILIES = frozenset({"add", "count_letter", "max_number", "min_number", "word_length"})
# Families where letter case is part of the answer.
CASE_SENSITIVE_FAMILIES = frozenset({"uppercase", "acronym"})

_INT_RE = re.compile(r"-?\d+")


def normalize_answer(family: str, text: str) -> str:
    """Trim whitespace, surrounding quotes and a trailing period; fold case where case is not asked."""
    out = (text or "").strip()
    out = out.rstrip(".").strip()
    if len(out) >= 2 and out[0] == out[-1] and out[0] in "'\"`":
        out = out[1:-1].strip()
    out = " ".join(out.split())
    if family not in CASE_SENSITIVE_FAMILIES:
        out = out.lower()
    return out


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _string_score(reference: str, answer: str) -> tuple[int, str]:
    distance = edit_distance(reference, answer)
    similarity = max(0.0, 1.0 - distance / max(len(reference), len(answer), 1))
    score = max(1, min(9, 1 + round(8 * similarity)))
    return score, f"edit distance {distance} from the reference"


def _numeric_score(reference: str, answer: str) -> tuple[int, str]:
    found = _INT_RE.findall(answer)
    if not found:
        return 1, "no number in the answer"
    expected = int(reference)
    if int(found[0]) == expected:
        return 8, "right number, but extra text around it"
    got = int(found[0])
    error = abs(got - expected)
    relative = error / max(abs(expected), 5)
    score = max(2, min(8, 2 + round(6 * (1.0 - min(1.0, relative)))))
    return score, f"off by {error}"


def _sequence_score(reference: str, answer: str) -> tuple[int, str]:
    expected = [int(x) for x in reference.split()]
    got = [int(x) for x in _INT_RE.findall(answer)]
    if not got:
        return 1, "no numbers in the answer"
    if got == expected:
        return 9, "right order, unusual formatting"
    in_place = sum(1 for x, y in zip(expected, got) if x == y) / len(expected)
    remaining = list(expected)
    shared = 0
    for x in got:
        if x in remaining:
            remaining.remove(x)
            shared += 1
    overlap = shared / max(len(expected), len(got))
    score = max(2, min(8, 2 + round(6 * (0.5 * in_place + 0.5 * overlap))))
    return score, f"{shared}/{len(expected)} numbers kept, {round(in_place * len(expected))} in place"


def check_answer(family: str, reference: str, answer: str) -> tuple[int, str]:
    """Score `answer` 1-10 against `reference`: 10 exactly right, partial credit below, 1 empty/garbage."""
    if family not in FAMILIES:
        raise UnknownFamilyError(f"unknown skill family {family!r} (known: {', '.join(FAMILIES)})")
    expected = normalize_answer(family, reference)
    got = normalize_answer(family, answer)
    if not got:
        return 1, "empty answer"
    if got == expected:
        return 10, "exactly right"
    if family in NUMERIC_FAMILIES:
        return _numeric_score(expected, got)
    if family == "sort_numbers":
        return _sequence_score(expected, got)
    if family in CASE_SENSITIVE_FAMILIES and got.lower() == expected.lower():
        return 7, "right letters, wrong case"
    return _string_score(expected, got)
