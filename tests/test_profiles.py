"""Profiles are validated before any work: every key and value, every name, every `extends` chain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from arena_dagster.config import PROFILES_DIR, ConfigError, known_profiles, load_profile, validate_profile
from arena_dagster.errors import ArenaError
from arena_dagster.profile_schema.models import HYPERPARAMETERS, hyperparameter_keys
from arena_dagster.profile_schema.sections import SqlVars

README = Path(__file__).resolve().parents[1] / "README.md"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shipped(name: str) -> str:
    """A shipped profile's name, skipped where it reads the shared third-party data and that is absent."""
    if "shared/data" in (PROFILES_DIR / f"{name}.yaml").read_text(encoding="utf-8") and not SHARED_DATA.is_dir():
        pytest.skip(f"profile {name} replays shared data: needs {SHARED_DATA}")
    return name


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    line = str(info.value)
    assert isinstance(info.value, ArenaError) and "\n" not in line, line
    return line


@pytest.mark.parametrize("name", known_profiles())
def test_every_shipped_profile_is_valid(name):
    profile = load_profile(shipped(name))
    assert profile["name"] == name and profile["seed"] == 0


def test_the_readme_served_example_is_valid(tmp_path):
    # The README's sharegpt_served profile (openai and vllm models, an openai judge) must load as written.
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n# assets/profiles/sharegpt_served.yaml\n(.*?)```", text, re.S)
    assert block, "README lost its sharegpt_served example"
    profile = load_profile(write(tmp_path, "sharegpt_served", block.group(1)))
    assert profile["models"]["competitors"]["llama-3.1-70b"]["backend"] == "openai"
    assert profile["generation"]["backend"] == "vllm" and profile["judge"]["model"]["backend"] == "openai"


def test_unknown_profile_names_the_known_ones_in_one_line():
    with pytest.raises(ConfigError) as info:
        load_profile("skils")
    line = str(info.value)
    assert line.startswith("unknown profile 'skils'") and "\n" not in line
    assert all(name in line for name in known_profiles())


def test_extends_cycles_are_detected(tmp_path):
    write(tmp_path, "selfish", "extends: selfish.yaml\n")
    assert "cycle: selfish -> selfish" in load_error(tmp_path / "selfish.yaml")
    write(tmp_path, "a", "extends: b.yaml\n")
    write(tmp_path, "b", "extends: a.yaml\n")
    assert "cycle: a -> b -> a" in load_error(tmp_path / "a.yaml")
    write(tmp_path, "orphan", "extends: no_such_profile\n")
    assert "unknown profile 'no_such_profile'" in load_error(tmp_path / "orphan.yaml")


def test_a_child_is_named_after_its_own_file_and_errors_name_the_file_that_holds_the_key(tmp_path):
    write(tmp_path, "mine", "extends: skills_smoke\n")
    assert load_profile(tmp_path / "mine.yaml")["name"] == "mine"
    write(tmp_path, "parent", "extends: skills_smoke\npromotion: {margin: 5.0, bootstrap: 2}\n")
    write(tmp_path, "child", "extends: parent.yaml\nprompts: {rounds: 3}\n")
    line = load_error(tmp_path / "child.yaml")
    assert "promotion.bootstrap" in line and str(tmp_path / "parent.yaml") in line and "profile child" in line


