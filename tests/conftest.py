"""Session-wide test settings and the shared flywheel home.

Base models are shared through the base-model cache (training/model_cache.py): every test of a
session, and every subprocess it starts, uses one cache folder, so a profile's tokenizer and
base models are trained once per session, never in the user's own ~/.cache. Set
ARENA_TEST_CACHE to keep that folder across sessions (e.g. in CI, between steps).

`smoke_home` is one small flywheel built by the real command, used by every test that needs one.

scripts/test.sh runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`): the session's
base-model cache and `smoke_home` are shared by both (built once, under a file lock); a test file
runs on one worker (its module-scoped fixtures, a server or a trained checkpoint, are set up once),
the two files of `interrupted_home` on the same one, and the files of the long end-to-end tests
(`slow`) start first, the longest first (LONGEST_FILES), so that short files end both workers' runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
SMOKE_ROUNDS = 2

_session_cache: str | None = None


def pytest_configure(config) -> None:
    global _session_cache
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(FileScheduling(), "arena-file-scheduling")
    configured = os.environ.get("ARENA_TEST_CACHE")
    if configured:
        os.environ["ARENA_CACHE"] = configured
        return
    _session_cache = tempfile.mkdtemp(prefix="arena-test-cache-")
    # xdist's workers start after this and inherit the environment: they share this one cache (its locks make that safe).
    os.environ["ARENA_TEST_CACHE"] = os.environ["ARENA_CACHE"] = _session_cache


def pytest_unconfigure(config) -> None:
    if _session_cache:
        shutil.rmtree(_session_cache, ignore_errors=True)


# Both read the home of the `interrupted_home` fixture: one unit of work, so one worker builds it.
INTERRUPTED_HOME_FILES = ("tests/test_crash_resume.py", "tests/test_signals.py")


class FileScheduling:
    """`--dist loadfile` with INTERRUPTED_HOME_FILES as one unit of work (registered when xdist is installed)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        if config.getvalue("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        class Scheduling(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                path = super()._split_scope(nodeid)
                return "interrupted_home" if path in INTERRUPTED_HOME_FILES else path

        return Scheduling(config, log)


# The files that take longest under scripts/test.sh (seconds on its two workers, stop 28's fresh-clone run), longest
# first: a worker that draws one of them last runs on alone while the other has finished (xdist hands out a unit
# when a worker has at most 2 tests left), so they go out first and the many short files fill both workers' ends.
LONGEST_FILES = (
    "tests/test_compute_ray_round.py",  # 1077 (with smoke_home, built in its setup)
    "tests/test_crash_resume.py",  # 794 (interrupted_home)
    "tests/test_sharegpt_flywheel.py",  # 584
    "tests/test_server_backend.py",  # 508
    "tests/test_training_ray.py",  # 397
    "tests/test_compute_replicas.py",  # 378
    "tests/test_llm_judge_runtime.py",  # 378
    "tests/test_compute_ray.py",  # 368
)


def schedule_order(item) -> tuple[bool, int]:
    """The slow tests first, then within each kind the files of LONGEST_FILES in its order, then the others."""
    path = item.nodeid.split("::")[0]
    rank = LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)
    return item.get_closest_marker("slow") is None, rank


def pytest_collection_modifyitems(config, items) -> None:
    """On an xdist worker: in schedule_order. Units go out in the order of their first test (with
    --no-loadscope-reorder), so the long runs start at once instead of ending last on one worker."""
    if hasattr(config, "workerinput"):
        items.sort(key=schedule_order)


def _session_folder(tmp_path_factory) -> Path:
    """A folder of this test session that every xdist worker shares (each worker's base temp lies in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def flywheel_command(home: Path, *args: str, rounds: int = SMOKE_ROUNDS) -> list[str]:
    return [sys.executable, "-m", "arena_dagster.cli", "flywheel", "--profile", "skills_smoke",
            "--rounds", str(rounds), "--home", str(home), *args]


def flywheel_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def leaderboard(*args: str) -> subprocess.CompletedProcess:
    """`arena-dagster leaderboard ARGS` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "arena_dagster.cli", "leaderboard", *args], cwd=REPO,
                          env=flywheel_env(), capture_output=True, text=True, timeout=120)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The one-line user error of a command that refused (exit 2, no traceback, nothing on stdout)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("arena-dagster: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return proc.stderr


@pytest.fixture(scope="session")
def smoke_home(tmp_path_factory) -> Path:
    """A home that `arena-dagster flywheel --profile skills_smoke --rounds 2` built, uninterrupted, through Dagster.

    ARENA_TEST_SMOKE_HOME names a home that command already built (to iterate on the tests that read one).
    Under xdist the first worker that needs it builds it; the other waits for the lock and reads the same home.
    """
    reused = os.environ.get("ARENA_TEST_SMOKE_HOME")
    if reused:
        return Path(reused)
    shared = _session_folder(tmp_path_factory)
    home, built = shared / "smoke" / "home", shared / "smoke" / "home" / "flywheel-output.txt"
    with FileLock(shared / "smoke.lock"):
        if not built.is_file():
            home.parent.mkdir(exist_ok=True)
            proc = subprocess.run(flywheel_command(home), check=False, cwd=REPO, env=flywheel_env(), capture_output=True,
                                  text=True, timeout=1800)
            assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
            built.write_text(proc.stdout)
    return home


@pytest.fixture(scope="session")
def interrupted_home(tmp_path_factory):
    """One home interrupted at every kind of step by kill -9, SIGTERM and SIGINT, then finished (tests/interruptions.py)."""
    from interruptions import interrupted_home as build

    return build(tmp_path_factory.mktemp("interrupted"))


@pytest.fixture(scope="session")
def ray_local_cluster():
    """A local Ray cluster of 2 CPUs for the session (dagster-ray's tests do the same); the code under test joins it.
    With its dashboard: a training stage is a Ray job, submitted to the dashboard's job server."""
    ray = pytest.importorskip("ray")
    from arena_dagster.compute.cluster import own_agent_port
    from arena_dagster.compute.settings import WORKER_ENV

    own_agent_port()  # beside a run's cluster or another session's
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, runtime_env={"env_vars": dict(WORKER_ENV)})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def save_tiny_llama(folder: Path, texts: list[str], max_positions: int = 128) -> str:
    """A 1-layer Llama with random (seeded) weights and a character tokenizer of `texts`, saved as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    tokenizer = build_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama():
    """`save_tiny_llama`, for a test module that needs a tiny model of its own text."""
    return save_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny untrained Llama with the skills tokenizer (the transformers backend's and Ray replicas' tests)."""
    from arena_dagster.prompts.skills import make_items

    items = make_items(200, seed=0)
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_model"), [i.prompt for i in items] + [i.reference for i in items])
