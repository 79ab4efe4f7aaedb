"""Battle planning and the two judge games of each battle.

A battle is (prompt, model_x, model_y). Game 1 shows model_x's answer as A, game 2 shows
model_y's answer as A; `dbt_like_sql/macros/two_game.sql` combines the two games.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import polars as pl


@dataclass(frozen=True)
class JudgeItem:
    prompt_id: str
    prompt: str | None  # None: a replayed prompt whose text is unknown (prompts.source judgments)
    family: str
    reference: str
    answer_a: str | None  # None: a model whose answers were not recorded (judged by a recorded judge only)
    answer_b: str | None
    # The conversation before the instruction (role/content dicts), for multi-turn prompts.
    history: tuple[dict[str, str], ...] = ()
    # The models shown as A and B: a recorded judge looks its verdicts up by them.
    model_a: str = ""
    model_b: str = ""


@dataclass(frozen=True)
class JudgeResult:
    score_a: int | None
    score_b: int | None
    explanation: str
    raw: str
    parse_ok: bool
    error: str = ""
    attempts: int = 1


class Judge(Protocol):
    name: str
    version: str

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]: ...


def stable_id(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:24]


def plan_target_battles(round_key: int, prompt_ids: Iterable[str], target: str, competitors: Sequence[str]) -> pl.DataFrame:
    """Training battles: the round's target against every competitor on every prompt."""
    rows = [
        {
            "round": round_key,
            "battle_id": stable_id(round_key, prompt_id, target, competitor),
            "prompt_id": prompt_id,
            "model_x": target,
            "model_y": competitor,
        }
        for prompt_id in prompt_ids
        for competitor in competitors
        if competitor != target
    ]
    return pl.DataFrame(rows, schema=_BATTLE_SCHEMA)


def plan_round_robin(round_key: int, prompt_ids: Iterable[str], models: Sequence[str]) -> pl.DataFrame:
    """Arena battles: every unordered pair of models on every prompt."""
    pairs = list(itertools.combinations(sorted(set(models)), 2))
    rows = [
        {
            "round": round_key,
            "battle_id": stable_id(round_key, prompt_id, x, y),
            "prompt_id": prompt_id,
            "model_x": x,
            "model_y": y,
        }
        for prompt_id in prompt_ids
        for x, y in pairs
    ]
    return pl.DataFrame(rows, schema=_BATTLE_SCHEMA)


_BATTLE_SCHEMA = {
    "round": pl.Int64,
    "battle_id": pl.Utf8,
    "prompt_id": pl.Utf8,
    "model_x": pl.Utf8,
    "model_y": pl.Utf8,
}

JUDGMENT_SCHEMA = {
    "round": pl.Int64,
    "judgment_id": pl.Utf8,
    "battle_id": pl.Utf8,
    "game": pl.Int64,
    "prompt_id": pl.Utf8,
    "model_x": pl.Utf8,
    "model_y": pl.Utf8,
    "model_a": pl.Utf8,
    "model_b": pl.Utf8,
    "response_a_id": pl.Utf8,
    "response_b_id": pl.Utf8,
    "score_a": pl.Int64,
    "score_b": pl.Int64,
    "parse_ok": pl.Boolean,
    "explanation": pl.Utf8,
    "raw": pl.Utf8,
    "error": pl.Utf8,
    "attempts": pl.Int64,
    "judge": pl.Utf8,
    "judge_version": pl.Utf8,
}


class MissingResponseError(LookupError):
    pass


def conversation_history(messages: object) -> tuple[dict[str, str], ...]:
    """The turns before the last user turn of a prompt's `messages` (a list or its JSON text)."""
    if not messages:
        return ()
    if isinstance(messages, str):
        import json

        messages = json.loads(messages)
    turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]  # type: ignore[union-attr]
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=len(turns))
    return tuple(turns[:last_user])


