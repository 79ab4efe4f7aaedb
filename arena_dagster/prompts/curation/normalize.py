"""Text forms and rows: the keys every step compares, and the language of a conversation.

`normalize` (NFKC, whitespace collapsed, stripped) is the exact-duplicate key; `canonical`
(normalize + casefold + punctuation turned into spaces) feeds shingles, n-grams and
decontamination. A row becomes a `Conversation`: its instruction, history and user turns.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from arena_dagster.profile_schema.curation import CurationError

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


class _PunctuationToSpace(dict):
    """`str.translate`'s table: every punctuation character (Unicode category P) to a space, the rest kept;
    filled as characters are first seen. A Python loop over the characters was a third of curation's per-row work."""

    def __missing__(self, code: int) -> int:
        self[code] = value = 32 if unicodedata.category(chr(code)).startswith("P") else code
        return value


_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def canonical(text: str) -> str:
    folded = normalize(text).casefold()
    return _WS.sub(" ", folded.translate(_PUNCTUATION_TO_SPACE)).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(canonical(text))


@dataclass(frozen=True)
class Conversation:
    instruction: str
    history: tuple[tuple[str, str], ...]
    user_turns: tuple[str, ...]

    @property
    def history_key(self) -> str:
        return "\n".join(f"{role}: {normalize(content)}" for role, content in self.history)

    @property
    def language_text(self) -> str:
        return "\n".join(self.user_turns)


def conversation_of(row: dict, index: int) -> Conversation:
    """The instruction, its history and all user turns; raises CurationError on bad rows."""
    messages = row.get("messages")
    prompt = row.get("prompt")
    history: list[tuple[str, str]] = []
    if messages is not None:
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise CurationError(f"row {index}: 'messages' must be a non-empty list of role/content dicts")
        turns = []
        for position, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) or not isinstance(message.get("role"), str):
                raise CurationError(f"row {index}: messages[{position}] needs string 'role' and 'content'")
            turns.append((message["role"], message["content"]))
        last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
        if last_user is None:
            raise CurationError(f"row {index}: 'messages' has no user turn")
        history = turns[:last_user]
        instruction = prompt if isinstance(prompt, str) else turns[last_user][1]
        user_turns = tuple(content for role, content in turns[: last_user + 1] if role == "user")
    else:
        if not isinstance(prompt, str):
            raise CurationError(f"row {index}: needs a 'prompt' string or 'messages', got prompt={prompt!r}")
        instruction = prompt
        user_turns = (prompt,)
    return Conversation(instruction=instruction, history=tuple(history), user_turns=user_turns)


def texts_of(item: str | dict, where: str) -> tuple[str, ...]:
    """User-side texts of a test item or earlier prompt: a string, or a row dict."""
    if isinstance(item, str):
        return (item,)
    if isinstance(item, dict):
        if isinstance(item.get("turns"), list):
            return tuple(t for t in item["turns"] if isinstance(t, str))
        return conversation_of(item, -1).user_turns
    raise CurationError(f"{where}: expected a string or a row dict, got {type(item).__name__}")


@functools.lru_cache(maxsize=1)
def _language_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float, dict[str, float]]:
    """(top language, its probability, all probabilities) from py3langid."""
    ranking = _language_identifier().rank(text)
    probabilities = {lang: float(p) for lang, p in ranking}
    top, top_p = ranking[0]
    return top, float(top_p), probabilities
