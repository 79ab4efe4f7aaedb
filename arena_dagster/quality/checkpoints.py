"""Checks of a round's trained checkpoints: it loads and answers, its manifest is complete, it learned.

Each stage's checkpoint (SFT, DPO, reward model, RL) gets three checks, read from its
model_registry row and the manifest.json in its folder:
- `loads_and_generates` (the reward model: `loads_and_scores`): the folder loads with
  transformers on CPU and answers a short prompt (the reward model scores a pair);
- `manifest_complete`: stage, dataset hash, spec hash, hyperparameters and metrics are there,
  agree with the registry, and the exported dataset still has the recorded hash;
- `loss_decreased` (RL: `reward_increased`): the training loss went down from its first
  logged value to its last (RLOO's loss is a centred policy-gradient term that stays near 0,
  so the RL stage is judged by the reward model's mean reward instead).
A stage skipped for lack of data (its manifest says `skipped`) passes every check with the reason.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from arena_dagster.quality.validation import CheckOutcome

REQUIRED_MANIFEST = ("stage", "dataset_hash", "spec_hash", "hyperparams", "metrics")
STAGE_REQUIRED = {"reward": ("split",), "rl": ("reward_model",)}
GENERATION_PROMPT = "Say hello in one word."
FALLBACK_PAIR = ("Name a primary colour.", "Red.", "Banana bread recipe follows.")


@dataclass(frozen=True)
class CheckpointCheck:
    name: str
    blocking: bool
    description: str


def checkpoint_checks(stage: str) -> list[CheckpointCheck]:
    """The checks of a stage's checkpoint, with the static description Dagster shows."""
    if stage == "reward":
        first = CheckpointCheck(
            "loads_and_scores", True,
            "The reward model loads with transformers on CPU and scores a (chosen, rejected) pair of the round with two finite "
            "numbers. Blocks the RL stage: a reward model that cannot score gives RLOO no signal.",
        )
    else:
        first = CheckpointCheck(
            "loads_and_generates", True,
            "The checkpoint loads with transformers on CPU and answers a short prompt (a few new tokens). Blocks the round's "
            "next steps: every later battle and the arena generate with this checkpoint.",
        )
    manifest = CheckpointCheck(
        "manifest_complete", True,
        "manifest.json names the stage, the dataset hash, the spec hash, the hyperparameters and the metrics; they agree "
        "with model_registry, and the exported dataset still has the recorded hash. Blocks: a checkpoint that cannot say "
        "what it was trained on breaks the lineage of every later round.",
    )
    if stage == "rl":
        learned = CheckpointCheck(
            "reward_increased", False,
            "The reward model's mean reward of the policy's samples rose from the first logged step to the last "
            "(first_mean_reward < last_mean_reward). Warns only: a short RL stage may not move it.",
        )
    else:
        learned = CheckpointCheck(
            "loss_decreased", False,
            "The training loss fell from its first logged value to its last (first_loss > final_loss). Warns only: a loss "
            "that does not fall means too few steps or too high a learning rate, not broken data.",
        )
    return [first, manifest, learned]


def _skipped(stage: str, reason: str) -> list[CheckOutcome]:
    return [
        CheckOutcome(check.name, True, check.blocking, f"passed: stage skipped ({reason})", {"skipped": reason})
        for check in checkpoint_checks(stage)
    ]


def registry_manifest(row: Mapping[str, Any]) -> dict[str, Any]:
    manifest = row.get("manifest") or "{}"
    return json.loads(manifest) if isinstance(manifest, str) else dict(manifest)


