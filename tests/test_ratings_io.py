"""Importers (FastChat battles, single-answer grades, renames) and the leaderboard command."""

from __future__ import annotations

import argparse
import json

import polars as pl
import pytest

from arena_dagster.ratings import (
    InputFileError,
    RatingsError,
    apply_rename,
    leaderboard,
    read_fastchat_battles,
    read_grades,
)
from arena_dagster.commands import leaderboard as cli


def write_jsonl(path, rows):
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


def test_fastchat_battles_from_json_array_and_json_lines(tmp_path):
    array = tmp_path / "clean_battle.json"
    array.write_text(json.dumps([
        {"model_a": "x", "model_b": "y", "winner": "model_a", "question_id": "q1", "judge": "h", "turn": 1},
        {"model_a": "y", "model_b": "x", "winner": "tie (bothbad)", "tstamp": 1.5},
        {"model_a": "x", "model_b": "x", "winner": "tie"},
        {"model_a": "x", "model_b": None, "winner": "tie"},
        {"model_a": "x", "model_b": "y", "winner": "model_c"},
        ["not", "a", "record"],
    ]))
    lines = write_jsonl(tmp_path / "more.jsonl", [
        {"model_a": "z", "model_b": "y", "winner": "model_b", "question_id": 7},
        "{broken json",
        {"model_a": "z", "model_b": 3, "winner": "tie"},
        {"model_a": "z", "model_b": "x"},
    ])
    frame, rejected = read_fastchat_battles([array, lines])
    assert frame.to_dicts() == [
        {"question_id": "q1", "model_a": "x", "model_b": "y", "winner": "model_a"},
        {"question_id": None, "model_a": "y", "model_b": "x", "winner": "tie (bothbad)"},
        {"question_id": "7", "model_a": "z", "model_b": "y", "winner": "model_b"},
    ]
    assert rejected == {"invalid_json": 1, "invalid_winner": 2, "missing_model": 2, "not_an_object": 1, "same_model": 1}
    with pytest.raises(InputFileError, match="no such file"):
        read_fastchat_battles(tmp_path / "absent.json")


def test_grades_become_pairwise_battles_and_bad_scores_are_counted(tmp_path):
    rows = [
        {"question_id": "q1", "model": "a", "score": 9.5},
        {"question_id": "q1", "model": "b", "score": 9},
        {"question_id": "q1", "model": "c", "score": 9.0},
        {"question_id": "q1", "model": "d", "score": None},
        {"question_id": "q1", "model": "e", "score": "7/10"},
        {"question_id": "q1", "model": "f", "score": "seven"},
        {"question_id": "q1", "model": "g", "score": -1.0},
        {"question_id": "q1", "model": "h", "score": 11},
        {"question_id": "q1", "model": "i", "score": True},
        {"question_id": "q1", "model": "j"},
        {"question_id": "q1", "model": "b", "score": 1},
        {"question_id": "q2", "model": "a", "score": 1},
        {"question_id": "q2", "model": "c", "score": 10},
        {"question_id": "q3", "model": "a", "score": 5},
        {"model": "a", "score": 5},
        {"question_id": "q4", "score": 5},
        "not json",
    ]
    frame, rejected = read_grades(write_jsonl(tmp_path / "grades.jsonl", rows))
    assert frame.select("question_id", "model_a", "model_b", "winner").rows() == [
        ("q1", "a", "b", "model_a"),  # 9.5 beats 9
        ("q1", "a", "c", "model_a"),
        ("q1", "b", "c", "tie"),  # 9 (int) ties 9.0 (float)
        ("q2", "a", "c", "model_b"),
    ]
    assert frame.columns == ["question_id", "model_a", "model_b", "winner", "score_a", "score_b"]
    assert rejected == {
        "duplicate_grade": 1,
        "grade_without_opponent": 1,
        "invalid_json": 1,
        "missing_model": 1,
        "missing_question_id": 1,
        "score_missing": 2,
        "score_not_a_number": 3,
        "score_out_of_range": 2,
    }


# (value written in the file, the number it is): one rule for the judge parser and the importers.
NUMERIC_STRINGS = [("10", 10.0), (" 7 ", 7.0), ("10.0", 10.0), ("+3", 3.0), (10.0, 10.0), (7, 7.0),
                   ("7/10", None), ("seven", None), ("1e1", None), ("NaN", None), ("", None), (True, None)]


@pytest.mark.parametrize("value, number", NUMERIC_STRINGS)
def test_a_numeric_string_is_the_same_number_for_the_judge_and_the_grade_importer(tmp_path, value, number):
    from arena_dagster.judging.llm_judge import JudgeParseError, load_template, parse_judgment
    from arena_dagster.ratings.numbers import read_number

    assert read_number(value) == number
    grades, rejected = read_grades(write_jsonl(tmp_path / "g.jsonl", [
        {"question_id": "q", "model": "x", "score": value}, {"question_id": "q", "model": "y", "score": 5}]))
    judged = json.dumps({"explanation": "x", "score_a": value, "score_b": 5})
    if number is None:
        assert grades.height == 0 and rejected["score_not_a_number"] == 1
        with pytest.raises(JudgeParseError, match="score_a must be an integer"):
            parse_judgment(judged, load_template("pairwise_v1"))
    else:
        assert grades["score_a"].to_list() == [number] and "score_not_a_number" not in rejected
        assert parse_judgment(judged, load_template("pairwise_v1")).score_a == number


