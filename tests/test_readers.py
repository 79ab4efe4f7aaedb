"""The package's one reader (`arena_dagster/record_files.py`) and every caller of it: a BOM, CRLF
and a last line without a newline read like clean UTF-8; bytes that are not UTF-8, NULs and lone
surrogates are quarantined with a count and a reason; a file that cannot be read is one line."""

from __future__ import annotations

import codecs
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams
from arena_dagster.commands import curate as curate_cli
from arena_dagster.commands.generate import PromptFileError, read_prompts
from arena_dagster.backends.recorded_backend import RecordedBackend, RecordedDataError
from arena_dagster.config import ConfigError, profile_chain
from arena_dagster.prompts.ingest import against_texts, ingest
from arena_dagster.prompts.recorded import read_questions
from arena_dagster.ratings.importers import read_fastchat_battles, read_reference
from arena_dagster.ratings.records import read_records
from arena_dagster.record_files import (
    Quarantined,
    RecordFileError,
    iter_records,
    read_text,
    reason_counts,
    strict_records,
)

ROWS = [
    {"id": "q1", "prompt": "Explain how photosynthesis works in plants.", "model_a": "a", "model_b": "b", "winner": "tie"},
    {"id": "q2", "prompt": "Write a haiku about the autumn rain, \"quoted\".", "model_a": "b", "model_b": "c",
     "winner": "model_a"},
]
VARIANTS = ("clean", "bom", "crlf", "no_final_newline", "bom_crlf_no_final_newline")


def _text(kind: str) -> str:
    if kind == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS)
    if kind == "json":
        return json.dumps(ROWS, indent=2) + "\n"
    if kind == "object":
        return json.dumps(ROWS[0], indent=2) + "\n"
    header = list(ROWS[0])
    quote = lambda cell: '"' + cell.replace('"', '""') + '"' if '"' in cell or "," in cell else cell  # noqa: E731
    return "".join(",".join(quote(str(r[c])) for c in header) + "\n" for r in [dict(zip(header, header)), *ROWS])


def write_variant(path: Path, text: str, variant: str) -> Path:
    if "crlf" in variant:
        text = text.replace("\n", "\r\n")
    if "no_final_newline" in variant:
        text = text.rstrip("\r\n")
    path.write_bytes((codecs.BOM_UTF8 if "bom" in variant else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize("kind,suffix", [("jsonl", ".jsonl"), ("json", ".json"), ("object", ".json"), ("csv", ".csv")])
def test_every_format_reads_the_same_rows_clean_with_bom_crlf_or_no_final_newline(tmp_path, kind, suffix):
    results = []
    for variant in VARIANTS:
        quarantine: list[Quarantined] = []
        rows = list(iter_records(write_variant(tmp_path / f"{variant}{suffix}", _text(kind), variant), quarantine))
        assert quarantine == [], variant
        results.append([row for _, row in rows])
    expected = [ROWS[0]] if kind == "object" else ROWS
    if kind == "csv":
        expected = [{k: str(v) for k, v in row.items()} for row in ROWS]
    assert all(result == expected for result in results)


def test_a_utf16_file_and_a_parquet_file_read_the_same_rows(tmp_path):
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes(codecs.BOM_UTF16_LE + _text("jsonl").encode("utf-16-le"))
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    for path in (utf16, parquet):
        quarantine: list[Quarantined] = []
        assert [row for _, row in iter_records(path, quarantine)] == ROWS and quarantine == []


HOSTILE_JSONL = b"".join([
    b'{"prompt": "fine one"}\n',
    b'{"prompt": "caf\xe9"}\n',                      # Latin-1
    b'{"prompt": "raw \x00 nul"}\n',                 # a raw NUL byte
    b'{"prompt": "escaped \\u0000 nul"}\n',          # a NUL escape
    b'{"prompt": "half \\ud800 a pair"}\n',          # a lone surrogate escape
    b'{"prompt": "unterminated\n',
    b'["not", "an", "object"]\n',
    b'{"prompt": "pair \\ud83d\\ude00 is fine"}',     # a whole surrogate pair, no final newline
])


def test_bad_text_is_quarantined_with_its_line_and_reason(tmp_path):
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + HOSTILE_JSONL.replace(b"\n", b"\r\n"))
    quarantine: list[Quarantined] = []
    rows = list(iter_records(path, quarantine))
    assert rows == [(1, {"prompt": "fine one"}), (8, {"prompt": "pair \U0001F600 is fine"})]
    assert [(q.number, q.reason) for q in quarantine] == [
        (2, "invalid_utf8"), (3, "nul_character"), (4, "nul_character"), (5, "lone_surrogate"),
        (6, "invalid_json"), (7, "not_an_object")]
    for q in quarantine:  # what is kept for a person can be stored and printed
        q.raw.encode("utf-8")
        assert "\x00" not in q.raw and q.detail
    assert "byte 0xe9" in quarantine[0].detail and "U+D800" in quarantine[3].detail


def test_a_json_array_csv_and_parquet_quarantine_the_same_way(tmp_path):
    array = tmp_path / "a.json"
    array.write_bytes(b'[{"p": "ok"}, {"p": "caf\xe9"}, {"p": "\\ud800"}, {"p": "\\u0000"}, 3, {"p": "ok2"}]')
    quarantine: list[Quarantined] = []
    assert [n for n, _ in iter_records(array, quarantine)] == [1, 6]
    assert [(q.number, q.reason) for q in quarantine] == [
        (2, "invalid_utf8"), (3, "lone_surrogate"), (4, "nul_character"), (5, "not_an_object")]
    table = tmp_path / "t.csv"
    table.write_bytes(b'p,q\r\nok,1\r\ncaf\xe9,2\r\nnul\x00,3\r\n"two\r\nlines",4\r\na,b,c\r\n')
    quarantine = []
    assert [(n, r) for n, r in iter_records(table, quarantine)] == [(2, {"p": "ok", "q": "1"}),
                                                                    (5, {"p": "two\r\nlines", "q": "4"})]
    assert [(q.number, q.reason) for q in quarantine] == [(3, "invalid_utf8"), (4, "nul_character"), (7, "invalid_csv")]
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"p": ["ok", "nul\x00"]}), parquet)
    quarantine = []
    assert [n for n, _ in iter_records(parquet, quarantine)] == [1] and reason_counts(quarantine) == {"nul_character": 1}


