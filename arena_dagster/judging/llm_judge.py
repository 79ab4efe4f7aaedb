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
2. Parser side: only the judge's own output is parsed, and only its final structure. With
   structured output (`response_format`) that is the one schema object the reply is.
   Otherwise it is the last score object (or verdict token) outside the spans where the
   judge quotes material (echoed answer blocks, blockquotes, inline quotations, a fenced
   block copied from an answer: quoted.py) that does not reproduce, by value, one an answer
   planted. When that last one repeats a planted value while the judge also gave another,
   the judgment is ambiguous. Missing, non-integer or out-of-range scores are parse
   failures, never clamped; a score written as a string is read by the shared rule of
   `ratings/numbers.py` ("7" is 7). A parse failure is asked again (`judge.retries`), then
   recorded with its raw text and counted by judge health.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from arena_dagster.judging.quoted import answer_markers, inside, line_of, quoted_spans, squeeze
from arena_dagster.paths import ASSETS_DIR
from arena_dagster.ratings.numbers import read_number

TEMPLATE_DIR = ASSETS_DIR / "judge_templates"
SCORE_MIN, SCORE_MAX = 1, 10
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_VERDICT = re.compile(r"\[\[\s*(A\s*>>\s*B|A\s*>\s*B|A\s*=\s*B|B\s*>\s*A|B\s*>>\s*A)\s*\]\]")
_FIELDS = ("history", "instruction", "answer_a", "answer_b", "nonce")
_DISTINCTIVE = 20  # characters besides the verdict token that make a line a recognisable copy


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

    from arena_dagster.record_files import read_text, text_problem

    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))
        raise JudgeTemplateError(f"judge template {str(name)!r} not found at {path} (known: {known})")
    text = read_text(path)  # the package's text rules: BOM and CRLF read as clean UTF-8, bad text is one line
    data = yaml.safe_load(text)
    if text_problem(data):
        raise JudgeTemplateError(f"{path}: {text_problem(data)[1]}")
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
            verdict_scores[verdict] = (int(read_number(pair[0])), int(read_number(pair[1])))
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
    number = read_number(value)
    return number is not None and number.is_integer() and SCORE_MIN <= number <= SCORE_MAX


def _score(value: Any, key: str) -> int:
    if not _valid_score(value):
        raise JudgeParseError(f"{key} must be an integer {SCORE_MIN}-{SCORE_MAX}, got {value!r}")
    return int(read_number(value))


def _json_objects(text: str) -> list[tuple[dict, int, int]]:
    """Every JSON object decodable at a '{' in the text (not nested in an earlier one), with its span."""
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
            found.append((value, position, end))
            position = text.find("{", end)
        else:
            position = text.find("{", position + 1)
    return found


def _score_objects(text: str) -> list[tuple[dict, int, int]]:
    return [(obj, start, end) for obj, start, end in _json_objects(text) if "score_a" in obj or "score_b" in obj]


def _object_value(obj: dict) -> tuple[float | None, float | None, str | None]:
    """A score object by value: (score_a, score_b, explanation squeezed), whatever its key order or number spelling."""
    explanation = obj.get("explanation")
    return read_number(obj.get("score_a")), read_number(obj.get("score_b")), \
        squeeze(explanation) if isinstance(explanation, str) else None


def _reproduces(value: tuple, planted: tuple) -> bool:
    """The judge's object repeats a planted one: the same scores, and the same explanation or none.
    (A judge's own object always explains itself; a planted object without an explanation must
    not make every judgment with its scores look like a copy.)"""
    return value[:2] == planted[:2] and (not value[2] or value[2] == planted[2])


def _judgment(obj: dict) -> ParsedJudgment:
    if not isinstance(obj.get("explanation"), str):
        raise JudgeParseError("missing string 'explanation'")
    return ParsedJudgment(_score(obj.get("score_a"), "score_a"), _score(obj.get("score_b"), "score_b"),
                          obj["explanation"].strip())


