"""GPU check of the training stages: SFT, DPO, reward model and RLOO on one device, then two processes.

    .venv/bin/python benchmarks/gpu_training_check.py [--device auto|cuda|cpu] [--processes 2] [--out DIR]

Trains a small Llama (built with `from_config` on the skills tokenizer) through the same
subprocess runner and entry point the assets use, and prints, per stage, the device and
precision the run resolved (`manifest.runtime`), its wall time and its key metric. With
`--processes N` (N > 1) the SFT stage runs again under `accelerate launch` with N ranks
(one GPU each when CUDA is present; gloo on CPU otherwise). On a machine without a GPU the
`auto` device trains on CPU, so the script also checks itself here.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from arena_dagster.profile_schema.models import DeclaredModels
from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.runner import run_training
from arena_dagster.training.stages import stage_training_spec

MODEL = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "max_position_embeddings": 256, "tie_word_embeddings": True}
HYPER = {
    "base": {"max_steps": 200, "batch_size": 64, "learning_rate": 3e-3},
    "sft": {"max_steps": 100, "batch_size": 32, "learning_rate": 1e-3},
    "dpo": {"max_steps": 40, "batch_size": 16, "learning_rate": 1e-4, "beta": 0.1},
    "reward": {"max_steps": 60, "batch_size": 16, "learning_rate": 1e-3, "eval_fraction": 0.2},
    "rl": {"max_steps": 10, "batch_size": 16, "learning_rate": 1e-5, "beta": 0.1, "num_generations": 4,
           "max_completion_length": 24, "temperature": 1.0, "logging_steps": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="gpu-training-"))
    root.mkdir(parents=True, exist_ok=True)

    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    items = make_items(3000, seed=5)
    tokenizer_dir = root / "tokenizer"
    save_tokenizer(build_tokenizer([i.prompt for i in items] + [i.reference for i in items]), tokenizer_dir)
    rng = random.Random(0)
    data = {
        "base": write_jsonl(root / "base.jsonl", (chat_row(i.prompt, i.reference) for i in items[:2000])),
        "sft": write_jsonl(root / "sft.jsonl", (chat_row(i.prompt, i.reference) for i in items[2000:2400])),
        # Preferences with a signal: the reference answer over another item's answer.
        "dpo": write_jsonl(root / "dpo.jsonl", ({"prompt": i.prompt, "chosen": i.reference, "rejected": wrong}
                                                for i in items[2400:2700]
                                                if i.reference != (wrong := rng.choice(items).reference))),
        "rl": write_jsonl(root / "rl.jsonl", ({"prompt": i.prompt, "prompt_id": i.item_id} for i in items[2700:2800])),
    }
    settings = {"flywheel": {stage: {"hyperparams": HYPER[stage]} for stage in ("sft", "dpo", "reward", "rl")},
                "device": args.device}
    declared = {"source": "declared", "initial_target": {"name": "base", "backend": "transformers", "path": str(root / "base")},
                "competitors": {"competitor": {"backend": "transformers", "path": str(root / "base")}}}  # unused: a declared section needs one
    results = []

    def run(spec: dict) -> dict:
        started = time.time()
        manifest = run_training(spec, log=lambda line: None)
        runtime = manifest.get("runtime", {})
        metrics = manifest.get("metrics", {})
        key = {k: metrics[k] for k in ("final_loss", "eval_accuracy", "first_mean_reward", "last_mean_reward") if metrics.get(k) is not None}
        row = {"stage": spec["stage"], "name": spec["name"], "wall_s": round(time.time() - started, 1), **runtime, **key}
        print("RESULT " + json.dumps(row), flush=True)
        results.append(row)
        return manifest

    base = {"stage": "base", "round": 0, "name": "base", "output_dir": str(root / "base"), "dataset_path": str(data["base"]),
            "tokenizer": str(tokenizer_dir), "model_config": MODEL, "hyperparams": HYPER["base"], "device": args.device}
    run(base)
    common = {"models": DeclaredModels.model_validate({**declared, **settings}, context={"locally_built": False}), "locally_built": False, "round_key": 1}
    sft = stage_training_spec("sft", base_model=base["output_dir"], dataset=data["sft"], output_dir=root / "SFT-I1", **common)
    run(sft)
    dpo = stage_training_spec("dpo", base_model=sft["output_dir"], dataset=data["dpo"], output_dir=root / "DPO-I1", **common)
    run(dpo)
    reward = stage_training_spec("reward", base_model=dpo["output_dir"], dataset=data["dpo"], output_dir=root / "RM-I1", **common)
    run(reward)
    rl = stage_training_spec("rl", base_model=dpo["output_dir"], dataset=data["rl"], output_dir=root / "RL-I1",
                             reward_model=reward["output_dir"], **common)
    run(rl)
    if args.processes > 1:
        launched = stage_training_spec("sft", base_model=base["output_dir"], dataset=data["sft"], output_dir=root / "SFT-I1-ddp",
                                       **{**common, "models": DeclaredModels.model_validate(
                                           {**declared, **settings, "launch": {"num_processes": args.processes}}, context={"locally_built": False})})
        run(launched)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