@pytest.mark.parametrize("name,content", [("missing.jsonl", None), ("folder", "dir"), ("bad.parquet", b"not parquet"),
                                          ("empty.csv", b""), ("object.json", b'{"a": 1} garbage {')])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, name, content):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    try:
        list(iter_records(path, []))
    except RecordFileError as error:
        assert name in str(error) and "\n" not in str(error)
    else:  # a JSON document that is not one object is read as JSON lines: its bad line is quarantined
        assert name == "object.json"


def test_strict_readers_refuse_the_first_bad_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(b'{"id": "a", "answer": "x"}\n{"id": "b", "answer": "\\ud800"}\n')
    with pytest.raises(RecordFileError, match=r"U\+D800.*answers.jsonl:2"):
        list(strict_records(path))
    with pytest.raises(RecordedDataError, match=r"answers.jsonl:2: a lone UTF-16 surrogate"):
        RecordedBackend(ModelSpec(name="r", backend="recorded", path=str(path)))
    path.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y\\u0000"}\n')
    with pytest.raises(PromptFileError, match=r"answers.jsonl:2: a NUL character"):
        read_prompts(path, SamplingParams())


def test_every_caller_reads_a_bom_crlf_file_like_a_clean_one(tmp_path):
    """Prompts, test sets, question files, battles, recorded answers, generate's prompt files, CSV tables."""
    def readings(variant: str) -> list:
        folder = tmp_path / variant
        folder.mkdir()
        jsonl = write_variant(folder / "rows.jsonl", _text("jsonl"), variant)
        questions = write_variant(folder / "questions.jsonl", "".join(
            json.dumps({"question_id": r["id"], "turns": [r["prompt"]]}) + "\n" for r in ROWS), variant)
        reference = write_variant(folder / "board.csv", "model,rating\na,1000\nb,1010\n", variant)
        backend = RecordedBackend(ModelSpec(name="r", backend="recorded", path=str(jsonl), options={"answer_field": "prompt"}))
        return [
            [(r["prompt"], r["source_line"]) for r in ingest([jsonl]).rows],
            against_texts([questions])[0],
            read_questions(questions),
            read_fastchat_battles(jsonl)[0].rows(),
            list(read_records(jsonl, Counter())),
            backend.generate([ChatRequest("q2", ({"role": "user", "content": "?"},))])[0].text,
            [r.messages for r in read_prompts(jsonl, SamplingParams())],
            read_reference(reference)[0].rows(),
        ]

    clean = readings("clean")
    assert clean[0] == [(ROWS[0]["prompt"], 1), (ROWS[1]["prompt"], 2)] and len(clean[1]) == 2
    for variant in VARIANTS[1:]:
        assert readings(variant) == clean, variant