# Each row: profile text (over `extends: skills_smoke` unless it says otherwise), what the line must say.
BAD_PROFILES = {
    "typo_section": ("promotoin: {margin: 100}", ["unknown setting promotoin", "did you mean promotion?"]),
    "typo_nested": ("evaluation: {bootstrapp: 50}", ["unknown setting evaluation.bootstrapp", "did you mean bootstrap?"]),
    "rounds_text": ("prompts: {rounds: three}", ["prompts.rounds", "valid integer", "'three'"]),
    "rounds_quoted_number": ("prompts: {rounds: '3'}", ["prompts.rounds", "valid integer"]),
    "bootstrap_text": ("evaluation: {bootstrap: lots}", ["evaluation.bootstrap", "'lots'"]),
    "bootstrap_small": ("promotion: {bootstrap: 5}", ["promotion.bootstrap", "greater than or equal to 20"]),
    "negative_size": ("prompts: {raw_pool_size: -5}", ["prompts.raw_pool_size", "greater than or equal to 1"]),
    "fraction_range": ("reward_model: {min_eval_accuracy: 1.5}", ["reward_model.min_eval_accuracy", "less than or equal to 1"]),
    "fractions_sum": ("prompts: {stage_fractions: {sft: 0.5, dpo: 0.3, rl: 0.3}}", ["stage_fractions must sum to 1"]),
    "slice_not_cut": ("schedule: {rl: {slice: ppo}}", ["stage rl battles slice 'ppo'", "cuts dpo, rl, sft"]),
    "dup_rates": ("prompts: {exact_dup_rate: 0.6, near_dup_rate: 0.5}", ["must stay below 1"]),
    "foreign_prompt_key": ("prompts: {max_conversations: 10}", ["prompts.max_conversations", "source sharegpt, files"]),
    "foreign_testset_key": ("testset: {clusters: 4}", ["testset.clusters", "not a setting of prompt source skills"]),
    "curation_key": ("prompts: {curation: {near_dedup_treshold: 0.9}}", ["prompts.curation.near_dedup_treshold",
                                                                      "did you mean near_dedup_threshold?"]),
    "curation_range": ("prompts: {curation: {near_dedup_threshold: 1.5}}", ["near_dedup_threshold must be in (0, 1]"]),
    "curation_preset": ("prompts: {curation: {preset: fancy}}", ["prompts.curation.preset", "'paper' or 'templated'"]),
    "hyper_typo": ("models: {flywheel: {dpo: {hyperparams: {betta: 0.1}}}}",
                   ["unknown setting models.flywheel.dpo.hyperparams.betta", "did you mean beta?"]),
    "hyper_other_stage": ("models: {flywheel: {sft: {hyperparams: {beta: 0.1}}}}",
                          ["unknown setting models.flywheel.sft.hyperparams.beta"]),
    "hyper_type": ("models: {flywheel: {sft: {hyperparams: {learning_rate: 1e-5}}}}",
                   ["learning_rate", "1.0e-5, not 1e-5"]),
    "hyper_rule": ("models: {flywheel: {rl: {hyperparams: {batch_size: 7, num_generations: 2}}}}",
                   ["multiple of num_generations"]),
    "base_hyper": ("models: {initial_target: {hyperparams: {max_step: 3}}}", ["did you mean max_steps?"]),
    "family": ("models: {competitors: {x: {families: [juggling]}}}", ["models.competitors.x.families[0]"]),
    "architecture": ("models: {model_config: {hidden_size: 130}}", ["multiple of num_attention_heads"]),
    "architecture_key": ("models: {model_config: {hiden_size: 100}}", ["did you mean hidden_size?"]),
    "device": ("models: {device: tpu}", ["models.device", "'auto', 'cpu' or 'cuda'"]),
    "judge_kind": ("judge: {kind: oracle}", ["`kind` must be one of verifier, llm, recorded"]),
    "recorded_format": ("judge: {kind: recorded, format: chatbot-arena, paths: [.]}", ["judge.format", "'arena-hard' or 'mt-bench-pair'"]),
    "recorded_paths": ("judge: {kind: recorded, format: arena-hard, paths: [/no/such/judgments]}",
                       ["judge.paths", "/no/such/judgments does not exist"]),
    "recorded_scores": ("judge: {kind: recorded, format: arena-hard, paths: ., scores: {A>B: [7, 5]}}",
                        ["judge.scores", "A>>B, A=B, B>A, B>>A missing"]),
    "recorded_score_range": ("judge: {kind: recorded, format: arena-hard, paths: ., scores: {A>B: [7, 11]}}",
                             ["judge.scores.A>B[1]", "less than or equal to 10"]),
    "revision_number": ("extends: sharegpt_smoke\nmodels: {initial_target: {revision: 12345678}}",
                        ["models.initial_target.revision", "quote it ('12345678')"]),
    "verifier_on_real": ("extends: sharegpt_smoke\njudge: {kind: verifier}", ["judge.kind", "use judge kind llm"]),
    "judge_template": ("extends: sharegpt_smoke\njudge: {template: pairwise_v9}", ["no judge template named 'pairwise_v9'"]),
    "judge_expected": ("extends: sharegpt_smoke\njudge: {integers: expected, structured: off}", ["judge.integers"]),
    "openai_no_url": ("extends: sharegpt_smoke\nmodels: {competitors: {gpt: {backend: openai, model: m}}}",
                      ["missing setting models.competitors.gpt.base_url"]),
    "openai_option_typo": ("extends: sharegpt_smoke\nmodels: {competitors: {gpt: {backend: openai, model: m, "
                           "base_url: 'http://h:8000/v1', timeout: 5}}}", ["did you mean timeout_s?"]),
    "api_key_in_file": ("extends: sharegpt_smoke\nmodels: {competitors: {gpt: {backend: openai, model: m, "
                        "base_url: 'http://h:8000/v1', api_key: sk-123}}}", ["api_key_env"]),
    "backend": ("extends: sharegpt_smoke\nmodels: {competitors: {gpt: {backend: tgi, model: m}}}", ["`backend` must be one of"]),
    "generation_option": ("generation: {options: {batchsize: 8}}", ["generation.options.batchsize", "did you mean batch_size?"]),
    "generation_backend": ("generation: {backend: openai}", ["`backend` must be one of transformers, vllm"]),
    "sql_var": ("sql_vars: {tie_margn: 1.0}", ["did you mean tie_margin?"]),
    "sql_score": ("sql_vars: {sft_min_winner_score: 11}", ["sql_vars.sft_min_winner_score"]),
    "judge_health": ("judge_health: {block: {flip_rate: [0.9, 0.1]}}", ["lower limit 0.9 is above the upper 0.1"]),
    "judge_health_key": ("judge_health: {warn: {flips: [0, 1]}}", ["unknown setting judge_health.warn.flips"]),
    "anchor_unknown": ("evaluation: {anchor: 'gpt-9=1000'}", ["evaluation.anchor", "'gpt-9'"]),
    "baseline_unknown": ("evaluation: {baseline: gpt-9}", ["evaluation.baseline"]),
    "candidate": ("promotion: {candidate: median}", ["promotion.candidate", "'best' or 'last'"]),
    "selection_fraction": ("promotion: {selection_fraction: 1.0}", ["promotion.selection_fraction", "less than 1"]),
    "style_control": ("evaluation: {style_control: maybe}", ["evaluation.style_control", "valid boolean"]),
    "margin_inf": ("promotion: {margin: .inf}", ["promotion.margin", "finite"]),
    "schedule_stage": ("schedule: {ppo: {slice: rl}}", ["unknown setting schedule.ppo", "did you mean dpo?"]),
    "seed_negative": ("seed: -1", ["seed", "greater than or equal to 0"]),
    "seed_text": ("seed: lucky", ["seed", "'lucky'"]),
    "sub_seed": ("testset: {seed: 1.5}", ["testset.seed", "valid integer"]),
    "missing_section": ("extends: null\nname: bare\nprompts: {source: skills, raw_pool_size: 10, rounds: 1}",
                        ["missing setting testset"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_bad_profiles_fail_at_load_with_the_key_path(tmp_path, case):
    text, expected = BAD_PROFILES[case]
    if not text.startswith("extends:"):
        text = "extends: skills_smoke\n" + text
    text = text.replace("extends: null\n", "")
    line = load_error(write(tmp_path, case, text + "\n"))
    for fragment in expected:
        assert fragment in line, (fragment, line)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prompts: [1, 2", "not valid YAML"),
        ("- a list\n- of things", "must be a YAML mapping"),
        ("seed: 1\nseed: 2", "key 'seed' appears twice"),
        ("extends: [skills]", "extends must be a profile name or path"),
    ],
)
def test_unreadable_profiles_are_one_line(tmp_path, text, fragment):
    assert fragment in load_error(write(tmp_path, "broken", text + "\n"))


def test_non_utf8_profile_is_one_line(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert "not UTF-8" in load_error(path)
    path.write_bytes(b"\xef\xbb\xbfextends: skills_smoke\n")  # a BOM is fine
    assert load_profile(path)["name"] == "latin"


# ------------------------------------------------------------------ names are names, not paths


@pytest.mark.parametrize(
    ("setting", "name"),
    [
        ("models: {{competitors: {{'{name}': {{families: [add]}}}}}}", "/home/me/precious"),
        ("models: {{competitors: {{'{name}': {{families: [add]}}}}}}", "../../../../home/me/evil"),
        ("models: {{initial_target: {{name: '{name}'}}}}", "../target"),
        ("models: {{initial_target: {{name: '{name}'}}}}", ".hidden"),
        ("judge: {{name: '{name}'}}", "judges/verifier"),
        ("evaluation: {{baseline: '{name}'}}", "../x"),
        ("name: '{name}'", "a b"),
    ],
)
def test_names_that_would_be_paths_fail_at_load(tmp_path, setting, name):
    line = load_error(write(tmp_path, "hostile", "extends: skills_smoke\n" + setting.format(name=name) + "\n"))
    assert "is not a plain name" in line and repr(name) in line


def test_a_competitor_named_after_an_existing_directory_touches_nothing(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    text = f"extends: skills_smoke\nmodels: {{competitors: {{'{precious}': {{families: [add]}}}}}}\n"
    assert "is not a plain name" in load_error(write(tmp_path, "hostile", text))
    assert (precious / "keep.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["hostile.yaml", "precious"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: {competitors: {SFT-I1: {families: [add]}}}", "name of a round's checkpoint"),
        ("models: {competitors: {Letters: {families: [add]}, letters: {families: [uppercase]}}}", "name one folder"),
        ("models: {initial_target: {name: letters}}", "model name 'letters' is given to two models"),
        ("extends: sharegpt_smoke\nprompts: {recorded_model: ../answers}", "prompts.recorded_model"),
        ("extends: sharegpt_smoke\nmodels: {initial_target: {name: /tmp/x}}", "is not a plain name"),
    ],
)
def test_model_names_are_unique_folders(tmp_path, text, fragment):
    if not text.startswith("extends:"):
        text = "extends: skills_smoke\n" + text
    assert fragment in load_error(write(tmp_path, "names", text + "\n"))


# ------------------------------------------------------------------ the schema keeps up with the code


def test_hyperparameter_keys_are_the_training_entry_points():
    from arena_dagster.training import spec

    for stage in ("base", "sft", "dpo", "reward", "rl"):
        expected = set(spec.COMMON_HYPERPARAMS) | set(spec.DEFAULT_HYPERPARAMS[stage])
        assert expected <= hyperparameter_keys(stage) == HYPERPARAMETERS[stage].setting_names()


def test_sql_vars_are_the_variables_the_sql_reads():
    used = set()
    for path in (Path(__file__).resolve().parents[1] / "dbt_like_sql").glob("*.sql"):
        used |= set(re.findall(r"var\('(\w+)'\)", path.read_text()))
    assert used == SqlVars.setting_names()


def test_new_settings_for_the_gate_and_the_ratings_load(tmp_path):
    text = ("extends: skills_smoke\npromotion: {candidate: last, selection_fraction: 0.4}\n"
            "evaluation: {style_control: true, baseline: target-I0, anchor: 'letters=1000'}\n")
    profile = load_profile(write(tmp_path, "new_keys", text))
    assert profile["promotion"]["candidate"] == "last" and profile["evaluation"]["baseline"] == "target-I0"


REPLAY = """name: replay
prompts: {source: judgments, rounds: 0}
sql_vars: {tie_margin: 1.0, sft_min_margin: 1.0, sft_min_winner_score: 6, dpo_min_margin: 1.0, dpo_min_winner_score: 6,
           rm_min_margin: 1.0}
judge: {kind: recorded, format: arena-hard, paths: [judgments], baseline: gpt-4-0314,
        scores: {A>>B: [9, 3], A>B: [7, 5], A=B: [5, 5], B>A: [5, 7], B>>A: [3, 9]}}
models:
  source: declared
  initial_target: {name: gpt-4-0314, backend: recorded}
  competitors: {m1: {backend: recorded}, m2: {backend: recorded, path: answers.jsonl}}
evaluation: {rate: games, baseline: gpt-4-0314, anchor: gpt-4-0314=1000}
"""


@pytest.fixture()
def replay_base(tmp_path):
    (tmp_path / "judgments").mkdir()
    write(tmp_path, "replay", REPLAY)
    return tmp_path


def test_a_recorded_judge_profile_loads_with_paths_read_from_its_folder(replay_base, monkeypatch):
    monkeypatch.chdir("/")  # the Dagster daemon runs in the home: relative paths follow the file, not the cwd
    profile = load_profile(replay_base / "replay.yaml")
    assert profile["judge"]["kind"] == "recorded" and "model" not in profile["judge"]  # a new kind replaces the llm judge
    assert profile["judge"]["paths"] == [str(replay_base / "judgments")]
    assert profile["prompts"]["rounds"] == 0 and set(profile["testset"]) == {"seed"}  # no test-set settings of its own
    assert profile["evaluation"]["rate"] == "games"
    (replay_base / "child").mkdir()
    child = write(replay_base / "child", "child", "extends: ../replay.yaml\njudge: {name: kept}\n")
    assert load_profile(child)["judge"]["paths"] == [str(replay_base / "judgments")]  # read from the file that sets it


@pytest.mark.parametrize(("text", "fragments"), [
    ("judge: {kind: verifier}", ["judge.kind", "use judge kind recorded"]),
    ("prompts: {rounds: 2}", ["prompts.rounds", "must be 0", "--rounds 0"]),
    ("prompts: {max_conversations: 5}", ["prompts.max_conversations is not a setting of source judgments"]),
    ("prompts: {curation: {preset: templated}}", ["prompts.curation.preset is not a setting of source judgments"]),
    ("prompts: {questions: no-such-questions.jsonl}", ["prompts.questions", "no-such-questions.jsonl does not exist"]),
    ("testset: {clusters: 3}", ["testset.clusters is not a setting of prompt source judgments"]),
    ("judge: {paths: [no-such-folder]}", ["judge.paths", "no-such-folder does not exist"]),
    ("judge: {baseline: gpt-5}", ["judge.baseline", "'gpt-5' is not a declared model"]),
    ("evaluation: {style_control: true}", ["evaluation.style_control", "model 'gpt-4-0314' has none"]),
    ("evaluation: {rate: battles, strong_weight: 2.0}", ["evaluation.strong_weight"]),
    ("evaluation: {rate: all}", ["evaluation.rate", "'battles' or 'games'"]),
])
def test_bad_replay_profiles_fail_at_load(replay_base, text, fragments):
    line = load_error(write(replay_base, "bad", "extends: replay.yaml\n" + text + "\n"))
    for fragment in fragments:
        assert fragment in line, (fragment, line)


@pytest.mark.parametrize(("text", "fragments"), [
    ("judge: {kind: recorded, format: arena-hard, paths: [.]}", ["prompts.source", "use prompts.source judgments"]),
    ("models: {competitors: {silent: {backend: recorded}}}", ["model 'silent'", "no recorded answers", "judge kind llm"]),
    ("evaluation: {rate: games}", ["evaluation.rate", "recorded judge"]),
    ("prompts: {questions: q.jsonl}", ["prompts.questions is a setting of source judgments"]),
    ("prompts: {rounds: 0}", ["prompts.rounds must be at least 1"]),
])
def test_replay_settings_elsewhere_fail_at_load(tmp_path, text, fragments):
    (tmp_path / "q.jsonl").write_text("{}\n")
    line = load_error(write(tmp_path, "bad", "extends: sharegpt_smoke\n" + text + "\n"))
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_validate_profile_checks_a_plain_dict():
    profile = load_profile("skills_smoke")
    assert validate_profile(profile) is profile  # a loaded profile (with its seeds) is valid as it is
    with pytest.raises(ConfigError, match="unknown setting promotion.marginn"):
        validate_profile({**profile, "promotion": {"marginn": 1.0}})


def test_shipped_profiles_round_trip_through_yaml(tmp_path):
    # A profile recorded in a home (a plain YAML dump of the loaded dict) loads back to the same dict.
    for name in known_profiles():
        if "shared/data" in (PROFILES_DIR / f"{name}.yaml").read_text(encoding="utf-8") and not SHARED_DATA.is_dir():
            continue  # test_every_shipped_profile_is_valid reports the skip
        profile = load_profile(name)
        path = write(tmp_path, name, yaml.safe_dump(profile, sort_keys=False))
        assert load_profile(path) == profile
    assert PROFILES_DIR.is_dir()
