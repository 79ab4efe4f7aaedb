"""`arena-dagster trace` on a small hand-built warehouse (the end-to-end module traces a real home)."""

from __future__ import annotations

import hashlib
import json

import duckdb
import pytest

from arena_dagster import cli
from arena_dagster.trace import TraceError, trace
from arena_dagster.commands.trace import cut

EXAMPLE = "ab" * 32
BATTLE = "b" * 24


def build_home(home, *, long_answer: str = "Paris") -> None:
    """One SFT example with its battle, judgments, responses, prompt, export and checkpoint."""
    folder = home / "datasets" / "round-1" / "sft"
    folder.mkdir(parents=True)
    lines = [json.dumps({"example_id": "cd" * 32, "messages": []}), json.dumps({"example_id": EXAMPLE, "messages": []})]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    digest = hashlib.sha256((folder / "train.jsonl").read_bytes()).hexdigest()
    conn = duckdb.connect(str(home / "warehouse.duckdb"))
    conn.execute("CREATE TABLE raw_prompts AS SELECT 'file.jsonl:7' AS source_id, 'capital of france?' AS prompt")
    conn.execute("""CREATE TABLE prompt_pool AS SELECT 'file.jsonl:7' AS source_id, 'Capital of France?' AS prompt,
                    'geo' AS family, 1 AS round, 'sft' AS stage, 'p-1' AS prompt_id,
                    '[{"role": "user", "content": "Capital of France?"}]' AS messages""")
    conn.execute(f"""CREATE TABLE sft_battle_outcomes AS SELECT 1 AS round, '{BATTLE}' AS battle_id, 'p-1' AS prompt_id,
                     'judge' AS judge, 'target-I0' AS model_a, 'strong' AS model_b, 2.0 AS score_a, 9.0 AS score_b,
                     'model_b' AS winner, 'strong' AS winner_model, 'target-I0' AS loser_model, 7.0 AS margin,
                     false AS inconsistent""")
    conn.execute(f"""CREATE TABLE sft_judgments AS
                     SELECT 1 AS round, 'j1' AS judgment_id, '{BATTLE}' AS battle_id, 1 AS game, 'target-I0' AS model_a,
                            'strong' AS model_b, 2 AS score_a, 9 AS score_b, true AS parse_ok, 'A: 2\nB: 9' AS raw,
                            '' AS explanation, '' AS error, 1 AS attempts, 'judge' AS judge, 'v1' AS judge_version
                     UNION ALL
                     SELECT 1, 'j2', '{BATTLE}', 2, 'strong', 'target-I0', 9, 2, true, 'A: 9\nB: 2', '', '', 1, 'judge', 'v1'""")
    conn.execute("""CREATE TABLE sft_responses (round BIGINT, prompt_id VARCHAR, model VARCHAR, role VARCHAR,
                    response_id VARCHAR, response VARCHAR, tokens_out BIGINT, finish_reason VARCHAR)""")
    conn.execute("INSERT INTO sft_responses VALUES (1, 'p-1', 'target-I0', 'target', 'r1', 'Lyon', 2, 'stop'), "
                 "(1, 'p-1', 'strong', 'competitor', 'r2', ?, 2, 'stop')", [long_answer])
    conn.execute(f"""CREATE TABLE sft_examples AS SELECT 1 AS round, '{EXAMPLE}' AS example_id, 'p-1' AS prompt_id,
                     'target-I0' AS target_model, 'strong' AS winner_model, 2.0 AS target_score, 9.0 AS winner_score,
                     7.0 AS margin, '{BATTLE}' AS battle_id""")
    conn.execute("""CREATE TABLE model_registry (model VARCHAR, kind VARCHAR, round BIGINT, path VARCHAR, revision VARCHAR,
                    parent VARCHAR, dataset_hash VARCHAR, manifest JSON, registered_at TIMESTAMP)""")
    conn.execute("INSERT INTO model_registry VALUES ('target-I0', 'initial', 0, '/m/t', 'r', NULL, NULL, '{}', now()), "
                 "('SFT-I1', 'sft', 1, '/m/s', 'r', 'target-I0', ?, '{\"metrics\": {\"train_loss\": 1.5}}', now())", [digest])
    conn.execute("""CREATE TABLE leaderboard AS SELECT 1 AS round, 'SFT-I1' AS model, 1 AS rank, 1010.0 AS rating,
                    990.0 AS ci_low, 1030.0 AS ci_high, 40 AS battles, 'candidate' AS kind, 'target' AS role""")
    conn.execute("""CREATE TABLE promotions AS SELECT 1 AS round, 'SFT-I1' AS candidate, 'target-I0' AS incumbent,
                    true AS promoted, 'SFT-I1' AS new_target, 60.0 AS diff, 20.0 AS ci_low, 100.0 AS ci_high,
                    0.0 AS margin, 'lower bound > margin' AS reason""")
    conn.close()


@pytest.fixture
def home(tmp_path):
    build_home(tmp_path)
    return tmp_path


def traced(home, wanted):
    conn = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return trace(conn, home, wanted)
    finally:
        conn.close()


