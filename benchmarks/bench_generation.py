"""Generation throughput: the openai backend against a real local server, the cache, transformers batching.

    .venv/bin/python benchmarks/bench_generation.py                # everything
    .venv/bin/python benchmarks/bench_generation.py --skip-transformers
    .venv/bin/python benchmarks/bench_generation.py --skip-server --tf-prompts 32
    .venv/bin/python benchmarks/bench_generation.py --skip-server --skip-transformers   # commit cost only

Server part (needs scripts/install_server.sh): `--requests` distinct prompts through
`generate_cached` + the openai backend at each `--concurrency`, each level with a fresh cache
(all misses), then the last level again on its filled cache (all hits): its wall time as a
share of the first run (target < 2%). Each completion is committed as it arrives (one small
transaction each), so this also prices the exactly-once commit against the server's own time.

Commit part (no model): `--commits` completions written to a CompletionCache one transaction
per completion through one session (what a streaming backend gets), one transaction per batch of
`--batch-size` (what a batch backend gets), and one connection per completion (the naive way):
microseconds per completion, and the per-completion cost as a share of one server request.

Transformers part: `TransformersBackend` (batched, left-padded, length-sorted) against a plain
loop that calls `model.generate` once per prompt, greedy, same max_new_tokens. The model is
SmolLM2-135M-Instruct from the server install when present, else `--tf-model PATH`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, user_messages  # noqa: E402
from arena_dagster.backends.cache import CompletionCache  # noqa: E402
from arena_dagster.backends.generation import generate_cached  # noqa: E402

TOPICS = ["rivers", "bread", "stars", "chess", "rain", "glass", "owls", "trains", "salt", "maps"]


def prompts(n: int, tag: str) -> list[str]:
    return [f"({tag}-{i}) In one short sentence, say something true about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def bench_server(args: argparse.Namespace) -> dict:
    from arena_dagster.backends.local_server import LocalServer, find_server
    from arena_dagster.backends.openai_backend import OpenAIBackend

    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    results: dict = {"requests": args.requests, "max_tokens": args.max_tokens, "levels": []}
    with LocalServer(find_server(), max_num_seqs=max(args.concurrency)) as server, tempfile.TemporaryDirectory() as tmp:
        print(f"server up at {server.base_url}", flush=True)

        def spec(concurrency: int) -> ModelSpec:
            return ModelSpec(
                name="smollm2", backend="openai", path=server.model, base_url=server.base_url,
                concurrency=concurrency, sampling=sampling, options={"timeout_s": 300},
            )

        warm = [ChatRequest(f"w{i}", user_messages(p), sampling) for i, p in enumerate(prompts(8, "warm"))]
        OpenAIBackend(spec(4)).generate(warm)
        sequential = None
        for level in args.concurrency:
            requests = [ChatRequest(f"c{level}-{i}", user_messages(p), sampling) for i, p in enumerate(prompts(args.requests, f"c{level}"))]
            cache = CompletionCache(Path(tmp) / f"c{level}.sqlite")
            before = server.requests_served()
            result = generate_cached(OpenAIBackend(spec(level)), requests, cache, batch_size=args.batch_size)
            served = server.requests_served() - before
            rate = len(requests) / result.wall_s
            sequential = sequential or rate
            row = {
                "concurrency": level, "wall_s": round(result.wall_s, 2), "req_per_s": round(rate, 2),
                "tokens_out_per_s": round(result.tokens_out / result.wall_s, 1),
                "ratio_to_sequential": round(rate / sequential, 2), "server_requests": served,
            }
            results["levels"].append(row)
            print(json.dumps(row), flush=True)
            last = (requests, cache, result.wall_s, level)
        requests, cache, first_wall, level = last
        before = server.requests_served()
        again = generate_cached(OpenAIBackend(spec(level)), requests, cache, batch_size=args.batch_size)
        assert again.hits == len(requests) and server.requests_served() == before
        results["cached_rerun"] = {
            "first_wall_s": round(first_wall, 3), "cached_wall_s": round(again.wall_s, 4),
            "share_of_first": round(again.wall_s / first_wall, 5),
        }
        print(json.dumps(results["cached_rerun"]), flush=True)
    return results


def bench_commits(args: argparse.Namespace, server_request_s: float | None) -> dict:
    from arena_dagster.backends.base import Completion

    spec = ModelSpec(name="m", backend="openai", path="served", revision="r")
    rows = []
    for i in range(args.commits):
        request = ChatRequest(f"q{i}", user_messages(f"({i}) " + "a realistic prompt of some length " * 8))
        rows.append((request.cache_key(spec), spec, request, Completion(request.request_id, "an answer " * 40, 80, 40)))

    def timed(write) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            cache = CompletionCache(Path(tmp) / "c.sqlite")
            started = time.perf_counter()
            write(cache)
            elapsed = time.perf_counter() - started
            assert len(cache) == len(rows)
        return elapsed / len(rows) * 1e6

    def per_completion(cache: CompletionCache) -> None:
        with cache.session() as session:
            for row in rows:
                session.put(*row)

    def per_batch(cache: CompletionCache) -> None:
        with cache.session() as session:
            for start in range(0, len(rows), args.batch_size):
                session.put_many(rows[start : start + args.batch_size])

    def connection_each(cache: CompletionCache) -> None:
        for row in rows:
            cache.put_many([row])

    report = {
        "completions": len(rows),
        "us_per_completion_one_txn_each": round(timed(per_completion), 1),
        f"us_per_completion_one_txn_per_{args.batch_size}": round(timed(per_batch), 1),
        "us_per_completion_new_connection_each": round(timed(connection_each), 1),
    }
    if server_request_s:
        report["share_of_one_server_request"] = round(report["us_per_completion_one_txn_each"] / 1e6 / server_request_s, 6)
    print(json.dumps(report), flush=True)
    return report


def bench_transformers(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from arena_dagster.backends.transformers_backend import TransformersBackend

    model_dir = Path(args.tf_model) if args.tf_model else None
    if model_dir is None:
        from arena_dagster.backends.local_server import find_server

        model_dir = find_server().model_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = prompts(args.tf_prompts, "tf")
    # Varied lengths, as real prompt pools have: sorting by length is part of what is measured.
    texts = [t + " Explain briefly." * (i % 4) for i, t in enumerate(texts)]
    sampling = SamplingParams(max_tokens=args.tf_max_tokens, temperature=0.0)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    started = time.perf_counter()
    plain_tokens = 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = model.generate(**ids, max_new_tokens=args.tf_max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            plain_tokens += out.shape[1] - ids["input_ids"].shape[1]
    plain_s = time.perf_counter() - started
    del model

    spec = ModelSpec(name="tf", backend="transformers", path=str(model_dir), sampling=sampling,
                     options={"batch_size": args.tf_batch_size, "device": "cpu"})
    backend = TransformersBackend(spec)
    backend.generate([ChatRequest("warm", user_messages("hi"), SamplingParams(max_tokens=2))])  # load once
    requests = [ChatRequest(f"t{i}", user_messages(t), sampling) for i, t in enumerate(texts)]
    started = time.perf_counter()
    completions = backend.generate(requests)
    batched_s = time.perf_counter() - started
    batched_tokens = sum(c.tokens_out for c in completions)
    row = {
        "model": str(model_dir), "prompts": len(texts), "max_new_tokens": args.tf_max_tokens,
        "batch_size": args.tf_batch_size, "plain_loop_s": round(plain_s, 2), "backend_s": round(batched_s, 2),
        "speedup": round(plain_s / batched_s, 2),
        "plain_tokens_per_s": round(plain_tokens / plain_s, 1), "backend_tokens_per_s": round(batched_tokens / batched_s, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-commits", action="store_true")
    parser.add_argument("--commits", type=int, default=2000, help="completions written by the commit part")
    parser.add_argument("--tf-model", help="HF model folder for the transformers part")
    parser.add_argument("--tf-prompts", type=int, default=32)
    parser.add_argument("--tf-max-tokens", type=int, default=32)
    parser.add_argument("--tf-batch-size", type=int, default=16)
    # 1 by default: on a small shared machine, OpenMP threads waiting for a busy core make every op
    # of a one-prompt forward pass ~10x slower, which would flatter batching.
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the transformers part (0: torch default)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict = {}
    if not args.skip_server:
        report["server"] = bench_server(args)
    if not args.skip_commits:
        level = (report.get("server") or {}).get("levels", [{}])[-1]
        request_s = level["concurrency"] / level["req_per_s"] if level else None  # one request's own time
        report["commits"] = bench_commits(args, request_s)
    if not args.skip_transformers:
        report["transformers"] = bench_transformers(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
