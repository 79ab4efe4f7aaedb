"""Training subprocesses die with their parent (kill -9 included), and the next run cleans up what they left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.guard import GUARD_MODULE, ORPHAN_EXIT, guarded
from arena_dagster.training.runner import leftovers, run_training, spec_file

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def test_guard_runs_the_command_for_its_parent_only():
    ran = subprocess.run(guarded([sys.executable, "-c", "import os; print(os.environ['ARENA_GUARD_PARENT'] == str(os.getpid()))"]),
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert ran.returncode == 0 and ran.stdout.strip() == "True"  # exec'd in place, same pid
    # Started "for" a process that is not its parent (the launcher died before the guard armed): nothing runs.
    orphan = subprocess.run([sys.executable, "-m", GUARD_MODULE, "--parent", "1", "--", "echo", "ran"],
                            capture_output=True, text=True, env=_env(), timeout=60)
    assert orphan.returncode == ORPHAN_EXIT and "ran" not in orphan.stdout and "is gone" in orphan.stderr
    usage = subprocess.run([sys.executable, "-m", GUARD_MODULE, "echo"], capture_output=True, text=True, env=_env(), timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr


def _descendants(pid: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, set()).add(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped: it only waits to be reaped


@pytest.mark.parametrize("processes", [1, 2], ids=["plain", "accelerate"])
def test_kill_9_of_the_parent_kills_training_and_the_rerun_cleans_up(tmp_path, processes):
    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    items = make_items(60, seed=5)
    tokenizer = save_tokenizer(build_tokenizer([i.prompt for i in items] + [i.reference for i in items]), tmp_path / "tok")
    data = write_jsonl(tmp_path / "base.jsonl", (chat_row(i.prompt, i.reference) for i in items))
    output_dir = tmp_path / "models" / "base"
    spec = {
        "stage": "base",
        "output_dir": str(output_dir),
        "dataset_path": str(data),
        "tokenizer": str(tokenizer),
        "model_config": TINY_MODEL,
        "hyperparams": {"max_steps": 100_000, "batch_size": 4, "logging_steps": 1},
        "threads": 1,
    }
    if processes > 1:
        spec["launch"] = {"num_processes": processes}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    parent_code = (
        "import json, sys; from arena_dagster.training.runner import run_training; "
        "run_training(json.load(open(sys.argv[1])), log=lambda line: print(line, flush=True))"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(tmp_path / "spec.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    seen: list[str] = []
    stepping = threading.Event()

    def read() -> None:
        for line in parent.stdout:
            seen.append(line)
            if "[base] step" in line:
                stepping.set()

    threading.Thread(target=read, daemon=True).start()
    training: set[int] = set()
    try:
        assert stepping.wait(timeout=180), "".join(seen[-30:])
        training = _descendants(parent.pid)
        assert len(training) >= processes
        assert spec_file(output_dir).exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        killed_at = time.monotonic()
        while any(_alive(pid) for pid in training) and time.monotonic() - killed_at < 1.0:
            time.sleep(0.02)
        assert not [pid for pid in training if _alive(pid)], "training processes outlived their parent by a second"
    finally:
        strays = training | (_descendants(parent.pid) if parent.poll() is None else set())
        parent.kill()
        for pid in strays:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # only when the test failed: no stray training run

    # What the killed run left beside the checkpoint goes at the next run of that folder.
    Path(str(output_dir) + ".tmp").mkdir(exist_ok=True)
    (Path(str(output_dir) + ".tmp") / "model.safetensors").write_bytes(b"half")
    Path(str(output_dir) + ".old").mkdir()
    assert {p.name for p in leftovers(output_dir)} == {"base.tmp", "base.old", "base.spec.json"}
    lines: list[str] = []
    manifest = run_training({**spec, "hyperparams": {"max_steps": 2, "batch_size": 4}, "launch": None}, log=lines.append, timeout_s=180)
    assert manifest["metrics"]["steps"] == 2
    assert leftovers(output_dir) == []
    assert sorted(p.name for p in output_dir.parent.iterdir()) == ["base", "base.lock"]
    assert sum("left by a run that did not finish" in line for line in lines) == 3
