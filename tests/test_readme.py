"""The README stays true: its bad-input table has 30+ cases and every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_bad_input_case_names_a_test_that_exists():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("### Bad input, and what happens"):]
    table = table[: table.index("\n## ")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    assert len(rows) >= 30
    for row in rows:
        references = re.findall(r"`(test_\w+)::(test_\w+)`", row) or re.findall(r"`(test_\w+)`", row)
        assert references, row
        for reference in references:
            module, *function = reference if isinstance(reference, tuple) else (reference,)
            source = (REPO / "tests" / f"{module}.py").read_text(encoding="utf-8")
            for name in function:
                assert re.search(rf"^def {name}\(", source, re.M), f"{module}::{name} named in the README does not exist"


def test_the_screenshots_the_readme_shows_exist():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (REPO / path).is_file(), path
