"""Constrained decoding of the judge's JSON for the transformers backend: even a random model parses."""

from __future__ import annotations

import json

import pytest

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams
from arena_dagster.backends.structured import ObjectGrammar, StructuredOutputError, fields_from_response_format
from arena_dagster.backends.transformers_backend import TransformersBackend
from arena_dagster.judging.llm_judge import judgment_json_schema, load_template, parse_judgment

RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "judgment", "schema": judgment_json_schema()}}


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory, tiny_llama):
    """A 1-layer Llama with random weights and a character tokenizer: the worst possible judge."""
    return tiny_llama(tmp_path_factory.mktemp("random_judge"),
                      ["Score answer A and answer B. {\"explanation\": \"fine\", \"score_a\": 10}"], max_positions=512)


def _requests(n: int) -> list[ChatRequest]:
    return [
        ChatRequest(request_id=f"g{k}", messages=({"role": "user", "content": f"Judge pair {k}: A says {k}, B says {k + 1}."},),
                    sampling=SamplingParams(max_tokens=4, temperature=0.9 if k % 2 else 0.0, seed=k))
        for k in range(n)
    ]


@pytest.mark.parametrize("mode", ["argmax", "expected"])
def test_random_model_always_yields_a_parseable_judgment(random_model_dir, mode):
    backend = TransformersBackend(ModelSpec(
        name="random", backend="transformers", path=random_model_dir,
        options={"response_format": RESPONSE_FORMAT, "structured_string_tokens": 12, "structured_integers": mode,
                 "batch_size": 3},
    ))
    template = load_template("pairwise_v1")
    completions = backend.generate(_requests(8))
    for completion in completions:
        parsed = parse_judgment(completion.text, template)
        assert 1 <= parsed.score_a <= 10 and 1 <= parsed.score_b <= 10
        assert json.loads(completion.text).keys() == {"explanation", "score_a", "score_b"}
        assert completion.finish_reason == "stop"
        if mode == "expected":  # one-token values only: 10 is two digits with this tokenizer
            assert parsed.score_a <= 9 and parsed.score_b <= 9


def test_integer_paths_cover_multi_token_values(random_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    fields = fields_from_response_format({"type": "object", "required": ["n"],
                                          "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 12}}})
    grammar = ObjectGrammar(tokenizer, fields)
    prefix = tokenizer('{"n": 1', add_special_tokens=False)["input_ids"]
    allowed, _ = grammar.allowed(prefix)
    decoded = sorted(tokenizer.decode([t]) for t in allowed)
    assert decoded == ["0", "1", "2", "}"]  # 10, 11, 12 or the value 1 itself
    done = tokenizer('{"n": 12}', add_special_tokens=False)["input_ids"]
    assert grammar.allowed(done)[0] == [tokenizer.eos_token_id]
    with pytest.raises(StructuredOutputError, match="left the grammar"):
        grammar.allowed(tokenizer('{"n": 13', add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"x": {"type": "number"}}}, "unsupported type"),
    ({"type": "object", "properties": {"x": {"type": "integer"}}}, "minimum and maximum"),
    ({"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "string"}}, "required": ["x"]}, "required"),
    ({"type": "array"}, "type 'object'"),
])
def test_unsupported_schemas_are_clear_errors(schema, message):
    with pytest.raises(StructuredOutputError, match=message):
        fields_from_response_format({"type": "json_schema", "json_schema": {"schema": schema}})
    with pytest.raises(StructuredOutputError):
        TransformersBackend(ModelSpec(name="m", backend="transformers", path="x",
                                      options={"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}))