def test_profiles_read_a_bom_and_crlf_and_refuse_nul_and_surrogates_in_one_line(tmp_path):
    text = "extends: skills\nname: mine\nprompts:\n  seed: 3\n"
    chains = [profile_chain(write_variant(tmp_path / f"{v}.yaml", text, v))[-1][1] for v in VARIANTS]
    assert all(chain == {"name": "mine", "prompts": {"seed": 3}} for chain in chains)
    for body, found in ((b'name: "a\\ud800"\n', "lone surrogate"), (b"name: a\x00b\n", "nul character"),
                        (b"name: caf\xe9\n", "not UTF-8")):
        path = tmp_path / "bad.yaml"
        path.write_bytes(body)
        with pytest.raises(ConfigError, match=found) as info:
            profile_chain(path)
        assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)
    assert read_text(write_variant(tmp_path / "t.txt", "a\nb\n", "bom_crlf_no_final_newline")) == "a\nb"


# ---------------------------------------------------------------- the curate command

OFF = ["--set", "language=null", "--set", "decontam_embedding_threshold=null", "--json"]
FIRST, SECOND = "Explain how photosynthesis works in plants.", "Write a haiku about the autumn rain."


def _jsonl(path: Path, prompts: list[str], *, bom: bool = False) -> Path:
    body = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts).encode()
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + body)
    return path