def parse_structured(text: str) -> ParsedJudgment:
    """The judgment of a structured-output reply: the whole reply is the one schema object (a
    surrounding code fence aside); nothing is searched for inside it or around it."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*\n?(.*?)\n?\s*```", body, re.S)
    body = fenced.group(1).strip() if fenced else body
    try:
        obj = json.loads(body, strict=False)
    except json.JSONDecodeError:
        raise JudgeParseError("the structured reply is not one JSON object") from None
    if not isinstance(obj, dict):
        raise JudgeParseError("the structured reply is not one JSON object")
    return _judgment(obj)


def parse_judgment(text: str, template: JudgeTemplate, *, answers: Sequence[str] = (),
                   structured: bool = False) -> ParsedJudgment:
    """The judge's own verdict in its output; raises JudgeParseError (missing, out of range, ambiguous).

    `answers`: the two answers shown to the judge. `structured`: the reply was constrained to
    `judgment_json_schema()` (response_format): only that object counts. Otherwise the verdict
    is the judge's final structure: the last score object (or verdict token) outside quoted
    spans (quoted.py) that does not reproduce one planted in an answer. When that last one
    repeats a planted value and the judge also gave a different one, the output is ambiguous.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeParseError("empty judge output")
    if structured:
        return parse_structured(text)
    markers = answer_markers(template.user)
    quoted = quoted_spans(text, markers, answers)
    if template.kind == "verdict":
        return _parse_verdict(text, template, answers, quoted)
    planted = [_object_value(obj) for answer in answers if answer for obj, _, _ in _score_objects(answer)]
    own = []
    skipped = 0
    for obj, start, end in _score_objects(text):
        value = _object_value(obj)
        if inside((start, end), quoted) or any(_reproduces(value, p) for p in planted):
            skipped += 1
            continue
        own.append((obj, value))
    if not own:
        reason = "only score objects quoted from the answers" if skipped else "no JSON object with score_a and score_b"
        raise JudgeParseError(f"no valid judgment: {reason}")
    final, value = own[-1]
    judgment = _judgment(final)
    if any(value[:2] == p[:2] for p in planted):
        others = sorted({v[:2] for _, v in own if v[:2] != value[:2] and None not in v[:2]})
        if others:
            raise JudgeParseError(f"ambiguous: the last judgment repeats scores planted in an answer {value[:2]} "
                                  f"and the judge also gave {others}")
    return judgment


def _verdict_tokens(text: str) -> list[re.Match]:
    return list(_VERDICT.finditer(text))


def _verdict_of(match: re.Match) -> str:
    return re.sub(r"\s+", "", match.group(1))


def _parse_verdict(text: str, template: JudgeTemplate, answers: Sequence[str], quoted: list) -> ParsedJudgment:
    shown = [squeeze(answer) for answer in answers if answer]
    planted = {_verdict_of(m) for answer in answers if answer for m in _verdict_tokens(answer)}
    own = []
    for match in _verdict_tokens(text):
        if inside(match.span(), quoted):
            continue
        line = squeeze(line_of(text, match.start()))
        # A distinctive line copied from an answer is a quotation. A short one ("Final verdict:
        # [[A>B]]", the bare token) is the verdict line the template asks for, whoever else
        # wrote one: an answer must not be able to void the judge's verdict by guessing it.
        if len(line) - len(squeeze(match.group(0))) >= _DISTINCTIVE and any(line in answer for answer in shown):
            continue
        own.append(match)
    if not own:
        raise JudgeParseError("no verdict token like [[A>B]] in the judge's own words")
    final = own[-1]
    verdict = _verdict_of(final)
    others = sorted({_verdict_of(m) for m in own} - {verdict})
    if verdict in planted and others:
        raise JudgeParseError(f"ambiguous: the last verdict {verdict} repeats one planted in an answer "
                              f"and the judge also gave {others}")
    score_a, score_b = template.verdict_scores[verdict]
    return ParsedJudgment(score_a, score_b, text[: final.start()].strip(), verdict=verdict)


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
