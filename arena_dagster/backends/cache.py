"""A content-addressed completion cache in one SQLite file.

Keys are `ChatRequest.cache_key(spec)`: a hash of the model's cache identity (its content
revision, else path + revision), messages, sampling parameters and template version, so an
answer is reused across runs, rounds, profiles and homes.

SQLite in WAL mode lets several processes read while one writes. Every `put_many` is one
`BEGIN IMMEDIATE` transaction: a process killed with SIGKILL loses at most the transaction it
was writing and never leaves half of one. `generate_cached` writes each completion of a
streaming backend as its own small transaction the moment it arrives, and a batch backend's
batch as one. Rows are insert-or-ignore: the first answer for a key wins and writing the same
rows twice is harmless.

Only what identifies the request and its answer is stored (model name, path, revision,
backend, messages, sampling): never base URLs (they can carry credentials), option values
or API keys.

Schema 2 (this code) changed the key of models with a content revision (they no longer hash
the path); a schema-1 cache is rekeyed in place, in one transaction, the first time it is
opened. SQLite failures (a file that is not a database, a damaged one, a full disk, a
read-only file, a lock held too long) become one-line `CacheError`s naming the file and the fix.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec, SamplingParams
from arena_dagster.errors import ArenaError

SCHEMA_VERSION = 2

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
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
) WITHOUT ROWID
"""
_INDEX = "CREATE INDEX IF NOT EXISTS completions_model ON completions (model, revision)"
_META = "CREATE TABLE IF NOT EXISTS cache_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"

_COLUMNS = (
    "key, model, model_path, revision, backend, request_id, messages, sampling, template, text, "
    "tokens_in, tokens_out, latency_s, finish_reason, created_at"
)

# SQLite before 3.32 allows 999 bound parameters per statement.
_KEYS_PER_QUERY = 900

CacheRow = tuple[str, ModelSpec, ChatRequest, Completion]


class CacheError(ArenaError, ValueError):
    pass


