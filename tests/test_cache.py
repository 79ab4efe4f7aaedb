from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.cache import CacheError, CompletionCache
from arena_dagster.errors import ArenaError


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
    with pytest.raises(CacheError, match="q2"):
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


# ---------------------------------------------------------------- the cache key: content, not location

def test_a_checkpoint_has_one_key_wherever_its_home_is() -> None:
    request = ChatRequest("q", user_messages("same prompt"))
    revision = "3f" * 32  # a training spec hash
    in_one_home = _spec(name="sft-r1", backend="transformers", path="/home/a/.arena/checkpoints/sft-r1", revision=revision)
    in_another = _spec(name="sft-r1", backend="vllm", path="/srv/b/arena/checkpoints/sft-r1", revision=revision)
    assert request.cache_key(in_one_home) == request.cache_key(in_another)
    assert request.cache_key(in_one_home) != request.cache_key(_spec(path=in_one_home.path, revision="4f" * 32))


def test_keys_without_a_content_revision_are_unchanged_from_schema_1() -> None:
    # Golden values computed by the schema-1 rule (model path or name + revision): declared models,
    # served models and named-only models keep every cached answer.
    request = ChatRequest("q", user_messages("hello"), SamplingParams(max_tokens=32), "judge-v1")
    hub = ModelSpec(name="qwen", backend="openai", path="Qwen/Qwen2.5-0.5B-Instruct", revision="main")
    assert request.cache_key(hub) == "1d09908595dadbb7d5aaab0feadea8022ced93b75f03b00325f32d1eb7d4d470"
    served = ModelSpec(name="gpt", backend="openai", path="gpt-4o-mini")
    assert request.cache_key(served) == "27d02afc04e542d44a1844449b9c7ee433bd9abcced6242eddd85a5297fa85fc"
    named = ModelSpec(name="named-only", backend="recorded")
    assert request.cache_key(named) == "79d457f86e883e9d439e51daba832f2c9e699108645d90083698db82a5bb21b8"
    # A tag such as `main` names nothing without its repository: two models, two keys.
    other = ModelSpec(name="llama", backend="openai", path="meta-llama/Llama-3.2-1B-Instruct", revision="main")
    assert request.cache_key(other) != request.cache_key(hub)


