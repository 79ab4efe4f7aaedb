"""Kill -9 half-way through `generate_cached`, rerun: one cache row per request, nothing regenerated.

The backend here is a fake that logs every request it receives (one line per request, flushed)
so the count comes from the backend's own log. The same test against a real server is in
tests/test_server_backend.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from arena_dagster.backends.cache import CompletionCache

REPO = Path(__file__).resolve().parents[1]
N = 40

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from arena_dagster.backends.base import ChatRequest, Completion, ModelSpec, user_messages
    from arena_dagster.backends.cache import CompletionCache
    from arena_dagster.backends.generation import generate_cached

    cache_path, log_path, n, delay = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

    class LoggingBackend:
        spec = ModelSpec(name="slow", backend="recorded", path="slow", revision="1")

        def generate(self, requests):
            out = []
            for request in requests:
                with log_path.open("a") as log:
                    log.write(request.request_id + "\\n")
                time.sleep(delay)
                out.append(Completion(request.request_id, "answer to " + request.messages[0]["content"], 1, 1))
            return out

    requests = [ChatRequest(f"q{i}", user_messages(f"prompt {i}")) for i in range(n)]
    result = generate_cached(LoggingBackend(), requests, CompletionCache(cache_path), batch_size=3)
    assert len(result.completions) == n
    print(result.hits, result.generated)
    """
)


def _worker(tmp_path: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "c.sqlite"), str(tmp_path / "requests.log"), str(N), str(delay)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )


def _rows(path: Path) -> int:
    return len(CompletionCache(path)) if path.exists() else 0


def test_sigkill_half_way_then_resume(tmp_path: Path) -> None:
    cache_path = tmp_path / "c.sqlite"
    proc = _worker(tmp_path, delay=0.05)
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
    assert kept % 3 == 0, "only whole batches are committed"
    assert len(sent_before) >= kept  # in-flight work of the killed batch is lost, never half-written

    rerun = _worker(tmp_path, delay=0.0)
    out, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0
    hits, generated = map(int, out.split())
    assert (hits, generated) == (kept, N - kept)

    sent_after = (tmp_path / "requests.log").read_text().split()[len(sent_before) :]
    cached_ids = set(sent_before[:kept])
    assert len(sent_after) == N - kept
    assert not cached_ids & set(sent_after), "a completed request was generated again"
    assert _rows(cache_path) == N
    import sqlite3

    with sqlite3.connect(cache_path) as conn:
        assert conn.execute("SELECT count(DISTINCT request_id) FROM completions").fetchone()[0] == N
