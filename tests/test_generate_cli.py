"""`arena-dagster generate` and the recorded backend (no model needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from arena_dagster.backends import cli
from arena_dagster.backends.base import ChatRequest, ModelSpec, user_messages
from arena_dagster.backends.recorded_backend import (
    MissingRecordedAnswerError,
    RecordedBackend,
    RecordedDataError,
)
from arena_dagster.backends.registry import make_backend

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(*argv: str) -> int:
    parser = cli.add_arguments(argparse.ArgumentParser())
    return cli.run(parser.parse_args(list(argv)))


@pytest.fixture
def answers(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "answers.jsonl",
        [{"id": f"p{i}", "completion": f"answer {i}", "tokens_out": i} for i in range(5)]
        + [{"prompt": "by text", "response": "matched by prompt"}],
    )


def test_generate_one_off_then_cached(tmp_path: Path, answers: Path) -> None:
    prompts = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "p3", "prompt": "x"}, {"id": "p1", "messages": [{"role": "user", "content": "y"}]},
         {"id": "zz", "prompt": "by text"}],
    )
    out = tmp_path / "out" / "answers.jsonl"
    common = ["--prompts", str(prompts), "--out", str(out), "--home", str(tmp_path / "home"), "--quiet"]
    assert run_cli("--backend", "recorded", "--model-name", str(answers), *common) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["p3", "p1", "zz"]
    assert [r["completion"] for r in rows] == ["answer 3", "answer 1", "matched by prompt"]
    assert rows[0]["model"] == str(answers) and rows[0]["tokens_out"] == 3
    assert not any(r["cached"] for r in rows)
    assert (tmp_path / "home" / "cache" / "completions.sqlite").is_file()
    assert run_cli("--backend", "recorded", "--model-name", str(answers), *common) == 0
    assert all(r["cached"] for r in read_jsonl(out))
    assert not list(out.parent.glob(".*tmp"))


def test_generate_from_config_with_budget(tmp_path: Path, answers: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  replay:\n    backend: recorded\n    path: {answers}\n    sampling: {{max_tokens: 9}}\n")
    prompts = write_jsonl(tmp_path / "in.jsonl", [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(5)])
    out = tmp_path / "out.jsonl"
    args = ["--config", str(config), "--model", "replay", "--prompts", str(prompts), "--out", str(out),
            "--home", str(tmp_path / "h"), "--quiet", "--batch-size", "2"]
    assert run_cli(*args, "--max-requests", "3") == cli.EXIT_BUDGET
    assert [r["id"] for r in read_jsonl(out)] == ["p0", "p1", "p2"]
    assert run_cli(*args) == 0
    rows = read_jsonl(out)
    assert [r["cached"] for r in rows] == [True, True, True, False, False]
    assert rows[0]["model"] == "replay"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "no id"}], "in.jsonl:1: missing `id`"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "in.jsonl:2: duplicate id 'a'"),
        ([{"id": "a"}], "needs a non-empty `prompt`"),
        ([{"id": "a", "messages": [{"role": "user"}]}], "`messages` must be"),
    ],
)
def test_bad_prompt_rows_fail_with_line_and_write_nothing(tmp_path: Path, answers: Path, rows, message, capsys) -> None:
    prompts = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    code = run_cli("--backend", "recorded", "--model-name", str(answers), "--prompts", str(prompts),
                   "--out", str(out), "--home", str(tmp_path / "h"))
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_config_errors_are_reported(tmp_path: Path, answers: Path, capsys) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  a: {backend: recorded, path: x}\n")
    prompts = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    common = ["--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--home", str(tmp_path / "h")]
    assert run_cli("--config", str(config), "--model", "b", *common) == 2
    assert "no model 'b' (known: a)" in capsys.readouterr().err
    assert run_cli("--backend", "openai", "--model-name", "m", *common) == 2
    assert "base_url" in capsys.readouterr().err


def test_recorded_missing_answers_list_first_ids(answers: Path) -> None:
    backend = RecordedBackend(ModelSpec(name="r", backend="recorded", path=str(answers)))
    requests = [ChatRequest(f"nope{i}", user_messages(f"unknown {i}")) for i in range(12)]
    with pytest.raises(MissingRecordedAnswerError, match=r"12 of 12 .*'nope0', 'nope1'") as info:
        backend.generate(requests)
    assert "'nope10'" not in str(info.value)


def test_recorded_rejects_duplicate_and_broken_rows(tmp_path: Path) -> None:
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "1"}, {"id": "a", "text": "2"}])
    with pytest.raises(RecordedDataError, match="dup.jsonl:2: duplicate"):
        RecordedBackend(ModelSpec(name="r", backend="recorded", path=str(dup)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "text": "1"}\n{oops\n')
    with pytest.raises(RecordedDataError, match="broken.jsonl:2: not JSON"):
        RecordedBackend(ModelSpec(name="r", backend="recorded", path=str(broken)))


def test_recorded_replays_fastchat_answers_from_shared_data() -> None:
    path = SHARED_DATA / "arena-bench-v1" / "reference_answer_gpt-4.jsonl"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:3]]
    backend = make_backend(ModelSpec(name="gpt-4", backend="recorded", path=str(path), options={"model_id": "gpt-4"}))
    out = backend.generate([ChatRequest(r["question_id"], user_messages("ignored")) for r in rows])
    assert [c.text for c in out] == [r["choices"][0]["turns"][0] for r in rows]
