"""One rule for reading a score that a model or another tool wrote as JSON: the judge parser
(`judging/llm_judge.py`) and the grade importer (`importers.read_grades`) both use it, so the
same value is a number, or not, everywhere.

A JSON number is a number (`10`, `10.0` and `1e1` are ten); a string is a number only when it
is a plain decimal (`"7"`, `" 9.5 "`, `"10.0"`), which is how spreadsheets and some judges
write one. Anything else is not a number and is never guessed at: booleans, `"7/10"`,
`"seven"`, `"1e1"`, `"NaN"`, infinities, lists, null.
"""

from __future__ import annotations

import math
import re
from typing import Any

_PLAIN_DECIMAL = re.compile(r"[+-]?\d+(?:\.\d+)?")


def read_number(value: Any) -> float | None:
    """The number `value` holds under the rule above, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _PLAIN_DECIMAL.fullmatch(text):
            return None
        value = float(text)
    if not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None
