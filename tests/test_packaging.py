"""A wheel install (not only an editable checkout) carries the profiles, judge templates and SQL models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_install_finds_assets_and_sql(tmp_path):
    pytest.importorskip("setuptools")
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    # A throwaway venv of its own: `pip install --prefix` would uninstall the project's own
    # editable install first. Its dependencies come from this environment through PYTHONPATH,
    # where the editable install's path hook (a .pth file) is not active.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import arena_dagster, arena_dagster.config as c, arena_dagster.sql_models as s, arena_dagster.judging.llm_judge as j;"
        "print(c.ASSETS_DIR); print(s.SQL_DIR); print(sorted(s.load_models())[:1]);"
        "print(c.load_profile('sharegpt')['name']); print(j.load_template('pairwise_v1').version); print(arena_dagster.__file__)"
    )
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site)}
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    share = venv / "share" / "arena-dagster"
    assert lines[5].startswith(str(venv)), lines[5]
    assert lines[0] == str(share / "assets") and lines[1] == str(share / "dbt_like_sql")
    assert lines[3] == "sharegpt" and lines[4]
    # Every versioned input of the checkout is in the install (pyproject's data-files lists folders one by one).
    for folder in ("assets", "dbt_like_sql"):
        checkout = {p.relative_to(REPO / folder) for p in (REPO / folder).rglob("*") if p.is_file()}
        installed = {p.relative_to(share / folder) for p in (share / folder).rglob("*") if p.is_file()}
        assert checkout == installed, f"{folder}: missing from the wheel: {sorted(map(str, checkout - installed))}"