def judge_battles(
    battles: pl.DataFrame,
    responses: pl.DataFrame,
    prompts: pl.DataFrame,
    judge: Judge,
    *,
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Judge every battle twice (A/B then B/A); returns one judgment row per game.

    `responses` has prompt_id, model, response_id, response; `prompts` has prompt_id,
    prompt, family, reference. A battle whose answer is missing is an error, not a skip.
    Progress: games judged, a line every 5% with games/s to `log` (`compute.progress.Progress`).
    """
    answer = {(r["prompt_id"], r["model"]): (r["response_id"], r["response"]) for r in responses.iter_rows(named=True)}
    prompt_rows = {r["prompt_id"]: r for r in prompts.iter_rows(named=True)}
    games: list[dict] = []
    items: list[JudgeItem] = []
    for battle in battles.iter_rows(named=True):
        pid = battle["prompt_id"]
        if pid not in prompt_rows:
            raise MissingResponseError(f"battle {battle['battle_id']}: prompt {pid} is not in the prompt table")
        for game, (a, b) in ((1, (battle["model_x"], battle["model_y"])), (2, (battle["model_y"], battle["model_x"]))):
            try:
                (a_id, a_text), (b_id, b_text) = answer[(pid, a)], answer[(pid, b)]
            except KeyError as exc:
                raise MissingResponseError(f"no response of model {exc.args[0][1]!r} to prompt {pid}") from None
            prompt = prompt_rows[pid]
            games.append({**battle, "game": game, "model_a": a, "model_b": b, "response_a_id": a_id, "response_b_id": b_id})
            items.append(
                JudgeItem(
                    prompt_id=pid,
                    prompt=prompt["prompt"],
                    family=prompt.get("family") or "",
                    reference=prompt.get("reference") or "",
                    answer_a=a_text,
                    answer_b=b_text,
                    history=conversation_history(prompt.get("messages")),
                    model_a=a,
                    model_b=b,
                )
            )
    from arena_dagster.compute.progress import Progress

    results: list[JudgeResult] = []
    progress = Progress(f"{judge.name} judging", len(items), log=log, unit="games")
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            results.extend(judge.judge(batch))
            progress.update(len(batch))
    finally:
        progress.close()
    if len(results) != len(items):
        raise RuntimeError(f"judge {judge.name} returned {len(results)} results for {len(items)} games")
    rows = []
    for game, result in zip(games, results):
        rows.append(
            {
                **game,
                "judgment_id": stable_id(game["battle_id"], game["game"], judge.name, judge.version),
                "score_a": result.score_a if result.parse_ok else None,
                "score_b": result.score_b if result.parse_ok else None,
                "parse_ok": result.parse_ok,
                "explanation": result.explanation,
                "raw": result.raw,
                "error": result.error,
                "attempts": result.attempts,
                "judge": judge.name,
                "judge_version": judge.version,
            }
        )
    return pl.DataFrame(rows, schema=JUDGMENT_SCHEMA)


# Battles judged per chunk (one Parquet shard of the round each). A multiple of half `judge_battles`'s
# batch size: the judge sees the same batches of games as it would judging the round in one piece.
CHUNK_BATTLES = 8192


def judge_in_chunks(
    battles: pl.DataFrame,
    inputs: Callable[[list[str]], tuple[pl.DataFrame, pl.DataFrame]],
    judge: Judge,
    write: Callable[[pl.DataFrame], None],
    *,
    chunk_battles: int = CHUNK_BATTLES,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """`judge_battles` over `chunk_battles` battles at a time, each chunk's judgments handed to `write`,
    so a round's answers and judgments never sit in memory whole.

    `inputs(prompt_ids)`: the (responses, prompts) of those prompts. Returns the games and parse failures."""
    counts = {"games": 0, "parse_failures": 0}
    for chunk in battles.iter_slices(chunk_battles):
        responses, prompts = inputs(chunk["prompt_id"].unique().sort().to_list())
        frame = judge_battles(chunk, responses, prompts, judge, log=log)
        write(frame)
        counts["games"] += frame.height
        counts["parse_failures"] += int((~frame["parse_ok"]).sum())
    return counts
