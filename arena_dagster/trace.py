"""Where did this row come from, and where did it go? Row-level lineage over the warehouse.

`trace(conn, home, id)` takes any id a user meets: an SFT example (example_id), a DPO or
reward-model pair (pair_id), a battle (battle_id, training or arena), a prompt (prompt_id)
or a checkpoint (model name such as DPO-I1); a unique prefix of 8 or more characters of a
hexadecimal id is enough. It returns one JSON-ready dict:

    prompt      the source dataset and line (raw_prompts.source_id), the round slice, the conversation
    battle      both responses with their models, both judge games (raw text, parsed scores), the outcome
    row         the training row (sft_examples / dpo_pairs / reward_pairs) the battle became
    training    every exported dataset that holds the row (train.jsonl line, HF export) and the
                checkpoint trained on it, with the dataset hash checked against the registry
    checkpoints each such checkpoint: registry lineage, its leaderboard rows, the gate decisions
                of the checkpoint or of the checkpoints trained from it

The warehouse is only read (open the connection with read_only=True). No Dagster import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from arena_dagster.errors import ArenaError
from arena_dagster.training.spec import file_sha256
from arena_dagster.warehouse import table_exists

# Training rows: table -> (id column, the stage whose battles made it, the dataset folder it is exported to).
TRAINING_TABLES = {
    "sft_examples": ("example_id", "sft", "sft"),
    "dpo_pairs": ("pair_id", "dpo", "dpo"),
    "reward_pairs": ("pair_id", "rl", "reward"),
}
# Battles: outcome table -> (judgments table, responses table).
BATTLE_TABLES = {
    **{f"{stage}_battle_outcomes": (f"{stage}_judgments", f"{stage}_responses") for stage in ("sft", "dpo", "rl")},
    "arena_battles": ("arena_judgments", "arena_responses"),
}
KIND_NAMES = {"sft_examples": "sft_example", "dpo_pairs": "dpo_pair", "reward_pairs": "reward_pair"}
MIN_PREFIX = 8


class TraceError(ArenaError, LookupError):
    """An id the warehouse does not know, or a prefix that matches several."""


def _rows(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def _match(conn: duckdb.DuckDBPyConnection, table: str, column: str, wanted: str) -> list[dict[str, Any]]:
    """Rows whose `column` is `wanted`, or starts with it when `wanted` is a long enough prefix."""
    if not table_exists(conn, table):
        return []
    rows = _rows(conn, f'SELECT * FROM "{table}" WHERE "{column}" = ?', [wanted])
    if not rows and len(wanted) >= MIN_PREFIX:
        rows = _rows(conn, f'SELECT * FROM "{table}" WHERE starts_with("{column}", ?) LIMIT 50', [wanted])
    return rows


def resolve(conn: duckdb.DuckDBPyConnection, wanted: str, home: Path | str = "") -> tuple[str, str, dict[str, Any]]:
    """(table, full id, row) of the one thing `wanted` names; TraceError when none or several."""
    wanted = wanted.strip().rstrip(".…")  # a shortened id as printed ("1b817f9690b2...") still resolves
    candidates: list[tuple[str, str, dict[str, Any]]] = []
    if table_exists(conn, "model_registry"):
        candidates += [("model_registry", r["model"], r) for r in _rows(conn, "SELECT * FROM model_registry WHERE model = ?", [wanted])]
    if not candidates:
        for table, (column, _, _) in TRAINING_TABLES.items():
            candidates += [(table, r[column], r) for r in _match(conn, table, column, wanted)]
        for table in BATTLE_TABLES:
            candidates += [(table, r["battle_id"], r) for r in _match(conn, table, "battle_id", wanted)]
        for table in ("prompt_pool", "arena_testset"):
            candidates += [(table, r["prompt_id"], r) for r in _match(conn, table, "prompt_id", wanted)]
    distinct = {(table, key): row for table, key, row in candidates}
    if not distinct:
        raise TraceError(
            f"no training row, battle or checkpoint has id {wanted}", f"home {home}",
            "pass an example_id (sft_examples), a pair_id (dpo_pairs, reward_pairs), a battle_id, a prompt_id "
            f"or a model name such as DPO-I1 (a unique prefix of {MIN_PREFIX}+ characters is enough)",
        )
    if len(distinct) > 1:
        shown = ", ".join(f"{key} ({table})" for table, key in list(distinct)[:5])
        raise TraceError(f"id prefix {wanted} matches {len(distinct)} rows", shown, "give more characters")
    (table, key), row = next(iter(distinct.items()))
    return table, key, row


def trace(conn: duckdb.DuckDBPyConnection, home: Path | str, wanted: str) -> dict[str, Any]:
    """The full lineage of the row, battle, prompt or checkpoint `wanted` names (see the module doc)."""
    home = Path(home)
    table, key, row = resolve(conn, wanted, home)
    if table == "model_registry":
        return {"kind": "checkpoint", "id": key, "home": str(home), "checkpoints": [checkpoint_lineage(conn, home, key)]}
    if table in ("prompt_pool", "arena_testset"):
        return {"kind": "prompt", "id": key, "home": str(home), "prompt": prompt_source(conn, key),
                "battles": prompt_battles(conn, key)}
    if table in TRAINING_TABLES:
        stage = TRAINING_TABLES[table][1]
        battle = battle_lineage(conn, f"{stage}_battle_outcomes", row["battle_id"])
        found = [{"table": table, "id": key, "row": _training_fields(row)}]
        doc = {"kind": KIND_NAMES[table], "id": key, "home": str(home), "table": table, "row": found[0]["row"]}
    else:
        battle = battle_lineage(conn, table, key)
        found = training_rows_of_battle(conn, key) if table != "arena_battles" else []
        doc = {"kind": "arena_battle" if table == "arena_battles" else "battle", "id": key, "home": str(home),
               "table": table, "training_rows": [{"table": f["table"], "id": f["id"]} for f in found]}
    doc["prompt"] = prompt_source(conn, battle["prompt_id"])
    doc["battle"] = battle
    doc["training"] = [use for f in found for use in dataset_uses(conn, home, f["table"], f["id"])]
    models = [use["checkpoint"] for use in doc["training"]]
    if table == "arena_battles":
        models = [battle["model_a"], battle["model_b"]]
        doc["leaderboard_round"] = battle["round"]
    doc["checkpoints"] = [checkpoint_lineage(conn, home, m, round_key=doc.get("leaderboard_round"))
                          for m in dict.fromkeys(models)]
    return doc


def _training_fields(row: dict[str, Any]) -> dict[str, Any]:
    # The text columns are shown in the prompt and battle sections; keep the row's own facts.
    return {k: v for k, v in row.items() if k not in ("prompt", "messages", "response", "chosen", "rejected")}


def prompt_source(conn: duckdb.DuckDBPyConnection, prompt_id: str) -> dict[str, Any]:
    """The prompt's conversation and where it came from: the pool's slice and the raw source row."""
    pool = _match(conn, "prompt_pool", "prompt_id", prompt_id)
    if pool:
        row = pool[0]
        raw = (_rows(conn, "SELECT * FROM raw_prompts WHERE source_id = ? LIMIT 1", [row["source_id"]])
               if table_exists(conn, "raw_prompts") else [])
        return {
            "prompt_id": row["prompt_id"], "table": "prompt_pool", "source_id": row["source_id"],
            "in_raw_prompts": bool(raw), "raw_prompt": raw[0]["prompt"] if raw else None,
            "family": row.get("family"), "round": row.get("round"), "slice": row.get("stage"),
            "messages": _messages(row),
        }
    testset = _match(conn, "arena_testset", "prompt_id", prompt_id)
    if testset:
        row = testset[0]
        return {"prompt_id": row["prompt_id"], "table": "arena_testset", "source_id": None, "family": row.get("family"),
                "subset": row.get("subset"), "testset_version": row.get("testset_version"), "messages": _messages(row)}
    return {"prompt_id": prompt_id, "table": None, "messages": []}


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = row.get("messages")
    if messages:
        parsed = json.loads(messages) if isinstance(messages, str) else messages
        return [{"role": m["role"], "content": m["content"]} for m in parsed]
    return [{"role": "user", "content": row.get("prompt") or ""}]


def battle_lineage(conn: duckdb.DuckDBPyConnection, table: str, battle_id: str) -> dict[str, Any]:
    """A battle: its outcome, both responses (model, text) and both judge games (raw text, scores)."""
    judgments_table, responses_table = BATTLE_TABLES[table]
    outcome = _rows(conn, f'SELECT * FROM "{table}" WHERE battle_id = ?', [battle_id])
    if not outcome:
        raise TraceError(f"battle {battle_id} is not in {table}", None, "the table was rebuilt since the row was made")
    battle = outcome[0]
    responses = []
    for side in ("a", "b"):
        found = (_rows(conn, f'SELECT model, role, response_id, response, tokens_out, finish_reason FROM "{responses_table}" '
                             "WHERE round = ? AND prompt_id = ? AND model = ?",
                       [battle["round"], battle["prompt_id"], battle[f"model_{side}"]])
                 if table_exists(conn, responses_table) else [])
        response = found[0] if found else {"model": battle[f"model_{side}"], "response": None}
        responses.append({"side": f"model_{side}", "table": responses_table, **response})
    games = []
    if table_exists(conn, judgments_table):
        games = _rows(
            conn,
            f'SELECT game, judgment_id, model_a AS shown_as_a, model_b AS shown_as_b, score_a, score_b, parse_ok, raw, '
            f'explanation, error, attempts, judge, judge_version FROM "{judgments_table}" WHERE battle_id = ? ORDER BY game',
            [battle_id],
        )
    return {"table": table, "judgments_table": judgments_table, **battle, "responses": responses, "games": games}


def training_rows_of_battle(conn: duckdb.DuckDBPyConnection, battle_id: str) -> list[dict[str, Any]]:
    """The training rows (SFT example, DPO or reward pair) a training battle became."""
    found = []
    for table, (column, _, _) in TRAINING_TABLES.items():
        if table_exists(conn, table):
            found += [{"table": table, "id": r[column]} for r in
                      _rows(conn, f'SELECT "{column}" FROM "{table}" WHERE battle_id = ?', [battle_id])]
    return found


def prompt_battles(conn: duckdb.DuckDBPyConnection, prompt_id: str) -> list[dict[str, Any]]:
    """Every battle on the prompt, with the training rows each became."""
    out = []
    for table in BATTLE_TABLES:
        if not table_exists(conn, table):
            continue
        for row in _rows(conn, f'SELECT round, battle_id, model_a, model_b, score_a, score_b, winner FROM "{table}" '
                               "WHERE prompt_id = ? ORDER BY round, model_b", [prompt_id]):
            rows = training_rows_of_battle(conn, row["battle_id"]) if table != "arena_battles" else []
            out.append({"table": table, **row, "training_rows": rows})
    return out


def dataset_uses(conn: duckdb.DuckDBPyConnection, home: Path, table: str, row_id: str) -> list[dict[str, Any]]:
    """Every registered checkpoint whose training file holds the row, with the line and a hash check."""
    column, _, folder = TRAINING_TABLES[table]
    if not table_exists(conn, "model_registry"):
        return []
    uses = []
    for reg in _rows(conn, "SELECT model, kind, round, dataset_hash, manifest FROM model_registry WHERE kind = ? ORDER BY round",
                     [folder]):
        path = _dataset_file(home, reg, folder)
        if path is None:
            continue
        line, rows = _find_line(path, column, row_id)
        if line is None:
            continue
        hf = path.parent / "hf"
        uses.append({
            "checkpoint": reg["model"], "stage": reg["kind"], "round": reg["round"], "dataset": str(path), "line": line,
            "dataset_rows": rows, "hf_dataset": str(hf) if hf.is_dir() else None, "dataset_hash": reg["dataset_hash"],
            "hash_matches": file_sha256(path) == reg["dataset_hash"],
        })
    return uses


def _dataset_file(home: Path, reg: dict[str, Any], folder: str) -> Path | None:
    # The export folder of the checkpoint's round; a home moved elsewhere still finds it.
    manifest = json.loads(reg.get("manifest") or "{}")
    for candidate in (home / "datasets" / f"round-{reg['round']}" / folder / "train.jsonl", manifest.get("dataset_path")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _find_line(path: Path, column: str, row_id: str) -> tuple[int | None, int]:
    found, count = None, 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            count += 1
            if found is None and row_id in line and json.loads(line).get(column) == row_id:
                found = number
    return found, count


def checkpoint_lineage(conn: duckdb.DuckDBPyConnection, home: Path, model: str, round_key: int | None = None) -> dict[str, Any]:
    """A model: registry facts, its ancestry, what was trained from it, its leaderboard rows and gate decisions.

    `round_key`: only that round's leaderboard rows (an arena battle's round); default every round.
    """
    registry = table_exists(conn, "model_registry")
    found = _rows(conn, "SELECT * FROM model_registry WHERE model = ?", [model]) if registry else []
    reg = found[0] if found else {"model": model}
    manifest = json.loads(reg.get("manifest") or "{}")
    ancestors, seen = [], {model}
    parent = reg.get("parent")
    while parent and parent not in seen and registry:
        ancestors.append(parent)
        seen.add(parent)
        up = _rows(conn, "SELECT parent FROM model_registry WHERE model = ?", [parent])
        parent = up[0]["parent"] if up else None
    descendants = _descendants(conn, model) if registry else []
    board = []
    if table_exists(conn, "leaderboard"):
        where, params = ("AND round = ?", [model, round_key]) if round_key is not None else ("", [model])
        board = _rows(conn, f"SELECT round, rank, rating, ci_low, ci_high, battles, kind, role FROM leaderboard "
                            f"WHERE model = ? {where} ORDER BY round", params)
    gates = []
    if table_exists(conn, "promotions"):
        # The gates this checkpoint (or one trained from it) stood before: as a candidate, chosen or not, or as the incumbent.
        involved = {model, *descendants}
        columns = {r[0] for r in conn.execute("DESCRIBE promotions").fetchall()}
        considered = "candidates" if "candidates" in columns else "NULL AS candidates"
        for row in _rows(conn, f"SELECT round, candidate, incumbent, promoted, new_target, diff, ci_low, ci_high, margin, "
                               f"reason, {considered} FROM promotions ORDER BY round"):
            candidates = set(json.loads(row.pop("candidates") or "[]"))
            if row["candidate"] in involved or row["incumbent"] == model or candidates & involved:
                gates.append(row)
    dataset = _dataset_file(home, reg, reg["kind"]) if reg.get("kind") in ("sft", "dpo", "reward", "rl") else None
    if dataset is None and manifest.get("dataset_path") and Path(manifest["dataset_path"]).is_file():
        dataset = Path(manifest["dataset_path"])  # a base model's training file
    return {
        "model": model, "kind": reg.get("kind"), "round": reg.get("round"), "parent": reg.get("parent"),
        "ancestors": ancestors, "descendants": descendants, "path": reg.get("path"),
        "dataset_hash": reg.get("dataset_hash"), "dataset": str(dataset) if dataset else manifest.get("dataset_path"),
        "dataset_rows": manifest.get("dataset_rows"),
        "hash_matches": file_sha256(dataset) == reg.get("dataset_hash") if dataset and reg.get("dataset_hash") else None,
        "skipped": manifest.get("skipped"), "reward_model": manifest.get("reward_model"),
        "metrics": manifest.get("metrics", {}), "leaderboard": board, "gates": gates,
    }


def _descendants(conn: duckdb.DuckDBPyConnection, model: str) -> list[str]:
    """Checkpoints of the same round trained from `model` (by parent, or RL policies it rewarded), nearest first.

    Later rounds build on a promoted model too; their gates belong to their own checkpoints.
    """
    rows = _rows(conn, "SELECT model, round, parent, path, json_extract_string(manifest, '$.reward_model') AS reward_model "
                       "FROM model_registry ORDER BY round, registered_at")
    me = next((r for r in rows if r["model"] == model), None)
    if me is None:
        return []
    out, frontier = [], [me]
    while frontier:
        current = frontier.pop(0)
        for r in rows:
            trained_from = r["parent"] == current["model"] or (current is me and r["reward_model"] == me["path"])
            if trained_from and r["round"] == me["round"] and r["model"] not in out and r["model"] != model:
                out.append(r["model"])
                frontier.append(r)
    return out
