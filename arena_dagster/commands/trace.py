"""`arena-dagster trace ID`: where a training row, battle, prompt or checkpoint came from and went;
`arena-dagster trace --column TABLE.COLUMN`: the upstream columns of a SQL model's column.

`add_arguments(parser)` adds the options, `run(args)` opens the home's warehouse read-only,
calls `trace.trace` and prints the lineage as sections (or JSON with --json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from arena_dagster.errors import ArenaError
from arena_dagster.trace import trace
from arena_dagster.warehouse import open_readonly

TEXT_CHARS, TEXT_LINES = 400, 8
TITLES = {"sft_example": "SFT example", "dpo_pair": "DPO pair", "reward_pair": "Reward-model pair",
          "battle": "Training battle", "arena_battle": "Arena battle", "prompt": "Prompt", "checkpoint": "Checkpoint"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", help="example_id, pair_id, battle_id or prompt_id (or a unique prefix of 8+ "
                                              "characters), or a model name such as DPO-I1")
    parser.add_argument("--column", metavar="TABLE.COLUMN", default=None,
                        help="instead of a row: the upstream columns a SQL model's column is computed from, down to "
                             "the tables Python assets write (traced by sqlglot; the open-source UI does not show "
                             "dagster/column_lineage)")
    parser.add_argument("--home", default=None, help="flywheel home (default: $ARENA_HOME or ./.arena)")
    parser.add_argument("--json", action="store_true", help="print the whole lineage as JSON (texts uncut)")


def run(args: argparse.Namespace) -> int:
    from arena_dagster.config import resolve_home

    home = resolve_home(args.home)
    if (args.id is None) == (args.column is None):
        raise ArenaError("trace takes an ID or --column TABLE.COLUMN", " ".join(filter(None, [args.id, args.column])),
                         "e.g. `arena-dagster trace DPO-I1` or "
                         "`arena-dagster trace --column sft_examples.winner_model`")
    with open_readonly(home) as conn:
        if args.column is not None:
            from arena_dagster.config import settings_of
            from arena_dagster.home import home_profile
            from arena_dagster.sql_models import trace_column

            variables = settings_of(home_profile(home)[2]).sql_vars.model_dump()
            doc = trace_column(conn, args.column, variables)
        else:
            doc = trace(conn, home, args.id)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(format_column(doc) if args.column is not None else format_trace(doc))
    return 0


def format_column(node: dict[str, Any], depth: int = 0) -> str:
    """One line per column, indented under the column computed from it; tables no SQL model builds end a branch."""
    made = f"  ({node['model']})" if node["model"] else "  (written by a Python asset)"
    lines = [f"{'  ' * depth}{'<- ' if depth else ''}{node['table']}.{node['column']}{made}"]
    if node["model"] and not node["sources"]:
        lines.append(f"{'  ' * (depth + 1)}(no upstream column: a literal or an expression sqlglot cannot follow)")
    lines += [format_column(source, depth + 1) for source in node["sources"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ text


def cut(text: str | None, chars: int = TEXT_CHARS, lines: int = TEXT_LINES) -> str:
    """`text` up to `chars` characters and `lines` lines, with a marker saying how much was left out."""
    if text is None:
        return "(missing)"
    kept = "\n".join(text.splitlines()[:lines])[:chars]
    left = len(text) - len(kept)
    return kept + (f" [... {left} more characters; --json shows all]" if left > 0 else "")


def _text(label: str, text: str | None, indent: str = "  ") -> list[str]:
    """`label: text` on one line when the text is short, else the label and the (cut) text below it."""
    shown = cut(text)
    if "\n" not in shown and len(label) + len(shown) <= 90:
        padded = not text or text.strip() != text  # an empty or space-padded text shows its quotes
        return [f"{indent}{label}: {shown!r}" if padded else f"{indent}{label}: {shown}"]
    return [f"{indent}{label}:", *(f"{indent}  | {line}" for line in shown.splitlines())]


def _short(value: str | None, width: int = 12) -> str:
    return "-" if value is None else (value if len(value) <= width + 1 else value[:width] + "...")


def _rel(path: str | None, home: str) -> str:
    if not path:
        return "-"
    try:
        return str(Path(path).relative_to(home))
    except ValueError:
        return path


def _num(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def format_trace(doc: dict[str, Any]) -> str:
    """The lineage as short sections: headline, prompt, battle, training, checkpoints."""
    row = doc.get("row")
    round_key = (row or doc.get("battle") or {}).get("round")
    where = f"  ({doc['table']}, round {round_key})" if doc.get("table") else ""
    lines = [f"{TITLES[doc['kind']]} {doc['id']}{where}"]
    if row and "chosen_model" in row:
        lines.append(f"  chosen: the answer of {row['chosen_model']} (score {_num(row['chosen_score'])}); rejected: "
                     f"the answer of {row['rejected_model']} (score {_num(row['rejected_score'])}); margin {_num(row['margin'])}")
    elif row:
        lines.append(f"  {row['target_model']} lost to {row['winner_model']} ({_num(row['target_score'])} vs "
                     f"{_num(row['winner_score'])}): the answer of {row['winner_model']} is the SFT target")
    if doc.get("prompt"):
        lines += ["", *_prompt_section(doc["prompt"])]
    if doc.get("battle"):
        lines += ["", *_battle_section(doc["battle"])]
    if doc["kind"] == "battle":
        rows = doc.get("training_rows") or []
        lines.append("  became: " + (", ".join(f"{r['table']} {_short(r['id'])}" for r in rows)
                                      or "no training row (not decided by enough margin, or not picked)"))
    if doc.get("battles") is not None:
        lines += ["", f"BATTLES on this prompt: {len(doc['battles'])}"]
        for b in doc["battles"][:12]:
            became = ", ".join(f"{r['table']} {_short(r['id'])}" for r in b["training_rows"])
            verdict = {"model_a": f"{b['model_a']} wins", "model_b": f"{b['model_b']} wins"}.get(b["winner"], "tie")
            lines.append(f"  {b['table']:<20} round {b['round']}  {b['model_a']} vs {b['model_b']}: {verdict} "
                         f"({_num(b['score_a'])} : {_num(b['score_b'])})  {b['battle_id']}" + (f" -> {became}" if became else ""))
        if len(doc["battles"]) > 12:
            lines.append(f"  [... {len(doc['battles']) - 12} more; --json shows all]")
    if doc["kind"] in ("sft_example", "dpo_pair", "reward_pair") or doc.get("training"):
        lines += ["", "TRAINING"]
        if not doc["training"]:
            lines.append("  not in any exported training set of a registered checkpoint yet")
        for use in doc["training"]:
            check = "matches the registry" if use["hash_matches"] else "DIFFERS from the registry (re-exported since?)"
            lines.append(f"  {use['checkpoint']} ({use['stage']}, round {use['round']}) trained on "
                         f"{_rel(use['dataset'], doc['home'])} line {use['line']} of {use['dataset_rows']}")
            lines.append(f"    HF dataset {_rel(use['hf_dataset'], doc['home'])}; dataset hash {_short(use['dataset_hash'])} {check}")
    for checkpoint in doc.get("checkpoints", []):
        lines += ["", *_checkpoint_section(checkpoint, doc["home"])]
    return "\n".join(lines)


def _prompt_section(prompt: dict[str, Any]) -> list[str]:
    if prompt.get("table") == "arena_testset":
        where = f"arena_testset ({prompt.get('subset')} subset, version {prompt.get('testset_version')})"
    elif prompt.get("table"):
        raw = "raw_prompts" if prompt.get("in_raw_prompts") else "not in raw_prompts any more"
        where = (f"source {prompt.get('source_id')} ({raw}); round {prompt.get('round')}, "
                 f"{prompt.get('slice')} slice")
    else:
        where = "not in prompt_pool or arena_testset (rebuilt since?)"
    lines = [f"PROMPT {prompt['prompt_id']}  {where}" + (f"; family {prompt['family']}" if prompt.get("family") else "")]
    for message in prompt.get("messages", []):
        lines += _text(message["role"], message["content"])
    raw_prompt = prompt.get("raw_prompt")
    if raw_prompt is not None and [m["content"] for m in prompt.get("messages", [])][-1:] != [raw_prompt]:
        lines += _text("as ingested (before cleaning)", raw_prompt)
    return lines


def _battle_section(battle: dict[str, Any]) -> list[str]:
    lines = [f"BATTLE {battle['battle_id']}  ({battle['table']}, round {battle['round']}, judge {battle['judge']})"]
    for response in battle["responses"]:
        side = "A" if response["side"] == "model_a" else "B"
        role = f" ({response['role']})" if response.get("role") else ""
        lines += _text(f"{side} {response['model']}{role}, response {_short(response.get('response_id'))}",
                       response.get("response"))
    for game in battle["games"]:
        status = "" if game["parse_ok"] else f"  UNPARSED: {game.get('error')}"
        lines.append(f"  game {game['game']}  A={game['shown_as_a']}  B={game['shown_as_b']}  "
                     f"scores {_num(game['score_a'], '')} : {_num(game['score_b'], '')}  "
                     f"judgment {game['judgment_id']} ({game['judge_version']}){status}")
        lines += [f"    | {line}" for line in cut(game.get("raw")).splitlines()]
    if battle["winner"] == "tie":
        verdict = f"tie, {_num(battle['score_a'])} vs {_num(battle['score_b'])}"
    else:
        won, lost = ("a", "b") if battle["winner"] == "model_a" else ("b", "a")
        verdict = (f"{battle['model_' + won]} ({won.upper()}) beats {battle['model_' + lost]} ({lost.upper()}), "
                   f"{_num(battle['score_' + won])} vs {_num(battle['score_' + lost])} (mean of both games)")
    agreement = "the games disagree (position bias)" if battle["inconsistent"] else "both games agree"
    lines.append(f"  outcome: {verdict}, margin {_num(battle['margin'])}; {agreement}")
    return lines


def _checkpoint_section(c: dict[str, Any], home: str) -> list[str]:
    chain = " -> ".join([*reversed(c["ancestors"]), c["model"]])
    lines = [f"CHECKPOINT {c['model']}  ({c['kind'] or 'not registered'}, round {c['round']})  {chain}"]
    if c["descendants"]:
        lines.append(f"  trained from it this round: {', '.join(c['descendants'])}")
    if c.get("skipped"):
        lines.append(f"  skipped: {c['skipped']} (stands for {c['parent']})")
    elif c.get("dataset"):
        check = {True: "matches", False: "DIFFERS from the file", None: "not checked"}[c.get("hash_matches")]
        metrics = c.get("metrics") or {}
        shown = ", ".join(f"{k} {_num(metrics[k], '.3g')}" for k in ("train_loss", "eval_accuracy", "steps")
                          if metrics.get(k) is not None)
        lines.append(f"  trained on {_rel(c['dataset'], home)} ({c.get('dataset_rows')} rows, hash "
                     f"{_short(c['dataset_hash'])} {check})" + (f"; {shown}" if shown else ""))
    if c.get("reward_model"):
        lines.append(f"  reward model {_rel(c['reward_model'], home)}")
    for r in c["leaderboard"]:
        lines.append(f"  leaderboard round {r['round']}: rank {r['rank']}, rating {_num(r['rating'])} "
                     f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}], {r['battles']} battles ({r['kind']})")
    if not c["leaderboard"] and c.get("kind") == "reward":
        lines.append("  not on the leaderboard (a reward model scores answers; it does not answer)")
    for g in c["gates"]:
        if g["candidate"] == g["incumbent"]:
            lines.append(f"  gate round {g['round']}: {g['reason']}; target stays {g['new_target']}")
            continue
        verdict = "promoted" if g["promoted"] else "rejected"
        lines.append(f"  gate round {g['round']}: {g['candidate']} vs {g['incumbent']} -> {verdict}: "
                     f"{_num(g['diff'], '+.1f')} [{_num(g['ci_low'], '+.1f')}, {_num(g['ci_high'], '+.1f')}] Elo, "
                     f"margin {_num(g['margin'])}; next target {g['new_target']}")
    return lines
