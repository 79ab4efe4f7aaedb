"""Constrained decoding of flat JSON objects for local generation (the tokens-allowed mechanism).

The OpenAI-style `response_format` that the `openai` backend passes to a server is, for the
`transformers` backend, enforced here: a `LogitsProcessor` masks every token that would leave
the object's grammar, so a small model cannot produce unparseable output. Supported schemas
are flat objects whose properties are, in order, strings (free text without quotes,
backslashes or control characters, at most `string_tokens` tokens) or integers with a
`minimum` and `maximum` (at most 100 values); that covers the judge's
{"explanation", "score_a", "score_b"} and a difficulty rating. Anything else is a clear
`StructuredOutputError`, not a silently unconstrained generation.

The grammar is a fixed sequence of token segments, tracked in token space and replayed
from the generated ids at every step (stateless, so batching and left padding need no
bookkeeping): forced literal tokens (`{"explanation": "`, `", "score_a": ` ... tokenized
once), a free string closed by the first token of the next literal, and an integer whose
digits are a path through the tokenizations of the allowed values.

`integer_mode="expected"` (G-Eval): at an integer's first token the value is not the
argmax but the probability-weighted mean over the allowed values, rounded half up. Only
values that are one token can be read that way, so with a tokenizer that splits digits
(SmolLM2's) a 1-10 scale becomes 1-9 in this mode. The model's preference is read from its
whole distribution instead of its top token, which small judges need.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from arena_dagster.errors import ArenaError


class StructuredOutputError(ArenaError, ValueError):
    pass


@dataclass(frozen=True)
class ObjectField:
    name: str
    kind: str  # "string" | "integer"
    minimum: int = 0
    maximum: int = 0


def fields_from_response_format(response_format: Any) -> list[ObjectField]:
    """The flat fields of an OpenAI `response_format` ({"type": "json_schema", ...}) or a bare schema."""
    if not isinstance(response_format, dict):
        raise StructuredOutputError(f"response_format must be a mapping, got {type(response_format).__name__}")
    schema = response_format
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema") or {}
        schema = inner.get("schema") if isinstance(inner, dict) else None
    if not isinstance(schema, dict) or schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise StructuredOutputError("response_format: need a JSON schema of type 'object' with 'properties'")
    required = schema.get("required")
    if required is not None and sorted(required) != sorted(schema["properties"]):
        raise StructuredOutputError("response_format: every property must be required (optional fields are not supported)")
    fields: list[ObjectField] = []
    for name, prop in schema["properties"].items():
        kind = prop.get("type") if isinstance(prop, dict) else None
        if kind == "string":
            fields.append(ObjectField(name, "string"))
        elif kind == "integer":
            low, high = prop.get("minimum"), prop.get("maximum")
            if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high - low < 100):
                raise StructuredOutputError(
                    f"response_format: integer property {name!r} needs a minimum and maximum (>= 0, at most 100 values)"
                )
            fields.append(ObjectField(name, "integer", low, high))
        else:
            raise StructuredOutputError(f"response_format: property {name!r} has unsupported type {kind!r} (string, integer)")
    if not fields:
        raise StructuredOutputError("response_format: the object has no properties")
    return fields


@dataclass
class _Segment:
    kind: str  # "literal" | "string" | "integer"
    tokens: tuple[int, ...] = ()  # literal
    values: dict[tuple[int, ...], int] = field(default_factory=dict)  # integer: token path -> value


class ObjectGrammar:
    """The token-level grammar of one flat object for one tokenizer (build once, reuse)."""

    def __init__(
        self, tokenizer: Any, fields: Sequence[ObjectField], *, string_tokens: int = 64, integer_mode: str = "argmax"
    ) -> None:
        if string_tokens < 1:
            raise StructuredOutputError(f"string_tokens must be >= 1, got {string_tokens}")
        if integer_mode not in ("argmax", "expected"):
            raise StructuredOutputError(f"integer_mode must be 'argmax' or 'expected', got {integer_mode!r}")
        self.integer_mode = integer_mode
        self.tokenizer = tokenizer
        self.fields = list(fields)
        self.string_tokens = int(string_tokens)
        self.eos = int(tokenizer.eos_token_id)
        pieces: list[tuple[str, Any]] = []
        opener = "{"
        for position, spec in enumerate(self.fields):
            key = ("" if position == 0 else ", ") + json.dumps(spec.name) + ": "
            pieces.append(("literal", (opener if position == 0 else "") + key + ('"' if spec.kind == "string" else "")))
            pieces.append((spec.kind, spec))
            if spec.kind == "string":
                pieces.append(("literal_close", '"'))
        pieces.append(("literal", "}"))
        # Merge a string's closing quote into the literal that follows it ('", "score_a": ' or '"}').
        merged: list[tuple[str, Any]] = []
        for kind, value in pieces:
            if merged and merged[-1][0] == "literal_close" and kind == "literal":
                merged[-1] = ("literal", merged[-1][1] + value)
            else:
                merged.append((kind, value))
        self.segments: list[_Segment] = []
        for kind, value in merged:
            if kind in ("literal", "literal_close"):
                self.segments.append(_Segment("literal", tokens=tuple(self._encode(value))))
            elif kind == "string":
                self.segments.append(_Segment("string"))
            else:
                paths = {tuple(self._encode(str(v))): v for v in range(value.minimum, value.maximum + 1)}
                if integer_mode == "expected":
                    # The mean is read at the first token: only one-token values can be emitted.
                    paths = {path: v for path, v in paths.items() if len(path) == 1}
                    if not paths:
                        raise StructuredOutputError(f"integer {value.name!r}: no value is a single token")
                self.segments.append(_Segment("integer", values=paths))
        for index, segment in enumerate(self.segments):
            if segment.kind == "string" and (index + 1 >= len(self.segments) or self.segments[index + 1].kind != "literal"):
                raise StructuredOutputError("internal: a string must be followed by a literal")
        self.string_ok = self._string_safe_tokens()
        self.max_new_tokens = sum(
            len(s.tokens) if s.kind == "literal" else self.string_tokens if s.kind == "string" else max(len(p) for p in s.values)
            for s in self.segments
        ) + 1

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.tokenizer.decode(ids) != text:
            raise StructuredOutputError(f"the tokenizer does not round-trip {text!r}")
        return list(ids)

    def _string_safe_tokens(self) -> list[int]:
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        safe = []
        for token_id in range(len(self.tokenizer)):
            if token_id in special:
                continue
            text = self.tokenizer.decode([token_id])
            if not text or "\ufffd" in text or '"' in text or "\\" in text or any(ord(c) < 32 for c in text):
                continue
            safe.append(token_id)
        return safe

    def allowed(self, generated: Sequence[int]) -> tuple[list[int] | None, int | None]:
        """(allowed next tokens, index of the integer segment starting here or None); None: anything (never)."""
        position = 0
        for index, segment in enumerate(self.segments):
            if segment.kind == "literal":
                for offset, token in enumerate(segment.tokens):
                    if position + offset >= len(generated):
                        return [token], None
                    if generated[position + offset] != token:
                        raise StructuredOutputError(f"generation left the grammar at token {position + offset}")
                position += len(segment.tokens)
            elif segment.kind == "string":
                closer = self.segments[index + 1].tokens[0]
                count = 0
                while position < len(generated) and generated[position] != closer:
                    position += 1
                    count += 1
                if position >= len(generated):
                    return ([closer] if count >= self.string_tokens else self.string_ok + [closer]), None
            else:  # integer: follow the digit paths, then hand over to the next literal
                path: tuple[int, ...] = ()
                follower = self.segments[index + 1].tokens[0]
                while True:
                    nexts = sorted({p[len(path)] for p in segment.values if len(p) > len(path) and p[: len(path)] == path})
                    complete = path in segment.values
                    if position >= len(generated):
                        return (nexts + ([follower] if complete else [])), (index if not path else None)
                    token = generated[position]
                    if complete and token == follower:
                        break
                    if token not in nexts:
                        raise StructuredOutputError(f"generation left the grammar at token {position}")
                    path += (token,)
                    position += 1
        return [self.eos], None

    def first_token_values(self, index: int) -> dict[int, int]:
        """First token -> value, for the values of integer segment `index` that are one token long."""
        return {path[0]: value for path, value in self.segments[index].values.items() if len(path) == 1}


def make_logits_processor(grammar: ObjectGrammar, prompt_width: int):
    """A transformers LogitsProcessor enforcing `grammar` on tokens after `prompt_width`."""
    import torch
    from transformers import LogitsProcessor

    integer_mode = grammar.integer_mode

    class _Processor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            mask = torch.full_like(scores, -math.inf)
            for row in range(input_ids.shape[0]):
                generated = input_ids[row, prompt_width:].tolist()
                allowed, integer_index = grammar.allowed(generated)
                if integer_mode == "expected" and integer_index is not None:
                    values = grammar.first_token_values(integer_index)
                    tokens = sorted(values)
                    probabilities = torch.softmax(scores[row, tokens].float(), dim=-1)
                    mean = float(sum(p * values[t] for p, t in zip(probabilities.tolist(), tokens)))
                    # Round half up, then the value whose token is allowed and nearest.
                    best = min(tokens, key=lambda t: (abs(values[t] - math.floor(mean + 0.5)), values[t]))
                    allowed = [best]
                mask[row, allowed] = 0.0
            return scores + mask

    return _Processor()
