"""Answers recorded earlier, read from a JSONL file (`spec.path`): replay without a model.

Each row is matched to a request by `id` / `question_id` (the request's request_id) or, failing
that, by the prompt text (the last user message). The answer is the first of `completion`,
`response`, `answer`, `text`, `output`, or FastChat's `choices[0].turns[k]` (k = the user turn
being answered). Options: `model_id` keeps only rows whose `model` / `model_id` matches (files
that hold several models' answers); `answer_field` names the answer column explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec
from arena_dagster.errors import ArenaError
from arena_dagster.names import NameBook, normalize_name
from arena_dagster.record_files import RecordFileError, strict_records

ANSWER_FIELDS = ("completion", "response", "answer", "text", "output")
ID_FIELDS = ("id", "question_id")


class RecordedDataError(ArenaError, ValueError):
    pass


class MissingRecordedAnswerError(RecordedDataError, LookupError):
    pass


def _user_turns(request: ChatRequest) -> list[str]:
    return [m["content"] for m in request.messages if m.get("role") == "user"]


class RecordedBackend:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        if not spec.path:
            raise RecordedDataError(f"model {spec.name!r}: no recorded answers (no `path`): it cannot answer; "
                                    "only a recorded judge (judge.kind: recorded) can judge it")
        self.path = Path(spec.path)
        if not self.path.is_file():
            raise RecordedDataError(f"model {spec.name!r}: recorded answers file {self.path} does not exist")
        self.answer_field = spec.options.get("answer_field")
        model_id = spec.options.get("model_id")
        model_id = None if model_id is None else normalize_name(model_id, "model_id", f"model {spec.name!r}")
        # a file's model names are compared as names (NFC, stripped); two that differ only in case are refused
        names = NameBook(fix="use one spelling in the answers file")
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_prompt: dict[str, dict[str, Any]] = {}
        # The package's reader: a BOM or CRLF reads as clean UTF-8; text that is not UTF-8, a NUL or
        # lone surrogate, malformed JSON or a row that is not an object is an error naming its line.
        try:
            for number, row in strict_records(self.path):
                model = row.get("model", row.get("model_id"))
                if isinstance(model, str) and model.strip():
                    model = names.add(model, f"{self.path}:{number}")
                if model_id is not None and model != model_id:
                    continue
                row_id = next((str(row[f]) for f in ID_FIELDS if row.get(f) is not None), None)
                prompt = row.get("prompt")
                if row_id is None and prompt is None:
                    raise RecordedDataError(f"{self.path}:{number}: a row needs `id`, `question_id` or `prompt`")
                for index, table, key in ((row_id, self.by_id, row_id), (prompt, self.by_prompt, prompt)):
                    if index is None:
                        continue
                    if key in table:
                        raise RecordedDataError(f"{self.path}:{number}: duplicate answer for {key!r}")
                    table[key] = row
        except RecordFileError as exc:
            raise RecordedDataError(f"{exc.input}: {exc.what}", fix="fix or remove that row") from None
        names.check()
        if not self.by_id and not self.by_prompt:
            raise RecordedDataError(f"model {spec.name!r}: {self.path} holds no answers" + (
                f" for model_id {model_id!r}" if model_id is not None else ""
            ))

    def _answer(self, row: dict[str, Any], request: ChatRequest) -> str:
        if self.answer_field:
            value = row.get(self.answer_field)
        else:
            value = next((row[f] for f in ANSWER_FIELDS if isinstance(row.get(f), str)), None)
            if value is None and row.get("choices"):
                turns = row["choices"][0].get("turns") or []
                turn = max(0, len(_user_turns(request)) - 1)
                value = turns[turn] if turn < len(turns) else None
        if not isinstance(value, str):
            raise RecordedDataError(
                f"{self.path}: the row for request {request.request_id!r} has no answer text "
                f"(looked in {self.answer_field or ', '.join(ANSWER_FIELDS) + ', choices[0].turns'})"
            )
        return value

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        # A batch backend: answers are looked up, not generated, so a batch is one commit.
        # A recorded "" is what the model answered then, and is replayed as such.
        rows: list[dict[str, Any] | None] = []
        for request in requests:
            row = self.by_id.get(request.request_id)
            if row is None:
                turns = _user_turns(request)
                row = self.by_prompt.get(turns[-1]) if turns else None
            rows.append(row)
        missing = [r.request_id for r, row in zip(requests, rows) if row is None]
        if missing:
            raise MissingRecordedAnswerError(
                f"model {self.spec.name!r}: {len(missing)} of {len(requests)} requests have no recorded answer "
                f"in {self.path}; first missing ids: {missing[:10]}"
            )
        completions = []
        for request, row in zip(requests, rows):
            text = self._answer(row, request)  # type: ignore[arg-type]
            completions.append(
                Completion(
                    request_id=request.request_id,
                    text=text,
                    tokens_in=int(row.get("tokens_in", 0) or 0),  # type: ignore[union-attr]
                    tokens_out=int(row.get("tokens_out", 0) or 0),  # type: ignore[union-attr]
                    finish_reason=str(row.get("finish_reason", "stop")),  # type: ignore[union-attr]
                )
            )
        return completions
