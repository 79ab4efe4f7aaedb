"""Kill -9 half-way through `generate_cached`, rerun: one cache row per request, nothing regenerated.

The backends here are fakes that log every request they receive (one line per request,
flushed), so the count comes from the backend's own log: a streaming backend (answers handed
over one by one, like the openai backend) loses at most the request in flight; a batch backend
(transformers, vllm) at most the batch being generated. The same test against a real server,
through the `generate` CLI, is in tests/test_server_backend.py; against a scripted server at
concurrency 4, in tests/test_generate_kill.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arena_dagster.backends.cache import CompletionCache

REPO = Path(__file__).resolve().parents[1]
N = 40
BATCH = 3

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec, user_messages
    from arena_dagster.backends.cache import CompletionCache
    from arena_dagster.backends.generation import generate_cached

    cache_path, log_path, n, delay, kind = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]

    class LoggingBackend:
        spec = ModelSpec(name="slow", backend="recorded", path="slow", revision="1")

        def answer(self, request):
            with log_path.open("a") as log:
                log.write(request.request_id + "\\n")
            time.sleep(delay)
            return Completion(request.request_id, "answer to " + request.messages[0]["content"], 1, 1)

        def generate(self, requests):
            return [self.answer(request) for request in requests]

    class StreamingLoggingBackend(LoggingBackend):
        def generate_streaming(self, requests, on_completion):
            for index, request in enumerate(requests):
                on_completion(index, self.answer(request))

    backend = StreamingLoggingBackend() if kind == "streaming" else LoggingBackend()
    requests = [ChatRequest(f"q{i}", user_messages(f"prompt {i}")) for i in range(n)]
    result = generate_cached(backend, requests, CompletionCache(cache_path), batch_size=BATCH)
    assert len(result.completions) == n
    print(result.hits, result.generated)
    """
).replace("BATCH", str(BATCH))


def _worker(tmp_path: Path, delay: float, kind: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "c.sqlite"), str(tmp_path / "requests.log"), str(N), str(delay), kind],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )


def _rows(path: Path) -> int:
    return len(CompletionCache(path)) if path.exists() else 0


@pytest.mark.parametrize("kind", ["streaming", "batch"])
def test_sigkill_half_way_then_resume(tmp_path: Path, kind: str) -> None:
    cache_path = tmp_path / "c.sqlite"
    proc = _worker(tmp_path, delay=0.05, kind=kind)
    deadline = time.monotonic() + 60
    while _rows(cache_path) < N // 2 and time.monotonic() < deadline:
        assert proc.poll() is None, "worker finished or died before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    kept = _rows(cache_path)
    sent_before = (tmp_path / "requests.log").read_text().split()
    assert N // 2 <= kept < N
    lost = len(sent_before) - kept  # sent, answered or not, and not committed: paid again on the rerun
    if kind == "streaming":
        assert 0 <= lost <= 1, "a streaming backend loses at most the request in flight"
    else:
        assert kept % BATCH == 0, "a batch backend commits whole batches"
        assert 0 <= lost <= BATCH

    rerun = _worker(tmp_path, delay=0.0, kind=kind)
    out, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0
    hits, generated = map(int, out.split())
    assert (hits, generated) == (kept, N - kept)

    sent_after = (tmp_path / "requests.log").read_text().split()[len(sent_before) :]
    cached_ids = set(sent_before[:kept])
    assert len(sent_after) == N - kept
    assert not cached_ids & set(sent_after), "a completed request was generated again"
    assert len(sent_before) + len(sent_after) - N == lost  # requests paid twice: only those lost
    assert _rows(cache_path) == N
    with sqlite3.connect(cache_path) as conn:
        assert conn.execute("SELECT count(DISTINCT request_id) FROM completions").fetchone()[0] == N