def test_rename_maps_names_and_refuses_to_merge_models(tmp_path):
    mapping = tmp_path / "names.csv"
    mapping.write_text("judgment_model,arena_model\nx-v1,x\ny-v1,y\n")
    frame = pl.DataFrame({"model_a": ["x-v1", "z"], "model_b": ["y-v1", "x-v1"], "winner": ["tie", "model_a"]})
    renamed = apply_rename(frame, mapping)
    assert renamed.rows() == [("x", "y", "tie"), ("z", "x", "model_a")]

    merging = tmp_path / "merging.csv"
    merging.write_text("from,to\nx-v1,z\n")
    with pytest.raises(RatingsError, match=r"merge different models into one: \{'z': \['x-v1', 'z'\]\}"):
        apply_rename(frame, merging)
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("from,to\nx-v1,x\nx-v1,xx\n")
    with pytest.raises(RatingsError, match=r"renamed more than once: \['x-v1'\]"):
        apply_rename(frame, repeated)
    wide = tmp_path / "wide.csv"
    wide.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(RatingsError, match="exactly two columns"):
        apply_rename(frame, wide)
    empty = tmp_path / "empty.csv"
    empty.write_text("from,to\nx-v1,\n")
    with pytest.raises(RatingsError, match=r"empty.csv:2: empty model name"):
        apply_rename(frame, empty)


# --- the command -------------------------------------------------------------------------


def parser():
    """The lead's `leaderboard` subparser owns --json and --home; the ratings module adds the rest."""
    p = argparse.ArgumentParser(prog="arena-dagster leaderboard")
    p.add_argument("--json", action="store_true")
    p.add_argument("--home")
    cli.add_arguments(p)
    return p


@pytest.fixture()
def arena_files(tmp_path):
    rows = []
    for q in range(40):
        for model, score in (("strong-v1", 9 if q % 4 else 5), ("mid-v1", 6 + q % 3), ("weak-v1", 3 + q % 5)):
            rows.append({"question_id": f"q{q}", "model": model, "score": score})
    rows.append({"question_id": "q0", "model": "mid-v1", "score": None})  # duplicate key, but rejected first
    grades = write_jsonl(tmp_path / "grades.jsonl", rows)
    names = tmp_path / "names.csv"
    names.write_text("judgment_model,arena_model\nstrong-v1,strong\nmid-v1,mid\nweak-v1,weak\n")
    reference = tmp_path / "reference.csv"
    reference.write_text("model,rating,rating_q025,rating_q975\nstrong,1200,1190,1210\nmid,1100,1090,1110\nweak,1000,990,1010\n")
    return grades, names, reference


def test_command_prints_the_json_report(arena_files, capsys):
    grades, names, reference = arena_files
    args = parser().parse_args([
        "--battles", str(grades), "--input-format", "grades", "--rename", str(names), "--anchor", "weak=1000",
        "--bootstrap", "40", "--bootstrap-unit", "prompt", "--seed", "3", "--reference", str(reference), "--json",
    ])
    assert cli.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["models", "battles", "total_weight", "unbounded", "unbounded_reason", "anchor", "baseline",
                            "bootstrap", "bootstrap_unit", "seed", "style_control", "ci", "alignment", "rejected"]
    assert [row["model"] for row in report["models"]] == ["strong", "mid", "weak"]
    assert set(report["models"][0]) == {"model", "rating", "ci_low", "ci_high", "rank", "battles", "unbounded"}
    assert report["unbounded"] == [] and report["anchor"] == "weak=1000"
    assert report["models"][2]["rating"] == pytest.approx(1000)
    assert report["alignment"]["n_common"] == 3 and report["alignment"]["spearman"] == pytest.approx(1.0)
    assert report["rejected"] == {"score_missing": 1}

    battles, _ = read_grades(grades)
    expected = leaderboard(apply_rename(battles, names), anchor="weak=1000", bootstrap=40, bootstrap_unit="prompt", seed=3)
    assert report["models"] == expected.to_dicts()


def test_command_prints_a_table_without_json(arena_files, capsys):
    grades, _, _ = arena_files
    assert cli.run(parser().parse_args(["--battles", str(grades), "--input-format", "grades", "--bootstrap", "10"])) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["rank", "model", "rating", "95%", "interval", "battles"]  # no baseline
    assert out.splitlines()[1].split()[:2] == ["1", "strong-v1"]
    assert "rejected rows: score_missing 1" in out


def test_command_reports_bad_input_without_a_traceback(arena_files, capsys):
    grades, _, _ = arena_files
    args = parser().parse_args(["--battles", str(grades), "--input-format", "grades", "--anchor", "nobody=1000"])
    assert cli.run(args) == 2
    assert "arena-dagster: anchor model 'nobody' has no battles" in capsys.readouterr().err
    # grade files read as FastChat battles have no model_a/model_b: every row is rejected
    assert cli.run(parser().parse_args(["--battles", str(grades)])) == 2
    assert "no usable battles in 1 fastchat file(s); rejected rows: {'missing_model': 121}" in capsys.readouterr().err
