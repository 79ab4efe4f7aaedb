"""`arena-dagster generate` and the recorded backend (no model needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from arena_dagster.commands import generate as cli
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


# ---------------------------------------------------------------- user errors: one line, exit 2

def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line_error(capsys, code: int) -> str:
    """The error line: the last on stderr, the only one starting `arena-dagster: ` (progress lines come before)."""
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("arena-dagster: ")]
    assert code == 2 and errors == lines[-1:] and "Traceback" not in err, err
    return lines[-1]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(4)])


def test_unset_api_key_variable_is_one_line_and_touches_nothing(tmp_path: Path, prompts: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ARENA_NO_SUCH_KEY", raising=False)
    code = run_cli("--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model-name", "m",
                   "--api-key-env", "ARENA_NO_SUCH_KEY", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                   "--home", str(tmp_path / "h"))
    err = one_line_error(capsys, code)
    assert "ARENA_NO_SUCH_KEY (api_key_env) is not set" in err and "export ARENA_NO_SUCH_KEY=" in err
    assert not (tmp_path / "h").exists()


def test_closed_port_with_credentials_in_the_url_is_one_redacted_line(tmp_path: Path, prompts: Path, capsys) -> None:
    url = f"http://admin:pa55-secret@127.0.0.1:{closed_port()}/v1"
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  srv: {{backend: openai, model: m, base_url: '{url}', max_retries: 1, "
                      "backoff_initial_s: 0.01, backoff_max_s: 0.02}\n")
    code = run_cli("--config", str(config), "--model", "srv", "--prompts", str(prompts),
                   "--out", str(tmp_path / "o.jsonl"), "--home", str(tmp_path / "h"))
    err = one_line_error(capsys, code)
    assert "APIConnectionError" in err and "http://***@127.0.0.1" in err and "check that the server is up" in err
    assert "pa55-secret" not in err and "admin" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_corrupted_cache_file_is_one_line_naming_it_and_the_fix(tmp_path: Path, answers: Path, prompts: Path, capsys) -> None:
    cache = tmp_path / "h" / "cache" / "completions.sqlite"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x00garbage" * 4096)
    code = run_cli("--backend", "recorded", "--model-name", str(answers), "--prompts", str(prompts),
                   "--out", str(tmp_path / "o.jsonl"), "--home", str(tmp_path / "h"))
    err = one_line_error(capsys, code)
    assert f"damaged or not an SQLite file ({cache})" in err and f"mv {cache} {cache}.broken" in err


def test_a_full_disk_while_caching_is_one_line_and_keeps_what_was_committed(
    tmp_path: Path, answers: Path, prompts: Path, capsys, monkeypatch
) -> None:
    import sqlite3

    home = tmp_path / "h"
    common = ["--backend", "recorded", "--model-name", str(answers), "--out", str(tmp_path / "o.jsonl"), "--home", str(home)]
    first = write_jsonl(tmp_path / "first.jsonl", [{"id": "p0", "prompt": "q0"}])
    assert run_cli(*common, "--prompts", str(first), "--quiet") == 0
    real = sqlite3.connect

    def full(database, *args, **kwargs):  # SQLite itself reports SQLITE_FULL past this many pages
        conn = real(database, *args, **kwargs)
        conn.execute("PRAGMA max_page_count = 4")
        return conn

    monkeypatch.setattr(sqlite3, "connect", full)
    big = write_jsonl(tmp_path / "big.jsonl", [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(5)])
    long_answers = write_jsonl(tmp_path / "long.jsonl", [{"id": f"p{i}", "completion": "z" * 5000} for i in range(5)])
    code = run_cli("--backend", "recorded", "--model-name", str(long_answers), "--prompts", str(big),
                   "--out", str(tmp_path / "o2.jsonl"), "--home", str(home))
    err = one_line_error(capsys, code)
    assert "disk full while writing the completion cache" in err and "free space" in err
    monkeypatch.setattr(sqlite3, "connect", real)
    from arena_dagster.backends.cache import CompletionCache

    assert len(CompletionCache(home / "cache" / "completions.sqlite")) == 1  # the earlier answer, nothing half-written
    assert not (tmp_path / "o2.jsonl").exists()


def test_non_utf8_prompt_rows_are_one_line_and_a_bom_is_read(tmp_path: Path, answers: Path, capsys) -> None:
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id": "p1", "prompt": "ok"}\n{"id": "p2", "prompt": "caf\xe9"}\n')
    common = ["--backend", "recorded", "--model-name", str(answers), "--out", str(tmp_path / "o.jsonl"),
              "--home", str(tmp_path / "h")]
    err = one_line_error(capsys, run_cli(*common, "--prompts", str(bad)))
    assert f"{bad}:2: not UTF-8 text (byte 0xe9 at column 28)" in err and "iconv" in err
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": "p1", "prompt": "x"}\n')
    assert run_cli(*common, "--prompts", str(bom), "--quiet") == 0
    assert [r["completion"] for r in read_jsonl(tmp_path / "o.jsonl")] == ["answer 1"]


def test_unwritable_output_is_one_line_and_the_rerun_is_served_from_the_cache(
    tmp_path: Path, answers: Path, prompts: Path, capsys
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    common = ["--backend", "recorded", "--model-name", str(answers), "--prompts", str(prompts), "--home", str(tmp_path / "h")]
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "x"}) + "\n" for i in range(4)))
    err = one_line_error(capsys, run_cli(*common, "--out", str(blocker / "o.jsonl")))
    assert f"cannot write the answers (File exists: {blocker})" in err and "choose a writable --out" in err
    assert run_cli(*common, "--out", str(tmp_path / "o.jsonl"), "--quiet") == 0
    assert all(r["cached"] for r in read_jsonl(tmp_path / "o.jsonl"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("models: [unclosed\n", "not valid YAML"), ("- just\n- a list\n", "must be a YAML mapping"), (None, "not found")],
    ids=["broken-yaml", "not-a-mapping", "missing"],
)
def test_bad_model_config_files_are_one_line(tmp_path: Path, prompts: Path, capsys, text, message) -> None:
    config = tmp_path / "models.yaml"
    if text is not None:
        config.write_text(text)
    code = run_cli("--config", str(config), "--model", "x", "--prompts", str(prompts),
                   "--out", str(tmp_path / "o.jsonl"), "--home", str(tmp_path / "h"))
    assert message in one_line_error(capsys, code)
