"""A content-addressed completion cache in one SQLite file.

Keys are `ChatRequest.cache_key(spec)`: a hash of model + revision, messages, sampling
parameters and template version, so an answer is reused across runs, rounds and profiles.

SQLite in WAL mode lets several processes read while one writes; every `put_many` is one
`BEGIN IMMEDIATE` transaction, so a process killed with SIGKILL loses at most the batch it
was writing and never leaves half of one. Rows are insert-or-ignore: the first answer for a
key wins and writing the same batch twice is harmless.

Only what identifies the request and its answer is stored (model name, path, revision,
backend, messages, sampling): never base URLs (they can carry credentials), option values
or API keys.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS completions (
    key           TEXT PRIMARY KEY,
    model         TEXT NOT NULL,
    model_path    TEXT NOT NULL,
    revision      TEXT NOT NULL,
    backend       TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    messages      TEXT NOT NULL,
    sampling      TEXT NOT NULL,
    template      TEXT NOT NULL,
    text          TEXT NOT NULL,
    tokens_in     INTEGER NOT NULL,
    tokens_out    INTEGER NOT NULL,
    latency_s     REAL NOT NULL,
    finish_reason TEXT NOT NULL,
    created_at    REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS completions_model ON completions (model, revision);
CREATE TABLE IF NOT EXISTS cache_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# SQLite before 3.32 allows 999 bound parameters per statement.
_KEYS_PER_QUERY = 900


class CacheError(ValueError):
    pass


class CompletionCache:
    """Completions keyed by `ChatRequest.cache_key(spec)`; safe for several processes at once."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        with self._connect() as conn:
            conn.executescript(_DDL)
            conn.execute(
                "INSERT OR IGNORE INTO cache_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            found = conn.execute("SELECT value FROM cache_meta WHERE name = 'schema_version'").fetchone()[0]
        if int(found) != SCHEMA_VERSION:
            raise CacheError(f"{self.path}: cache schema version {found}, this code reads {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: cheap, fork-safe and thread-safe, and nothing stays locked between calls.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        with closing(conn):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among `keys` (missing keys are absent), each with `cached=True`."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, Completion] = {}
        if not unique:
            return found
        with self._connect() as conn:
            for start in range(0, len(unique), _KEYS_PER_QUERY):
                chunk = unique[start : start + _KEYS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT key, request_id, text, tokens_in, tokens_out, latency_s, finish_reason "
                    f"FROM completions WHERE key IN ({marks})",
                    chunk,
                )
                for key, request_id, text, tokens_in, tokens_out, latency_s, finish_reason in rows:
                    found[key] = Completion(
                        request_id=request_id,
                        text=text,
                        tokens_in=tokens_in,
                        tokens_out=tokens_out,
                        latency_s=latency_s,
                        finish_reason=finish_reason,
                        cached=True,
                    )
        return found

    def put_many(self, rows: Sequence[tuple[str, ModelSpec, ChatRequest, Completion]]) -> int:
        """Store a batch in one transaction; keys already present are kept. Returns rows inserted."""
        if not rows:
            return 0
        now = time.time()
        params = []
        for key, spec, request, completion in rows:
            if not isinstance(completion.text, str):
                raise CacheError(f"request {request.request_id!r}: completion text is {type(completion.text).__name__}, not str")
            params.append(
                (
                    key,
                    spec.name,
                    spec.path,
                    spec.revision,
                    spec.backend,
                    request.request_id,
                    json.dumps(list(request.messages), ensure_ascii=False),
                    json.dumps(request.sampling.as_dict(), sort_keys=True),
                    request.template_version,
                    completion.text,
                    int(completion.tokens_in),
                    int(completion.tokens_out),
                    float(completion.latency_s),
                    completion.finish_reason or "",
                    now,
                )
            )
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    params,
                )
                inserted = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return inserted

    def __len__(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT count(*) FROM completions").fetchone()[0]

    def stats(self) -> dict[str, Any]:
        """Row and token counts, overall and per (model, revision)."""
        with self._connect() as conn:
            total = conn.execute(
                "SELECT count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0) FROM completions"
            ).fetchone()
            per_model = conn.execute(
                "SELECT model, revision, count(*), sum(tokens_in), sum(tokens_out) FROM completions "
                "GROUP BY model, revision ORDER BY model, revision"
            ).fetchall()
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {
            "path": str(self.path),
            "rows": total[0],
            "tokens_in": total[1],
            "tokens_out": total[2],
            "bytes": size,
            "models": [
                {"model": m, "revision": r, "rows": n, "tokens_in": ti, "tokens_out": to}
                for m, r, n, ti, to in per_model
            ],
        }
