#!/usr/bin/env bash
# Installs what it needs (once), then runs the flywheel: `bash scripts/flywheel.sh [--rounds N] [--profile P] [--home DIR]`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/arena-dagster flywheel --rounds 3 "$@"
