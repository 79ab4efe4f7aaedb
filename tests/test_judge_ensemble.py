"""Judge ensembles: how members' scores combine, the ensemble on real verifier members, the
profile's rules, and an ensemble judging a skills_smoke round with its agreement figures in
judge health."""

from __future__ import annotations

import json
import shutil

import pytest

from arena_dagster.config import ConfigError, load_profile
from arena_dagster.judging.battles import JudgeItem
from arena_dagster.judging.ensemble import EnsembleJudge, combine_scores
from arena_dagster.judging.judges import make_judge
from arena_dagster.profile_schema.judges import judge_settings
from arena_dagster.shards import connection_config


def test_mean_and_majority_combine_the_members_scores():
    assert combine_scores([(8, 3), (6, 5)], "mean") == (7, 4)
    assert combine_scores([(7, 6), (6, 7)], "mean") == (6, 6)  # 6.5 each: rounded half to even, a tie
    assert combine_scores([(9, 2), (7, 6), (3, 8)], "majority") == (8, 4)  # A by 2 of 3: the mean of those two
    assert combine_scores([(7, 6), (6, 6), (3, 8)], "majority") == (6, 6)  # no verdict has a majority: a tie
    assert combine_scores([(7, 6), (6, 5)], "majority") == (6, 5)  # 6.5-5.5 rounds to 6-6: the loser stays below
    assert combine_scores([(2, 1), (2, 1)], "majority") == (2, 1)
    assert combine_scores([(1, 2), (1, 3)], "majority") == (1, 2)


def item(family: str, reference: str, answer_a: str, answer_b: str) -> JudgeItem:
    return JudgeItem(prompt_id="p", prompt="?", family=family, reference=reference, answer_a=answer_a, answer_b=answer_b)


def test_an_ensemble_of_real_judges_records_every_members_verdict():
    config = {"kind": "ensemble", "combine": "mean",
              "judges": [{"kind": "verifier", "name": "strict"}, {"kind": "verifier", "name": "second"}]}
    judge = make_judge(judge_settings(config))
    assert isinstance(judge, EnsembleJudge) and judge.name == "ensemble"
    assert judge.version.startswith("ensemble(mean)|strict=verifier-v1|second=verifier-v1")
    [right] = make_judge(judge_settings({"kind": "verifier"})).judge([item("add", "5", "5", "6")])
    [result] = judge.judge([item("add", "5", "5", "6")])
    assert result.parse_ok and (result.score_a, result.score_b) == (right.score_a, right.score_b)
    members = json.loads(result.raw)["members"]
    assert [m["judge"] for m in members] == ["strict", "second"]
    assert all((m["score_a"], m["score_b"], m["parse_ok"]) == (right.score_a, right.score_b, True) for m in members)
    assert result.explanation.startswith("strict: ")


def test_a_member_that_cannot_judge_leaves_the_game_unparsed():
    from arena_dagster.judging.battles import JudgeResult

    class Unreadable:
        name, version = "unreadable", "u1"

        def judge(self, items):
            return [JudgeResult(None, None, "", "garbled", False, error="no JSON object") for _ in items]

    judge = make_judge(judge_settings({"kind": "ensemble", "judges": [{"kind": "verifier", "name": "a"}, {"kind": "verifier", "name": "b"}]}))
    judge.members[1] = Unreadable()
    [result] = judge.judge([item("add", "5", "5", "6")])
    assert not result.parse_ok and result.score_a is None and result.error == "unreadable: no JSON object"
    assert json.loads(result.raw)["members"][0]["parse_ok"] is True


