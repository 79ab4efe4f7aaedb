"""Model names as they enter from files, profiles and the command line: names that print alike are one name or an error.

A model rated under `gpt-4` and again under `gpt-4 `, `GPT-4`, a decomposed `café` or a name
holding a zero-width space is two models that print alike. Every name that enters goes
through `normalize_name` (Unicode NFC, surrounding whitespace stripped, invisible and control
characters refused), and the names one input holds are checked together (`NameBook.check`):
two that are equal after case-folding are refused with one line naming both and where each
was first seen. A rename (a `from,to` CSV) merges spellings on purpose, before the check.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from arena_dagster.errors import ArenaError

# Format (zero-width space and joiners, word joiner, byte-order mark, soft hyphen...), control,
# surrogate and private-use characters, and line or paragraph separators: none prints as itself.
_INVISIBLE = {"Cf", "Cc", "Cs", "Co", "Zl", "Zp"}
CASE_FIX = "use one spelling, or merge them on purpose with --rename FILE.csv (columns from,to)"
RENAME_FIX = "remove it, or map the name to a clean one with --rename FILE.csv (columns from,to)"


class ModelNameError(ArenaError, ValueError):
    """A model name that is empty, holds a character that does not print as itself, or differs from another only in case."""


def _unseen(character: str) -> bool:
    category = unicodedata.category(character)
    return category in _INVISIBLE or (category == "Zs" and character != " ")  # a no-break space prints as a space


def spelling(value: str) -> str:
    """`value` in Unicode NFC without surrounding whitespace: the form names are compared in."""
    return unicodedata.normalize("NFC", value).strip()


def normalize_name(value: object, what: str = "model name", where: str | None = None, fix: str = "remove it") -> str:
    """`value` in NFC without surrounding whitespace; ModelNameError (one line naming `what` and
    `where`) when it is not a string, is empty, or holds an invisible, control or non-ASCII space character."""
    if not isinstance(value, str):
        raise ModelNameError(f"{what} must be text, got {value!r}", where)
    name = spelling(value)
    if not name:
        raise ModelNameError(f"{what} {value!r} is empty", where, "give the model a name")
    hidden = next((ch for ch in name if _unseen(ch)), None)
    if hidden is not None:
        raise ModelNameError(
            f"{what} {value!r} holds U+{ord(hidden):04X} ({unicodedata.name(hidden, 'a control character')}), "
            "which does not print as itself", where, fix,
        )
    return name


def fold(name: str) -> str:
    """The key two names that differ only in case share."""
    return unicodedata.normalize("NFC", name.casefold())


def check_distinct(first_seen: Mapping[str, str | None], fix: str = CASE_FIX) -> None:
    """ModelNameError naming the first two names of `first_seen` ({name: where it was first seen})
    that are equal after case-folding."""
    by_fold: dict[str, str] = {}
    for name, where in first_seen.items():
        other = by_fold.setdefault(fold(name), name)
        if other != name:
            places = " and ".join(dict.fromkeys(p for p in (first_seen[other], where) if p))
            raise ModelNameError(f"model names {other!r} and {name!r} differ only in case", places or None, fix)


class NameBook:
    """The model names of one input: each normalized, renamed, and remembered with where it was first seen.

    `rename` maps a spelling (compared in NFC without surrounding whitespace, so a name with an
    invisible character can be mapped away) to the name to rate it as; mapping two spellings to
    one name merges them on purpose (`merged` lists them).
    """

    def __init__(self, rename: Mapping[str, str] | None = None, fix: str = CASE_FIX) -> None:
        self.rename = {spelling(source): target for source, target in (rename or {}).items()}
        self.fix = fix
        self.first_seen: dict[str, str | None] = {}
        self._spellings: dict[str, set[str]] = {}

    def add(self, value: object, where: str | None = None, what: str = "model name", *, spelled: bool = True) -> str:
        """The name `value` is rated as (normalized, then renamed). `spelled=False` for a name that
        refers to models (a --baseline, an --anchor): it is checked, but is not a spelling the rename merges."""
        target = self.rename.get(spelling(value)) if isinstance(value, str) else None
        name = target if target is not None else normalize_name(value, what, where, RENAME_FIX)
        self.first_seen.setdefault(name, where)
        if spelled:
            self._spellings.setdefault(name, set()).add(spelling(value) if target is not None else name)
        return name

    def check(self) -> None:
        """ModelNameError when two names seen differ only in case."""
        check_distinct(self.first_seen, self.fix)

    @property
    def merged(self) -> dict[str, list[str]]:
        """{name: the spellings the rename merged into it} for names that more than one spelling became."""
        return {name: sorted(seen) for name, seen in sorted(self._spellings.items()) if len(seen) > 1}
