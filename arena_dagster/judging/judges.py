"""Judges behind one interface: the verifier (embedded default) and LLM judges.

`make_judge(settings, cache_path=..., home=..., compute=...)` builds the judge a profile's `judge:`
section names: `kind: verifier` (the skills profile), `kind: llm`, any model of the backend
registry scoring both answers with a template of `assets/judge_templates/`, or
`kind: recorded`, verdicts replayed from arena-hard or MT-Bench judgment files (recorded.py).
With `compute.engine: ray` an LLM judge answers through `backends.replicas.backend_for`: a
`transformers`/`vllm` judge as replicas on the cluster (its structured-output options travel in
the spec to every replica), an OpenAI-compatible one fanned out from the workers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import polars as pl

from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.judging.battles import Judge, JudgeItem, JudgeResult, plan_round_robin
from arena_dagster.profile_schema.judges import JudgeSettings
from arena_dagster.profile_schema.judges import LLMJudge as LLMJudgeSettings


class JudgeConfigError(ValueError):
    pass


class VerifierJudge:
    """Scores both answers 1-10 against the checkable reference of a skills prompt."""

    version = "verifier-v1"

    def __init__(self, name: str = "verifier") -> None:
        self.name = name

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        from arena_dagster.judging.verifier import judge_pair

        results = []
        for item in items:
            if not item.reference:
                raise JudgeConfigError(f"prompt {item.prompt_id} has no reference: the verifier judge cannot score it")
            verdict = judge_pair(
                family=item.family,
                reference=item.reference,
                prompt=item.prompt,
                answer_a=item.answer_a,
                answer_b=item.answer_b,
            )
            scores_ok = all(isinstance(verdict[k], int) and 1 <= verdict[k] <= 10 for k in ("score_a", "score_b"))
            results.append(
                JudgeResult(
                    score_a=verdict["score_a"] if scores_ok else None,
                    score_b=verdict["score_b"] if scores_ok else None,
                    explanation=verdict["explanation"],
                    raw=verdict["raw"],
                    parse_ok=scores_ok,
                    error="" if scores_ok else "score outside 1-10",
                )
            )
        return results


STRUCTURED_BACKENDS = ("transformers", "openai")


def _clip(text: str, limit: int | None) -> str:
    if not limit or len(text) <= limit:
        return text
    return text[:limit].rstrip() + " [...]"


class LLMJudge:
    """Pairwise 1-10 scores from a language model, generated through the cached backend layer.

    Config (the profile's `judge:` section):
      model              a model config of `arena_dagster.backends.registry` (backend, path, sampling, ...);
                         a GGUF `transformers` model is converted once under `home/models/gguf/`
      template           `pairwise_v1` (default), `pairwise_compact_v1`, `verdict_v1` or a YAML path
      structured         auto (default: on for transformers and openai), on, off: a JSON schema
                         enforced by the backend (OpenAI `response_format`; constrained decoding
                         for transformers); `scores` templates only
      integers           argmax (default) or expected: G-Eval probability-weighted scores
                         (transformers constrained decoding)
      explanation_tokens the longest explanation under constrained decoding (64)
      field_order        the order of the JSON fields under structured output (default explanation,
                         score_a, score_b: reason first). A 135M judge copies score_a into an
                         adjacent score_b: measured on 24 ShareGPT games, [explanation, score_a,
                         score_b] gave 0 games with different scores, [score_a, explanation, score_b] 8
      retries            extra attempts for outputs that do not parse (2); attempt k adds
                         `retry_suffix` to the user message and moves the sampling seed by k, so
                         each attempt has its own cache key and a rerun replays the same attempts;
                         still failing: recorded with its raw text, parse_ok False, and its battle
                         is incomplete (left out of the outcomes, counted by judge health)
      max_chars          {instruction, history, answer}: longer texts are cut (and marked) in the
                         judge prompt, so one long answer cannot blow the context or the budget
      batch_size         games per cached generation call (each call is committed to the cache)
      difficulty_template  the template of `rate_difficulty` (difficulty_v1)
    """

    def __init__(self, settings: LLMJudgeSettings, *, cache_path: Path | str, home: Path | str | None = None,
                 compute: ComputeSettings | None = None) -> None:
        from arena_dagster.backends.registry import model_spec_from_config
        from arena_dagster.judging.llm_judge import judgment_json_schema, load_template
        from arena_dagster.backends.models import declared_revision, prepare_model_config

        # The model's config as the profile writes it (only the keys it sets): its revision hashes that form.
        model = settings.model.model_dump(by_alias=True, exclude_unset=True)
        self.name = settings.name
        self.template = load_template(settings.template)
        self.cache_path = Path(cache_path)
        self.compute = compute
        self.retries = settings.retries
        self.retry_suffix = settings.retry_suffix
        limits = settings.max_chars
        self.max_chars = {k: getattr(limits, k) if limits is not None else None for k in ("instruction", "history", "answer")}
        self.batch_size = settings.batch_size
        self.difficulty_template_name = settings.difficulty_template
        prepared = prepare_model_config(model, Path(home)) if home is not None else dict(model)
        backend = prepared.get("backend")
        structured = settings.structured
        if structured == "auto":
            structured = backend in STRUCTURED_BACKENDS and self.template.kind == "scores"
        structured = structured in ("on", True)
        if structured and self.template.kind != "scores":
            raise JudgeConfigError(f"judge.structured: template {self.template.name!r} is a verdict template, not JSON")
        if structured and backend not in STRUCTURED_BACKENDS:
            raise JudgeConfigError(f"judge.structured: backend {backend!r} has no structured output here "
                                   f"(use {' or '.join(STRUCTURED_BACKENDS)}, e.g. vLLM behind its OpenAI server)")
        self.integers = settings.integers
        if self.integers == "expected" and not (structured and backend == "transformers"):
            raise JudgeConfigError("judge.integers: expected needs structured output on the transformers backend")
        explanation_tokens = settings.explanation_tokens
        self.structured = structured
        self._model_config = prepared
        self._structured_options: dict[str, Any] = {}
        mode = "free"
        base_schema = judgment_json_schema()
        order = list(settings.field_order or base_schema["properties"])
        base_schema = {**base_schema, "properties": {k: base_schema["properties"][k] for k in order}, "required": order}
        if structured:
            schema = {"type": "json_schema", "json_schema": {"name": "pairwise_judgment", "schema": base_schema}}
            self._structured_options = {"response_format": schema}
            mode = "json"
            if backend == "transformers":
                self._structured_options.update(structured_string_tokens=explanation_tokens, structured_integers=self.integers)
                mode = f"json-{self.integers}-{explanation_tokens}"
            if order != list(judgment_json_schema()["properties"]):
                mode += "-" + ",".join(order)
        self.spec = model_spec_from_config(self.name, {**prepared, "revision": prepared.get("revision") or declared_revision(prepared)})
        self.mode = mode
        # Everything that changes the judge's output is in the cache key's template part.
        self.version = f"{self.template.version}|{mode}|{json.dumps(self.max_chars, sort_keys=True)}"
        self._backends: dict[str, Any] = {}

    # ------------------------------------------------------------------ generation

    def _backend(self, kind: str, options: dict[str, Any]):
        from arena_dagster.backends.base import ModelSpec
        from arena_dagster.backends.replicas import backend_for

        if kind not in self._backends:
            spec = ModelSpec(**{**self.spec.__dict__, "options": {**self.spec.options, **options}})
            self._backends[kind] = backend_for(spec, self.compute)
        return self._backends[kind]

    def _generate(self, kind: str, options: dict[str, Any], requests: list, log: Callable[[str], None] | None = None):
        from arena_dagster.backends.cache import CompletionCache
        from arena_dagster.backends.generation import generate_cached

        result = generate_cached(self._backend(kind, options), requests, CompletionCache(self.cache_path),
                                 batch_size=self.batch_size, log=log)
        return result.completions

    def _requests(self, messages: list[tuple[dict[str, str], ...]], ids: list[str], attempt: int, version: str) -> list:
        from dataclasses import replace

        from arena_dagster.backends.base import ChatRequest

        sampling = self.spec.sampling
        suffix = ""
        if attempt:
            sampling = replace(sampling, seed=sampling.seed + attempt)
            suffix = self.retry_suffix.format(attempt=attempt + 1)
        requests = []
        for request_id, chat in zip(ids, messages):
            chat = tuple(chat)
            if suffix:
                last = dict(chat[-1])
                last["content"] = last["content"] + suffix
                chat = chat[:-1] + (last,)
            requests.append(ChatRequest(request_id=request_id, messages=chat, sampling=sampling, template_version=version))
        return requests

    def _with_retries(self, kind: str, options: dict[str, Any], ids: list[str], messages: list, parse: Callable[[int, str], Any],
                      version: str, log: Callable[[str], None] | None = None) -> list[tuple[Any, str, str, int]]:
        """(parsed or None, raw text, error, attempts) per item; failures retried up to `retries` times."""
        outcome: list[tuple[Any, str, str, int]] = [(None, "", "", 0)] * len(ids)
        todo = list(range(len(ids)))
        for attempt in range(self.retries + 1):
            if not todo:
                break
            completions = self._generate(kind, options, self._requests([messages[i] for i in todo], [ids[i] for i in todo],
                                                                         attempt, version), log)
            still = []
            for index, completion in zip(todo, completions):
                try:
                    outcome[index] = (parse(index, completion.text), completion.text, "", attempt + 1)
                except ValueError as err:
                    outcome[index] = (None, completion.text, str(err), attempt + 1)
                    still.append(index)
            todo = still
        return outcome

    # ------------------------------------------------------------------ judging

    def messages_for(self, item: JudgeItem) -> tuple[dict[str, str], ...]:
        from arena_dagster.judging.llm_judge import build_judge_messages

        history = None
        if item.history:
            history = _clip("\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in item.history), self.max_chars["history"])
        return build_judge_messages(
            self.template,
            history=history,
            instruction=_clip(item.prompt, self.max_chars["instruction"]),
            answer_a=_clip(item.answer_a, self.max_chars["answer"]),
            answer_b=_clip(item.answer_b, self.max_chars["answer"]),
        )

    def judge(self, items: Sequence[JudgeItem], log: Callable[[str], None] | None = None) -> list[JudgeResult]:
        from arena_dagster.judging.llm_judge import parse_judgment

        items = list(items)
        messages = [self.messages_for(item) for item in items]
        shown = [(_clip(i.answer_a, self.max_chars["answer"]), _clip(i.answer_b, self.max_chars["answer"])) for i in items]
        ids = [f"{item.prompt_id}#{n}" for n, item in enumerate(items)]

        def parse(index: int, text: str):
            return parse_judgment(text, self.template, answers=shown[index], structured=self.structured)

        results = []
        for parsed, raw, error, attempts in self._with_retries("pairwise", self._structured_options, ids, messages, parse,
                                                               self.version, log):
            if parsed is None:
                results.append(JudgeResult(None, None, "", raw, False, error=error, attempts=attempts))
            else:
                results.append(JudgeResult(parsed.score_a, parsed.score_b, parsed.explanation, raw, True, attempts=attempts))
        return results

    # ------------------------------------------------------------------ difficulty (the hard part of the test set)

    def rate_difficulty(self, rows: Sequence[dict], log: Callable[[str], None] | None = None) -> list[float | None]:
        """The judge's 0-10 difficulty of each prompt row (`prompt`, optional `messages`); None when unreadable."""
        from arena_dagster.judging.battles import conversation_history
        from arena_dagster.judging.llm_judge import request_nonce

        template = load_difficulty_template(self.difficulty_template_name)
        schema = {"type": "object", "properties": {"difficulty": {"type": "integer", "minimum": 0, "maximum": 10}},
                  "required": ["difficulty"], "additionalProperties": False}
        options: dict[str, Any] = {}
        version = f"{template['version']}|free"
        if self.structured:
            options = {"response_format": {"type": "json_schema", "json_schema": {"name": "difficulty", "schema": schema}}}
            version = f"{template['version']}|json"
            if self.spec.backend == "transformers":
                options.update(structured_string_tokens=1, structured_integers=self.integers)
                version += f"-{self.integers}"
        messages, ids = [], []
        for n, row in enumerate(rows):
            history = conversation_history(row.get("messages"))
            history_text = _clip("\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in history),
                                 self.max_chars["history"]) if history else "(no earlier turns)"
            instruction = _clip(str(row["prompt"]), self.max_chars["instruction"])
            values = {"history": history_text, "instruction": instruction,
                      "nonce": request_nonce(template["version"], history_text, instruction)}
            messages.append((
                {"role": "system", "content": _render(template["system"], values).strip()},
                {"role": "user", "content": _render(template["user"], values).strip()},
            ))
            ids.append(f"difficulty#{n}")

        def parse(_index: int, text: str) -> float:
            return parse_difficulty(text)

        return [parsed for parsed, _, _, _ in self._with_retries("difficulty", options, ids, messages, parse, version, log)]


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def _render(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def load_difficulty_template(name: str | Path) -> dict[str, str]:
    """A difficulty template (`kind: difficulty`): system and user text with {{history}}, {{instruction}}, {{nonce}}."""
    import hashlib

    import yaml

    from arena_dagster.judging.llm_judge import TEMPLATE_DIR
    from arena_dagster.record_files import read_text, text_problem

    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise JudgeConfigError(f"difficulty template {str(name)!r} not found at {path}")
    text = read_text(path)  # the package's text rules: BOM and CRLF read as clean UTF-8, bad text is one line
    data = yaml.safe_load(text)
    if text_problem(data):
        raise JudgeConfigError(f"{path}: {text_problem(data)[1]}")
    if not isinstance(data, dict) or data.get("kind") != "difficulty" or not all(isinstance(data.get(k), str) for k in ("system", "user")):
        raise JudgeConfigError(f"{path}: a difficulty template needs kind: difficulty and string system/user")
    unknown = sorted(set(_PLACEHOLDER.findall(data["system"] + data["user"])) - {"history", "instruction", "nonce"})
    if unknown:
        raise JudgeConfigError(f"{path}: unknown placeholders {unknown}")
    return {"system": data["system"], "user": data["user"],
            "version": f"{data.get('name') or path.stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"}


def parse_difficulty(text: str) -> float:
    """The difficulty from `{"difficulty": 0-10}` (the last such object; a number by the shared rule of
    ratings/numbers.py); ValueError when absent or out of range."""
    from arena_dagster.ratings.numbers import read_number

    found = None
    for match in re.finditer(r"\{[^{}]*\}", text or ""):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "difficulty" in obj:
            found = obj["difficulty"]
    number = read_number(found)
    if number is None or not 0 <= number <= 10:
        raise ValueError(f"no difficulty 0-10 in the judge output: {str(text)[:80]!r}")
    return number


def make_judge(settings: JudgeSettings, *, cache_path: Path | str | None = None, home: Path | str | None = None,
               compute: ComputeSettings | None = None) -> Judge:
    """The judge of a profile's `judge:` section; LLM judges need the completion cache's path.
    `compute`: the engine the LLM judges (an ensemble's members too) generate on."""
    if settings.kind == "verifier":
        return VerifierJudge(name=settings.name)
    if settings.kind == "llm":
        if cache_path is None:
            raise JudgeConfigError("an LLM judge generates through the completion cache: pass cache_path")
        return LLMJudge(settings, cache_path=cache_path, home=home, compute=compute)
    from arena_dagster.judging.recorded import RecordedJudge

    if settings.kind == "ensemble":
        from arena_dagster.judging.ensemble import EnsembleJudge

        return EnsembleJudge(settings, [make_judge(member, cache_path=cache_path, home=home, compute=compute)
                                        for member in settings.judges])
    return RecordedJudge(settings)


def plan_arena(judge: Judge, round_key: int, prompt_ids: Sequence[str], models: Sequence[str]) -> pl.DataFrame:
    """The arena battles `judge` can judge: a recorded judge's files hold only some games (RecordedJudge.plan);
    any other judge judges every pair of models on every prompt."""
    from arena_dagster.judging.recorded import RecordedJudge

    if isinstance(judge, RecordedJudge):
        return judge.plan(round_key, prompt_ids, models)
    return plan_round_robin(round_key, prompt_ids, models)
