"""Base models come from a shared cache keyed by their content: a second home copies instead of training,
two processes filling one entry train it once, and nothing outside the home and the cache is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from arena_dagster.paths import UnsafePathError, cache_root
from arena_dagster.profile_schema.models import SkillsModels
from arena_dagster.training.base_models import build_base_models
from arena_dagster.training.model_cache import CacheEntry
from arena_dagster.training.spec import read_manifest

REPO = Path(__file__).resolve().parents[1]
TINY_MODELS = {
    "seed": 3,
    "tokenizer": {"kind": "char", "corpus_items": 200},
    "model_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2},
    "max_parallel": 2,
    "threads_per_process": 1,
    "competitors": {"letters": {"families": ["uppercase"], "items": 40, "hyperparams": {"max_steps": 3, "batch_size": 8}}},
    "initial_target": {"name": "target_r0", "families": ["add"], "items": 40, "hyperparams": {"max_steps": 2, "batch_size": 8}},
}
TINY_PROFILE = SkillsModels.model_validate(TINY_MODELS)


def _paths(built: dict) -> list[str]:
    return [built["tokenizer"], built["initial_target"], *built["competitors"].values(), *built["datasets"].values()]


def test_a_second_home_copies_the_base_models_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first_log: list[str] = []
    first = build_base_models(tmp_path / "home-a" / "models", TINY_PROFILE, log=first_log.append, cache_dir=cache)
    assert sum("wrote" in line for line in first_log) == 2  # both models trained
    second_log: list[str] = []
    second = build_base_models(tmp_path / "home-b" / "models", TINY_PROFILE, log=second_log.append, cache_dir=cache)
    assert not any("wrote" in line or "[base]" in line for line in second_log), second_log
    assert sum("copied from the base-model cache" in line for line in second_log) == 3  # tokenizer and two models
    for name in ("letters", "target_r0"):
        one, two = first["manifests"][name], second["manifests"][name]
        assert one["spec_hash"] == two["spec_hash"]  # one identity in both homes
        # The home's copy is its own: its manifest names this home's inputs, every path lies in the home.
        assert two["dataset_path"] == second["datasets"][name] and two["tokenizer"] == second["tokenizer"]
        assert two["from_cache"] is True
    home_b = (tmp_path / "home-b").resolve()
    assert all(Path(p).resolve().is_relative_to(home_b) for p in _paths(second))
    weights = Path(second["initial_target"]) / "model.safetensors"
    assert weights.read_bytes() == (Path(first["initial_target"]) / "model.safetensors").read_bytes()
    # Self-contained: the home keeps working without the cache.
    import shutil

    shutil.rmtree(cache)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(second["initial_target"])
    # A rerun in the same home reuses its own folders (the cache is not needed, and is not refilled).
    again_log: list[str] = []
    build_base_models(tmp_path / "home-b" / "models", TINY_PROFILE, log=again_log.append, cache_dir=tmp_path / "cache")
    assert all("reusing" in line for line in again_log if "target_r0" in line or "letters" in line)


def test_two_processes_filling_the_same_entry_train_once(tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import json, sys; from arena_dagster.training.base_models import build_base_models; "
        "from arena_dagster.profile_schema.models import SkillsModels; "
        "build_base_models(sys.argv[1], SkillsModels.model_validate(json.loads(sys.argv[2])), log=lambda line: print(line, flush=True))"
    )
    env = {**os.environ, "ARENA_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / home / "models"), json.dumps(TINY_MODELS)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for home in ("home-a", "home-b")
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    everything = "\n".join(outputs)
    for name in ("letters", "target_r0"):
        assert sum(line.startswith(f"{name}: ") and "] wrote" in line for line in everything.splitlines()) == 1, everything
        manifests = [read_manifest(tmp_path / home / "models" / "models" / name) for home in ("home-a", "home-b")]
        assert manifests[0]["spec_hash"] == manifests[1]["spec_hash"]
    entries = sorted(p.name for p in (cache / "base-models" / "models").iterdir())
    assert len([e for e in entries if not e.endswith(".lock")]) == 2 and not any(".tmp" in e for e in entries)


def test_cache_location_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "moved"))
    assert cache_root() == (tmp_path / "moved").resolve()
    monkeypatch.setenv("ARENA_CACHE", "off")
    assert cache_root() is None
    monkeypatch.delenv("ARENA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == (tmp_path / "xdg" / "arena-dagster").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == (Path.home() / ".cache" / "arena-dagster").resolve()
    # Names from the profile are names, never paths; cache keys likewise.
    for name in ("../../evil", "/home/me/precious"):
        with pytest.raises(ValidationError, match="not a plain name"):
            SkillsModels.model_validate({"competitors": {name: {"families": ["add"]}}})
        with pytest.raises(ValidationError, match="not a plain name"):
            SkillsModels.model_validate({"initial_target": {"name": name}})
        with pytest.raises(UnsafePathError):
            CacheEntry(tmp_path, "models", name)


def test_a_cache_that_cannot_be_written_only_costs_the_build(tmp_path):
    from arena_dagster.training.model_cache import cached_folder

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tokenizer").write_text("a file where the entries' folder should be")  # no lock can be taken
    home = tmp_path / "home"
    target = home / "models" / "tokenizer"
    lines: list[str] = []

    def build() -> None:
        target.mkdir(parents=True)
        (target / "tokenizer.json").write_text("{}")

    assert cached_folder(cache, "tokenizer", "k" * 64, target, home, build=build, log=lines.append) is False
    assert (target / "tokenizer.json").is_file() and (cache / "tokenizer").is_file()
    assert any("cannot be used" in line and "building in the home without it" in line for line in lines), lines
