from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.cache import CompletionCache


def _spec(**overrides) -> ModelSpec:
    fields = {"name": "m", "backend": "openai", "path": "served-model", "revision": "r1"}
    fields.update(overrides)
    return ModelSpec(**fields)


def _row(spec: ModelSpec, i: int, text: str | None = None):
    request = ChatRequest(request_id=f"q{i}", messages=user_messages(f"prompt {i}"))
    completion = Completion(request_id=f"q{i}", text=text or f"answer {i}", tokens_in=3, tokens_out=i)
    return request.cache_key(spec), spec, request, completion


def test_put_then_get_round_trips_and_marks_cached(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    spec = _spec()
    rows = [_row(spec, i) for i in range(5)]
    assert cache.put_many(rows) == 5
    found = cache.get_many([r[0] for r in rows] + ["absent"])
    assert set(found) == {r[0] for r in rows}
    for key, _, request, completion in rows:
        got = found[key]
        assert got.cached is True
        assert (got.request_id, got.text, got.tokens_in, got.tokens_out) == (
            request.request_id,
            completion.text,
            completion.tokens_in,
            completion.tokens_out,
        )


def test_put_is_idempotent_and_first_answer_wins(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    spec = _spec()
    assert cache.put_many([_row(spec, 1, "first")]) == 1
    assert cache.put_many([_row(spec, 1, "second"), _row(spec, 2)]) == 1
    assert len(cache) == 2
    key = _row(spec, 1)[0]
    assert cache.get_many([key])[key].text == "first"


def test_keys_separate_models_revisions_sampling_and_templates(tmp_path: Path) -> None:
    request = ChatRequest("q", user_messages("same prompt"))
    keys = {
        request.cache_key(_spec()),
        request.cache_key(_spec(revision="r2")),
        request.cache_key(_spec(path="other")),
        ChatRequest("q", request.messages, sampling=SamplingParams(max_tokens=7)).cache_key(_spec()),
        ChatRequest("q", request.messages, template_version="v2").cache_key(_spec()),
    }
    assert len(keys) == 5


def test_get_many_handles_more_keys_than_one_sql_statement_allows(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    spec = _spec()
    rows = [_row(spec, i) for i in range(2100)]
    cache.put_many(rows)
    assert len(cache.get_many([r[0] for r in rows])) == 2100


def test_never_stores_api_keys_or_base_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-SECRET-123"
    monkeypatch.setenv("ARENA_TEST_KEY", secret)
    spec = _spec(base_url="https://user:pw@example.invalid/v1", api_key_env="ARENA_TEST_KEY")
    cache = CompletionCache(tmp_path / "c.sqlite")
    cache.put_many([_row(spec, 1)])
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.encode() not in raw
    assert b"user:pw" not in raw


def test_wal_mode_and_stats(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    cache.put_many([_row(_spec(), i) for i in range(3)] + [_row(_spec(name="other"), 9)])
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    stats = cache.stats()
    assert stats["rows"] == 4
    assert stats["tokens_out"] == 0 + 1 + 2 + 9
    assert {m["model"]: m["rows"] for m in stats["models"]} == {"m": 3, "other": 1}


def test_failed_batch_writes_nothing(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    good = _row(_spec(), 1)
    key, spec, request, _ = _row(_spec(), 2)
    bad = (key, spec, request, Completion(request_id="q2", text=None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="q2"):
        cache.put_many([good, bad])
    assert len(cache) == 0


def _writer(path: str, worker: int) -> None:
    cache = CompletionCache(Path(path))
    spec = _spec()
    for batch in range(10):
        # Overlapping keys across workers: every row must land exactly once.
        cache.put_many([_row(spec, i) for i in range(batch * 10, batch * 10 + 20)])


def test_several_processes_write_one_cache(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    CompletionCache(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w)) for w in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(CompletionCache(path)) == 110
