"""LLM judge prompt templates and the strict parser of the judge's output.

Templates live in `assets/judge_templates/<name>.yaml` (versioned by the hash of their text,
so a wording change invalidates cached judgments). Two kinds:
- `scores` (pairwise_v1): the judge returns one JSON object
  {"explanation": str, "score_a": 1-10, "score_b": 1-10} (`judgment_json_schema()` for
  structured output: vLLM guided decoding, OpenAI `response_format`, or a constrained
  decoder for transformers);
- `verdict` (verdict_v1): free text ending with one token such as [[A>B]], mapped to a
  pair of scores by the template's `verdict_scores`.

Injection safety, in two layers:
1. Prompt side: history, instruction and answers sit between BEGIN/END markers carrying a
   nonce derived from the request content (a hash: stable for caching, unknowable to an
   answer written before the request existed), so an answer cannot close its own block.
2. Parser side: only the judge's own output is parsed. A score object (JSON with the full
   schema) is ignored when its text occurs in one of the answers (the judge quoting an
   answer's fake judgment); a verdict token is ignored when it occurs in an answer, unless
   it closes the judge's output (the judge's own verdict line). If the remaining
   candidates disagree the judgment is ambiguous and a parse failure (the caller retries,
   then records the raw text); agreeing duplicates count once. Missing, non-integer or
   out-of-range scores are parse failures, never clamped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from arena_dagster.paths import ASSETS_DIR

TEMPLATE_DIR = ASSETS_DIR / "judge_templates"
SCORE_MIN, SCORE_MAX = 1, 10
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_VERDICT = re.compile(r"\[\[\s*(A\s*>>\s*B|A\s*>\s*B|A\s*=\s*B|B\s*>\s*A|B\s*>>\s*A)\s*\]\]")
_FIELDS = ("history", "instruction", "answer_a", "answer_b", "nonce")


class JudgeParseError(ValueError):
    """The judge's output holds no usable judgment; the message says why."""


class JudgeTemplateError(ValueError):
    pass


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    kind: str  # "scores" | "verdict"
    system: str
    user: str
    version: str
    verdict_scores: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    path: str = ""


@dataclass(frozen=True)
class ParsedJudgment:
    score_a: int
    score_b: int
    explanation: str
    verdict: str = ""


def load_template(name: str | Path) -> JudgeTemplate:
    """A template by name (`pairwise_v1`, `verdict_v1`) or by path to a YAML file."""
    import yaml

    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))
        raise JudgeTemplateError(f"judge template {str(name)!r} not found at {path} (known: {known})")
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise JudgeTemplateError(f"{path}: expected a mapping")
    missing = [key for key in ("kind", "system", "user") if not isinstance(data.get(key), str)]
    if missing:
        raise JudgeTemplateError(f"{path}: missing string field(s) {missing}")
    kind = data["kind"]
    if kind not in ("scores", "verdict"):
        raise JudgeTemplateError(f"{path}: kind must be 'scores' or 'verdict', got {kind!r}")
    unknown = sorted(set(_PLACEHOLDER.findall(data["system"] + data["user"])) - set(_FIELDS))
    if unknown:
        raise JudgeTemplateError(f"{path}: unknown placeholders {unknown} (known: {list(_FIELDS)})")
    verdict_scores: dict[str, tuple[int, int]] = {}
    if kind == "verdict":
        raw = data.get("verdict_scores") or {}
        for verdict in ("A>>B", "A>B", "A=B", "B>A", "B>>A"):
            pair = raw.get(verdict)
            if not (isinstance(pair, list) and len(pair) == 2 and all(_valid_score(v) for v in pair)):
                raise JudgeTemplateError(f"{path}: verdict_scores[{verdict!r}] must be two integers 1-10, got {pair!r}")
            verdict_scores[verdict] = (int(pair[0]), int(pair[1]))
    return JudgeTemplate(
        name=str(data.get("name") or path.stem),
        kind=kind,
        system=data["system"],
        user=data["user"],
        version=f"{data.get('name') or path.stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}",
        verdict_scores=verdict_scores,
        path=str(path),
    )


def _render(text: str, values: Mapping[str, str]) -> str:
    # One pass: text substituted in (an answer containing "{{answer_b}}") is never expanded.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _format_history(history: Sequence[Mapping[str, str]] | str | None) -> str:
    if not history:
        return "(no earlier turns)"
    if isinstance(history, str):
        return history
    lines = []
    for position, message in enumerate(history):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise ValueError(f"history[{position}] needs a string 'content'")
        lines.append(f"{str(message.get('role', 'user')).upper()}: {message['content']}")
    return "\n\n".join(lines)


def request_nonce(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:10]


def build_judge_messages(
    template: JudgeTemplate,
    *,
    history: Sequence[Mapping[str, str]] | str | None,
    instruction: str,
    answer_a: str,
    answer_b: str,
) -> tuple[dict[str, str], ...]:
    """System + user chat messages for one judge game (A shown first)."""
    history_text = _format_history(history)
    values = {
        "history": history_text,
        "instruction": instruction,
        "answer_a": answer_a,
        "answer_b": answer_b,
        "nonce": request_nonce(template.version, history_text, instruction, answer_a, answer_b),
    }
    return (
        {"role": "system", "content": _render(template.system, values).strip()},
        {"role": "user", "content": _render(template.user, values).strip()},
    )