def _cache_error(path: Path, exc: BaseException, busy_timeout_s: float) -> CacheError:
    """The one-line error for a failed SQLite call on the cache file at `path`."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    where = str(path)
    if name == "SQLITE_FULL" or "disk is full" in text:
        return CacheError(
            "disk full while writing the completion cache", where,
            "free space on that disk and rerun: every answer committed before is kept, and the failed "
            "write left nothing behind",
        )
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in text or "malformed" in text:
        return CacheError(
            "the completion cache is damaged or not an SQLite file", where,
            f"move it aside (mv {where} {where}.broken) and rerun; answers missing from the cache are "
            "generated again",
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return CacheError(
            "the completion cache is read-only", where,
            "make the file and its folder writable, or use another --home / ARENA_HOME",
        )
    if name.startswith("SQLITE_BUSY") or "locked" in text:
        return CacheError(
            f"the completion cache stayed locked for {busy_timeout_s:.0f} s", where,
            "another process is writing it: wait for that process or stop it, then rerun",
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return CacheError("cannot open the completion cache", where, "check that its folder exists and is writable")
    return CacheError(f"completion cache error: {exc}", where, "check the file and the disk it is on, then rerun")


def _row_params(row: CacheRow, now: float) -> tuple[Any, ...]:
    key, spec, request, completion = row
    if not isinstance(completion.text, str):
        raise CacheError(
            f"request {request.request_id!r}: completion text is {type(completion.text).__name__}, not str",
            spec.name, "a backend must answer with text; nothing was cached for this request",
        )
    return (
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


def _schema2_key(model: str, path: str, revision: str, backend: str, messages: str, sampling: str, template: str) -> str:
    """A stored row's key under this code's rule (schema 1 -> 2 migration)."""
    spec = ModelSpec(name=model, backend=backend, path=path, revision=revision)
    request = ChatRequest(
        request_id="", messages=tuple(json.loads(messages)), sampling=SamplingParams(**json.loads(sampling)),
        template_version=template,
    )
    return request.cache_key(spec)


class CacheSession:
    """One open connection to the cache: for a run that makes many small commits.

    Safe to share between threads (calls are serialized); holds no lock between calls.
    """

    def __init__(self, cache: "CompletionCache", conn: sqlite3.Connection) -> None:
        self._cache = cache
        self._conn = conn
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among `keys` (missing keys are absent), each with `cached=True`."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, Completion] = {}
        with self._lock, self._cache.translated():
            for start in range(0, len(unique), _KEYS_PER_QUERY):
                chunk = unique[start : start + _KEYS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    "SELECT key, request_id, text, tokens_in, tokens_out, latency_s, finish_reason "
                    f"FROM completions WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
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

    def put_many(self, rows: Sequence[CacheRow]) -> int:
        """Store rows in one transaction; keys already present are kept. Returns rows inserted."""
        if not rows:
            return 0
        now = time.time()
        params = [_row_params(row, now) for row in rows]  # a bad row fails before anything is written
        with self._lock, self._cache.translated():
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(f"INSERT OR IGNORE INTO completions ({_COLUMNS}) VALUES ({','.join('?' * 15)})", params)
                inserted = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return inserted

    def put(self, key: str, spec: ModelSpec, request: ChatRequest, completion: Completion) -> int:
        """Store one completion in its own transaction (what a streaming backend's answers get)."""
        return self.put_many([(key, spec, request, completion)])


class CompletionCache:
    """Completions keyed by `ChatRequest.cache_key(spec)`; safe for several processes at once."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache folder: {exc.strerror}", str(self.path.parent),
                             "check the path and its permissions, or use another --home / ARENA_HOME") from None
        with self._connect() as conn:
            for statement in (_TABLE.format(name="completions"), _INDEX, _META):
                conn.execute(statement)
            self._settle_schema(conn)

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT value FROM cache_meta WHERE name = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _settle_schema(self, conn: sqlite3.Connection) -> None:
        if self._schema_version(conn) == SCHEMA_VERSION:
            return  # the common case: no write lock taken just to open the cache
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see version 2
        try:
            conn.execute("INSERT OR IGNORE INTO cache_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            found = self._schema_version(conn)
            if found == 1:
                # Every stored row carries what its key hashes: recompute, copy, swap, in one transaction.
                conn.create_function("schema2_key", 7, _schema2_key, deterministic=True)
                conn.execute(_TABLE.format(name="completions_v2"))
                conn.execute(
                    f"INSERT OR IGNORE INTO completions_v2 ({_COLUMNS}) SELECT "
                    "schema2_key(model, model_path, revision, backend, messages, sampling, template), "
                    f"{_COLUMNS.split(', ', 1)[1]} FROM completions ORDER BY created_at"
                )
                conn.execute("DROP TABLE completions")
                conn.execute("ALTER TABLE completions_v2 RENAME TO completions")
                conn.execute(_INDEX)
                conn.execute("UPDATE cache_meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))
            elif found != SCHEMA_VERSION:
                raise CacheError(
                    f"completion cache schema version {found}; this arena-dagster reads {SCHEMA_VERSION}",
                    str(self.path),
                    "upgrade arena-dagster to the version that wrote it, or use another --home / ARENA_HOME",
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def translated(self) -> Iterator[None]:
        """SQLite errors inside become CacheError (one line, the file, the fix)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise _cache_error(self.path, exc, self._busy_timeout_s) from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Short-lived connections: fork-safe, and nothing stays locked between calls.
        with self.translated():
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        with closing(conn), self.translated():
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn

    @contextmanager
    def session(self) -> Iterator[CacheSession]:
        """One connection for a run's many reads and commits (see CacheSession)."""
        with self._connect() as conn:
            yield CacheSession(self, conn)

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among `keys` (missing keys are absent), each with `cached=True`."""
        if not keys:
            return {}
        with self.session() as session:
            return session.get_many(keys)

    def put_many(self, rows: Sequence[CacheRow]) -> int:
        """Store rows in one transaction; keys already present are kept. Returns rows inserted."""
        if not rows:
            return 0
        with self.session() as session:
            return session.put_many(rows)

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
