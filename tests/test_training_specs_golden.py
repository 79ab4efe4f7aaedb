"""Typed settings changed no training spec: every spec the shipped profiles (and two profiles that set the
knobs whose defaults are subtle) give is the one main gave at 424b635, when the settings travelled as dicts.

tests/data/training_specs_424b635.json was written by this module's `specs()` with 424b635's API
(`stage_training_spec(models_settings=trained_models_settings(models))`, `resolve_profile`); a spec's hash
is the checkpoint's identity (training.spec.spec_hash), so a key added or changed here retrains every model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from arena_dagster.config import load_profile, load_settings, settings_of
from arena_dagster.profile_schema.models import resolved_skills
from arena_dagster.training.base_models import base_training_specs
from arena_dagster.training.stages import stage_training_spec

GOLDEN = Path(__file__).parent / "data" / "training_specs_424b635.json"
# Every knob whose default is subtle: a set threads_per_process (a round's threads), device, launch,
# a tokenizer key the defaults leave out, a partial model_config, a competitor map that replaces the default one.
ODD = {"seed": 5, "threads_per_process": 3, "device": "cpu", "launch": {"num_processes": 2},
       "tokenizer": {"vocab_size": 300}, "model_config": {"hidden_size": 64},
       "competitors": {"solo": {"families": ["add"], "hyperparams": {"learning_rate": 1e-3}}},
       "initial_target": {"hyperparams": {"batch_size": 16}},
       "flywheel": {"sft": {"replay_rows": 0}, "dpo": {"hyperparams": {"beta": 0.2}}}}
ODD2 = {"round_threads": 4, "device": "auto", "max_parallel": 1, "tokenizer": {"kind": "bpe", "corpus_items": 3000}}


def _profile(name: str):
    if name.startswith("odd"):
        return settings_of({**load_profile("skills_smoke"), "models": ODD if name == "odd" else ODD2})
    return load_settings(name)


def specs(tmp: Path) -> dict:
    out = {}
    for name in ("skills_smoke", "skills", "sharegpt", "odd", "odd2"):
        models = _profile(name).models
        local = models.source != "declared"
        for stage in ("sft", "dpo", "reward", "rl"):
            for round_key in (1, 2):
                out[f"{name}/{stage}/{round_key}"] = stage_training_spec(
                    stage, round_key=round_key, base_model="/m/base", dataset="/d/train.jsonl",
                    output_dir=f"/o/{stage}-{round_key}", models=models, locally_built=local,
                    replay_dataset="/d/replay.jsonl" if stage == "sft" else None,
                    reward_model="/m/RM" if stage == "rl" else None)
        if not local:
            continue
        resolved = resolved_skills(models)
        out[f"{name}/tokenizer"] = resolved.tokenizer.model_dump(exclude_unset=True)
        out[f"{name}/seed"] = resolved.seed
        out[f"{name}/max_parallel"] = resolved.max_parallel
        out[f"{name}/threads_per_process"] = resolved.threads_per_process
        home = tmp / name
        for member, spec in base_training_specs(home, resolved, home / "tok").items():
            out[f"{name}/base/{member}"] = {k: v for k, v in spec.items() if k not in ("output_dir", "dataset_path", "tokenizer")}
            out[f"{name}/base/{member}/data"] = hashlib.sha256(Path(spec["dataset_path"]).read_bytes()).hexdigest()
        out[f"{name}/members"] = {member: {"families": list(spec.families), "items": spec.items} for member, spec in
                                  [*resolved.competitors.items(), (resolved.initial_target.name, resolved.initial_target)]}
    return out


def test_training_specs_are_the_ones_dict_settings_gave(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    now = json.loads(json.dumps(specs(tmp_path)))  # JSON as the golden file holds it: 3 and 3.0 differ there
    assert sorted(now) == sorted(golden)
    for key in golden:
        assert json.dumps(now[key], sort_keys=True) == json.dumps(golden[key], sort_keys=True), key