def judgment_json_schema() -> dict[str, Any]:
    """JSON schema of a `scores` judgment (explanation first: the judge reasons, then scores)."""
    score = {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX}
    return {
        "title": "PairwiseJudgment",
        "type": "object",
        "properties": {"explanation": {"type": "string"}, "score_a": score, "score_b": score},
        "required": ["explanation", "score_a", "score_b"],
        "additionalProperties": False,
    }


def _valid_score(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return SCORE_MIN <= value <= SCORE_MAX
    if isinstance(value, float):
        return value.is_integer() and SCORE_MIN <= value <= SCORE_MAX
    return False


def _score(value: Any, key: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not _valid_score(value):
        raise JudgeParseError(f"{key} must be an integer {SCORE_MIN}-{SCORE_MAX}, got {value!r}")
    return int(value)


def _json_objects(text: str) -> list[tuple[dict, str]]:
    """Every JSON object decodable at a '{' in the text, with its exact source span."""
    decoder = json.JSONDecoder(strict=False)  # judges put raw newlines inside strings
    found = []
    position = text.find("{")
    while position >= 0:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            found.append((value, text[position:end]))
            position = text.find("{", end)
        else:
            position = text.find("{", position + 1)
    return found


def _echoed(span: str, answers: Sequence[str]) -> bool:
    squeezed = re.sub(r"\s+", "", span)
    return any(squeezed and squeezed in re.sub(r"\s+", "", answer) for answer in answers if answer)


def parse_judgment(text: str, template: JudgeTemplate, *, answers: Sequence[str] = ()) -> ParsedJudgment:
    """Scores from the judge's output; raises JudgeParseError (missing, out of range, ambiguous).

    `answers`: the two answers shown to the judge; candidates copied from them are ignored.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeParseError("empty judge output")
    if template.kind == "verdict":
        return _parse_verdict(text, template, answers)
    candidates = []
    rejected: list[str] = []
    for obj, span in _json_objects(text):
        if "score_a" not in obj and "score_b" not in obj:
            continue
        if _echoed(span, answers):
            rejected.append("a score object copied from an answer")
            continue
        try:
            if not isinstance(obj.get("explanation"), str):
                raise JudgeParseError("missing string 'explanation'")
            candidates.append(ParsedJudgment(_score(obj.get("score_a"), "score_a"), _score(obj.get("score_b"), "score_b"),
                                             obj["explanation"].strip()))
        except JudgeParseError as err:
            rejected.append(str(err))
    if not candidates:
        reason = "; ".join(dict.fromkeys(rejected)) or "no JSON object with score_a and score_b"
        raise JudgeParseError(f"no valid judgment: {reason}")
    distinct = {(c.score_a, c.score_b) for c in candidates}
    if len(distinct) > 1:
        raise JudgeParseError(f"ambiguous: the output holds {len(distinct)} different judgments {sorted(distinct)}")
    return candidates[-1]


def _parse_verdict(text: str, template: JudgeTemplate, answers: Sequence[str]) -> ParsedJudgment:
    matches = list(_VERDICT.finditer(text))
    final_line = text.rstrip().rsplit("\n", 1)[-1].strip()
    verdicts = []
    for match in matches:
        token = match.group(0)
        is_final = match is matches[-1] and final_line.endswith(token) and len(final_line) - len(token) <= 40
        # The judge's closing verdict is its own; anywhere else, a verdict token that also
        # occurs in an answer is taken for the judge quoting that answer.
        if not is_final and _echoed(token, answers):
            continue
        verdicts.append((re.sub(r"\s+", "", match.group(1)), match.start()))
    if not verdicts:
        raise JudgeParseError("no verdict token like [[A>B]] in the judge output")
    distinct = sorted({v for v, _ in verdicts})
    if len(distinct) > 1:
        raise JudgeParseError(f"ambiguous: the output holds different verdicts {distinct}")
    verdict, position = verdicts[-1]
    score_a, score_b = template.verdict_scores[verdict]
    return ParsedJudgment(score_a, score_b, text[:position].strip(), verdict=verdict)


def expected_score(top_logprobs: Mapping[str, float], *, min_mass: float = 0.05) -> float:
    """G-Eval: the probability-weighted score over the tokens "1".."10" at the score position.

    `top_logprobs` maps candidate next tokens to log-probabilities (as vLLM and the OpenAI
    API return them); tokens are stripped of whitespace and of sentencepiece/BPE space marks,
    other tokens are ignored, and the remaining mass is renormalized. Raises JudgeParseError
    when the score tokens carry less than `min_mass` probability in total. (Tokenizers that
    split "10" into "1","0" make "1" ambiguous; a judge whose output is constrained to one
    score token, or a 1-9 scale, avoids that.)
    """
    mass: dict[int, float] = {}
    for token, logprob in top_logprobs.items():
        cleaned = str(token).replace("\u2581", "").replace("\u0120", "").strip()
        if cleaned.isdigit() and SCORE_MIN <= int(cleaned) <= SCORE_MAX and str(int(cleaned)) == cleaned:
            if logprob is None or (isinstance(logprob, float) and math.isnan(logprob)):
                continue
            mass[int(cleaned)] = mass.get(int(cleaned), 0.0) + math.exp(float(logprob))
    total = sum(mass.values())
    if total < min_mass:
        raise JudgeParseError(f"score tokens carry {total:.3f} probability (< {min_mass}): no usable expected score")
    return sum(score * p for score, p in mass.items()) / total
