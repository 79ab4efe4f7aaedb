"""Replaying recorded judgments through the flywheel: the setup job of a replay profile (test set
from the judgment files, models without answers, the recorded judge, arena battles, arena judge
health, a leaderboard of weighted games) gives the leaderboard of `arena-dagster leaderboard
--input-format arena-hard` on the same files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from arena_dagster.backends.answering import answer_prompts
from arena_dagster.backends.base import ModelSpec
from arena_dagster.backends.recorded_backend import RecordedBackend, RecordedDataError
from arena_dagster.backends.registry import ModelConfigError, model_spec_from_config
from arena_dagster.config import load_profile
from arena_dagster.judging.recorded import RecordedJudge
from arena_dagster.profile_schema.judges import judge_settings
from arena_dagster.profile_schema.sections import PromptsSettings
from arena_dagster.prompts.recorded import recorded_testset
from arena_dagster.warehouse import open_readonly

REPO = Path(__file__).resolve().parents[1]
KO = REPO.parent / "shared" / "data" / "ko-arena-hard-v0.1" / "model_judgment" / "ensemble"
BOARD = ["model", "rating", "ci_low", "ci_high", "win_rate", "win_rate_low", "win_rate_high", "rank", "battles", "unbounded"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def games(first: str, second: str) -> list[dict]:
    return [{"score": first}, {"score": second}]


@pytest.fixture()
def judged(tmp_path):
    """arena-hard v0.1 judgments of three models against `base` on six questions, with the real files'
    mess: a bad label, a row with one game, a model without a row for one question, the baseline's
    own file (judged against itself)."""
    folder = tmp_path / "judgments"
    folder.mkdir()
    questions = [f"q{i}" for i in range(1, 7)]
    m1 = ["B>A", "B>>A", "B>A", "A=B", "B>A", "A>B"]  # game 1: the baseline is A
    write_jsonl(folder / "m1.jsonl", [{"question_id": q, "model": "m1", "games": games(v, "A>B" if v != "A>B" else "B>A")}
                                      for q, v in zip(questions, m1)])
    write_jsonl(folder / "m2.jsonl", [
        {"question_id": "q1", "model": "m2", "games": games("A>>>B", "A>B")},  # a label outside the ten
        {"question_id": "q2", "model": "m2", "games": [{"score": "B>A"}]},  # one game
        *({"question_id": q, "model": "m2", "games": games(v, w)}
          for q, v, w in (("q3", "A>B", "B>A"), ("q4", "B>A", "A=B"), ("q5", "A>>B", "B>>A"), ("q6", "B>A", "A>B"))),
    ])
    write_jsonl(folder / "m3.jsonl", [{"question_id": q, "model": "m3", "games": games(v, w)}
                                      for q, v, w in (("q1", "A>>B", "B>>A"), ("q2", "A>B", "B>A"), ("q3", "B>A", "A>B"),
                                                      ("q4", "A>B", "A=B"), ("q6", "A=B", "B>A"))])  # no q5 row
    write_jsonl(folder / "base.jsonl", [{"question_id": q, "model": "base", "games": games("A=B", "A=B")} for q in questions])
    return folder


REPLAY = """name: tiny_replay
prompts: {source: judgments, rounds: 0}
judge: {kind: recorded, format: arena-hard, baseline: base, paths: [judgments]}
models:
  source: declared
  initial_target: {name: base, backend: recorded}
  competitors: {m1: {backend: recorded}, m2: {backend: recorded}, m3: {backend: recorded}}
sql_vars: {tie_margin: 1.0, sft_min_margin: 1.0, sft_min_winner_score: 6, dpo_min_margin: 1.0, dpo_min_winner_score: 6,
           rm_min_margin: 1.0}