def test_sft_example_chain(home):
    doc = traced(home, EXAMPLE[:10])  # a unique prefix is enough
    assert doc["kind"] == "sft_example" and doc["id"] == EXAMPLE
    assert doc["prompt"]["source_id"] == "file.jsonl:7" and doc["prompt"]["in_raw_prompts"]
    assert doc["prompt"]["messages"] == [{"role": "user", "content": "Capital of France?"}]
    battle = doc["battle"]
    assert battle["battle_id"] == BATTLE and battle["winner_model"] == "strong"
    assert [(r["model"], r["response"]) for r in battle["responses"]] == [("target-I0", "Lyon"), ("strong", "Paris")]
    assert [(g["game"], g["shown_as_a"], g["score_a"], g["score_b"]) for g in battle["games"]] == [
        (1, "target-I0", 2, 9), (2, "strong", 9, 2)]
    [use] = doc["training"]
    assert (use["checkpoint"], use["line"], use["dataset_rows"], use["hash_matches"]) == ("SFT-I1", 2, 2, True)
    [checkpoint] = doc["checkpoints"]
    assert checkpoint["ancestors"] == ["target-I0"] and checkpoint["leaderboard"][0]["rating"] == 1010.0
    assert checkpoint["gates"][0]["promoted"] is True


def test_a_re_exported_dataset_is_flagged(home):
    path = home / "datasets" / "round-1" / "sft" / "train.jsonl"
    path.write_text(path.read_text() + json.dumps({"example_id": "ef" * 32}) + "\n")
    doc = traced(home, EXAMPLE)
    assert doc["training"][0]["hash_matches"] is False


def test_battle_leads_to_its_training_row(home):
    doc = traced(home, BATTLE)
    assert doc["kind"] == "battle" and doc["training_rows"] == [{"table": "sft_examples", "id": EXAMPLE}]
    assert doc["training"][0]["checkpoint"] == "SFT-I1"


def test_unknown_and_ambiguous_ids(home):
    with pytest.raises(TraceError, match="no training row, battle or checkpoint has id nothing-like-this"):
        traced(home, "nothing-like-this")
    with pytest.raises(TraceError, match="no training row"):
        traced(home, "ab")  # too short to be a prefix


def test_cli_human_json_and_errors(home, capsys):
    assert cli.main(["trace", EXAMPLE, "--home", str(home)]) == 0
    text = capsys.readouterr().out
    for section in ("SFT example", "PROMPT p-1", "BATTLE", "game 1", "game 2", "TRAINING", "CHECKPOINT SFT-I1"):
        assert section in text
    assert cli.main(["trace", "SFT-I1", "--home", str(home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"][0]["model"] == "SFT-I1"
    assert cli.main(["trace", "XYZ", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arena-dagster: no training row, battle or checkpoint has id XYZ") and err.count("\n") == 1
    assert cli.main(["trace", "SFT-I1", "--home", str(home / "elsewhere")]) == 2
    assert "no warehouse" in capsys.readouterr().err


def test_long_texts_are_cut_with_a_marker(tmp_path, capsys):
    build_home(tmp_path, long_answer="word " * 400)
    assert cli.main(["trace", EXAMPLE, "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "more characters; --json shows all]" in out and len(out) < 6000
    assert cut("a\n" * 20, lines=3).startswith("a\na\na [... ")
    assert cut("short") == "short"


def test_an_ambiguous_prefix_names_the_matches(home):
    conn = duckdb.connect(str(home / "warehouse.duckdb"))
    conn.execute("INSERT INTO sft_examples SELECT round, 'abababab' || repeat('ef', 28), prompt_id, target_model, "
                 "winner_model, target_score, winner_score, margin, battle_id FROM sft_examples")
    conn.close()
    with pytest.raises(TraceError, match="id prefix abababab matches 2 rows"):
        traced(home, "abababab")
    assert traced(home, EXAMPLE)["id"] == EXAMPLE  # the full id still resolves


def test_a_warehouse_held_by_a_writer_is_one_line(home, capsys):
    import subprocess
    import sys

    writer = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
                               "time.sleep(60)", str(home / "warehouse.duckdb")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        assert cli.main(["trace", "SFT-I1", "--home", str(home)]) == 2
        err = capsys.readouterr().err
        assert "the warehouse is being written by" in err and "retry when that run ends" in err
        assert err.count("\n") == 1
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.slow
def test_a_column_traced_to_its_sources_on_a_real_home(smoke_home, capsys):
    home = str(smoke_home)
    assert cli.main(["trace", "--column", "sft_examples.winner_model", "--home", home]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "sft_examples.winner_model  (dbt_like_sql/sft_examples.sql)"
    # Through the battle outcomes (a SQL model) to the judgments a Python asset writes.
    assert any(line.strip().startswith("<- sft_battle_outcomes.") and "battle_outcomes.sql" in line for line in lines)
    assert "sft_judgments." in text and "(written by a Python asset)" in text
    assert cli.main(["trace", "--column", "sft_examples.winner_model", "--home", home, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["table"] == "sft_examples" and doc["sources"][0]["table"] == "sft_battle_outcomes"
    for wanted, message in (("sft_examples.nope", "not a column of sft_examples (nope): its columns: "),
                            ("prompt_pool.prompt", "not a table a SQL model builds (prompt_pool)"),
                            ("sft_examples", "a column is named TABLE.COLUMN (sft_examples)")):
        assert cli.main(["trace", "--column", wanted, "--home", home]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"arena-dagster: {message}") and err.count("\n") == 1, err
    assert cli.main(["trace", "SFT-I1", "--column", "sft_examples.margin", "--home", home]) == 2
    assert "trace takes an ID or --column TABLE.COLUMN" in capsys.readouterr().err
