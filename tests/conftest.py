"""Shared fixtures: one small flywheel home built by the real command, used by every test that needs one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE_ROUNDS = 2


def flywheel_command(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "arena_dagster.cli", "flywheel", "--profile", "skills_smoke",
            "--rounds", str(SMOKE_ROUNDS), "--home", str(home), *args]


def flywheel_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def smoke_home(tmp_path_factory) -> Path:
    """A home that `arena-dagster flywheel --profile skills_smoke --rounds 2` built, uninterrupted, through Dagster."""
    home = tmp_path_factory.mktemp("smoke") / "home"
    proc = subprocess.run(flywheel_command(home), cwd=REPO, env=flywheel_env(), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (home / "flywheel-output.txt").write_text(proc.stdout)
    return home
