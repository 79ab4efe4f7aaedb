from __future__ import annotations

import pytest

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.transformers_backend import BackendConfigError, TransformersBackend
from arena_dagster.prompts.skills import make_items


def _requests(n: int, sampling: SamplingParams = SamplingParams(max_tokens=8)) -> list[ChatRequest]:
    return [ChatRequest(request_id=f"r{k}", messages=user_messages(i.prompt), sampling=sampling) for k, i in enumerate(make_items(n, seed=5))]


def test_chat_template_renders_and_generation_prompt_ends_with_assistant_tag(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Add 1 and 2."}], add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>Add 1 and 2.<|assistant|>"
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}], tokenize=False
    )
    assert full == text + "3<|end|>"
    assert tokenizer.decode(tokenizer("Reverse 'abc'.", add_special_tokens=False)["input_ids"]) == "Reverse 'abc'."
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|end|>"


def test_batched_generation_keeps_order_and_matches_single_requests(tiny_model_dir):
    backend = TransformersBackend(ModelSpec(name="tiny", backend="transformers", path=tiny_model_dir, options={"batch_size": 7, "threads": 1}))
    requests = _requests(20)
    completions = backend.generate(requests)
    assert [c.request_id for c in completions] == [r.request_id for r in requests]
    for request, completion in zip(requests[:6], completions[:6]):
        alone = backend.generate([request])[0]
        assert alone.text == completion.text  # left padding must not change a greedy answer
        assert alone.tokens_in == completion.tokens_in
    for completion in completions:
        assert completion.finish_reason in ("stop", "length")
        assert 1 <= completion.tokens_out <= 8 and completion.latency_s > 0
        if completion.finish_reason == "length":
            assert completion.tokens_out == 8


def test_sampling_is_seeded_and_empty_input(tiny_model_dir):
    backend = TransformersBackend(ModelSpec(name="tiny", backend="transformers", path=tiny_model_dir, options={"threads": 1}))
    sampled = _requests(6, SamplingParams(max_tokens=8, temperature=1.0, seed=3))
    assert [c.text for c in backend.generate(sampled)] == [c.text for c in backend.generate(sampled)]
    assert backend.generate([]) == []


def test_config_errors():
    with pytest.raises(BackendConfigError, match="spec.path"):
        TransformersBackend(ModelSpec(name="x", backend="transformers"))
    with pytest.raises(BackendConfigError, match="batch_size"):
        TransformersBackend(ModelSpec(name="x", backend="transformers", path="/nowhere", options={"batch_size": 0}))
