"""arena-hard and MT-Bench judgment importers, byte-order marks and non-UTF-8 rows in every
importer, and the leaderboard command on judgment files."""

from __future__ import annotations

import argparse
import codecs
import json

import polars as pl
import pytest

from arena_dagster.ratings import RatingsError, read_fastchat_battles, read_grades, read_rename
from arena_dagster.commands import leaderboard as cli
from arena_dagster.ratings.importers import read_reference
from arena_dagster.ratings.judgments import read_answers, read_arena_hard, read_mt_bench_pairs


def write_jsonl(path, rows, *, prefix: bytes = b""):
    lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for row in rows]
    path.write_bytes(prefix + b"\n".join(lines) + b"\n")
    return path


def v01(question, model, *scores, judge="gpt-4"):
    return {"question_id": question, "model": model, "judge": judge, "games": [{"score": s} for s in scores]}


# --- arena-hard --------------------------------------------------------------------------


def test_arena_hard_v01_games_become_weighted_battles(tmp_path):
    folder = tmp_path / "model_judgment" / "gpt-4"
    folder.mkdir(parents=True)
    write_jsonl(folder / "m1.jsonl", [
        v01("q1", "m1", "A>>B", "A>B"),  # game 1: the baseline (A) wins strongly; game 2: m1 (A) wins
        v01("q2", "m1", "A=B", "B>>A"),  # tie; game 2: the baseline (B) wins strongly
        v01("q3", "m1", "B>A"),  # one game only
        v01("q4", "m1", "A>B", None),  # a game without a verdict
        v01("q5", "m1", "A>B", "maybe"),
        v01("q1", "m1", "B>A", "B>A"),  # the same question again
        v01("q6", "m1", "A>B", "A>B", "A>B"),
        {"question_id": "q7", "model": "m1", "games": "A>B"},
        {"model": "m1", "games": []},
    ])
    write_jsonl(folder / "base.jsonl", [v01("q1", "base", "A=B", "A=B")])
    (folder / "notes.txt").write_text("not a judgment file")
    battles, rejected = read_arena_hard(folder, baseline="base")
    assert battles.select("question_id", "model_a", "model_b", "winner", "weight", "game").rows() == [
        ("q1", "base", "m1", "model_a", 3.0, 1),
        ("q1", "m1", "base", "model_a", 1.0, 2),
        ("q2", "base", "m1", "tie", 1.0, 1),
        ("q2", "m1", "base", "model_b", 3.0, 2),
    ]
    assert battles["judge"].unique().to_list() == ["gpt-4"]
    assert rejected == {"baseline_vs_itself": 1, "duplicate_judgment": 1, "missing_game": 3, "missing_question_id": 1,
                        "too_many_games": 1, "unknown_verdict": 1}
    strong_5, _ = read_arena_hard(folder, baseline="base", strong_weight=5)
    assert strong_5["weight"].to_list() == [5.0, 1.0, 1.0, 5.0]
    with pytest.raises(RatingsError, match=r"base.jsonl:1: arena-hard v0.1 judgments do not name their baseline"):
        read_arena_hard(folder)
    with pytest.raises(RatingsError, match="strong_weight"):
        read_arena_hard(folder, baseline="base", strong_weight=0)


def test_arena_hard_v20_rows_name_their_baseline_and_use_every_label(tmp_path):
    labels = {"A>>B": ("model_a", 3.0), "A<<B": ("model_b", 3.0), "A<B": ("model_b", 1.0), "B<A": ("model_a", 1.0),
              "B=A": ("tie", 1.0), "B<<A": ("model_a", 3.0), "b>a": ("model_b", 1.0)}
    rows = [{"uid": f"u{i}", "category": "hard_prompt", "judge": "gpt-4.1", "model": "m", "baseline": "o3-mini",
             "games": [{"score": label, "judgment": {"answer": "..."}}, {"score": "A=B"}]}
            for i, label in enumerate(labels)]
    rows.append({"uid": "u9", "category": "hard_prompt", "model": "m", "baseline": "o3-mini", "games": [None, None]})
    battles, rejected = read_arena_hard(write_jsonl(tmp_path / "m.jsonl", rows), baseline="ignored-for-v2")
    game_1 = battles.filter(pl.col("game") == 1)
    assert game_1.select("winner", "weight").rows() == list(labels.values())
    assert set(battles["model_a"]) == {"o3-mini", "m"} and set(battles["category"]) == {"hard_prompt"}
    assert rejected == {"missing_game": 1}


