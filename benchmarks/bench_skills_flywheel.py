"""The skills flywheel without Dagster: base models, then N rounds of battles -> SFT -> DPO.

Used to tune the embedded default's model and training settings. Prints test accuracy per
family for every model after each round, Bradley-Terry ratings with bootstrap intervals on
the test set, and wall times per phase.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_skills_flywheel.py --home /tmp/bench_skills
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages
from arena_dagster.backends.transformers_backend import TransformersBackend
from arena_dagster.judging.verifier import judge_pair
from arena_dagster.prompts.skills import FAMILIES, make_items
from arena_dagster.training.base_models import build_base_models, chat_row, resolve_profile, write_jsonl
from arena_dagster.training.stages import stage_training_spec
from arena_dagster.training.runner import run_training

SAMPLING = SamplingParams(max_tokens=24)


def answer(path: str, items, threads: int = 2) -> list[str]:
    backend = TransformersBackend(ModelSpec(name=Path(path).name, backend="transformers", path=path, options={"threads": threads}))
    requests = [ChatRequest(request_id=i.item_id, messages=user_messages(i.prompt), sampling=SAMPLING) for i in items]
    return [c.text for c in backend.generate(requests)]


def scores(items, answers) -> list[int]:
    out = []
    for item, text in zip(items, answers):
        verdict = judge_pair(family=item.family, reference=item.reference, prompt=item.prompt, answer_a=text, answer_b="")
        out.append(verdict["score_a"])
    return out


def accuracy_by_family(items, model_scores) -> dict[str, float]:
    by = defaultdict(list)
    for item, score in zip(items, model_scores):
        by[item.family].append(score == 10)
    table = {family: sum(v) / len(v) for family, v in sorted(by.items())}
    table["ALL"] = sum(s == 10 for s in model_scores) / len(model_scores)
    return table


def bradley_terry(battles: list[tuple[str, str, float]], models: list[str], iters: int = 200) -> dict[str, float]:
    """MM algorithm (Hunter 2004) with ties as half wins; returns ratings on the Elo scale (base 10, 400)."""
    index = {m: i for i, m in enumerate(models)}
    wins = [[0.0] * len(models) for _ in models]
    for a, b, outcome in battles:
        wins[index[a]][index[b]] += outcome
        wins[index[b]][index[a]] += 1 - outcome
    strength = [1.0] * len(models)
    for _ in range(iters):
        new = []
        for i in range(len(models)):
            total_wins = sum(wins[i]) + 0.01
            denom = sum((wins[i][j] + wins[j][i]) / (strength[i] + strength[j]) for j in range(len(models)) if j != i)
            new.append(total_wins / denom if denom else strength[i])
        mean_log = sum(math.log(s) for s in new) / len(new)
        strength = [s / math.exp(mean_log) for s in new]
    return {m: 1000 + 400 * math.log10(strength[index[m]]) for m in models}


def leaderboard(items, model_scores: dict[str, list[int]], rounds: int = 100) -> dict[str, tuple[float, float, float]]:
    models = list(model_scores)
    battles = []
    for k in range(len(items)):
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                sa, sb = model_scores[a][k], model_scores[b][k]
                battles.append((a, b, 1.0 if sa > sb else 0.0 if sa < sb else 0.5))
    point = bradley_terry(battles, models)
    rng = random.Random(0)
    samples = defaultdict(list)
    for _ in range(rounds):
        resampled = [battles[rng.randrange(len(battles))] for _ in battles]
        for m, r in bradley_terry(resampled, models, iters=60).items():
            samples[m].append(r)
    out = {}
    for m in models:
        s = sorted(samples[m])
        out[m] = (point[m], s[int(0.025 * len(s))], s[int(0.975 * len(s)) - 1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default="/tmp/bench_skills")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts-per-round", type=int, default=350)
    parser.add_argument("--test-items", type=int, default=200)
    parser.add_argument("--margin", type=int, default=2, help="K: minimum score margin for SFT/DPO rows")
    parser.add_argument("--min-winner-score", type=int, default=10)
    parser.add_argument("--profile", default="", help="JSON file with a partial models profile")
    parser.add_argument("--no-dpo", action="store_true")
    parser.add_argument("--no-accumulate", dest="accumulate", action="store_false", help="SFT on this round's rows only")
    args = parser.parse_args()
    home = Path(args.home)
    profile = resolve_profile(json.loads(Path(args.profile).read_text()) if args.profile else None)
    timings: dict[str, float] = {}
    log_lines: list[str] = []

    def log(line: str) -> None:
        log_lines.append(line)
        if "reusing" in line or "wrote" in line or "rows (+" in line:
            print("   ", line, flush=True)

    test = make_items(args.test_items, seed=424242)
    test_prompts = {i.prompt for i in test}
    started = time.time()
    base = build_base_models(home, profile, exclude_prompts=test_prompts, log=log)
    timings["base_models"] = time.time() - started
    for name, manifest in base["manifests"].items():
        print(f"  {name}: {manifest['wall_s']} s, loss {manifest['metrics']['first_loss']:.2f} -> {manifest['metrics']['final_loss']:.3f}")

    t = time.time()
    test_scores = {name: scores(test, answer(path, test)) for name, path in base["competitors"].items()}
    test_scores["target_r0"] = scores(test, answer(base["initial_target"], test))
    timings["eval_base"] = time.time() - t
    print_accuracy(test, test_scores)

    accumulated: dict[str, dict] = {}
    target_path = base["initial_target"]
    competitor_paths = base["competitors"]
    for round_key in range(1, args.rounds + 1):
        t = time.time()
        items = [i for i in make_items(args.prompts_per_round, seed=1000 + round_key) if i.prompt not in test_prompts]
        target_answers = answer(target_path, items)
        target_scores = scores(items, target_answers)
        comp = {name: answer(path, items) for name, path in competitor_paths.items()}
        comp_scores = {name: scores(items, ans) for name, ans in comp.items()}
        timings[f"r{round_key}_generate_judge"] = time.time() - t
        sft_rows, dpo_rows = {}, {}
        for k, item in enumerate(items):
            for name in comp:
                winner_score, loser_score = comp_scores[name][k], target_scores[k]
                chosen, rejected = comp[name][k], target_answers[k]
                if winner_score < loser_score:
                    winner_score, loser_score, chosen, rejected = loser_score, winner_score, rejected, chosen
                if winner_score - loser_score < args.margin:
                    continue
                if chosen != target_answers[k] and winner_score >= args.min_winner_score:
                    sft_rows[item.prompt] = chat_row(item.prompt, chosen)
                dpo_rows[(item.prompt, chosen, rejected)] = {"prompt": item.prompt, "chosen": chosen, "rejected": rejected}
        round_dir = home / f"round{round_key}"
        if args.accumulate:
            accumulated.update(sft_rows)
            sft_rows = dict(accumulated)
        sft_path = write_jsonl(round_dir / "sft.jsonl", sft_rows.values())
        dpo_path = write_jsonl(round_dir / "dpo.jsonl", dpo_rows.values())
        sft_spec = stage_training_spec(
            "sft", round_key=round_key, base_model=target_path, dataset=sft_path, output_dir=round_dir / f"sft_r{round_key}",
            models_settings=profile, locally_built=True, replay_dataset=base["replay_dataset"],
        )
        dpo_spec = stage_training_spec(
            "dpo", round_key=round_key, base_model=sft_spec["output_dir"], dataset=dpo_path,
            output_dir=round_dir / f"dpo_r{round_key}", models_settings=profile, locally_built=True,
        )
        t = time.time()
        sft_manifest = run_training(sft_spec, log=log)
        timings[f"r{round_key}_sft"] = time.time() - t
        candidates = {f"sft_r{round_key}": sft_spec["output_dir"]}
        if not args.no_dpo and dpo_rows:
            t = time.time()
            dpo_manifest = run_training(dpo_spec, log=log)
            timings[f"r{round_key}_dpo"] = time.time() - t
            candidates[f"dpo_r{round_key}"] = dpo_spec["output_dir"]
            print(f"  dpo: {dpo_manifest['dataset_rows']} pairs, {dpo_manifest['metrics']}")
        print(
            f"round {round_key}: target won {sum(1 for k in range(len(items)) for n in comp if target_scores[k] > comp_scores[n][k])}"
            f"/{len(items) * len(comp)}; sft rows {len(sft_rows)}, dpo pairs {len(dpo_rows)}; sft loss {sft_manifest['metrics']['final_loss']}"
        )
        t = time.time()
        for name, path in candidates.items():
            test_scores[name] = scores(test, answer(path, test))
        timings[f"r{round_key}_eval"] = time.time() - t
        best = max(candidates, key=lambda n: sum(s == 10 for s in test_scores[n]))
        target_path = candidates[f"dpo_r{round_key}"] if f"dpo_r{round_key}" in candidates else candidates[best]
        print_accuracy(test, test_scores)

    models = [*base["competitors"], "target_r0", *[n for n in test_scores if n.startswith("dpo_") or n.startswith("sft_")]]
    board = leaderboard(test, {m: test_scores[m] for m in models})
    print("\nBradley-Terry on the test set (point, 95% CI):")
    for m, (point, low, high) in sorted(board.items(), key=lambda kv: -kv[1][0]):
        print(f"  {m:12s} {point:7.1f}  [{low:7.1f}, {high:7.1f}]")
    last = [m for m in models if m.startswith("dpo_") or m.startswith("sft_")][-1] if args.rounds else "target_r0"
    print(f"\nlast target {last} ci_low {board[last][1]:.1f} vs initial ci_high {board['target_r0'][2]:.1f}: "
          f"{'SEPARATED' if board[last][1] > board['target_r0'][2] else 'overlapping'}")
    print("\ntimings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print("total", round(sum(timings.values()), 1))


def print_accuracy(test, test_scores: dict[str, list[int]]) -> None:
    tables = {name: accuracy_by_family(test, s) for name, s in test_scores.items()}
    columns = [*FAMILIES, "ALL"]
    print(f"{'model':12s} " + " ".join(f"{c[:7]:>7s}" for c in columns))
    for name, table in tables.items():
        print(f"{name:12s} " + " ".join(f"{table.get(c, 0):7.2f}" for c in columns))


if __name__ == "__main__":
    main()
