"""Identities are content, not location: a run's spec hash (a checkpoint's revision) and a declared
model's revision do not depend on where the home lies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from arena_dagster.backends.models import declared_revision, prepare_model_config
from arena_dagster.profile_schema.models import SkillsModels
from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.runner import run_training
from arena_dagster.training.spec import spec_hash
from arena_dagster.training.stages import stage_training_spec

TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}


def _home(root: Path, items) -> dict:
    """A home holding a tokenizer, a base dataset, an SFT dataset and preference pairs."""
    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    tokenizer = save_tokenizer(build_tokenizer([i.prompt for i in items] + [i.reference for i in items]), root / "tok")
    return {
        "root": root,
        "tokenizer": tokenizer,
        "base_data": write_jsonl(root / "data" / "base.jsonl", (chat_row(i.prompt, i.reference) for i in items)),
        "sft_data": write_jsonl(root / "data" / "sft.jsonl", (chat_row(i.prompt, i.reference) for i in items[:10])),
    }


def _base_spec(home: dict, **overrides) -> dict:
    return {
        "stage": "base",
        "name": "base",
        "output_dir": str(home["root"] / "models" / "base"),
        "dataset_path": str(home["base_data"]),
        "tokenizer": str(home["tokenizer"]),
        "model_config": TINY_MODEL,
        "hyperparams": {"max_steps": 3, "batch_size": 8, "logging_steps": 50},
        "threads": 1,
        **overrides,
    }


def test_the_same_spec_in_two_folders_has_one_identity(tmp_path):
    items = make_items(40, seed=2)
    first, second = _home(tmp_path / "home-a", items), _home(tmp_path / "elsewhere" / "home-b", items)
    assert spec_hash(_base_spec(first)) == spec_hash(_base_spec(second))
    # Another dataset content is another model; what is only printed or only speed is not.
    other = write_jsonl(tmp_path / "other.jsonl", (chat_row(i.prompt, i.reference) for i in items[:39]))
    assert spec_hash(_base_spec(first)) != spec_hash(_base_spec(first, dataset_path=str(other)))
    assert spec_hash(_base_spec(first)) == spec_hash(_base_spec(first, threads=2, name="renamed"))
    assert spec_hash(_base_spec(first)) == spec_hash(
        _base_spec(first, hyperparams={"max_steps": 3, "batch_size": 8, "logging_steps": 1})
    )
    assert spec_hash(_base_spec(first)) != spec_hash(_base_spec(first, hyperparams={"max_steps": 4, "batch_size": 8}))

    # Trained in both homes: the checkpoints have one identity, and so do the runs built on them.
    manifests = [run_training(_base_spec(home), log=lambda _: None, timeout_s=120) for home in (first, second)]
    assert manifests[0]["spec_hash"] == manifests[1]["spec_hash"] == spec_hash(_base_spec(first))
    sft_specs = [
        stage_training_spec(
            "sft", round_key=1, base_model=home["root"] / "models" / "base", dataset=home["sft_data"],
            output_dir=home["root"] / "checkpoints" / "SFT-I1", locally_built=True,
            models=SkillsModels.model_validate({"flywheel": {"sft": {"hyperparams": {"max_steps": 2}, "replay_rows": 5}}}),
            replay_dataset=home["base_data"],
        )
        for home in (first, second)
    ]
    assert spec_hash(sft_specs[0]) == spec_hash(sft_specs[1])
    changed = write_jsonl(tmp_path / "sft-other.jsonl", (chat_row(i.prompt, i.reference + "!") for i in items[:10]))
    assert spec_hash(sft_specs[0]) != spec_hash({**sft_specs[0], "dataset_path": str(changed)})


def test_model_inputs_count_by_content(tmp_path):
    items = make_items(20, seed=4)
    home = _home(tmp_path / "home", items)
    # A base model without a manifest (declared, or downloaded) counts by its files' content.
    model = tmp_path / "plain-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 8}))
    moved = tmp_path / "moved" / "model"
    shutil.copytree(model, moved)
    spec = {"stage": "sft", "output_dir": str(tmp_path / "out"), "dataset_path": str(home["sft_data"]), "base_model": str(model)}
    assert spec_hash(spec) == spec_hash({**spec, "base_model": str(moved), "output_dir": str(tmp_path / "b" / "out")})
    (moved / "config.json").write_text(json.dumps({"hidden_size": 16}))
    assert spec_hash(spec) != spec_hash({**spec, "base_model": str(moved)})
    # A launch config file counts by its content too.
    config = tmp_path / "zero3.yaml"
    config.write_text("distributed_type: DEEPSPEED\n")
    config_copy = tmp_path / "moved" / "zero3.yaml"
    shutil.copy(config, config_copy)
    launched = {**spec, "launch": {"config_file": str(config)}}
    assert spec_hash(launched) == spec_hash({**spec, "launch": {"config_file": str(config_copy)}})
    config_copy.write_text("distributed_type: MULTI_GPU\n")
    assert spec_hash(launched) != spec_hash({**spec, "launch": {"config_file": str(config_copy)}})


@pytest.mark.parametrize(
    "config",
    [
        {"backend": "recorded", "path": "{home}/recorded/answers.jsonl"},
        {"backend": "transformers", "path": "{home}/models/mine", "sampling": {"max_tokens": 8}},
    ],
)
def test_declared_revision_is_the_same_in_every_home(tmp_path, config):
    revisions = {prepare_model_config(config, tmp_path / home)["revision"] for home in ("a", "b/c")}
    assert revisions == {declared_revision(config)}
    assert prepare_model_config({**config, "revision": "v7"}, tmp_path)["revision"] == "v7"
    # The revision still tells configs apart.
    assert declared_revision(config) != declared_revision({**config, "path": config["path"] + "2"})
