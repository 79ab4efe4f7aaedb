"""`leaderboard --battles`: a flag the input ignores is one line (an error, or a warning on stderr), never silence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import leaderboard, one_line

# arena-hard games per model (game 1 shows the baseline x as A): y often beats x strongly, z loses plainly
GAMES = {"y": [("B>>A", "A>>B"), ("A>B", "B>A"), ("B>A", "A>B")], "z": [("A>B", "B>A"), ("A=B", "A=B"), ("B>A", "A>B")]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One small file of every input format, each rating x, y and z."""
    folder = tmp_path_factory.mktemp("formats")
    pairs = [("x", "y"), ("y", "z"), ("x", "z")]
    return {
        "fastchat": write_jsonl(folder / "fastchat.jsonl", [
            {"question_id": f"q{q}", "model_a": a, "model_b": b, "winner": ("model_a", "model_b", "tie")[q % 3]}
            for q in range(9) for a, b in pairs]),
        "grades": write_jsonl(folder / "grades.jsonl", [
            {"question_id": f"q{q}", "model": m, "score": 1 + (q * 3 + i) % 10} for q in range(9) for i, m in enumerate("xyz")]),
        "arena-hard": write_jsonl(folder / "arena-hard.jsonl", [
            {"question_id": f"q{q}", "model": m, "baseline": "x",
             "games": [{"score": verdict} for verdict in GAMES[m][q % 3]]} for q in range(9) for m in "yz"]),
        "mt-bench-pair": write_jsonl(folder / "mt-bench.jsonl", [
            {"question_id": q, "model_1": a, "model_2": b, "g1_winner": ("model_1", "model_2", "tie")[q % 3],
             "g2_winner": ("model_1", "model_2", "tie")[q % 3]} for q in range(9) for a, b in pairs]),
    }


@pytest.mark.parametrize("input_format, shown", [
    ("fastchat", "FastChat battles"), ("grades", "grades"), ("mt-bench-pair", "MT-Bench pairwise judgments"),
])
def test_strong_weight_with_a_format_without_strong_verdicts_is_refused(files, input_format, shown):
    line = one_line(leaderboard("--battles", str(files[input_format]), "--input-format", input_format,
                                "--strong-weight", "2", "--bootstrap", "0"))
    assert line == f"arena-dagster: --strong-weight does not apply to {shown} (--input-format {input_format} has no " \
                   "strong verdicts; only arena-hard judgments do): drop it\n"
    assert leaderboard("--battles", str(files[input_format]), "--input-format", input_format, "--bootstrap", "0").returncode == 0


def test_strong_weight_applies_to_arena_hard_and_changes_the_ratings(files):
    ratings = []
    for weight in ("1", "5"):
        proc = leaderboard("--battles", str(files["arena-hard"]), "--input-format", "arena-hard", "--strong-weight", weight,
                           "--bootstrap", "0", "--json")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        ratings.append({row["model"]: row["rating"] for row in json.loads(proc.stdout)["models"]})
    assert ratings[0] != ratings[1]


@pytest.mark.parametrize("input_format, flags, fragment", [
    ("fastchat", ["--strong-weight", "-1"], "--strong-weight -1 is out of range"),
    ("arena-hard", ["--strong-weight", "0"], "--strong-weight 0 is out of range"),
    ("arena-hard", ["--strong-weight", "nan"], "--strong-weight nan is out of range"),
    ("fastchat", ["--bootstrap", "-1"], "--bootstrap -1 is out of range"),
    ("fastchat", ["--answers", "a.jsonl"], "--answers does not apply without --style-control"),
    ("grades", ["--style-control", "style"], "--style-control has no style to measure in grades"),
    ("mt-bench-pair", ["--style-control", "length"], "in MT-Bench pairwise judgments (only FastChat"),
    ("fastchat", ["--plot", "out.png"], "--plot does not apply to --battles"),
])
def test_out_of_range_or_ignored_flags_are_one_line(files, tmp_path, input_format, flags, fragment):
    flags = [str(tmp_path / flag) if flag.endswith((".jsonl", ".png")) else flag for flag in flags]
    line = one_line(leaderboard("--battles", str(files[input_format]), "--input-format", input_format, *flags))
    assert fragment in line
    assert not list(tmp_path.iterdir())  # nothing written (no plot)


@pytest.mark.parametrize("flags, warning", [
    (["--bootstrap", "0", "--seed", "7"], "--seed has no effect with --bootstrap 0"),
    (["--bootstrap", "0", "--bootstrap-unit", "prompt"], "--bootstrap-unit has no effect with --bootstrap 0"),
    (["--bootstrap", "0", "--home", "."], "--home has no effect with --battles"),
])
def test_flags_with_nothing_to_do_warn_in_one_line_and_rate(files, flags, warning):
    proc = leaderboard("--battles", str(files["grades"]), "--input-format", "grades", "--json", *flags)
    assert proc.returncode == 0 and [row["model"] for row in json.loads(proc.stdout)["models"]]
    assert proc.stderr == f"arena-dagster: warning: {warning} (" + proc.stderr.split(" (", 1)[1]
    assert proc.stderr.count("\n") == 1 and warning in proc.stderr


def test_no_warning_when_no_flag_is_ignored(files):
    proc = leaderboard("--battles", str(files["fastchat"]), "--bootstrap", "5", "--seed", "1", "--bootstrap-unit", "prompt")
    assert proc.returncode == 0 and proc.stderr == ""


def test_file_options_without_battles_are_refused_not_ignored(tmp_path):
    line = one_line(leaderboard("--home", str(tmp_path), "--strong-weight", "5", "--anchor", "x=1000"))
    assert line.startswith("arena-dagster: --strong-weight, --anchor apply only to a leaderboard of --battles files")
    assert not list(tmp_path.iterdir())
