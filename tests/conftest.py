"""Session-wide test settings.

Base models are shared through the base-model cache (training/model_cache.py): every test of a
session, and every subprocess it starts, uses one cache folder, so a profile's tokenizer and
base models are trained once per session, never in the user's own ~/.cache. Set
ARENA_TEST_CACHE to keep that folder across sessions (e.g. in CI, between steps).
"""

from __future__ import annotations

import os
import shutil
import tempfile

_session_cache: str | None = None


def pytest_configure(config) -> None:
    global _session_cache
    configured = os.environ.get("ARENA_TEST_CACHE")
    if configured:
        os.environ["ARENA_CACHE"] = configured
        return
    _session_cache = tempfile.mkdtemp(prefix="arena-test-cache-")
    os.environ["ARENA_CACHE"] = _session_cache


def pytest_unconfigure(config) -> None:
    if _session_cache:
        shutil.rmtree(_session_cache, ignore_errors=True)
