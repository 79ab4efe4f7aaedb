#!/usr/bin/env bash
# GPU check for issue 5: the vllm backend (offline LLM.chat) beside the transformers backend on
# one small model, same prompts, greedy; prints tokens/s of each and the ratio.
#
#   benchmarks/gpu_check.sh [MODEL_DIR]
#
# Needs:  a GPU; MODEL_DIR = an HF model folder with a chat template (default: the SmolLM2-135M
#         folder that scripts/install_server.sh writes); VLLM_PYTHON = a python whose env has GPU
#         vLLM (`pip install 'arena-dagster[vllm]'` in its own venv: vLLM pins its own torch), default
#         .venv-vllm-gpu/bin/python; TF_PYTHON = the project's python (default .venv/bin/python).
# Knobs:  PROMPTS (512), MAX_TOKENS (128), TF_BATCH (64).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_DIR=${1:-${MODEL_DIR:-.venv-vllm/models/smollm2-135m-instruct}}
VLLM_PYTHON=${VLLM_PYTHON:-.venv-vllm-gpu/bin/python}
TF_PYTHON=${TF_PYTHON:-.venv/bin/python}
export PROMPTS=${PROMPTS:-512} MAX_TOKENS=${MAX_TOKENS:-128} TF_BATCH=${TF_BATCH:-64}
export MODEL_DIR PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "warning: nvidia-smi not found"
[ -f "$MODEL_DIR/config.json" ] || { echo "no model folder at $MODEL_DIR (run scripts/install_server.sh or pass MODEL_DIR)"; exit 2; }
[ -x "$VLLM_PYTHON" ] || { echo "no vLLM python at $VLLM_PYTHON (set VLLM_PYTHON)"; exit 2; }

read -r -d '' BENCH <<'PY' || true
import json, os, sys, time
from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.registry import make_backend

backend_name = sys.argv[1]
n, max_tokens = int(os.environ["PROMPTS"]), int(os.environ["MAX_TOKENS"])
topics = ["rivers", "bread", "stars", "chess", "rain", "glass", "owls", "trains", "salt", "maps"]
sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
requests = [ChatRequest(f"g{i}", user_messages(f"({i}) Write a short paragraph about {topics[i % 10]}."), sampling) for i in range(n)]
options = {"device": "cuda", "dtype": "bfloat16", "batch_size": int(os.environ["TF_BATCH"])} if backend_name == "transformers" \
    else {"engine": {"dtype": "bfloat16", "gpu_memory_utilization": 0.5, "max_model_len": 2048}}
backend = make_backend(ModelSpec(name=backend_name, backend=backend_name, path=os.environ["MODEL_DIR"], sampling=sampling, options=options))
backend.generate(requests[:4])  # load + warm up
started = time.perf_counter()
out = backend.generate(requests)
wall = time.perf_counter() - started
tokens = sum(c.tokens_out for c in out)
print("RESULT " + json.dumps({"backend": backend_name, "prompts": n, "wall_s": round(wall, 2), "tokens_out": tokens, "tokens_per_s": round(tokens / wall, 1)}))
PY

vllm_line=$("$VLLM_PYTHON" -c "$BENCH" vllm | grep '^RESULT ' | cut -c8-)
echo "vllm:         $vllm_line"
tf_line=$("$TF_PYTHON" -c "$BENCH" transformers | grep '^RESULT ' | cut -c8-)
echo "transformers: $tf_line"
"$TF_PYTHON" - "$vllm_line" "$tf_line" <<'PY'
import json, sys
v, t = (json.loads(a) for a in sys.argv[1:3])
print(f"vllm {v['tokens_per_s']} tok/s vs transformers {t['tokens_per_s']} tok/s: x{v['tokens_per_s'] / t['tokens_per_s']:.1f}")
PY
