"""Real (tiny) training through the subprocess runner: base -> SFT (with replay) -> DPO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages
from arena_dagster.profile_schema.models import SkillsModels, resolved_skills
from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.spec import TrainingSpecError, file_sha256, read_manifest, spec_hash, validate_spec
from arena_dagster.training.runner import TrainingError, run_training, run_trainings
from arena_dagster.training.stages import stage_training_spec

TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    home = tmp_path_factory.mktemp("training")
    items = make_items(120, seed=1)
    tokenizer = save_tokenizer(build_tokenizer([i.prompt for i in items] + [i.reference for i in items]), home / "tok")
    base_data = write_jsonl(home / "base.jsonl", (chat_row(i.prompt, i.reference, family=i.family) for i in items))
    sft_data = write_jsonl(home / "sft.jsonl", (chat_row(i.prompt, i.reference) for i in items[:20]))
    dpo_data = write_jsonl(
        home / "dpo.jsonl",
        ({"prompt": i.prompt, "chosen": i.reference, "rejected": i.reference[::-1] + "x", "prompt_id": i.item_id} for i in items[:20]),
    )
    base_spec = {
        "stage": "base",
        "output_dir": str(home / "models" / "base"),
        "dataset_path": str(base_data),
        "tokenizer": str(tokenizer),
        "model_config": TINY_MODEL,
        # logging_steps above max_steps: the manifest's loss figures must not depend on it.
        "hyperparams": {"max_steps": 6, "batch_size": 8, "logging_steps": 25},
        "threads": 1,
    }
    lines: list[str] = []
    base_manifest = run_training(base_spec, log=lines.append, timeout_s=120)
    return {"home": home, "base_spec": base_spec, "base": base_manifest, "sft_data": sft_data, "dpo_data": dpo_data, "base_data": base_data, "lines": lines}


def _generate(path: str, n: int = 5) -> list:
    from arena_dagster.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(ModelSpec(name="m", backend="transformers", path=path, options={"threads": 1}))
    items = make_items(n, seed=9)
    requests = [ChatRequest(request_id=i.item_id, messages=user_messages(i.prompt), sampling=SamplingParams(max_tokens=6)) for i in items]
    completions = backend.generate(requests)
    assert [c.request_id for c in completions] == [r.request_id for r in requests]
    assert all(0 < c.tokens_out <= 6 and c.tokens_in > 10 for c in completions)
    return completions


def test_base_stage_writes_model_tokenizer_and_manifest(workspace):
    manifest, out = workspace["base"], Path(workspace["base_spec"]["output_dir"])
    assert manifest == read_manifest(out)
    assert manifest["stage"] == "base" and manifest["round"] == 0
    assert manifest["dataset_rows"] == 120
    assert manifest["dataset_hash"] == file_sha256(workspace["base_data"])
    assert manifest["spec_hash"] == spec_hash(workspace["base_spec"])
    metrics = manifest["metrics"]
    assert metrics["steps"] == 6 and metrics["train_loss"] > 0
    assert [step for step, _ in manifest["curves"]["loss"]] == [1, 2, 3, 4, 5, 6]
    assert metrics["first_loss"] == pytest.approx(manifest["curves"]["loss"][0][1], abs=1e-5)
    assert metrics["final_loss"] == pytest.approx(manifest["curves"]["loss"][-1][1], abs=1e-5)
    assert metrics["final_loss"] < metrics["first_loss"]
    assert 0 <= metrics["final_mean_token_accuracy"] <= 1
    assert manifest["hyperparams"]["learning_rate"] == 3e-3 and manifest["wall_s"] > 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not Path(str(out) + ".tmp").exists()
    assert any("[base]" in line for line in workspace["lines"])  # the child's output was streamed
    _generate(str(out))


def test_rerun_with_same_spec_reuses_the_model(workspace):
    lines: list[str] = []
    again = run_training(workspace["base_spec"], log=lines.append)
    assert again == workspace["base"]
    assert any("reusing" in line for line in lines)


def test_sft_with_replay_then_dpo_from_sft(workspace):
    home = workspace["home"]
    profile = SkillsModels.model_validate({
        "flywheel": {
            "sft": {"hyperparams": {"max_steps": 4, "batch_size": 8, "logging_steps": 1}, "replay_rows": 10},
            "dpo": {"hyperparams": {"max_steps": 3, "batch_size": 4, "logging_steps": 50}},
        }
    })
    sft_spec = stage_training_spec(
        "sft", round_key=1, base_model=workspace["base_spec"]["output_dir"], dataset=workspace["sft_data"],
        output_dir=home / "round1" / "SFT-I1", models=profile, locally_built=True,
        replay_dataset=workspace["base_data"],
    )
    dpo_spec = stage_training_spec(
        "dpo", round_key=1, base_model=sft_spec["output_dir"], dataset=workspace["dpo_data"],
        output_dir=home / "round1" / "DPO-I1", models=profile, locally_built=True,
    )
    sft_spec["threads"] = dpo_spec["threads"] = 1
    sft = run_training(sft_spec, log=lambda _: None, timeout_s=120)
    assert sft["stage"] == "sft" and sft["round"] == 1
    assert sft["base_model"] == workspace["base_spec"]["output_dir"]
    assert sft["dataset_rows"] == 20 and sft["replay"]["rows_used"] == 10
    assert sft["metrics"]["steps"] == 4
    dpo = run_training(dpo_spec, log=lambda _: None, timeout_s=120)
    assert dpo["stage"] == "dpo" and dpo["base_model"] == sft_spec["output_dir"]
    assert dpo["dataset_rows"] == 20 and dpo["metrics"]["steps"] == 3
    assert {"rewards/accuracies", "rewards/margins", "first_rewards_margins"} <= set(dpo["metrics"])
    assert all(len(dpo["curves"][name]) == 3 for name in ("loss", "rewards/margins", "rewards/accuracies"))
    assert isinstance(dpo["metrics"]["first_loss"], float) and isinstance(dpo["metrics"]["final_loss"], float)
    assert dpo["hyperparams"]["rpo_alpha"] == 1.0  # the small-model default: DPO plus an NLL term on the chosen answers
    _generate(dpo_spec["output_dir"])


def test_rpo_alpha_is_a_dpo_knob_written_only_when_set(workspace):
    dpo = {"stage": "dpo", "output_dir": "/tmp/unused", "dataset_path": str(workspace["dpo_data"]),
           "base_model": workspace["base_spec"]["output_dir"]}
    assert "rpo_alpha" not in validate_spec(dpo)["hyperparams"]  # specs from before the knob keep their hash
    assert validate_spec({**dpo, "hyperparams": {"rpo_alpha": 0.5}})["hyperparams"]["rpo_alpha"] == 0.5
    with pytest.raises(TrainingSpecError, match="rpo_alpha"):
        validate_spec({**dpo, "stage": "sft", "dataset_path": str(workspace["sft_data"]), "hyperparams": {"rpo_alpha": 0.5}})


def test_bad_dataset_raises_training_error_with_the_reason(workspace):
    home = workspace["home"]
    bad = home / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi there"}]}) + "\n")
    spec = {**workspace["base_spec"], "dataset_path": str(bad), "output_dir": str(home / "models" / "bad")}
    spec.pop("tokenizer")
    spec["stage"] = "sft"
    spec["base_model"] = workspace["base_spec"]["output_dir"]
    spec.pop("model_config")
    with pytest.raises(TrainingError, match="row 1: the last message must be the assistant"):
        run_training(spec, log=lambda _: None, timeout_s=120)
    assert not (home / "models" / "bad").exists()


def test_spec_validation_happens_before_any_process():
    with pytest.raises(TrainingSpecError, match="stage"):
        run_training({"stage": "rl", "output_dir": "/tmp/x", "dataset_path": "/tmp/x"})
    with pytest.raises(ValueError, match="same output_dir"):
        run_trainings([{"output_dir": "/tmp/a"}, {"output_dir": "/tmp/a"}])


def test_profile_defaults_and_validation():
    resolved = resolved_skills(SkillsModels.model_validate({"competitors": {"only": {"families": ["add"]}}}))
    assert list(resolved.competitors) == ["only"]
    assert resolved.competitors["only"].items > 0
    assert resolved.initial_target.families
    with pytest.raises(ValueError, match="families"):
        SkillsModels.model_validate({"competitors": {"bad": {"families": ["poetry"]}}})
