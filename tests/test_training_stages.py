"""The reward and rl training stages, spec checks for them, and a 2-process accelerate launch.

Everything trains tiny models on CPU: a 2-layer Llama (hidden 64) on a character tokenizer.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.data import dpo_rows, split_preference_pairs
from arena_dagster.training.entrypoint import train
from arena_dagster.training.spec import TrainingDataError, TrainingSpecError, read_manifest, spec_hash, validate_spec
from arena_dagster.training.runner import TrainingError, run_training, training_command

TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
FAST = {"logging_steps": 1, "max_length": 256, "warmup_ratio": 0.0, "lr_scheduler_type": "constant"}


def _garbage(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("#@~^|") for _ in range(max(4, length)))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    root = tmp_path_factory.mktemp("stages")
    items = make_items(80, seed=3)
    tokenizer = build_tokenizer([i.prompt for i in items] + [i.reference for i in items])
    policy_dir = root / "policy"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **TINY_LLAMA
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(str(policy_dir))
    save_tokenizer(tokenizer, policy_dir)

    # The signal: chosen answers are the reference answers, rejected ones are symbol garbage.
    # Two pairs per prompt, so the prompt-grouped split has whole groups to move.
    rng = random.Random(7)
    pairs = []
    for item in items[:60]:
        for _ in range(2):
            pairs.append({"prompt": item.prompt, "chosen": item.reference, "rejected": _garbage(rng, len(item.reference))})
    pairs_path = write_jsonl(root / "pairs.jsonl", pairs)
    prompts_path = write_jsonl(root / "prompts.jsonl", ({"prompt": i.prompt, "prompt_id": i.item_id} for i in items[60:72]))
    sft_path = write_jsonl(root / "sft.jsonl", (chat_row(i.prompt, i.reference) for i in items[:16]))
    reward_spec = {
        "stage": "reward",
        "round": 1,
        "name": "RM-I1",
        "output_dir": str(root / "models" / "reward"),
        "base_model": str(policy_dir),
        "dataset_path": str(pairs_path),
        "hyperparams": {**FAST, "learning_rate": 2e-3, "max_steps": 30, "batch_size": 8, "eval_fraction": 0.25},
        "threads": 2,
        "device": "cpu",
    }
    lines: list[str] = []
    reward = run_training(reward_spec, log=lines.append, timeout_s=240)
    return {
        "root": root,
        "policy": policy_dir,
        "pairs": pairs_path,
        "prompts": prompts_path,
        "sft": sft_path,
        "reward_spec": reward_spec,
        "reward": reward,
        "lines": lines,
    }


def _rl_spec(home: dict, **overrides) -> dict:
    spec = {
        "stage": "rl",
        "round": 1,
        "output_dir": str(home["root"] / "models" / "rl"),
        "base_model": str(home["policy"]),
        "reward_model": home["reward_spec"]["output_dir"],
        "dataset_path": str(home["prompts"]),
        "hyperparams": {
            **{k: v for k, v in FAST.items() if k != "max_length"},
            "learning_rate": 1e-4,
            "max_steps": 2,
            "batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 8,
        },
        "threads": 2,
        "device": "cpu",
    }
    return {**spec, **overrides}


def test_reward_stage_measures_held_out_pairs(home):
    manifest, out = home["reward"], Path(home["reward_spec"]["output_dir"])
    assert manifest == read_manifest(out)
    assert manifest["stage"] == "reward" and manifest["round"] == 1 and manifest["name"] == "RM-I1"
    assert manifest["spec_hash"] == spec_hash(home["reward_spec"])
    metrics = manifest["metrics"]
    train_rows, eval_rows, split = split_preference_pairs(dpo_rows(home["pairs"]), 0.25, 0)
    assert metrics["eval_pairs"] == len(eval_rows) and metrics["train_pairs"] == len(train_rows)
    assert metrics["eval_pairs"] + metrics["train_pairs"] == manifest["dataset_rows"] == 120
    assert metrics["pairs_over_max_length"] == 0
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and 0.0 <= metrics["train_accuracy"] <= 1.0
    assert metrics["steps"] == 30 and metrics["train_loss"] > 0
    assert metrics["final_loss"] < metrics["first_loss"]
    # Held-out accuracy along the run (every 6 steps) and at its end; training-batch accuracy every step.
    curves = manifest["curves"]
    assert [step for step, _ in curves["eval_accuracy"]] == [6, 12, 18, 24, 30]
    assert curves["eval_accuracy"][-1][1] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert len(curves["loss"]) == len(curves["accuracy"]) == 20  # 30 steps in 20 buckets
    assert manifest["split"] == split and split["eval_prompts"] + split["train_prompts"] == 60
    assert {json.dumps(r["prompt"]) for r in train_rows}.isdisjoint(json.dumps(r["prompt"]) for r in eval_rows)
    # The signal is obvious (answers vs symbol garbage): a trained reward model must rank held-out pairs.
    assert metrics["eval_accuracy"] > 0.75 and metrics["eval_margin"] > 0, metrics
    assert manifest["runtime"]["device"] == "cpu" and manifest["runtime"]["bf16"] is False
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(out))
    assert config.architectures == ["LlamaForSequenceClassification"] and config.num_labels == 1
    assert config.pad_token_id is not None
    assert (out / "tokenizer.json").is_file() and not Path(str(out) + ".tmp").exists()
    assert any("[reward]" in line for line in home["lines"])


def test_split_is_seeded_and_grouped_by_prompt(home):
    rows = dpo_rows(home["pairs"])
    first = split_preference_pairs(rows, 0.2, 5)
    assert first == split_preference_pairs(rows, 0.2, 5)
    assert first[1] != split_preference_pairs(rows, 0.2, 6)[1]
    assert abs(len(first[1]) - 24) <= 2  # a fifth of 120 pairs, in whole 2-pair groups


def test_rerun_of_the_same_spec_reuses_the_manifest(home):
    lines: list[str] = []
    again = run_training(home["reward_spec"], log=lines.append)
    assert again == home["reward"]
    assert any("reusing" in line for line in lines)


def test_rl_stage_trains_a_loadable_policy(home):
    spec = _rl_spec(home)
    manifest = train(spec)
    out = Path(spec["output_dir"])
    assert manifest == read_manifest(out)
    assert manifest["stage"] == "rl" and manifest["reward_model"] == home["reward_spec"]["output_dir"]
    assert manifest["reward_model_spec_hash"] == home["reward"]["spec_hash"]
    metrics = manifest["metrics"]
    assert metrics["steps"] == 2 and metrics["train_wall_s"] > 0
    assert isinstance(metrics["first_mean_reward"], float) and isinstance(metrics["last_mean_reward"], float)
    assert isinstance(metrics["last_kl"], float)  # beta 0.4 > 0: TRL logs the KL
    assert [step for step, _ in manifest["curves"]["reward"]] == [1, 2] and len(manifest["curves"]["kl"]) == 2
    assert isinstance(metrics["first_loss"], float) and isinstance(metrics["final_loss"], float)
    assert manifest["hyperparams"]["beta"] == 0.4 and manifest["hyperparams"]["temperature"] == 1.0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_rl_spec_identity_includes_the_reward_model(home, tmp_path):
    spec = _rl_spec(home)
    other_reward = tmp_path / "rm"
    other_reward.mkdir()
    (other_reward / "manifest.json").write_text(json.dumps({"stage": "reward", "spec_hash": "another"}))
    assert spec_hash(spec) != spec_hash({**spec, "reward_model": str(other_reward)})
    assert spec_hash(spec) != spec_hash({**spec, "launch": {"num_processes": 2}})
    assert spec_hash(spec) == spec_hash({**spec, "threads": 1})


def test_bad_specs_fail_clearly(home, tmp_path):
    with pytest.raises(TrainingSpecError, match="stage rl needs spec.reward_model"):
        validate_spec({k: v for k, v in _rl_spec(home).items() if k != "reward_model"})
    # A causal LM folder without a manifest, and a checkpoint of another stage, are not reward models.
    with pytest.raises(TrainingSpecError, match="has no manifest.json"):
        validate_spec(_rl_spec(home, reward_model=str(home["policy"])))
    sft_like = tmp_path / "sft-model"
    sft_like.mkdir()
    (sft_like / "manifest.json").write_text(json.dumps({"stage": "sft", "spec_hash": "x"}))
    with pytest.raises(TrainingSpecError, match="'sft' checkpoint, not a reward model"):
        validate_spec(_rl_spec(home, reward_model=str(sft_like)))
    with pytest.raises(TrainingSpecError, match="num_generations"):
        validate_spec(_rl_spec(home, hyperparams={"batch_size": 3, "num_generations": 2}))
    with pytest.raises(TrainingSpecError, match=r"unknown hyperparameters for stage sft: \['num_generations'\]"):
        validate_spec({**home["reward_spec"], "stage": "sft", "dataset_path": str(home["sft"]), "hyperparams": {"num_generations": 2}})
    with pytest.raises(TrainingSpecError, match="eval_fraction"):
        validate_spec({**home["reward_spec"], "hyperparams": {"eval_fraction": 1.0}})
    with pytest.raises(TrainingSpecError, match="spec.device"):
        validate_spec({**home["reward_spec"], "device": "tpu"})
    with pytest.raises(TrainingSpecError, match="launch"):
        validate_spec({**home["reward_spec"], "launch": {"num_processes": 0}})
    one_prompt = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "p", "chosen": "good", "rejected": f"bad{i}"} for i in range(4)])
    spec = {**home["reward_spec"], "dataset_path": str(one_prompt), "output_dir": str(tmp_path / "rm-one")}
    with pytest.raises(TrainingDataError, match="at least 2 distinct prompts; got 4 pair\\(s\\) from 1 prompt"):
        train(spec)
    assert not (tmp_path / "rm-one").exists()


def test_dpo_counts_the_pairs_trl_drops_and_fails_clearly_when_none_is_left(home, tmp_path):
    # TRL's DPOTrainer drops a pair whose prompt alone fills max_length (a long ShareGPT conversation).
    pairs = [json.loads(line) for line in home["pairs"].read_text().splitlines()[:8]]
    long_prompt = " ".join(["seven"] * 400)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [*pairs[:6], *({**p, "prompt": long_prompt} for p in pairs[6:])])
    base = {"stage": "dpo", "round": 1, "base_model": str(home["policy"]), "threads": 2, "device": "cpu",
            "hyperparams": {**FAST, "max_length": 64, "max_steps": 1, "batch_size": 2}}
    manifest = train({**base, "dataset_path": str(mixed), "output_dir": str(tmp_path / "dpo-mixed")})
    assert manifest["dataset_rows"] == 8 and manifest["metrics"]["pairs_over_max_length"] == 2
    all_long = write_jsonl(tmp_path / "long.jsonl", [{**p, "prompt": long_prompt} for p in pairs[:2]])
    with pytest.raises(TrainingDataError, match=r"every one of the 2 pair\(s\) is max_length=64 tokens or longer"):
        train({**base, "dataset_path": str(all_long), "output_dir": str(tmp_path / "dpo-long")})
    assert not (tmp_path / "dpo-long").exists()


def test_paper_defaults_and_explicit_max_steps():
    from arena_dagster.training.spec import DEFAULT_HYPERPARAMS

    assert DEFAULT_HYPERPARAMS["sft"]["learning_rate"] == 5e-6 and DEFAULT_HYPERPARAMS["sft"]["epochs"] == 3
    assert DEFAULT_HYPERPARAMS["dpo"]["learning_rate"] == 5e-7 and DEFAULT_HYPERPARAMS["dpo"]["beta"] == 0.3
    assert DEFAULT_HYPERPARAMS["dpo"]["epochs"] == 2
    assert DEFAULT_HYPERPARAMS["reward"]["learning_rate"] == 1e-6 and DEFAULT_HYPERPARAMS["reward"]["epochs"] == 1
    assert DEFAULT_HYPERPARAMS["rl"]["learning_rate"] == 1e-7 and DEFAULT_HYPERPARAMS["rl"]["beta"] == 0.4
    assert not any("max_steps" in DEFAULT_HYPERPARAMS[s] for s in ("sft", "dpo", "reward", "rl"))


def test_launch_command_uses_accelerate(tmp_path):
    plain = training_command({"stage": "sft"}, "spec.json")
    assert plain == [sys.executable, "-m", "arena_dagster.training.entrypoint", "spec.json"]
    command = training_command({"launch": {"num_processes": 2}}, "spec.json")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[-3:] == ["-m", "arena_dagster.training.entrypoint", "spec.json"]
    config = Path(__file__).resolve().parents[1] / "assets" / "accelerate" / "deepspeed_zero3.yaml"
    with_config = training_command({"launch": {"config_file": str(config)}}, "spec.json")
    assert with_config[with_config.index("--config_file") + 1] == str(config)
    assert "--num_processes" not in with_config and "--multi_gpu" not in with_config


def test_two_process_sft_through_accelerate_writes_one_manifest(home):
    out = home["root"] / "models" / "sft-2proc"
    spec = {
        "stage": "sft",
        "output_dir": str(out),
        "base_model": str(home["policy"]),
        "dataset_path": str(home["sft"]),
        "hyperparams": {**FAST, "learning_rate": 1e-3, "max_steps": 2, "batch_size": 4},
        "threads": 1,
        "launch": {"num_processes": 2},
    }
    lines: list[str] = []
    manifest = run_training(spec, log=lines.append, timeout_s=240)
    assert manifest["runtime"]["processes"] == 2 and manifest["metrics"]["steps"] == 2
    assert manifest["spec_hash"] == spec_hash(spec)
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith("sft-2proc")) == ["sft-2proc", "sft-2proc.lock"]
    assert list(out.rglob("manifest.json")) == [out / "manifest.json"]
    assert sum("[sft] wrote" in line for line in lines) == 1  # only the main process writes


def test_failed_launch_reports_the_error(home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    spec = {
        "stage": "sft",
        "output_dir": str(tmp_path / "bad-model"),
        "base_model": str(home["policy"]),
        "dataset_path": str(bad),
        "launch": {"num_processes": 2},
        "threads": 1,
    }
    with pytest.raises(TrainingError, match="the last message must be the assistant"):
        run_training(spec, log=lambda _: None, timeout_s=120)
