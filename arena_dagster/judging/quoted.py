"""Where a judge's output quotes the material it judged, so the parser reads only the judge's own words.

A judge explaining its verdict often reproduces part of an answer, and an answer may carry a
fake score object or verdict token on purpose. The judge rarely reproduces it byte for byte
(keys reordered, `10.0` for `10`, a `\\u0027` escape, a `> ` prefix), so the parser does not
look for copies of the answers' bytes; it leaves out every span of the output that is a
quotation:
- an answer block the judge echoes: from an opening answer marker of the template
  (`[BEGIN ANSWER A ...]`, or arena-hard's `[The Start of Assistant A's Answer]`) to the
  closing one (an opening marker left unclosed quotes nothing: it is a mention);
- markdown blockquote lines (`> ...`);
- inline quotations on one line: "...", '...', “...”, ‘...’, `...` (an apostrophe inside a
  word, as in "B's", opens none);
- a fenced code block whose text occurs in an answer (a judge often fences its own JSON, so
  a fence alone quotes nothing).
Score objects and verdict tokens that the answers hold are compared by value (`planted_*`):
the parser also skips a reproduction outside these spans, and refuses a final verdict that
repeats a planted one while the judge said otherwise.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence

Span = tuple[int, int]

_BLOCKQUOTE = re.compile(r"(?m)^[ \t]*>.*$")
_INLINE_QUOTES = re.compile(
    r"""(?<![\w"])"[^"\n]+"(?![\w"])"""  # "..."
    r"""|(?<!\w)'[^'\n]+'(?!\w)"""  # '...', not the apostrophe of "B's"
    r"|“[^”\n]+”|‘[^’\n]+’"  # typographic quotes
    r"|(?<!`)`[^`\n]+`(?!`)"  # inline code
)
_FENCE = re.compile(r"(?ms)^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$")
_NONCE = "{{nonce}}"
# Markers a judge may echo whatever the template: ours and arena-hard's / MT-Bench's.
_GENERIC_MARKERS = (
    (r"\[\s*BEGIN\s+ANSWER\b[^\]\n]*\]", r"\[\s*END\s+ANSWER\b[^\]\n]*\]"),
    (r"\[\s*The\s+Start\s+of\s+Assistant\b[^\]\n]*\]", r"\[\s*The\s+End\s+of\s+Assistant\b[^\]\n]*\]"),
)


def squeeze(text: str) -> str:
    """Text compared for reproduction: no whitespace, case folded."""
    return re.sub(r"\s+", "", text).casefold()


def _marker_pattern(line: str) -> str:
    parts = [r"\s*".join(re.escape(word) for word in part.split()) for part in line.strip().split(_NONCE)]
    # A judge echoing a marker may drop or shorten the nonce.
    return r"\s*[^\]\n]{0,64}?\s*".join(parts)


@functools.lru_cache(maxsize=32)
def answer_markers(user_template: str) -> tuple[tuple[re.Pattern, re.Pattern], ...]:
    """(opening, closing) patterns of the answer blocks: the lines around `{{answer_a}}` and
    `{{answer_b}}` in the template's user message, and the generic markers above."""
    lines = [line for line in user_template.splitlines() if line.strip()]
    pairs = list(_GENERIC_MARKERS)
    for field in ("answer_a", "answer_b"):
        at = next((n for n, line in enumerate(lines) if "{{" + field + "}}" in line), None)
        if at is None or at == 0 or at + 1 >= len(lines):
            continue
        opening, closing = lines[at - 1], lines[at + 1]
        if "{{" in opening.replace(_NONCE, "") or "{{" in closing.replace(_NONCE, ""):
            continue  # not marker lines: the answer sits inside running text
        pairs.append((_marker_pattern(opening), _marker_pattern(closing)))
    return tuple((re.compile(o, re.I), re.compile(c, re.I)) for o, c in dict.fromkeys(pairs))


def quoted_spans(text: str, markers: Sequence[tuple[re.Pattern, re.Pattern]], answers: Iterable[str]) -> list[Span]:
    """The spans of `text` that quote material (see the module's docstring)."""
    spans: list[Span] = []
    for opening, closing in markers:
        for start in opening.finditer(text):
            end = closing.search(text, start.end())
            if end:
                spans.append((start.start(), end.end()))
    spans.extend(m.span() for m in _BLOCKQUOTE.finditer(text))
    spans.extend(m.span() for m in _INLINE_QUOTES.finditer(text))
    shown = [squeeze(answer) for answer in answers if answer]
    for fence in _FENCE.finditer(text):
        body = squeeze(fence.group(2))
        if body and any(body in answer for answer in shown):
            spans.append(fence.span())
    return spans


def inside(span: Span, spans: Iterable[Span]) -> bool:
    return any(start <= span[0] and span[1] <= end for start, end in spans)


def line_of(text: str, position: int) -> str:
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    return text[start : end if end >= 0 else len(text)]