evaluation: {rate: games, baseline: base, anchor: base=1000, bootstrap: 20, bootstrap_unit: battle}
"""


def materialize_setup(home: Path, profile: str) -> dict[str, dict]:
    """The setup job's assets (the CLI's `flywheel --rounds 0`), in process; metadata by asset."""
    from arena_dagster import cli
    from arena_dagster.defs import build_definitions
    from arena_dagster.defs.automation import SETUP_ASSETS

    cli.prepare_environment(home)
    defs = build_definitions(str(home), profile)
    result = dg.materialize(list(defs.assets), instance=dg.DagsterInstance.ephemeral(), resources=defs.resources,
                            selection=SETUP_ASSETS)
    assert result.success
    failed = {(c.asset_key.to_user_string(), c.check_name) for c in result.get_asset_check_evaluations() if not c.passed}
    # A replay trains nothing: only the empty pool's warnings.
    assert failed == {("raw_prompts", "not_empty"), ("prompt_pool", "row_count")}, failed
    events = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()} for m in events}


def command_board(paths: list[str], *options: str) -> dict:
    """`arena-dagster leaderboard --json` on the judgment files: the standalone command."""
    out = subprocess.run(
        [sys.executable, "-m", "arena_dagster.cli", "leaderboard", "--battles", *paths, "--input-format", "arena-hard",
         *options, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_same_board(home: Path, report: dict) -> pl.DataFrame:
    with open_readonly(home) as conn:
        board = conn.execute("SELECT * FROM leaderboard WHERE round = 0").pl()
    ours = board.select(BOARD).sort("model")
    theirs = pl.DataFrame(report["models"]).select(BOARD).sort("model")
    assert ours["model"].to_list() == theirs["model"].to_list()
    for column in ("rank", "battles", "unbounded"):
        assert ours[column].to_list() == theirs[column].to_list(), column
    for column in ("rating", "ci_low", "ci_high"):  # Elo, to 0.01
        assert (ours[column] - theirs[column]).abs().max() < 0.01, column
    for column in ("win_rate", "win_rate_low", "win_rate_high"):
        assert (ours[column] - theirs[column]).abs().max() < 1e-6, column
    return board


@pytest.fixture()
def clean_env(monkeypatch):
    for key in ("ARENA_HOME", "ARENA_PROFILE", "DAGSTER_HOME"):  # restored after the test
        monkeypatch.setenv(key, "")


def test_a_replay_rates_recorded_verdicts_like_the_command(tmp_path, judged, clean_env):
    (tmp_path / "profiles").mkdir()
    profile = tmp_path / "profiles" / "tiny_replay.yaml"
    profile.write_text(REPLAY.replace("paths: [judgments]", "paths: [../judgments]"))  # relative to the profile file
    home = tmp_path / "home"
    metadata = materialize_setup(home, str(profile))

    report = command_board([str(judged)], "--baseline", "base", "--anchor", "base=1000", "--bootstrap", "20",
                           "--bootstrap-unit", "battle", "--seed", "0")
    assert report["rejected"] == {"baseline_vs_itself": 6, "missing_game": 1, "unknown_verdict": 1}
    board = assert_same_board(home, report)
    assert board.filter(pl.col("model") == "base")["kind"].item() == "initial"

    baseline = metadata["baseline_leaderboard"]
    # 3 models x 6 prompts x 2 games; the bad label, the missing game and m3's absent q5 row are unreadable games.
    assert baseline["parse_failures"] == 4 and baseline["games_left_out"] == {"battle_without_two_verdicts": 6}
    assert baseline["rated"] == "games" and baseline["models_without_answers"] == "base, m1, m2, m3"
    assert baseline["recorded_rows_rejected"] == {"baseline_vs_itself": 6}
    [health] = baseline["judge_health"]
    assert health["judgments"] == 36 and health["parse_failure_rate"] == pytest.approx(4 / 36)
    assert health["incomplete_battles"] == 3  # the battles of the 6 games left out, counted, never silent
    assert health["longer_answer_win_rate"] is None  # the answers are unknown
    # 4 of 36 games unreadable: past the 10% warning limit; the leaderboard still rates the rest
    assert baseline["judge_health_checks"].startswith("warn_parse_failure_rate: warning")
    assert "unknown" in metadata["arena_testset"]["build"]["prompt_texts"]

    with open_readonly(home) as conn:
        testset = conn.execute("SELECT * FROM arena_testset ORDER BY prompt_id").pl()
        answers = conn.execute("SELECT * FROM arena_responses WHERE round = 0").pl()
        pool = conn.execute("SELECT count(*) FROM prompt_pool").fetchone()[0]
        raw = conn.execute("SELECT count(*) FROM raw_prompts").fetchone()[0]
        promoted = conn.execute("SELECT new_target FROM promotions WHERE round = 0").fetchone()[0]
    assert testset["prompt_id"].to_list() == [f"q{i}" for i in range(1, 7)] and set(testset["subset"]) == {"recorded"}
    # No invented text anywhere: prompts and answers are NULL, and there is nothing to train on.
    assert testset["prompt"].null_count() == 6 and answers.height == 24 and answers["response"].null_count() == 24
    assert (pool, raw, promoted) == (0, 0, "base")


@pytest.mark.shared_data
@pytest.mark.skipif(not KO.is_dir(), reason=f"shared data absent: needs {KO}")
def test_the_ko_arena_hard_replay_leaderboard_equals_the_command(tmp_path, clean_env):
    profile = load_profile("ko_arena_hard_replay")
    paths = profile["judge"]["paths"]
    assert len(paths) == 6 and all(Path(p).parent == KO.resolve() for p in paths)
    metadata = materialize_setup(tmp_path / "home", "ko_arena_hard_replay")
    report = command_board(paths, "--baseline", "claude-3.7-sonnet", "--anchor", "claude-3.7-sonnet=1000")
    assert report["rejected"] == {"missing_game": 1}  # o4-mini-high's one-game row
    board = assert_same_board(tmp_path / "home", report)
    assert board.height == 7 and board.sort("rating")["model"][0] == "llama-3.1-8b-instruct"
    baseline = metadata["baseline_leaderboard"]
    assert baseline["parse_failures"] == 1 and baseline["games_left_out"] == {"battle_without_two_verdicts": 2}
    assert baseline["judge_health_checks"] == "all passed"
    assert metadata["arena_testset"]["dagster/row_count"] == 500


def test_a_question_file_gives_the_test_prompts_their_text(judged, tmp_path):
    judge = RecordedJudge(judge_settings({"kind": "recorded", "format": "arena-hard", "paths": [str(judged)], "baseline": "base"}))
    questions = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": "q1", "category": "coding", "turns": [{"content": "Write a sort."}]},  # arena-hard v0.1
        {"uid": "q2", "category": "math", "prompt": "Add 2 and 3."},  # v2.0
        {"question_id": "q3", "category": "writing", "turns": ["Write a poem.", "Shorter."]},  # MT-Bench
        {"question_id": "q4", "turns": []},  # no text
        {"question_id": "q1", "turns": [{"content": "again"}]},
    ])
    unknown, stats = recorded_testset(PromptsSettings(source="judgments", rounds=0), judge)
    assert unknown["prompt"].null_count() == 6 and "unknown" in stats["prompt_texts"]
    frame, stats = recorded_testset(PromptsSettings(source="judgments", rounds=0, questions=str(questions)), judge)
    texts = dict(zip(frame["prompt_id"], frame["prompt"]))
    assert texts == {"q1": "Write a sort.", "q2": "Add 2 and 3.", "q3": "Write a poem.", "q4": None, "q5": None, "q6": None}
    assert frame.filter(pl.col("prompt_id") == "q1")["family"].item() == "coding"
    assert stats["questions_without_text"] == 3
    assert stats["question_rows_rejected"] == {"duplicate_question": 1, "missing_text": 1}
    assert frame["testset_version"][0] != unknown["testset_version"][0]  # the texts are part of the test set


def test_a_model_without_recorded_answers_answers_nothing(tmp_path):
    spec = model_spec_from_config("m1", {"backend": "recorded"})
    frame, stats = answer_prompts(spec, pl.DataFrame({"prompt_id": ["q1", "q2"], "prompt": [None, None]}),
                                  tmp_path / "cache.sqlite", round_key=0, role="competitor")
    assert frame["response"].to_list() == [None, None] and frame["tokens_out"].to_list() == [None, None]
    assert frame["response_id"].n_unique() == 2 and stats.requests == 0
    assert not (tmp_path / "cache.sqlite").exists()  # nothing generated, nothing cached
    with pytest.raises(RecordedDataError, match="no recorded answers .* only a recorded judge"):
        RecordedBackend(ModelSpec(name="m1", backend="recorded"))
    with pytest.raises(ModelConfigError, match="`path` \\(or `model`\\) is required for backend 'transformers'"):
        model_spec_from_config("m1", {"backend": "transformers"})


def test_judgment_files_changed_in_place_change_the_profile_hash(tmp_path, judged):
    from arena_dagster.config import profile_hash

    path = tmp_path / "tiny_replay.yaml"
    path.write_text(REPLAY)
    profile = load_profile(path)
    before = profile_hash(profile)
    assert profile_hash(load_profile(path)) == before
    with (judged / "m1.jsonl").open("a") as handle:
        handle.write(json.dumps({"question_id": "q7", "model": "m1", "games": games("B>A", "A>B")}) + "\n")
    assert profile_hash(load_profile(path)) != before  # `flywheel` reruns the setup made from the old files
    skills = load_profile("skills_smoke")  # a profile without input files keeps the hash it always had
    assert profile_hash(skills) == hashlib.sha256(json.dumps(skills, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_a_replay_refuses_training_rounds_in_one_line(tmp_path, judged, clean_env, capsys, monkeypatch):
    from arena_dagster import cli, config

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny_replay.yaml").write_text(REPLAY.replace("paths: [judgments]", "paths: [../judgments]"))
    monkeypatch.setattr(config, "PROFILES_DIR", tmp_path / "profiles")  # `flywheel --profile` takes names
    assert cli.main(["flywheel", "--profile", "tiny_replay", "--home", str(tmp_path / "home"), "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arena-dagster: ") and err.count("\n") == 1, err
    assert "slices its prompt pool into 0 rounds (--rounds 1): it trains nothing" in err and "run --rounds 0" in err
