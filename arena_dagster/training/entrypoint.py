"""Training entry point, run in its own process: `python -m arena_dagster.training.entrypoint SPEC.json`.

Stages (the spec's `stage`):
- `base`: a fresh Llama-style model from `model_config` and the tokenizer folder `tokenizer`,
  trained by TRL `SFTTrainer` on a chat JSONL;
- `sft`: continues `base_model` with `SFTTrainer` (loss on the answer only), optionally mixing
  in `replay` rows from an earlier dataset so the model does not forget what it knew;
- `dpo`: TRL `DPOTrainer` from `base_model`, whose frozen copy is the reference model;
- `reward`: a reward model (`AutoModelForSequenceClassification`, one output) initialised from
  `base_model`, trained by TRL `RewardTrainer` on preference pairs; a seeded, prompt-grouped
  share of the pairs is held out and the trained model's pair accuracy on it is measured;
- `rl`: TRL `RLOOTrainer` from `base_model` (also the frozen KL reference) with the `reward`
  stage's model in `reward_model` as the reward function.

Optional spec keys: `device` ("auto" (default): CUDA when available, else CPU; "cpu"; "cuda")
and `launch` ({num_processes, config_file, mixed_precision}: the runner starts the entry point
through `accelerate launch`; only the main process saves, writes the manifest and renames).

The model and tokenizer are written to `output_dir + ".tmp"` and renamed to `output_dir` only
when complete, with `manifest.json` (dataset hash, base model, hyperparameters, metrics and
per-step curves, see training/metrics.py): a killed run leaves no half-written checkpoint
behind, and the next run removes what it left. The spec and its identity are in
training/spec.py, the data readers in training/data.py, each stage's TRL trainer in
training/trainers.py. Started by a Dagster Pipes launcher,
the process also reports through Pipes (training/pipes.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from arena_dagster.errors import describe_os_error, os_error_in
from arena_dagster.paths import remove_tree, replace_dir
from arena_dagster.training.data import load_rows, split_preference_pairs
from arena_dagster.training.guard import follow_launcher
from arena_dagster.training.metrics import REWARD_EVAL_PAIRS, StepSeries, step_metrics_callback
from arena_dagster.training.pair_scores import preference_accuracy
from arena_dagster.training.pipes import Reporter, open_reporter
from arena_dagster.training.spec import (
    MANIFEST,
    TrainingDataError,
    TrainingSpecError,
    file_sha256,
    read_manifest,
    spec_hash,
    validate_spec,
)
from arena_dagster.training.trainers import build_trainer, runtime_of


# The exit status of a training stopped by an OS error (its `error: ENOSPC: ...` line says which).
OS_ERROR_EXIT = 4


def _is_main_process() -> bool:
    # Before a trainer exists: torchrun (behind `accelerate launch`) sets RANK on every process.
    return int(os.environ.get("RANK") or 0) == 0


def _rows_dropped_by_trl(stage: str, rows: list[dict], trainer, dataset_path: Path, max_length: int) -> int:
    """TRL's DPOTrainer drops pairs whose prompt alone fills max_length: counted, and an error when none is left
    (torch would fail on an empty sampler with no word about why)."""
    if stage != "dpo":
        return 0
    dropped = len(rows) - len(trainer.train_dataset)
    if dropped and dropped == len(rows):
        raise TrainingDataError(
            f"{dataset_path}: the prompt of every one of the {len(rows)} pair(s) is max_length={max_length} tokens or "
            "longer (TRL drops them): raise the dpo stage's hyperparams.max_length or shorten the prompts "
            "(prompts.max_conversation_chars)"
        )
    return dropped


def _attach_step_metrics(trainer, tokenizer, resolved: dict, reporter: Reporter) -> StepSeries:
    """Every step's metrics into a StepSeries (and the reporter), instead of TRL's print of each log."""
    from transformers.trainer_callback import PrinterCallback

    stage = resolved["stage"]
    series = StepSeries(stage)
    evaluate = None
    if stage == "reward" and len(trainer.eval_dataset):
        sample = trainer.eval_dataset.select(range(min(REWARD_EVAL_PAIRS, len(trainer.eval_dataset))))

        def evaluate(model) -> float | None:
            return preference_accuracy(model, sample, tokenizer.pad_token_id)["accuracy"]

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(
        step_metrics_callback(
            series,
            print_every=max(1, int(resolved["hyperparams"]["logging_steps"])),
            log=reporter.log,
            on_step=reporter.step,
            evaluate=evaluate,
        )
    )
    return series


def train(spec: dict, reporter: Reporter | None = None, worker: Any = None) -> dict | None:
    """Run one training stage as described by `spec`; returns the manifest written next to the model.

    Under `accelerate launch` every process trains; only the main one writes and renames the
    folder, and every process returns the manifest once it is in place. `worker`: a Ray Train
    worker's share of the run (training/ray_train.py `RayWorker`: its per-worker hyperparameters,
    checkpoint callbacks and the checkpoint it resumes from); None in a local process.
    """
    reporter = reporter or Reporter()
    started = time.time()
    resolved = validate_spec(spec)
    identity = spec_hash(spec)
    stage = resolved["stage"]
    dataset_path = Path(resolved["dataset_path"])
    # Bad data fails here, before the slow imports.
    rows, dataset_rows, replay = load_rows(resolved)
    hyper = resolved["hyperparams"]
    split: dict = {}
    eval_rows: list[dict] = []
    if stage == "reward":
        rows, eval_rows, split = split_preference_pairs(rows, float(hyper["eval_fraction"]), int(hyper["seed"]))

    import torch
    from transformers import set_seed

    threads = int(spec.get("threads") or os.environ.get("ARENA_TORCH_THREADS") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    runtime = runtime_of(resolved)
    output_dir = Path(resolved["output_dir"])
    # Only the folders beside output_dir are ever removed or replaced, never anything above it.
    root = output_dir.parent
    tmp_dir = Path(str(output_dir) + ".tmp")
    if _is_main_process() and tmp_dir.exists():
        remove_tree(root, tmp_dir)
    set_seed(int(hyper["seed"]))
    # A Ray worker trains its share of the global batch; the manifest keeps the stage's hyperparameters.
    trained = worker.trainer_spec(resolved) if worker else resolved
    trainer, tokenizer = build_trainer(trained, rows, eval_rows, tmp_dir, runtime)
    for callback in worker.callbacks() if worker else ():
        trainer.add_callback(callback)
    over_max_length = _rows_dropped_by_trl(stage, rows, trainer, dataset_path, int(hyper.get("max_length") or 0))
    series = _attach_step_metrics(trainer, tokenizer, resolved, reporter)
    is_main = trainer.accelerator.is_main_process

    if is_main:
        reporter.log(
            f"[{stage}] {dataset_rows} rows (+{len(replay)} replay), {torch.get_num_threads()} threads, "
            f"{runtime['device']} x {runtime['processes']} process(es), bf16={runtime['bf16']}"
        )
    train_started = time.time()
    train_output = trainer.train(resume_from_checkpoint=worker.resume_from if worker else None)
    figures, curves = series.summary()
    metrics = {
        "train_loss": float(train_output.training_loss),
        **figures,
        "steps": int(train_output.global_step),
        "train_wall_s": round(time.time() - train_started, 2),
    }
    if stage == "dpo":
        metrics["pairs_over_max_length"] = over_max_length

    model = trainer.model
    if stage == "reward":
        # TRL drops pairs longer than max_length; counted here, not lost silently.
        train_scores = preference_accuracy(model, trainer.train_dataset, tokenizer.pad_token_id)
        eval_scores = preference_accuracy(model, trainer.eval_dataset, tokenizer.pad_token_id)
        if eval_scores["pairs"] == 0:
            raise TrainingDataError(f"{dataset_path}: every held-out pair is longer than max_length={hyper['max_length']}")
        metrics.update(
            eval_accuracy=eval_scores["accuracy"],
            eval_margin=eval_scores["margin"],
            eval_pairs=eval_scores["pairs"],
            train_accuracy=train_scores["accuracy"],
            train_margin=train_scores["margin"],
            train_pairs=train_scores["pairs"],
            pairs_over_max_length=len(rows) + len(eval_rows) - train_scores["pairs"] - eval_scores["pairs"],
        )
        curves["eval_accuracy"] = [*curves.get("eval_accuracy", []), [metrics["steps"], round(eval_scores["accuracy"], 6)]]
    else:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = None
    # On every process: under DeepSpeed ZeRO-3 the weights are gathered collectively; only the
    # main process writes the files.
    trainer.save_model(str(tmp_dir))
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        trainer.accelerator.wait_for_everyone()  # the main process renames the folder into place
        return read_manifest(output_dir)
    for leftover in ("training_args.bin", "README.md"):
        (tmp_dir / leftover).unlink(missing_ok=True)
    manifest = {
        "stage": stage,
        "round": resolved["round"],
        "name": spec.get("name", output_dir.name),
        "base_model": resolved.get("base_model") or None,
        "tokenizer": resolved.get("tokenizer") or None,
        "dataset_path": str(dataset_path),
        "dataset_hash": file_sha256(dataset_path),
        "dataset_rows": dataset_rows,
        "replay": (
            {**resolved["replay"], "dataset_hash": file_sha256(Path(resolved["replay"]["dataset_path"])), "rows_used": len(replay)}
            if resolved.get("replay")
            else None
        ),
        "model_config": resolved.get("model_config") or model.config.to_diff_dict(),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "hyperparams": hyper,
        "runtime": runtime,
        "engine": worker.engine if worker else "local",
        "world_size": runtime["processes"],
        "metrics": metrics,
        "curves": curves,
        "spec_hash": identity,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 2),
    }
    if stage == "reward":
        manifest["split"] = split
    if stage == "rl":
        reward_manifest = read_manifest(Path(resolved["reward_model"])) or {}
        manifest["reward_model"] = resolved["reward_model"]
        manifest["reward_model_spec_hash"] = reward_manifest.get("spec_hash")
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    replace_dir(root, tmp_dir, output_dir)
    trainer.accelerator.wait_for_everyone()
    summary = {
        "reward": f"held-out accuracy {metrics.get('eval_accuracy')}",
        "rl": f"reward {_short(metrics.get('first_mean_reward'))} -> {_short(metrics.get('last_mean_reward'))}",
        "dpo": f"margin {_short(metrics.get('first_rewards_margins'))} -> {_short(metrics.get('rewards/margins'))}",
    }
    reporter.log(
        f"[{stage}] wrote {output_dir} loss {_short(metrics['first_loss'])} -> {_short(metrics['final_loss'])} "
        f"{summary.get(stage, '')}".rstrip()
    )
    reporter.result(manifest)
    return manifest


def _short(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def main(argv: list[str] | None = None) -> int:
    # Under `accelerate launch` this is a rank, started in its own session: it dies with the launcher.
    follow_launcher()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m arena_dagster.training.entrypoint SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    reporter = open_reporter()
    try:
        if (spec.get("compute") or {}).get("engine") == "ray":
            # This process is then the driver: the stage trains on the cluster's Ray Train workers.
            from arena_dagster.training.ray_train import train_on_ray

            train_on_ray(spec, reporter, train)
        else:
            train(spec, reporter)
    except (TrainingSpecError, TrainingDataError) as exc:
        reporter.error(f"error: {exc}")
        reporter.close()
        return 3
    except Exception as exc:
        # A full disk, a read-only or missing folder: the launcher's failure names the OS error and its path.
        error = os_error_in(exc)
        if error is None:
            reporter.close(exc)
            raise
        traceback.print_exc()
        reporter.error(f"error: {describe_os_error(error, writing=str(spec.get('output_dir', '')) + '.tmp')}")
        reporter.close()
        return OS_ERROR_EXIT
    except BaseException as exc:
        reporter.close(exc)
        raise
    reporter.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
