"""Seeds: one top-level `seed` moves every random choice; seed 0 is the runs made before seeds existed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from arena_dagster.config import ConfigError, load_profile, settings_of, with_seed
from arena_dagster.profile_schema import SEED_PATHS
from arena_dagster.profile_schema.models import resolved_skills
from arena_dagster.prompts import pools
from arena_dagster.training.stages import stage_training_spec


def sub_seeds(profile: dict) -> dict[str, int]:
    out = {}
    for path in SEED_PATHS:
        node = profile
        for part in path.split("."):
            node = node[part]
        out[path] = node
    return out


def test_seed_zero_keeps_the_sub_seeds_the_shipped_profiles_always_had():
    assert sub_seeds(load_profile("skills")) == {
        "prompts.seed": 1, "prompts.curation.seed": 1, "testset.seed": 10_000, "models.seed": 0,
        "evaluation.seed": 0, "promotion.seed": 0,
    }
    assert sub_seeds(load_profile("sharegpt"))["testset.seed"] == 0
    assert load_profile("skills")["derived_seeds"] == list(SEED_PATHS)


def test_with_seed_moves_every_sub_seed_and_is_idempotent():
    base = load_profile("skills_smoke")
    seeded = with_seed(base, 7)
    assert seeded["seed"] == 7 and base["seed"] == 0  # a copy
    moved = sub_seeds(seeded)
    assert all(moved[path] != value for path, value in sub_seeds(base).items())
    assert all(0 <= value < 2**31 for value in moved.values())
    assert with_seed(seeded, 7) == seeded == with_seed(with_seed(base, 3), 7)
    assert with_seed(seeded, 0) == base
    assert sub_seeds(with_seed(base, 8)) != moved


def test_sub_seeds_a_profile_sets_are_kept(tmp_path: Path):
    path = tmp_path / "pinned.yaml"
    path.write_text("extends: skills_smoke\ntestset: {seed: 42}\n")
    pinned = load_profile(path)
    assert "testset.seed" not in pinned["derived_seeds"]
    seeded = with_seed(pinned, 7)
    assert seeded["testset"]["seed"] == 42 and seeded["prompts"]["seed"] == with_seed(load_profile("skills_smoke"), 7)["prompts"]["seed"]


def test_a_seed_in_the_file_is_the_seed_flag(tmp_path: Path):
    path = tmp_path / "seven.yaml"
    path.write_text("extends: skills_smoke\nname: skills_smoke\nseed: 7\n")
    assert load_profile(path) == with_seed(load_profile("skills_smoke"), 7)


def test_a_recorded_seeded_profile_loads_back_to_the_same_seeds(tmp_path: Path):
    seeded = with_seed(load_profile("skills_smoke"), 7)
    path = tmp_path / "recorded.yaml"
    path.write_text(yaml.safe_dump(seeded))
    assert load_profile(path) == {**seeded, "name": "skills_smoke"}


@pytest.mark.parametrize("seed", [-1, 2**31, "3", 1.5, True])
def test_bad_seeds_are_config_errors(seed):
    with pytest.raises(ConfigError, match="seed must be an integer"):
        with_seed(load_profile("skills_smoke"), seed)


def test_every_random_choice_follows_the_seed(tmp_path: Path):
    base = load_profile("skills_smoke")
    seeded = with_seed(base, 7)
    # The raw pool, the test set, the slices ...
    raw, raw_seeded = pools.raw_prompt_frame(settings_of(base)), pools.raw_prompt_frame(settings_of(seeded))
    assert raw.equals(pools.raw_prompt_frame(settings_of(load_profile("skills_smoke"))))
    assert not raw["prompt"].equals(raw_seeded["prompt"])
    testset, testset_seeded = pools.testset_frame(settings_of(base)), pools.testset_frame(settings_of(seeded))
    assert set(testset["prompt"].to_list()) != set(testset_seeded["prompt"].to_list())
    pool, _, _ = pools.curated_pool(raw, testset, settings_of(base))
    pool_again, _, _ = pools.curated_pool(raw, testset, settings_of({**base, "prompts": seeded["prompts"]}))
    assert pool.sort("prompt_id")["round"].to_list() != pool_again.sort("prompt_id")["round"].to_list()
    # ... the base models (their seed) and every stage's training seed.
    assert resolved_skills(settings_of(seeded).models).seed == seeded["models"]["seed"] != 0
    specs = [stage_training_spec("dpo", round_key=2, base_model=tmp_path, dataset=tmp_path / "d.jsonl", output_dir=tmp_path / "o",
                                 models=settings_of(p).models, locally_built=True) for p in (base, seeded)]
    assert specs[0]["hyperparams"]["seed"] == 2 and specs[1]["hyperparams"]["seed"] == seeded["models"]["seed"] + 2
