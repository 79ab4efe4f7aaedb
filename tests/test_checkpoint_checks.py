"""Checkpoint checks on tiny models trained for real: loads and generates (or scores), manifest, learning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from arena_dagster.profile_schema.models import SkillsModels
from arena_dagster.prompts.skills import make_items
from arena_dagster.quality.checkpoints import check_checkpoint, checkpoint_checks, learned, manifest_complete
from arena_dagster.registry import register_model
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.spec import read_manifest
from arena_dagster.training.runner import run_training
from arena_dagster.training.stages import stage_training_spec

TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    home = tmp_path_factory.mktemp("checkpoints")
    items = make_items(80, seed=3)
    tokenizer = save_tokenizer(build_tokenizer([i.prompt for i in items] + [i.reference for i in items]), home / "tok")
    base_data = write_jsonl(home / "base.jsonl", (chat_row(i.prompt, i.reference, family=i.family) for i in items))
    sft_data = write_jsonl(home / "sft.jsonl", (chat_row(i.prompt, i.reference) for i in items[:16]))
    pairs = write_jsonl(home / "pairs.jsonl", (
        {"prompt": i.prompt, "chosen": i.reference, "rejected": i.reference[::-1] + "x", "prompt_id": i.item_id} for i in items[:24]
    ))
    base_spec = {
        "stage": "base", "output_dir": str(home / "base"), "dataset_path": str(base_data), "tokenizer": str(tokenizer),
        "model_config": TINY_MODEL, "hyperparams": {"max_steps": 4, "batch_size": 8, "logging_steps": 2}, "threads": 1,
    }
    run_training(base_spec, log=lambda _: None, timeout_s=180)
    settings = SkillsModels.model_validate({"flywheel": {
        "sft": {"hyperparams": {"max_steps": 4, "batch_size": 8, "logging_steps": 1}},
        "reward": {"hyperparams": {"max_steps": 3, "batch_size": 4, "logging_steps": 1}}}})
    specs = {
        stage: stage_training_spec(stage, round_key=1, base_model=base_spec["output_dir"], dataset=data,
                                   output_dir=home / name, models=settings, locally_built=True)
        for stage, data, name in (("sft", sft_data, "SFT-I1"), ("reward", pairs, "RM-I1"))
    }
    manifests = {}
    for stage, spec in specs.items():
        spec["threads"] = 1
        manifests[stage] = run_training(spec, log=lambda _: None, timeout_s=180)
    rows = {
        stage: {"model": Path(spec["output_dir"]).name, "kind": stage, "round": 1, "path": str(spec["output_dir"]),
                "revision": manifests[stage]["spec_hash"], "dataset_hash": manifests[stage]["dataset_hash"],
                "manifest": json.dumps(manifests[stage])}
        for stage, spec in specs.items()
    }
    return {"home": home, "rows": rows, "manifests": manifests}


def names(outcomes):
    return {o.name: o for o in outcomes}


def test_a_trained_sft_checkpoint_passes_its_checks(trained):
    result = names(check_checkpoint("sft", trained["rows"]["sft"], threads=1))
    assert list(result) == [c.name for c in checkpoint_checks("sft")] == ["loads_and_generates", "manifest_complete", "loss_decreased"]
    assert result["loads_and_generates"].passed and result["loads_and_generates"].metadata["tokens_out"] >= 1
    assert result["manifest_complete"].passed, result["manifest_complete"].description
    assert result["manifest_complete"].metadata["dataset file hash"] == trained["manifests"]["sft"]["dataset_hash"]
    metrics = trained["manifests"]["sft"]["metrics"]
    loss = result["loss_decreased"]
    assert loss.metadata["first_loss"] == metrics["first_loss"] and loss.metadata["final_loss"] == metrics["final_loss"]
    assert loss.passed == (metrics["first_loss"] > metrics["final_loss"]) and not loss.blocking
    assert all(isinstance(v, (int, float, str)) for o in result.values() for v in o.metadata.values())


def test_the_reward_model_scores_a_pair(trained):
    row = trained["rows"]["reward"]
    result = names(check_checkpoint("reward", row, pair=("What is 2 + 3?", "5", "7")))
    assert list(result) == ["loads_and_scores", "manifest_complete", "loss_decreased"]
    scored = result["loads_and_scores"]
    assert scored.passed and isinstance(scored.metadata["chosen_score"], float) and isinstance(scored.metadata["rejected_score"], float)
    assert scored.metadata["pair"] == "the round's first reward pair"
    assert result["manifest_complete"].passed, result["manifest_complete"].description
    fallback = names(check_checkpoint("reward", row, pair=None))["loads_and_scores"]
    assert fallback.passed and fallback.metadata["pair"].startswith("a fixed example pair")


def test_a_corrupt_checkpoint_fails_to_load(trained, tmp_path):
    for stage, weights in (("sft", "model.safetensors"), ("reward", "model.safetensors")):
        copy = tmp_path / stage
        shutil.copytree(trained["rows"][stage]["path"], copy)
        (copy / weights).write_bytes(b"not a safetensors file")
        first = check_checkpoint(stage, {**trained["rows"][stage], "path": str(copy)}, threads=1)[0]
        assert not first.passed and first.blocking and first.metadata["error"], first


def test_an_incomplete_or_inconsistent_manifest_fails(trained, tmp_path):
    row = trained["rows"]["sft"]
    manifest = read_manifest(Path(row["path"]))
    assert manifest_complete("sft", row, manifest).passed
    broken = {k: v for k, v in manifest.items() if k != "hyperparams"}
    outcome = manifest_complete("sft", row, broken)
    assert not outcome.passed and "missing hyperparams" in outcome.description
    outcome = manifest_complete("sft", {**row, "revision": "other"}, manifest)
    assert not outcome.passed and "registry revision other" in outcome.description
    assert not manifest_complete("dpo", row, manifest).passed  # an SFT manifest is not a DPO checkpoint
    assert "missing split" in manifest_complete("reward", row, manifest).description
    changed = tmp_path / "train.jsonl"
    changed.write_text(Path(manifest["dataset_path"]).read_text() + "\n")
    outcome = manifest_complete("sft", row, {**manifest, "dataset_path": str(changed)})
    assert not outcome.passed and "now hashes to" in outcome.description
    assert not manifest_complete("sft", row, None).passed


def test_loss_and_reward_trends():
    assert learned("sft", {"metrics": {"first_loss": 2.0, "final_loss": 1.2}}).passed
    flat = learned("dpo", {"metrics": {"first_loss": 0.69, "final_loss": 0.70}})
    assert not flat.passed and "never fell" in flat.description and not flat.blocking
    # A trainer that logged no step (logging_steps > max_steps) leaves the losses null: a clear warning.
    missing = learned("sft", {"metrics": {"first_loss": None, "final_loss": None, "steps": 5},
                              "hyperparams": {"logging_steps": 10, "max_steps": 5}})
    assert not missing.passed and "logging_steps=10 with max_steps=5" in missing.description
    assert missing.metadata["first_loss"] == "not logged"
    assert learned("rl", {"metrics": {"first_mean_reward": -0.4, "last_mean_reward": 0.1}}).passed
    assert learned("rl", {"metrics": {"first_mean_reward": 0.1, "last_mean_reward": 0.1}}).name == "reward_increased"


def test_a_skipped_stage_passes_with_the_reason():
    row = {"model": "DPO-I2", "kind": "dpo", "path": "/nowhere", "manifest": json.dumps({"skipped": "dpo_pairs has no rows for rounds 2"})}
    result = check_checkpoint("dpo", row)
    assert all(o.passed for o in result) and all("dpo_pairs has no rows" in o.description for o in result)


def test_checkpoint_checks_run_in_dagster_bound_to_the_round(trained, tmp_path):
    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from arena_dagster.defs.checks import checkpoint_asset_checks
    from arena_dagster.defs.common import round_partitions

    database = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(database)) as conn:
        row = trained["rows"]["sft"]
        register_model(conn, model="SFT-I1", kind="sft", round_key=1, path=row["path"], revision=row["revision"],
                       dataset_hash=row["dataset_hash"], manifest=json.loads(row["manifest"]))

    @dg.asset(name="sft_checkpoint", partitions_def=round_partitions)
    def sft_checkpoint():
        return None

    @dg.asset(partitions_def=round_partitions, deps=[sft_checkpoint])
    def next_stage():
        return None

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("round", ["1"])
    checks = [c for c in checkpoint_asset_checks() if any(k.asset_key.to_user_string() == "sft_checkpoint" for k in c.check_keys)]
    result = dg.materialize([sft_checkpoint, next_stage, *checks], instance=instance, partition_key="1",
                            resources={"duckdb": DuckDBResource(database=str(database))})
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"loads_and_generates", "manifest_complete", "loss_decreased"}
    assert {e.partition for e in evaluations.values()} == {"1"}
    assert evaluations["loads_and_generates"].passed
    assert evaluations["manifest_complete"].metadata["model"].value == "SFT-I1"
