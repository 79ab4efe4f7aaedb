"""The `recorded` judge: verdicts of arena-hard and MT-Bench judgment files replayed as judge scores."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from arena_dagster.judging.battles import JudgeItem
from arena_dagster.judging.judges import make_judge
from arena_dagster.judging.recorded import VERDICT_SCORES, RecordedJudgeError
from arena_dagster.judging.recorded import RecordedJudge as _RecordedJudge
from arena_dagster.profile_schema.judges import judge_settings
from arena_dagster.ratings.judgments import read_arena_hard

KO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ko-arena-hard-v0.1" / "model_judgment" / "ensemble"


def RecordedJudge(config: dict) -> _RecordedJudge:
    """The recorded judge of a `judge:` section given as the profile writes it."""
    return _RecordedJudge(judge_settings({"kind": "recorded", **config}))


def item(prompt_id, a, b):
    return JudgeItem(prompt_id=prompt_id, prompt=None, family="", reference="", answer_a=None, answer_b=None, model_a=a, model_b=b)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture()
def arena_hard(tmp_path):
    folder = tmp_path / "judgments"
    folder.mkdir()
    write_jsonl(folder / "m.jsonl", [
        {"question_id": "q1", "model": "m", "games": [{"score": "A>>B", "judgment": "base is far better"}, {"score": "A>B"}]},
        {"question_id": "q2", "model": "m", "games": [{"score": "A=B"}]},  # game 2 was never recorded
        {"question_id": "q3", "model": "m", "games": [{"score": None}, {"score": "B<<A"}]},
    ])
    write_jsonl(folder / "other.jsonl", [{"question_id": "q4", "model": "other", "games": [{"score": "A>B"}] * 2}])
    write_jsonl(folder / "base.jsonl", [{"question_id": "q1", "model": "base", "games": [{"score": "A=B"}] * 2}])
    return folder


def test_replays_arena_hard_verdicts_as_scores_by_prompt_and_position(arena_hard):
    judge = make_judge(judge_settings({"kind": "recorded", "format": "arena-hard", "paths": [str(arena_hard)], "baseline": "base"}))
    assert isinstance(judge, _RecordedJudge) and judge.name == "recorded-arena-hard"
    results = judge.judge([item("q1", "base", "m"), item("q1", "m", "base"), item("q3", "m", "base")])
    assert [(r.score_a, r.score_b, r.raw, r.parse_ok) for r in results] == [
        (*VERDICT_SCORES["A>>B"], "A>>B", True),  # game 1: the baseline shown as A
        (*VERDICT_SCORES["A>B"], "A>B", True),  # game 2: m shown as A
        (*VERDICT_SCORES["A>>B"], "A>>B", True),  # B<<A is A>>B
    ]
    assert results[0].explanation == "base is far better"
    for missing in (item("q2", "m", "base"), item("q3", "base", "m")):  # absent game; null verdict
        result = judge.verdict(missing.prompt_id, missing.model_a, missing.model_b)
        assert not result.parse_ok and result.score_a is None and "no readable verdict" in result.error
    # A prompt and a pair the files know, without a row (m was not judged on q4 of other's file): a parse failure.
    absent = judge.verdict("q4", "base", "m")
    assert not absent.parse_ok and "no game of this prompt and pair" in absent.error
    assert judge.rejected == {"baseline_vs_itself": 1}
    with pytest.raises(RecordedJudgeError, match=r"no recorded game of prompt 'q1' with 'm' as A and 'other' as B"):
        judge.verdict("q1", "m", "other")  # two models the files never set against each other
    with pytest.raises(RecordedJudgeError, match=r"no recorded game of prompt 'q9'"):
        judge.verdict("q9", "base", "m")  # a prompt the files never judged
    with pytest.raises(RecordedJudgeError, match="must carry model_a and model_b"):
        judge.judge([JudgeItem("q1", "", "", "", "", "")])


def test_plans_only_the_games_the_recordings_hold(arena_hard, tmp_path):
    judge = RecordedJudge({"format": "arena-hard", "paths": [str(arena_hard)], "baseline": "base"})
    assert judge.prompt_ids() == ["q1", "q2", "q3", "q4"] and judge.models() == {"base", "m", "other"}
    plan = judge.plan(0, judge.prompt_ids(), ["m", "other", "base"])
    assert plan.height == 8 and set(plan["model_x"]) == {"base"}  # game 1 shows the baseline as A, as arena-hard did
    assert set(plan["model_y"]) == {"m", "other"}
    with pytest.raises(RecordedJudgeError, match=r"model\(s\) \['gpt-9'\] that the 3 recorded arena-hard file\(s\) never judged"):
        judge.plan(0, ["q1"], ["m", "base", "gpt-9"])
    with pytest.raises(RecordedJudgeError, match="against the baseline 'base', which the arena does not hold"):
        judge.plan(0, ["q1"], ["m", "other"])
    # v2.0 rows name their baseline: the judge finds it without judge.baseline
    v2 = write_jsonl(tmp_path / "v2.jsonl", [{"uid": "u1", "model": "m", "baseline": "b2", "games": [{"score": "A>B"}] * 2}])
    assert RecordedJudge({"format": "arena-hard", "paths": [str(v2)]}).baseline == "b2"
    pairs = write_jsonl(tmp_path / "gpt-4_pair.jsonl", [
        {"question_id": 81, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_2", "turn": 1},
        {"question_id": 81, "model_1": "a", "model_2": "c", "g1_winner": "tie", "g2_winner": "tie", "turn": 1},
    ])
    mt = RecordedJudge({"format": "mt-bench-pair", "paths": [str(pairs)]})
    planned = mt.plan(1, mt.prompt_ids(), ["a", "b", "c"])  # b and c were never judged against each other
    assert sorted(zip(planned["model_x"], planned["model_y"])) == [("a", "b"), ("a", "c")]


def test_the_version_follows_the_files_and_the_score_mapping(arena_hard):
    config = {"kind": "recorded", "format": "arena-hard", "paths": str(arena_hard), "baseline": "base"}
    first = RecordedJudge(config).version
    assert RecordedJudge(config).version == first
    custom = {"A>>B": [10, 1], "A>B": [6, 4], "A=B": [5, 5], "B>A": [4, 6], "B>>A": [1, 10]}
    assert RecordedJudge({**config, "scores": custom}).version != first
    assert RecordedJudge({**config, "scores": custom}).verdict("q1", "base", "m").score_a == 10
    with (arena_hard / "m.jsonl").open("a") as f:
        f.write(json.dumps({"question_id": "q4", "model": "m", "games": [{"score": "A>B"}, {"score": "A>B"}]}) + "\n")
    assert RecordedJudge(config).version != first


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "chatbot-arena"}, "format"),
    ({"paths": []}, "paths"),
    ({"colour": "red"}, "unknown setting colour"),
    ({"scores": {"A>B": [7, 5]}}, "give the score pair of every verdict"),
    ({"scores": {**VERDICT_SCORES, "A>B": [11, 5]}}, "less than or equal to 10"),
])
def test_bad_settings_are_refused_by_the_schema(arena_hard, change, message):
    config = {"kind": "recorded", "format": "arena-hard", "paths": [str(arena_hard)], "baseline": "base", **change}
    with pytest.raises(ValidationError, match=message):
        judge_settings(config)


def test_replays_mt_bench_pairwise_games_of_one_turn(tmp_path):
    rows = [
        {"question_id": 81, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_2", "turn": 1},
        {"question_id": 81, "model_1": "a", "model_2": "b", "g1_winner": "tie", "g2_winner": "error", "turn": 2},
    ]
    path = write_jsonl(tmp_path / "gpt-4_pair.jsonl", rows)
    turn_1 = RecordedJudge({"format": "mt-bench-pair", "paths": [str(path)]})
    # game 1 shows model_1 (a) as A and a won; game 2 shows b as A and b won
    assert turn_1.verdict("81", "a", "b").raw == "A>B" and turn_1.verdict("81", "b", "a").raw == "A>B"
    turn_2 = RecordedJudge({"format": "mt-bench-pair", "paths": [str(path)], "turn": 2})
    assert turn_2.verdict("81", "a", "b").raw == "A=B"
    assert not turn_2.verdict("81", "b", "a").parse_ok  # the judge's own error is a parse failure


@pytest.mark.shared_data
@pytest.mark.skipif(not KO.is_dir(), reason=f"shared data absent: needs {KO}")
def test_replayed_verdicts_agree_with_the_importer_on_real_judgments():
    judge = RecordedJudge({"format": "arena-hard", "paths": [str(KO)], "baseline": "claude-3.7-sonnet"})
    battles, _ = read_arena_hard(KO, baseline="claude-3.7-sonnet")
    assert len(judge.games) == battles.height + 2  # o4-mini-high's one-game row: both games kept, one unreadable
    for row in battles.sample(2000, seed=0).iter_rows(named=True):
        result = judge.verdict(row["question_id"], row["model_a"], row["model_b"])
        expected = {"model_a": 1, "model_b": -1, "tie": 0}[row["winner"]]
        assert (result.score_a > result.score_b) - (result.score_a < result.score_b) == expected
        assert abs(result.score_a - result.score_b) == (6 if row["weight"] == 3 else 2 if expected else 0)


@pytest.mark.shared_data
@pytest.mark.skipif(not KO.is_dir(), reason=f"shared data absent: needs {KO}")
def test_a_replayed_arena_rates_like_the_command():
    """The flywheel's path without Dagster: every model against the baseline on every prompt,
    both games judged by the recorded judge, the games rated: the same leaderboard as the
    importer's (what a replay profile's leaderboard must show)."""
    from arena_dagster.judging.battles import plan_target_battles
    from arena_dagster.judging.recorded import judgment_battles
    from arena_dagster.ratings import rate

    baseline = "claude-3.7-sonnet"
    judge = RecordedJudge({"format": "arena-hard", "paths": [str(KO)], "baseline": baseline})
    prompts = sorted({key[0] for key in judge.games})
    models = sorted({key[2] for key in judge.games if key[1] == baseline})
    plan = plan_target_battles(0, prompts, baseline, models)
    rows = []
    for battle in plan.iter_rows(named=True):
        for game, (a, b) in ((1, (battle["model_x"], battle["model_y"])), (2, (battle["model_y"], battle["model_x"]))):
            result = judge.verdict(battle["prompt_id"], a, b)
            rows.append({"battle_id": battle["battle_id"], "game": game, "prompt_id": battle["prompt_id"],
                         "model_a": a, "model_b": b, "raw": result.raw, "parse_ok": result.parse_ok})
    battles, dropped = judgment_battles(pl.DataFrame(rows))
    assert dropped == {"battle_without_two_verdicts": 2}  # o4-mini-high's one-game row
    imported, _ = read_arena_hard(KO, baseline=baseline)
    replayed = rate(battles, anchor=f"{baseline}=1000", baseline=baseline, bootstrap=20, seed=1).board
    direct = rate(imported, anchor=f"{baseline}=1000", baseline=baseline, bootstrap=20, seed=1).board
    assert replayed.select("model", "rating", "win_rate", "rank").equals(direct.select("model", "rating", "win_rate", "rank"))