def _schema1_key(model: str, path: str, revision: str, request: ChatRequest) -> str:
    import hashlib
    import json

    payload = {"model": path or model, "revision": revision, "messages": list(request.messages),
               "sampling": request.sampling.as_dict(), "template": request.template_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _write_schema1_cache(path: Path, rows: list[tuple[ModelSpec, ChatRequest, str]]) -> None:
    import json

    from arena_dagster.backends.cache import _META, _TABLE

    with sqlite3.connect(path) as conn:
        conn.execute(_TABLE.format(name="completions"))
        conn.execute(_META)
        conn.execute("INSERT INTO cache_meta VALUES ('schema_version', '1')")
        for created, (spec, request, text) in enumerate(rows):
            conn.execute(
                "INSERT INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 1, 0.1, 'stop', ?)",
                (_schema1_key(spec.name, spec.path, spec.revision, request), spec.name, spec.path, spec.revision,
                 spec.backend, request.request_id, json.dumps(list(request.messages)),
                 json.dumps(request.sampling.as_dict(), sort_keys=True), request.template_version, text, float(created)),
            )


def test_a_schema_1_cache_is_rekeyed_once_and_keeps_every_answer(tmp_path: Path) -> None:
    revision = "ab" * 32
    home_a = _spec(name="sft-r1", backend="transformers", path="/home/a/ckpt/sft-r1", revision=revision)
    home_b = _spec(name="sft-r1", backend="transformers", path="/home/b/ckpt/sft-r1", revision=revision)
    hub = _spec(name="qwen", path="Qwen/Qwen2.5", revision="main")
    requests = [ChatRequest(f"q{i}", user_messages(f"prompt {i}"), SamplingParams(max_tokens=9), "t1") for i in range(3)]
    path = tmp_path / "old.sqlite"
    # The same checkpoint cached from two homes: two schema-1 rows, one answer under schema 2 (the first).
    _write_schema1_cache(path, [(home_a, requests[0], "first"), (home_b, requests[0], "second"),
                                (home_a, requests[1], "a1"), (hub, requests[2], "hub answer")])
    cache = CompletionCache(path)
    assert len(cache) == 3
    found = cache.get_many([requests[0].cache_key(home_b), requests[1].cache_key(home_b), requests[2].cache_key(hub)])
    assert sorted(c.text for c in found.values()) == ["a1", "first", "hub answer"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM cache_meta WHERE name = 'schema_version'").fetchone() == ("2",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert len(CompletionCache(path)) == 3  # opening again changes nothing


def test_a_cache_from_a_newer_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    CompletionCache(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE cache_meta SET value = '9' WHERE name = 'schema_version'")
    with pytest.raises(CacheError, match=r"schema version 9; this arena-dagster reads 2 \(.*c.sqlite\): upgrade"):
        CompletionCache(path)


# ---------------------------------------------------------------- damaged files, full disks, locks

def test_a_file_that_is_not_sqlite_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "completions.sqlite"
    path.write_bytes(b"these are not the answers you are looking for\n" * 200)
    with pytest.raises(CacheError) as info:
        CompletionCache(path)
    assert str(info.value) == (
        f"the completion cache is damaged or not an SQLite file ({path}): move it aside "
        f"(mv {path} {path}.broken) and rerun; answers missing from the cache are generated again"
    )
    assert info.value.__cause__ is None and isinstance(info.value, ArenaError)


def test_a_damaged_cache_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    cache.put_many([_row(_spec(), i, "x" * 2000) for i in range(200)])
    data = bytearray(path.read_bytes())
    assert len(data) > 40_000 and not Path(str(path) + "-wal").exists()  # checkpointed into the file
    data[8192:40_000] = b"\xa5" * (40_000 - 8192)
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="damaged or not an SQLite file"):
        damaged = CompletionCache(path)
        len(damaged)
        damaged.get_many([_row(_spec(), i)[0] for i in range(200)])


@pytest.fixture
def sqlite_limited(monkeypatch: pytest.MonkeyPatch):
    """Open every cache connection with a cap: SQLite itself then fails as on a full or read-only disk."""
    real = sqlite3.connect

    def limit(pragma: str | None = None, read_only: bool = False) -> None:
        def connect(database, *args, **kwargs):
            if read_only:
                return real(f"file:{database}?mode=ro", *args, uri=True, **kwargs)
            conn = real(database, *args, **kwargs)
            conn.execute(pragma)
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)

    return limit


def test_a_full_disk_is_one_clear_error_and_nothing_half_written(tmp_path: Path, sqlite_limited) -> None:
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    cache.put_many([_row(_spec(), i) for i in range(5)])
    with sqlite3.connect(path) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    sqlite_limited(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(CacheError) as info:
        cache.put_many([_row(_spec(), 100 + i, "y" * 4000) for i in range(20)])  # needs ~20 more pages
    assert str(info.value).startswith(f"disk full while writing the completion cache ({path}): free space")
    assert "every answer committed before is kept" in str(info.value)
    sqlite_limited("PRAGMA max_page_count = 1000000")
    assert len(cache) == 5  # the failed transaction left nothing


def test_a_read_only_cache_is_one_clear_error(tmp_path: Path, sqlite_limited) -> None:
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    sqlite_limited(read_only=True)
    with pytest.raises(CacheError, match=r"read-only \(.*c.sqlite\): make the file and its folder writable"):
        cache.put_many([_row(_spec(), 1)])


def test_a_lock_held_too_long_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path, busy_timeout_s=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(CacheError, match="stayed locked for 0 s .*another process is writing it"):
            cache.put_many([_row(_spec(), 1)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cache.put_many([_row(_spec(), 1)]) == 1


def test_a_session_commits_each_put_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    with cache.session() as session:
        session.put(*_row(_spec(), 1))
        assert len(CompletionCache(path)) == 1  # visible to another connection before the session ends
        session.put(*_row(_spec(), 1, "later"))
        assert session.get_many([_row(_spec(), 1)[0]])[_row(_spec(), 1)[0]].text == "answer 1"
