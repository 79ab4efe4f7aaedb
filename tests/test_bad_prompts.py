"""Bad prompt input: empty prompts, a 5 MB prompt, duplicate ids with different content, malformed JSONL,
missing and renamed columns; each counted and reported, never a crash and never lost."""

from __future__ import annotations

import json

from arena_dagster.commands import curate as curate_cli
from arena_dagster.prompts.curation import CurationConfig, curate
from arena_dagster.prompts.ingest import ingest

OFF = CurationConfig(language=None, near_dedup=False, decontam_minhash_threshold=None, decontam_ngram=None,
                     decontam_embedding_threshold=None)


def test_empty_and_five_megabyte_prompts_are_quarantined_with_their_reason():
    huge = "Please summarise the following log. " + "x" * 5_000_000
    rows = [{"prompt": "", "source_id": "empty"}, {"prompt": huge, "source_id": "huge"},
            {"prompt": "Write a limerick about a cat.", "source_id": "fine"}]
    result = curate(rows, config=OFF)
    assert [r["source_id"] for r in result.kept] == ["fine"]
    steps = {r["source_id"]: (r["step"], r["reason"]) for r in result.removed_rows}
    assert steps["empty"][0] == "invalid"
    assert steps["huge"][0] == "too_long" and "max_chars=100000" in steps["huge"][1]
    assert result.removed["too_long"] == 1 and len(result.kept) + len(result.removed_rows) == len(rows)


def test_duplicate_ids_with_different_content_are_two_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Explain the water cycle to a child.", "source_id": "q1"},
        {"prompt": "List three uses of copper wire.", "source_id": "q1"},
    ]) + "\n")
    result = ingest([str(path)])
    assert len(result.rows) == 2  # ids are content hashes: the source's repeated id is no reason to drop one
    kept = curate(result.rows, config=OFF).kept
    assert len(kept) == 2


def test_malformed_lines_and_missing_or_renamed_columns_are_counted_with_line_numbers(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "Describe how a bicycle gear works."}),
        '{"prompt": "unterminated',
        json.dumps({"instruction": "a renamed column"}),
        json.dumps({"source_id": "no text at all"}),
        json.dumps({"prompt": 42}),
    ]) + "\n")
    result = ingest([str(path)])
    assert len(result.rows) == 1
    lines = sorted(q["source_line"] for q in result.quarantine)
    assert lines == [2, 3, 4, 5]
    assert all(q["reason"] for q in result.quarantine) and "keys: ['instruction']" in result.quarantine[1]["reason"]


def test_the_curate_command_reports_the_counts_of_a_bad_file(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "y" * 200_001}) + "\n" + json.dumps({"prompt": "Name two prime numbers above 50."}) + "\n")
    assert curate_cli.main([str(path), "--out", str(tmp_path / "kept.jsonl"), "--json", "--preset", "paper",
                            "--set", "language=null", "--set", "decontam_embedding_threshold=null"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"]["too_long"] == 1 and report["kept"] == 1