def manifest_complete(stage: str, row: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> CheckOutcome:
    blocking = True
    if manifest is None:
        return CheckOutcome("manifest_complete", False, blocking, f"failed: no readable manifest.json in {row['path']}",
                            {"path": str(row["path"])})
    required = REQUIRED_MANIFEST + STAGE_REQUIRED.get(stage, ())
    missing = [key for key in required if manifest.get(key) in (None, "", {}, [])]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    if manifest.get("stage") not in (None, stage):
        problems.append(f"stage is {manifest.get('stage')!r}, not {stage!r}")
    if manifest.get("spec_hash") and row.get("revision") != manifest.get("spec_hash"):
        problems.append(f"registry revision {row.get('revision')} is not the manifest's spec_hash {manifest.get('spec_hash')}")
    if manifest.get("dataset_hash") and row.get("dataset_hash") != manifest.get("dataset_hash"):
        problems.append(f"registry dataset_hash {row.get('dataset_hash')} is not the manifest's {manifest.get('dataset_hash')}")
    metadata: dict[str, Any] = {
        "stage": str(manifest.get("stage")), "dataset_hash": str(manifest.get("dataset_hash")),
        "spec_hash": str(manifest.get("spec_hash")), "dataset_rows": int(manifest.get("dataset_rows") or 0),
        "hyperparams": ", ".join(f"{k}={v}" for k, v in sorted((manifest.get("hyperparams") or {}).items()))[:500],
    }
    dataset = Path(str(manifest.get("dataset_path") or ""))
    if manifest.get("dataset_path") and dataset.is_file():
        from arena_dagster.training.spec import file_sha256

        actual = file_sha256(dataset)
        metadata["dataset file hash"] = actual
        if manifest.get("dataset_hash") and actual != manifest["dataset_hash"]:
            problems.append(f"{dataset} now hashes to {actual}, not the recorded {manifest['dataset_hash']}")
    else:
        metadata["dataset file"] = f"not found at {dataset} (the recorded hash is all that is left)"
    if problems:
        metadata["problems"] = "; ".join(problems)
        return CheckOutcome("manifest_complete", False, blocking, "failed: " + "; ".join(problems), metadata)
    return CheckOutcome("manifest_complete", True, blocking, f"passed: {', '.join(required)} recorded and consistent", metadata)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def learned(stage: str, manifest: Mapping[str, Any] | None) -> CheckOutcome:
    metrics = dict((manifest or {}).get("metrics") or {})
    hyper = dict((manifest or {}).get("hyperparams") or {})
    if stage == "rl":
        name, first_key, last_key, wanted = "reward_increased", "first_mean_reward", "last_mean_reward", "rose"
    else:
        name, first_key, last_key, wanted = "loss_decreased", "first_loss", "final_loss", "fell"
    first, last = _number(metrics.get(first_key)), _number(metrics.get(last_key))
    metadata: dict[str, Any] = {
        first_key: first if first is not None else "not logged",
        last_key: last if last is not None else "not logged",
        "steps": int(metrics.get("steps") or 0),
        "logging_steps": str(hyper.get("logging_steps", "default")),
    }
    if first is None or last is None:
        reason = (
            f"{first_key}/{last_key} were not logged (logging_steps={hyper.get('logging_steps')} with "
            f"max_steps={hyper.get('max_steps')}: the trainer logs once every logging_steps steps)"
        )
        return CheckOutcome(name, False, False, f"warning: {reason}", metadata)
    change = last - first
    metadata["change"] = change
    passed = change > 0 if stage == "rl" else change < 0
    verdict = "passed" if passed else "warning"
    text = f"{first_key} {first:.4g} -> {last_key} {last:.4g}" + ("" if passed else f": it never {wanted}")
    if not passed and first == last and int(metrics.get("steps") or 0) <= int(hyper.get("logging_steps") or 0):
        text += " (only one logged step)"
    return CheckOutcome(name, passed, False, f"{verdict}: {text}", metadata)


def generates(path: str, *, max_new_tokens: int = 4, threads: int | None = None) -> CheckOutcome:
    """The checkpoint folder loads with transformers on CPU and answers a short prompt."""
    from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages
    from arena_dagster.backends.transformers_backend import TransformersBackend

    options = {"device": "cpu", "batch_size": 1, **({"threads": threads} if threads else {})}
    backend = TransformersBackend(ModelSpec(name=Path(path).name, backend="transformers", path=path, options=options))
    request = ChatRequest(request_id="check", messages=user_messages(GENERATION_PROMPT),
                          sampling=SamplingParams(max_tokens=max_new_tokens, temperature=0.0))
    started = time.perf_counter()
    try:
        (completion,) = backend.generate([request])
    except Exception as exc:  # any load or generation failure is the check's finding, reported in full
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return CheckOutcome("loads_and_generates", False, True, f"failed: {message}", {"error": message, "path": path})
    metadata = {
        "prompt": GENERATION_PROMPT, "answer": completion.text[:200] or "(empty: the first token was end-of-sequence)",
        "tokens_out": int(completion.tokens_out), "finish_reason": completion.finish_reason,
        "seconds": round(time.perf_counter() - started, 2), "path": path,
    }
    passed = completion.tokens_out >= 1
    text = f"generated {completion.tokens_out} token(s): {completion.text[:80]!r}" if passed else "generated no token"
    return CheckOutcome("loads_and_generates", passed, True, f"{'passed' if passed else 'failed'}: {text}", metadata)


def pair_scores(path: str, prompt: str, chosen: str, rejected: str) -> tuple[float, float]:
    """The reward model's scores of (prompt, chosen) and (prompt, rejected), as TRL's reward models read a chat."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to("cpu").eval()
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False)
        for answer in (chosen, rejected)
    ]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        scores = model(**encoded).logits[:, 0].float().tolist()
    return float(scores[0]), float(scores[1])


def scores(path: str, pair: tuple[str, str, str] | None) -> CheckOutcome:
    prompt, chosen, rejected = pair or FALLBACK_PAIR
    started = time.perf_counter()
    try:
        chosen_score, rejected_score = pair_scores(path, prompt, chosen, rejected)
    except Exception as exc:  # any load or scoring failure is the check's finding
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return CheckOutcome("loads_and_scores", False, True, f"failed: {message}", {"error": message, "path": path})
    passed = math.isfinite(chosen_score) and math.isfinite(rejected_score)
    metadata = {
        "pair": "the round's first reward pair" if pair else "a fixed example pair (no reward pair this round)",
        "chosen_score": chosen_score if math.isfinite(chosen_score) else str(chosen_score),
        "rejected_score": rejected_score if math.isfinite(rejected_score) else str(rejected_score),
        "seconds": round(time.perf_counter() - started, 2), "path": path,
    }
    text = f"chosen {chosen_score:.4g}, rejected {rejected_score:.4g}"
    return CheckOutcome("loads_and_scores", passed, True, f"{'passed' if passed else 'failed: not finite'}: {text}", metadata)


def check_checkpoint(
    stage: str, row: Mapping[str, Any], *, pair: tuple[str, str, str] | None = None, threads: int | None = None
) -> list[CheckOutcome]:
    """Every check of a stage's checkpoint (`row`: its model_registry row), in checkpoint_checks order."""
    registered = registry_manifest(row)
    if registered.get("skipped"):
        return _skipped(stage, str(registered["skipped"]))
    from arena_dagster.training.spec import read_manifest

    manifest = read_manifest(Path(row["path"]))
    first = scores(row["path"], pair) if stage == "reward" else generates(row["path"], threads=threads)
    return [first, manifest_complete(stage, row, manifest), learned(stage, manifest)]
