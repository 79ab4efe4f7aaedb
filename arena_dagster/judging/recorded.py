"""The `recorded` judge: verdicts replayed from judgment files made elsewhere.

A user who already holds arena-hard-auto or FastChat MT-Bench judgments can run the
flywheel's battle SQL, judge health and leaderboard on them: each game the flywheel asks
about is looked up by (prompt id, model shown as A, model shown as B) in the files, and its
verdict is turned into the pair of 1-10 scores the rest of the flywheel reads.

Profile section (`judge:`):
  kind: recorded
  format: arena-hard | mt-bench-pair
  paths: [files or folders of judgment files]
  baseline: NAME        # arena-hard v0.1 files do not name their baseline
  turn: 1               # mt-bench-pair: the turn whose verdicts are replayed
  scores: {A>>B: [9, 3], ...}   # optional: the score pair of each verdict (default VERDICT_SCORES)

The files hold only some games, so the arena plans only those (`plan`): arena-hard judged
every model against one baseline, game 1 showing the baseline as A; MT-Bench pairwise files
hold the pairs they judged. A planned game of a prompt and a pair the files know, whose row
is absent or has no readable verdict, replays as a parse failure (counted by judge health,
its battle dropped); a model, prompt or pair the files never mention is an error.

The default scores keep arena-hard's weighting: the score gap of a strong verdict (6) is
three times that of a plain one (2), so when the flywheel averages the two games a strong
win outweighs a plain loss, as a weight-3 battle does in arena-hard's own scoring.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

import polars as pl

from arena_dagster.judging.battles import JudgeItem, JudgeResult, plan_round_robin, plan_target_battles
from arena_dagster.names import NameBook
from arena_dagster.profile_schema.constants import VERDICT_SCORES
from arena_dagster.profile_schema.judges import RecordedJudge as RecordedJudgeSettings
from arena_dagster.ratings.errors import RatingsError
from arena_dagster.ratings.judgments import JUDGMENT_SUFFIXES, RecordedGame, arena_hard_games, mt_bench_games
from arena_dagster.ratings.records import as_paths


class RecordedJudgeError(RatingsError):
    """A recorded judge that cannot be built, or asked for a game its files do not hold."""


def _scores(given: dict[str, list[int]] | None) -> dict[str, tuple[int, int]]:
    """judge.scores (the schema holds every verdict's pair to two scores in 1-10), else the default mapping."""
    if given is None:
        return dict(VERDICT_SCORES)
    return {verdict: (pair[0], pair[1]) for verdict, pair in given.items()}


class RecordedJudge:
    """Replays recorded verdicts; `judge(items)` needs items that name their models
    (`model_a`, `model_b`: the models shown as A and B)."""

    def __init__(self, settings: RecordedJudgeSettings) -> None:
        self.format = settings.format
        paths = [settings.paths] if isinstance(settings.paths, str) else settings.paths
        self.paths = as_paths(paths, suffixes=JUDGMENT_SUFFIXES)
        self.turn = settings.turn
        self.scores = _scores(settings.scores)
        self.rejected: Counter = Counter()
        self.games: dict[tuple[str, str, str], RecordedGame] = {}
        names = NameBook(fix="use one spelling in the judgment files, or rate them with `leaderboard --rename`")
        for game in self._read(settings.baseline, names):
            key = (game.question_id, game.model_a, game.model_b)
            if key in self.games:
                self.rejected["duplicate_game"] += 1
            else:
                self.games[key] = game
        names.check()  # names the files spell alike would be two arena models that print alike
        if not self.games:
            raise RecordedJudgeError(f"judge.paths: no recorded games in {[str(p) for p in self.paths]} "
                                     f"(rejected rows: {dict(self.rejected) or 'none'})")
        self.prompts = {key[0] for key in self.games}
        self.pairs = {key[1:] for key in self.games}
        self.baseline = self._baseline(settings.baseline)
        self.name = settings.name or f"recorded-{self.format}"
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        digest.update(repr((settings.baseline, self.turn, sorted(self.scores.items()))).encode())
        # the judgment ids (and caches) change whenever the files or the score mapping do
        self.version = f"recorded-{self.format}-{digest.hexdigest()[:12]}"

    def _read(self, baseline: str | None, names: NameBook):
        if self.format == "arena-hard":
            for games, problem, _ in arena_hard_games(self.paths, baseline=baseline, rejected=self.rejected, names=names):
                if problem == "baseline_vs_itself":
                    self.rejected[problem] += 1
                    continue
                yield from games  # an absent or unreadable game replays as a parse failure
        else:
            for row, games in mt_bench_games(self.paths, rejected=self.rejected, names=names):
                if row[1] == self.turn:
                    yield from games

    def _baseline(self, configured: str | None) -> str | None:
        """arena-hard: the model every game was played against (named, or the one model shown as A in game 1)."""
        if self.format != "arena-hard":
            return None
        shown_first = {game.model_a for game in self.games.values() if game.game == 1}
        if configured is None and len(shown_first) == 1:
            return next(iter(shown_first))
        return configured

    def prompt_ids(self) -> list[str]:
        """Every prompt (question id) the files judged, sorted: a replay's arena test set."""
        return sorted(self.prompts)

    def models(self) -> set[str]:
        """Every model the files judged (the baseline included)."""
        return {model for pair in self.pairs for model in pair}

    def plan(self, round_key: int, prompt_ids: Sequence[str], models: Sequence[str]) -> pl.DataFrame:
        """The arena battles the recordings hold, among `models` on `prompt_ids` (the schema of
        judging.battles' plans): arena-hard, every model against the baseline (model_x, shown as
        A in game 1 as arena-hard did); MT-Bench, every pair of models the files judged."""
        unknown = sorted(set(models) - self.models())
        if unknown:
            raise RecordedJudgeError(
                f"the arena holds model(s) {unknown} that the {len(self.paths)} recorded {self.format} file(s) never judged "
                f"(they judged {len(self.models())} models, e.g. {sorted(self.models())[:5]}); declare only judged models, "
                "under the name the files use, or add their judgment files to judge.paths"
            )
        if self.format == "arena-hard":
            if self.baseline is None:
                raise RecordedJudgeError("judge.baseline: the arena-hard files judge against several baselines; name one")
            if self.baseline not in models:
                raise RecordedJudgeError(
                    f"every recorded arena-hard game is against the baseline {self.baseline!r}, which the arena does not "
                    "hold; declare it as a model (competitor or initial target)"
                )
            return plan_target_battles(round_key, prompt_ids, self.baseline, sorted(set(models) - {self.baseline}))
        plan = plan_round_robin(round_key, prompt_ids, models)
        return plan.filter(pl.Series([pair in self.pairs for pair in plan.select("model_x", "model_y").iter_rows()],
                                     dtype=pl.Boolean))

    def verdict(self, prompt_id: str, model_a: str, model_b: str) -> JudgeResult:
        """The recorded game of `prompt_id` that showed model_a as A and model_b as B.

        A prompt and a pair the files know, without this game (a row absent, a game left out)
        or with an unreadable verdict: a parse failure. Anything else was never recorded: an error."""
        game = self.games.get((str(prompt_id), model_a, model_b))
        if game is None:
            if str(prompt_id) in self.prompts and (model_a, model_b) in self.pairs:
                return JudgeResult(None, None, "", "", False, error="the files hold no game of this prompt and pair")
            raise RecordedJudgeError(
                f"no recorded game of prompt {prompt_id!r} with {model_a!r} as A and {model_b!r} as B "
                f"in {len(self.paths)} {self.format} file(s); plan only the battles the recordings hold"
                + (" (arena-hard: every model against its baseline, in both orders)" if self.format == "arena-hard" else "")
            )
        if game.verdict is None:
            return JudgeResult(None, None, game.explanation, "", False, error="the recorded game has no readable verdict")
        score_a, score_b = self.scores[game.verdict]
        return JudgeResult(score_a, score_b, game.explanation, game.verdict, True)

    def judge(self, items: Sequence[JudgeItem], log=None) -> list[JudgeResult]:
        results = []
        for item in items:
            if not item.model_a or not item.model_b:
                raise RecordedJudgeError(
                    "the recorded judge looks verdicts up by model: judge items must carry model_a and model_b "
                    "(the models shown as A and B)"
                )
            results.append(self.verdict(item.prompt_id, item.model_a, item.model_b))
        return results


def judgment_battles(judgments: pl.DataFrame, *, strong_weight: float = 3.0) -> tuple[pl.DataFrame, dict[str, int]]:
    """Replayed judgments (one row per game: battle_id, prompt_id, model_a, model_b, raw,
    parse_ok, as `judge_battles` writes them) -> one weighted battle per game, as the
    `arena-hard` importer makes them: the winner of the verdict in `raw`, weight
    `strong_weight` for a strong one. A battle counts only when both its games carry a
    verdict (as two_game.sql and the importer's `missing_game`); the others are counted in
    the returned {reason: games} as `battle_without_two_verdicts`."""
    verdict = pl.col("raw")
    readable = pl.col("parse_ok") & verdict.is_in(list(VERDICT_SCORES))
    judged = judgments.with_columns(readable.alias("_readable"))
    complete = judged.group_by("battle_id").agg((pl.col("_readable").sum() == 2).alias("_complete"))
    judged = judged.join(complete, on="battle_id", how="left")
    dropped = judged.filter(~pl.col("_complete")).height
    battles = judged.filter(pl.col("_complete")).select(
        pl.col("prompt_id").alias("question_id"),
        "model_a",
        "model_b",
        pl.when(verdict.str.starts_with("A>")).then(pl.lit("model_a"))
        .when(verdict.str.starts_with("B>")).then(pl.lit("model_b"))
        .otherwise(pl.lit("tie")).alias("winner"),
        pl.when(verdict.str.contains(">>", literal=True)).then(pl.lit(float(strong_weight)))
        .otherwise(pl.lit(1.0)).alias("weight"),
    )
    return battles, ({"battle_without_two_verdicts": dropped} if dropped else {})
