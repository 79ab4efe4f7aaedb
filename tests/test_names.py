"""Model names that print alike are one name or an error: in battle and judgment files, profiles and recorded answers."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from arena_dagster.backends.base import ChatRequest, ModelSpec
from arena_dagster.backends.recorded_backend import RecordedBackend
from arena_dagster.config import ConfigError, load_profile
from arena_dagster.judging.recorded import RecordedJudge
from arena_dagster.profile_schema.judges import judge_settings
from arena_dagster.names import ModelNameError, NameBook, check_distinct, normalize_name
from arena_dagster.ratings import read_fastchat_battles, read_grades
from arena_dagster.ratings.judgments import read_arena_hard, read_mt_bench_pairs
from conftest import leaderboard, one_line

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


# --- the one normalization --------------------------------------------------------------


def test_names_are_nfc_and_stripped():
    assert NFC != NFD and normalize_name(NFD) == normalize_name(NFC) == NFC
    assert normalize_name("gpt-4 ") == normalize_name("\tgpt-4\u00a0") == "gpt-4"


@pytest.mark.parametrize("hidden", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\x07", "\u00a0"])
def test_an_invisible_character_inside_a_name_is_refused_in_one_line(hidden):
    with pytest.raises(ModelNameError) as info:
        normalize_name(f"gpt{hidden}-4", where="b.jsonl:3")
    line = str(info.value)
    assert "\n" not in line and f"U+{ord(hidden):04X}" in line and "(b.jsonl:3)" in line
    assert "gpt\\" in line  # the name is shown with the character escaped, not as it prints


def test_names_equal_after_case_folding_are_refused_naming_both_and_where():
    with pytest.raises(ModelNameError, match=r"'gpt-4' and 'GPT-4' differ only in case \(a.jsonl:1 and a.jsonl:7\)"):
        check_distinct({"gpt-4": "a.jsonl:1", "llama": "a.jsonl:1", "GPT-4": "a.jsonl:7"})
    check_distinct({"gpt-4": None, "gpt-4o": None})


def test_a_rename_merges_spellings_on_purpose_and_maps_an_invisible_name_away():
    book = NameBook({"GPT-4": "gpt-4", "gpt\u200b-4": "gpt-4"})
    assert [book.add(v, "f:1") for v in ("gpt-4", "GPT-4 ", "gpt\u200b-4", "llama")] == ["gpt-4", "gpt-4", "gpt-4", "llama"]
    book.check()
    assert book.merged == {"gpt-4": ["GPT-4", "gpt-4", "gpt\u200b-4"]}


# --- battle and judgment files ----------------------------------------------------------


def test_every_reader_normalizes_names_and_refuses_case_twins(tmp_path):
    battles = write_jsonl(tmp_path / "b.jsonl", [
        {"model_a": "gpt-4 ", "model_b": NFD, "winner": "model_a"},
        {"model_a": "gpt-4", "model_b": NFC, "winner": "tie"},
        {"model_a": "gpt-4", "model_b": "gpt-4 ", "winner": "tie"},  # one model, once stripped
    ])
    frame, rejected = read_fastchat_battles(battles)
    assert frame.select("model_a", "model_b").rows() == [("gpt-4", NFC), ("gpt-4", NFC)]
    assert rejected == {"same_model": 1}

    write_jsonl(battles, [{"model_a": "gpt-4", "model_b": "x", "winner": "tie"},
                          {"model_a": "x", "model_b": "GPT-4", "winner": "tie"}])
    with pytest.raises(ModelNameError, match=r"'gpt-4' and 'GPT-4' differ only in case \(.*b.jsonl:1 and .*b.jsonl:2\)"):
        read_fastchat_battles(battles)
    grades = write_jsonl(tmp_path / "g.jsonl", [{"question_id": "q", "model": m, "score": 5} for m in ("gpt-4", "GPT-4")])
    with pytest.raises(ModelNameError, match="differ only in case"):
        read_grades(grades)
    judged = write_jsonl(tmp_path / "j.jsonl", [{"question_id": "q", "model": "GPT-4", "baseline": "gpt-4",
                                                 "games": [{"score": "A>B"}, {"score": "B>A"}]}])
    with pytest.raises(ModelNameError, match="differ only in case"):
        read_arena_hard(judged)
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 1, "model_1": "gpt\u200b-4", "model_2": "x",
                                                "g1_winner": "tie", "g2_winner": "tie"}])
    with pytest.raises(ModelNameError, match=r"U\+200B \(ZERO WIDTH SPACE\).*p.jsonl:1"):
        read_mt_bench_pairs(pairs)


@pytest.fixture()
def hostile_battles(tmp_path):
    rows = []
    for q in range(12):
        for a, b in (("gpt-4", "llama"), ("GPT-4", "llama"), ("gpt-4", "GPT-4"), ("llama", "mistral"), ("gpt-4", "mistral")):
            rows.append({"question_id": f"q{q}", "model_a": a, "model_b": b, "winner": ("model_a", "model_b", "tie")[q % 3]})
    return write_jsonl(tmp_path / "battles.jsonl", rows)


def test_leaderboard_refuses_case_twins_in_one_line_and_rename_merges_them(hostile_battles, tmp_path):
    line = one_line(leaderboard("--battles", str(hostile_battles), "--bootstrap", "0"))
    assert "model names 'gpt-4' and 'GPT-4' differ only in case" in line and "battles.jsonl:1 and " in line
    assert "--rename" in line

    rename = tmp_path / "names.csv"
    rename.write_text("\ufefffrom,to\nGPT-4,gpt-4\n", encoding="utf-8")
    proc = leaderboard("--battles", str(hostile_battles), "--bootstrap", "0", "--rename", str(rename), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert sorted(row["model"] for row in report["models"]) == ["gpt-4", "llama", "mistral"]
    assert report["merged"] == {"gpt-4": ["GPT-4", "gpt-4"]}
    assert report["rejected"] == {"same_model": 12}  # gpt-4 against GPT-4: one model against itself once merged


def test_leaderboard_refuses_an_invisible_character_and_rates_nfd_and_padded_names_as_one(tmp_path):
    rows = [{"question_id": f"q{q}", "model_a": a, "model_b": "llama", "winner": ("model_a", "model_b")[q % 2]}
            for q in range(6) for a in (NFC, NFD, "gpt-4", "gpt-4 ")]
    battles = write_jsonl(tmp_path / "b.jsonl", rows)
    proc = leaderboard("--battles", str(battles), "--bootstrap", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {row["model"]: row["battles"] for row in json.loads(proc.stdout)["models"]} == {NFC: 12, "gpt-4": 12, "llama": 24}

    write_jsonl(battles, [*rows, {"model_a": "gpt\u200b-4", "model_b": "llama", "winner": "tie"}])
    line = one_line(leaderboard("--battles", str(battles), "--bootstrap", "0"))
    assert "'gpt\\u200b-4' holds U+200B (ZERO WIDTH SPACE)" in line and f"b.jsonl:{len(rows) + 1}" in line


def test_a_baseline_or_anchor_spelled_in_another_case_is_named(hostile_battles, tmp_path):
    rename = tmp_path / "names.csv"
    rename.write_text("from,to\nGPT-4,gpt-4\n")
    line = one_line(leaderboard("--battles", str(hostile_battles), "--rename", str(rename), "--bootstrap", "0",
                                "--anchor", "LLAMA=1000"))
    assert "'LLAMA' and 'llama' differ only in case (--anchor and " in line


# --- profiles ---------------------------------------------------------------------------


def profile(tmp_path: Path, models: str) -> Path:
    path = tmp_path / "names.yaml"
    path.write_text(f"extends: skills_smoke\nmodels:\n{models}\n", encoding="utf-8")
    return path


def test_a_profile_name_with_surrounding_spaces_is_that_name(tmp_path):
    loaded = load_profile(profile(tmp_path, '  competitors: {"gpt-4 ": {families: [add]}}\n'
                                            '  initial_target: {name: " target-I0"}'))
    assert "gpt-4" in loaded["models"]["competitors"] and "gpt-4 " not in loaded["models"]["competitors"]
    assert loaded["models"]["initial_target"]["name"] == "target-I0"


@pytest.mark.parametrize("competitors, fragment", [
    ('{gpt-4: {families: [add]}, GPT-4: {families: [add]}}', "model names 'gpt-4' and 'GPT-4' differ only in case"),
    ('{gpt-4: {families: [add]}, "gpt-4 ": {families: [add]}}', "model names 'gpt-4' and 'gpt-4 ' are one name once stripped"),
    ('{"gpt\\u200b-4": {families: [add]}}', "holds U+200B (ZERO WIDTH SPACE)"),
])
def test_profile_names_that_print_alike_are_refused_at_load(tmp_path, competitors, fragment):
    with pytest.raises(ConfigError) as info:
        load_profile(profile(tmp_path, f"  competitors: {competitors}"))
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


# --- recorded answers and recorded judgments --------------------------------------------


def test_recorded_answers_match_a_padded_name_and_refuse_case_twins(tmp_path):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "q1", "model": "gpt-4 ", "answer": "four"},
        {"question_id": "q1", "model": "llama", "answer": "five"},
    ])
    backend = RecordedBackend(ModelSpec(name="gpt-4", backend="recorded", path=str(answers), options={"model_id": "gpt-4"}))
    request = ChatRequest(request_id="q1", messages=({"role": "user", "content": "2+2?"},))
    assert [c.text for c in backend.generate([request])] == ["four"]

    write_jsonl(answers, [{"question_id": "q1", "model": "gpt-4", "answer": "four"},
                          {"question_id": "q2", "model": "GPT-4", "answer": "4"}])
    with pytest.raises(ModelNameError, match=r"'gpt-4' and 'GPT-4' differ only in case \(.*answers.jsonl:1 and .*:2\)"):
        RecordedBackend(ModelSpec(name="gpt-4", backend="recorded", path=str(answers), options={"model_id": "gpt-4"}))


def test_a_recorded_judge_refuses_case_twins_in_its_files(tmp_path):
    folder = tmp_path / "judgments"
    folder.mkdir()
    write_jsonl(folder / "m.jsonl", [{"question_id": "q1", "model": m, "baseline": "base",
                                      "games": [{"score": "A>B"}, {"score": "B>A"}]} for m in ("m ", "M")])
    with pytest.raises(ModelNameError, match=r"'m' and 'M' differ only in case.*use one spelling in the judgment files"):
        RecordedJudge(judge_settings({"kind": "recorded", "format": "arena-hard", "paths": [str(folder)]}))
    write_jsonl(folder / "m.jsonl", [{"question_id": "q1", "model": "m ", "baseline": "base",
                                      "games": [{"score": "A>B"}, {"score": "B>A"}]}])
    assert RecordedJudge(judge_settings({"kind": "recorded", "format": "arena-hard", "paths": [str(folder)]})).models() == {"m", "base"}