@pytest.mark.parametrize("judge, message", [
    ("{kind: ensemble, judges: [{kind: verifier}, {kind: verifier}]}", "members need distinct names"),
    ("{kind: ensemble, judges: [{kind: verifier, name: a}]}", "judge.judges: list should have at least 2 items"),
    ("{kind: ensemble, judges: [{kind: recorded, name: a}, {kind: verifier}]}", "judge.judges[0]: `kind` must be one of verifier, llm"),
    ("{kind: ensemble, judges: [{kind: verifier, name: a}, {kind: verifier, name: b}], combine: median}",
     "judge.combine: input should be 'mean' or 'majority'"),
])
def test_bad_ensembles_are_one_line_profile_errors(tmp_path, judge, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"extends: skills_smoke\nname: p\njudge: {judge}\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_judge_section_built_outside_a_profile_is_checked_by_the_same_schema():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least 2 items"):
        judge_settings({"kind": "ensemble", "judges": [{"kind": "verifier"}]})
    with pytest.raises(ValidationError, match="distinct names"):
        judge_settings({"kind": "ensemble", "judges": [{"kind": "verifier"}, {"kind": "verifier"}]})


def test_an_ensemble_judges_a_skills_round_and_judge_health_reports_its_members(smoke_home, tmp_path):
    """The verifier and a position-biased LLM judge (an OpenAI-shaped scripted server that always
    prefers the answer shown first) judge round 1's arena of a skills_smoke home."""
    import dagster as dg
    import duckdb

    from arena_dagster.defs import build_definitions
    from arena_dagster.quality.suites import judge_health_limits, table_suite
    from arena_dagster.quality.validation import validate_suite
    from scripted_server import ScriptedServer, answer

    server = ScriptedServer(lambda n, body: (200, answer(body, json.dumps(
        {"explanation": "the first is better", "score_a": 8, "score_b": 3})), 0))
    try:
        home = tmp_path / "home"
        shutil.copytree(smoke_home, home, symlinks=True)
        profile = home / "ensemble.yaml"
        profile.write_text(
            "extends: skills_smoke\nname: ensemble\njudge:\n  kind: ensemble\n  combine: majority\n  judges:\n"
            "    - {kind: verifier, name: verifier}\n"
            f"    - {{kind: llm, name: first-pick, model: {{backend: openai, base_url: '{server.url}', model: scripted}}, "
            "retries: 0}\n")
        record = json.loads((home / "arena.json").read_text())
        (home / "arena.json").write_text(json.dumps({**record, "profile": str(profile)}))
        defs = build_definitions(home)
        keys = [dg.AssetKey(k) for k in ("arena_judgments", "arena_battles", "arena_judge_health")]
        assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and any(k in a.keys for k in keys)]
        result = dg.materialize(assets, selection=keys, partition_key="1", resources=defs.resources,
                                instance=dg.DagsterInstance.from_config(str(home / "dagster")))
        assert result.success and server.calls
    finally:
        server.close()
    with duckdb.connect(str(home / "warehouse.duckdb"), config=connection_config(home)) as conn:
        [health] = conn.execute("SELECT * FROM arena_judge_health WHERE round = 1").pl().to_dicts()
        games = conn.execute("SELECT raw FROM arena_judgments WHERE round = 1").fetchall()
        outcomes = {o.name: o for o in validate_suite(conn, table_suite("arena_judge_health"), 1)}
    # the figures, counted again here from the members' verdicts in the judgments
    verdicts = [[(m["score_a"] > m["score_b"]) - (m["score_a"] < m["score_b"]) for m in json.loads(raw)["members"]]
                for (raw,) in games]
    assert health["judge"] == "ensemble" and health["judgments"] == len(games)
    assert health["member_agreement"] == pytest.approx(sum(len(set(v)) == 1 for v in verdicts) / len(verdicts))
    assert 0 < health["member_agreement"] < 1
    assert health["member_position_consistency"] == 0.0  # the first answer always wins: no battle decided alike
    assert health["member_consistency"] == "first-pick 0.000, verifier 1.000"
    assert health["first_position_win_rate"] == 1.0  # disagreeing members tie; agreeing ones picked the first answer
    assert not outcomes["warn_member_position_consistency"].passed
    # in a training stage the same figure blocks (a profile's judge_health.block moves the limit)
    assert judge_health_limits()["block"]["member_position_consistency"] == (0.3, 1.0)
    assert judge_health_limits()["block"]["member_agreement"] == (0.3, 1.0)