def test_mt_bench_pairs_combine_the_two_games_as_fastchat_does(tmp_path):
    def row(q, g1, g2, m1="vicuna", m2="llama", turn=1):
        return {"question_id": q, "model_1": m1, "model_2": m2, "g1_winner": g1, "g2_winner": g2,
                "judge": ["gpt-4", "pair-v2"], "turn": turn}

    path = write_jsonl(tmp_path / "gpt-4_pair.jsonl", [
        row(81, "model_1", "model_1"),
        row(82, "model_2", "model_2"),
        row(83, "tie", "model_1"),  # a tie in game 1: a tie
        row(84, "model_1", "tie"),  # the games disagree: a tie
        row(85, "model_1", "model_2"),
        row(81, "model_1", "model_2", turn=2),  # the second turn is its own battle
        row(86, "error", "model_1"),
        row(87, "model_1", "maybe"),
        row(81, "model_2", "model_2", m1="llama", m2="vicuna"),  # the same pair on the same turn again
        row(88, "model_1", "model_1", m2="vicuna"),
        {"question_id": 89, "model_1": "a", "model_2": "b", "g1_winner": "tie"},
        row(90, "tie", "tie", turn=0),
    ])
    battles, rejected = read_mt_bench_pairs(path)
    assert battles.select("question_id", "model_a", "model_b", "winner", "turn").rows() == [
        ("81", "vicuna", "llama", "model_a", 1),
        ("82", "vicuna", "llama", "model_b", 1),
        ("83", "vicuna", "llama", "tie", 1),
        ("84", "vicuna", "llama", "tie", 1),
        ("85", "vicuna", "llama", "tie", 1),
        ("81", "vicuna", "llama", "tie", 2),
    ]
    assert battles["judge"][0] == "gpt-4/pair-v2"
    assert rejected == {"duplicate_judgment": 1, "invalid_turn": 1, "judge_error": 1, "missing_game": 1,
                        "same_model": 1, "unknown_verdict": 1}


# --- encodings ---------------------------------------------------------------------------


BAD_BYTES = b'{"question_id": "q9", "model": "caf\xe9", "score": 5}'  # Latin-1, not UTF-8


def test_every_reader_skips_a_byte_order_mark_and_rejects_non_utf8_rows(tmp_path):
    grades = [{"question_id": "q1", "model": m, "score": s} for m, s in (("a", 5), ("b", 7))]
    for prefix in (codecs.BOM_UTF8, b""):
        path = write_jsonl(tmp_path / "grades.jsonl", [*grades, BAD_BYTES], prefix=prefix)
        battles, rejected = read_grades(path)
        assert battles.height == 1 and rejected == {"invalid_utf8": 1}
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes(codecs.BOM_UTF16_LE + "\n".join(json.dumps(g) for g in grades).encode("utf-16-le"))
    assert read_grades(utf16)[0].height == 1

    battle = {"model_a": "a", "model_b": "b", "winner": "tie"}
    path = write_jsonl(tmp_path / "battles.jsonl", [battle, b'{"model_a": "\xff", "model_b": "b", "winner": "tie"}'],
                       prefix=codecs.BOM_UTF8)
    assert read_fastchat_battles(path)[1] == {"invalid_utf8": 1}
    array = tmp_path / "battles.json"  # a JSON array with one bad row: only that row goes
    array.write_bytes(codecs.BOM_UTF8 + b'[{"model_a": "a", "model_b": "b", "winner": "tie"},'
                      b' {"model_a": "\xe9", "model_b": "b", "winner": "tie"}]')
    battles, rejected = read_fastchat_battles(array)
    assert battles.height == 1 and rejected == {"invalid_utf8": 1}

    judgments = write_jsonl(tmp_path / "m.jsonl", [v01("q1", "m", "A>B", "B>A"), b'{"question_id": "q2", "model": "\xe9"}'],
                            prefix=codecs.BOM_UTF8)
    assert read_arena_hard(judgments, baseline="base")[1] == {"invalid_utf8": 1}
    pairs = write_jsonl(tmp_path / "pair.jsonl", [{"question_id": 1, "model_1": "a", "model_2": "b", "g1_winner": "tie",
                                                   "g2_winner": "tie"}, b"\xff\xfe{}"], prefix=codecs.BOM_UTF8)
    assert read_mt_bench_pairs(pairs)[1] == {"invalid_utf8": 1}
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "q1", "model_id": "m", "choices": [{"turns": [{"content": "hi"}]}]}, b'{"x": "\xe9"}'],
        prefix=codecs.BOM_UTF8)
    assert read_answers(answers)[1] == {"invalid_utf8": 1}


def test_csv_files_with_a_byte_order_mark_or_bad_bytes(tmp_path):
    names = tmp_path / "names.csv"
    names.write_bytes(codecs.BOM_UTF8 + b"from,to\r\nx-v1,x\r\n")
    assert read_rename(names) == {"x-v1": "x"}  # the BOM does not end up in the header
    names.write_bytes(b"from,to\nx-v1,x\ny-v1,caf\xe9\n")
    with pytest.raises(RatingsError, match=r"names.csv:3: not UTF-8"):
        read_rename(names)
    reference = tmp_path / "reference.csv"
    reference.write_bytes(codecs.BOM_UTF8 + b"model,rating,rating_q025,rating_q975\na,1200,1190,1210\n"
                          b"caf\xe9,1100,1090,1110\nb,n/a,1,2\n,1000,990,1010\na,1,1,1\nc,1000,990,1010\n")
    frame, rejected = read_reference(reference)
    assert frame.rows() == [("a", 1200.0, 1190.0, 1210.0), ("c", 1000.0, 990.0, 1010.0)]
    assert rejected == {"duplicate_model": 1, "invalid_utf8": 1, "missing_model": 1, "rating_not_a_number": 1}