def test_curate_keeps_line_one_of_a_bom_file_and_decontaminates_against_a_bom_test_set(tmp_path, capsys):
    pool = _jsonl(tmp_path / "pool.jsonl", [FIRST, SECOND], bom=True)
    assert curate_cli.main([str(pool), "--out", str(tmp_path / "kept.jsonl"), *OFF]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept"] == 2 and report["quarantined"] == 0
    # The contaminated prompt is the test set's first item, in a file that starts with a BOM.
    tests = _jsonl(tmp_path / "test.jsonl", [FIRST], bom=True)
    clean_pool = _jsonl(tmp_path / "clean.jsonl", [FIRST, SECOND])
    assert curate_cli.main([str(clean_pool), "--against", str(tests), "--out", str(tmp_path / "k2.jsonl"), *OFF]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["against"] == 1 and report["against_quarantined"] == 0 and report["removed"]["decontam_exact"] == 1
    assert [json.loads(line)["prompt"] for line in (tmp_path / "k2.jsonl").read_text().splitlines()] == [SECOND]


def test_curate_quarantines_a_lone_surrogate_and_a_nul_with_counts_and_reasons(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "Describe the water cycle \\ud800 for kids."}\n{"prompt": "bad\\u0000nul prompt here"}\n'
                    + json.dumps({"prompt": SECOND}) + "\n")
    previous = tmp_path / "previous.jsonl"
    previous.write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert curate_cli.main([str(pool), "--previous", str(previous), "--out", str(tmp_path / "kept.jsonl"), *OFF]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["kept"] == 1 and report["quarantined"] == 2 and report["previous_quarantined"] == 1
    assert report["quarantine_reasons"] == {"lone_surrogate": 1, "nul_character": 1}
    assert "pool.jsonl:1: lone_surrogate" in captured.err and "pool.jsonl:2: nul_character" in captured.err
    assert "1 unreadable previous-round record(s) ignored: {'invalid_utf8': 1}" in captured.err
    assert "Traceback" not in captured.err


# ---------------------------------------------------------------- the flywheel's `prompts.source: files`

CLEAN = [
    "How do I center a div horizontally and vertically with CSS flexbox?",
    "Write a short poem about autumn leaves falling in a quiet park.",
    "What are the main differences between TCP and UDP for a game server?",
    "Give me a weekly meal plan for a vegetarian marathon runner.",
    "Explain what a Python decorator is, with a small example.",
    "Summarize the causes of the French Revolution in five bullet points.",
]


def _files_profile(tmp_path: Path) -> tuple[dict, Path]:
    """A `files` source whose file starts with a BOM, ends in CRLF lines, and holds a lone
    surrogate, a NUL and a Latin-1 line; `prompts.against` is a BOM test set."""
    from arena_dagster.config import load_profile

    lines = [json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": f"answer {n}"}]})
             for n, text in enumerate(CLEAN)]
    lines[2:2] = ['{"prompt": "Describe the water cycle \\ud800 for kids.", "recorded_answer": "x"}',
                  '{"prompt": "bad\\u0000nul prompt", "recorded_answer": "x"}']
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + "\r\n".join(lines).encode() + b"\r\n" + b'{"prompt": "caf\xe9"}')
    against = _jsonl(tmp_path / "against.jsonl", [CLEAN[1], "Unrelated question about the moon landing?"], bom=True)
    profile = load_profile("sharegpt_smoke")
    profile = {**profile, "prompts": {**profile["prompts"], "source": "files", "files": [str(path)], "against": [str(against)],
                                      "max_conversations": None, "testset_fraction": 0.2, "seed": 1,
                                      "curation": {"language": None, "decontam_embedding_threshold": None}}}
    return profile, path


def test_flywheel_file_source_reads_line_one_and_quarantines_bad_text_with_reasons(tmp_path):
    import polars as pl

    from arena_dagster.config import settings_of
    from arena_dagster.prompts import pools, real_sources

    plain, path = _files_profile(tmp_path)
    profile = settings_of(plain)
    real_sources._source_rows.cache_clear()
    train, test, stats = real_sources.source_rows(profile.prompts)
    read = sorted(row["source_line"] for row in train + test)
    assert read == [1, 2, 5, 6, 7, 8]  # line 1 (after the BOM) is a prompt like any other
    assert stats["quarantined"] == 3
    assert stats["quarantine_reasons"] == {"invalid_utf8": 1, "lone_surrogate": 1, "nul_character": 1}
    empty = pl.DataFrame(schema={"prompt": pl.Utf8, "messages": pl.Utf8})
    pool, removed, quarantine = pools.curated_pool(pools.raw_prompt_frame(profile), empty, profile)
    unread = quarantine.filter(pl.col("step") == "ingest").sort("source_id")
    assert unread["source_id"].to_list() == ["prompts.jsonl:3", "prompts.jsonl:4", "prompts.jsonl:9"]
    assert [r.split(":")[0] for r in unread["reason"].to_list()] == ["lone_surrogate", "nul_character", "invalid_utf8"]
    assert removed["ingest"] == 3 and removed["ingest_against"] == 0
    # The BOM test set's first item still decontaminates the pool.
    assert CLEAN[1] not in pool["prompt"].to_list()
    if CLEAN[1] in [r["prompt"] for r in train]:
        assert quarantine.filter(pl.col("prompt") == CLEAN[1])["step"].item() == "decontam_exact"
    for text in quarantine["prompt"].to_list() + quarantine["reason"].to_list():
        text.encode("utf-8")  # storable: DuckDB takes every row
    real_sources._source_rows.cache_clear()


def test_prompts_group_materializes_a_hostile_file_source(tmp_path, monkeypatch):
    import dagster as dg
    import yaml

    from arena_dagster import cli
    from arena_dagster.defs import build_definitions

    profile, _ = _files_profile(tmp_path)
    profile_path = tmp_path / "hostile.yaml"
    # A new `source` replaces the parent's prompts section: all of it is written.
    profile_path.write_text(yaml.safe_dump({"extends": "sharegpt_smoke", "name": "hostile", "prompts": profile["prompts"]}))
    for key in ("ARENA_HOME", "ARENA_PROFILE", "DAGSTER_HOME"):
        monkeypatch.setenv(key, "")
    home = tmp_path / "home"
    cli.prepare_environment(home)
    defs = build_definitions(str(home), str(profile_path))
    result = dg.materialize(list(defs.assets), instance=dg.DagsterInstance.ephemeral(), resources=defs.resources,
                            selection=["raw_prompts", "arena_testset", "prompt_pool", "prompt_quarantine"])
    assert result.success
    events = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
              for e in result.get_asset_materialization_events()}
    assert events["raw_prompts"]["ingest"].value["quarantine_reasons"] == {"invalid_utf8": 1, "lone_surrogate": 1,
                                                                            "nul_character": 1}
    assert events["prompt_quarantine"]["removed/ingest"].value == 3
