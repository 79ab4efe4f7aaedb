"""The Dagster UI in a real browser: the webserver on 127.0.0.1 over the smoke home, driven by headless Chromium.

Chromium is Debian's package (scripts/test.sh installs it), driven through Playwright with
`executable_path`; screenshots are saved under test-artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, flywheel_env

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium as root in a container, on a machine whose network is closed: no sandbox, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def webserver(smoke_home):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    port = _free_port()
    env = {**flywheel_env(), "ARENA_HOME": str(smoke_home), "DAGSTER_HOME": str(smoke_home / "dagster")}
    log = open(smoke_home / "logs" / "webserver.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-w", str(smoke_home / "dagster" / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5):
                break
        except OSError:
            assert process.poll() is None, (smoke_home / "logs" / "webserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the webserver did not answer in 240 s"
            time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(webserver):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(90_000)
        yield page
        browser.close()


def _open(page, url: str) -> None:
    page.goto(url)
    # A first visit shows Dagster's newsletter dialog over the page.
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=8_000)
        skip.click()
    except Exception:  # noqa: BLE001 - no dialog this time
        pass


def test_the_asset_graph_shows_the_flywheel_steps_as_groups(webserver, page):
    _open(page, f"{webserver}/asset-groups")
    for group in ("prompts", "models", "baseline", "round", "sft", "dpo", "rl", "evaluation", "gate"):
        page.get_by_text(group, exact=True).first.wait_for()
    time.sleep(3)  # let the graph finish its layout before the picture
    page.screenshot(path=str(ARTIFACTS / "asset-graph.png"))


def test_the_leaderboard_asset_shows_its_table_and_plot(webserver, page):
    _open(page, f"{webserver}/assets/leaderboard?view=events")
    # The latest materialization (round 2): the table's rows are the round's checkpoints beside the competitors.
    page.get_by_text("ratings_plot", exact=True).first.wait_for()
    page.get_by_text("RL-I2", exact=True).first.wait_for()
    page.get_by_text("competitor", exact=True).first.wait_for()
    page.get_by_text("rating/sft", exact=True).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "leaderboard-asset.png"))
    # The ratings picture: a PNG in the metadata, opened from its row.
    row = page.locator("tr", has=page.get_by_text("ratings_plot", exact=True)).first
    row.get_by_text("Show Markdown").click()
    image = page.locator("img[src^='data:image/png']").first
    image.wait_for()
    box = image.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 150
    page.screenshot(path=str(ARTIFACTS / "leaderboard-plot.png"))


def test_a_step_group_shows_its_assets_and_a_check_explains_itself(webserver, page):
    # A group opened: the step's assets in order (the README's second picture).
    _open(page, f"{webserver}/locations/arena_dagster/asset-groups/sft/lineage")
    for asset in ("sft_responses", "sft_judgments", "sft_examples", "sft_judge_health", "sft_checkpoint"):
        page.get_by_text(asset, exact=True).first.wait_for()
    time.sleep(3)
    page.screenshot(path=str(ARTIFACTS / "asset-group-sft.png"))
    # A table's checks: each says what it checks, whether it blocks and why, and names its suite file.
    _open(page, f"{webserver}/assets/sft_examples?view=checks")
    page.get_by_text("lost_battle", exact=True).first.wait_for()
    page.get_by_text("assets/expectations/sft_examples.yaml").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "sft-examples-checks.png"))