# --- the command -------------------------------------------------------------------------


def parser():
    p = argparse.ArgumentParser(prog="arena-dagster leaderboard")
    p.add_argument("--json", action="store_true")
    cli.add_arguments(p)
    return p


@pytest.fixture()
def arena_hard_files(tmp_path):
    """Three models judged against `base` on 60 questions, their answers, and the baseline's own file."""
    judgments, answers = tmp_path / "judgments", tmp_path / "answers"
    judgments.mkdir()
    answers.mkdir()
    plan = {"good": ("B>A", "A>>B"), "fair": ("A=B", "A=B"), "poor": ("A>B", "B>>A")}
    for model, (g1, g2) in plan.items():
        rows = [v01(f"q{q}", model, g1 if q % 3 else "A=B", g2 if q % 4 else "A>B") for q in range(60)]
        write_jsonl(judgments / f"{model}.jsonl", rows)
    write_jsonl(judgments / "base.jsonl", [v01(f"q{q}", "base", "A=B", "A=B") for q in range(60)])
    for model, text in (("good", "# Plan\n- one\n- two\n**done**"), ("fair", "a plain answer"),
                        ("poor", "short"), ("base", "## Answer\n1. step")):
        write_jsonl(answers / f"{model}.jsonl", [
            {"question_id": f"q{q}", "model_id": model, "choices": [{"turns": [{"content": text * (1 + q % 3)}]}]}
            for q in range(60)])
    return judgments, answers


def test_command_rates_arena_hard_judgments_with_win_rates(arena_hard_files, capsys):
    judgments, _ = arena_hard_files
    args = ["--battles", str(judgments), "--input-format", "arena-hard", "--baseline", "base", "--anchor", "base=1000",
            "--bootstrap", "20"]
    assert cli.run(parser().parse_args([*args, "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in report["models"]] == ["good", "fair", "base", "poor"]
    assert all({"win_rate", "win_rate_low", "win_rate_high", "unbounded"} <= set(row) for row in report["models"])
    assert report["rejected"] == {"baseline_vs_itself": 60}
    assert report["baseline"] == "base" and report["total_weight"] > report["battles"] == 360
    assert cli.run(parser().parse_args(args)) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:8] == ["rank", "model", "rating", "95%", "interval", "win", "rate", "%"]
    assert "rejected rows: baseline_vs_itself 60" in table


def test_command_style_control_from_arena_hard_answers(arena_hard_files, capsys):
    judgments, answers = arena_hard_files
    args = ["--battles", str(judgments), "--input-format", "arena-hard", "--baseline", "base", "--bootstrap", "10",
            "--style-control", "style", "--answers", str(answers)]
    assert cli.run(parser().parse_args([*args, "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"rating_sc", "rank_sc", "win_rate_sc"} <= set(report["models"][0])
    assert [c["feature"] for c in report["style_coefficients"]] == ["length", "header_count", "list_count", "bold_count"]
    assert cli.run(parser().parse_args(args)) == 0
    assert "style coefficients (log-odds per typical style gap): length" in capsys.readouterr().out
    assert cli.run(parser().parse_args(args[:-2] + ["--json"])) == 2  # style control without answers
    assert "--style-control has no style to measure in arena-hard judgments" in capsys.readouterr().err


def test_command_flags_unbounded_ratings(tmp_path, capsys):
    rows = [{"model_a": "champ", "model_b": "x", "winner": "model_a"}] * 5 + [
        {"model_a": "x", "model_b": "y", "winner": w} for w in ("model_a", "model_b", "tie")]
    path = write_jsonl(tmp_path / "battles.jsonl", rows)
    with pytest.warns(Warning):
        assert cli.run(parser().parse_args(["--battles", str(path), "--bootstrap", "10", "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unbounded"] == ["champ"] and "champ" in report["unbounded_reason"]
    assert [row["unbounded"] for row in report["models"]] == [True, False, False]
    with pytest.warns(Warning):
        assert cli.run(parser().parse_args(["--battles", str(path), "--bootstrap", "10"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["1", "champ", f"{report['models'][0]['rating']:.1f}{cli.UNBOUNDED_MARK}"]
    assert any(line.startswith(f"{cli.UNBOUNDED_MARK} unbounded: ") for line in lines)


def test_command_reads_mt_bench_pairs(tmp_path, capsys):
    rows = [{"question_id": q, "model_1": "a", "model_2": "b", "g1_winner": w, "g2_winner": w, "turn": 1}
            for q, w in enumerate(["model_1"] * 6 + ["model_2"] * 3 + ["tie"] * 2)]
    path = write_jsonl(tmp_path / "gpt-4_pair.jsonl", rows)
    args = parser().parse_args(["--battles", str(path), "--input-format", "mt-bench-pair", "--baseline", "b",
                                "--bootstrap", "0", "--json"])
    assert cli.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"][0]["model"] == "a"
    assert report["models"][0]["win_rate"] == pytest.approx(7 / 11)  # 6 wins and 2 ties of 11
