"""`arena-dagster generate`: answer a prompt file with one model through the cached backend layer.

    arena-dagster generate --config FILE --model NAME --prompts IN.jsonl --out OUT.jsonl [--home DIR]
    arena-dagster generate --backend openai --base-url URL --model-name NAME [--api-key-env VAR]
        [--concurrency N] [--max-tokens N] --prompts IN.jsonl --out OUT.jsonl

Input rows: `id` and `prompt` (a string) or `messages` (a list of {role, content}).
Output rows: `id`, `model`, `completion`, `tokens_in`, `tokens_out`, `finish_reason`, `cached`,
in input order, written atomically. The cache is HOME/cache/completions.sqlite, shared with the
Dagster assets, so this fills or warms it for them. Each answer is committed to the cache as it
arrives: a run killed or failed part-way is resumed by running the same command again.

A user error (bad prompt file, unset key variable, dead server, damaged cache, full disk) is one
line on stderr, `arena-dagster: <what> (<input>): <fix>`, exit status 2; credentials in URLs
are never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams
from arena_dagster.backends.redact import redact
from arena_dagster.backends.registry import BACKENDS, ModelConfigError, model_spec_from_config
from arena_dagster.errors import ArenaError
from arena_dagster.record_files import RecordFileError, read_text, strict_records, text_problem, write_jsonl_atomic

EXIT_USER_ERROR = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130


class PromptFileError(ArenaError, ValueError):
    pass


class OutputFileError(ArenaError, OSError):
    pass


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    source = parser.add_argument_group("model from a config file")
    source.add_argument("--config", type=Path, help="YAML file with a `models:` mapping (name -> model config)")
    source.add_argument("--model", help="name of the model in --config")
    one_off = parser.add_argument_group("one-off model (instead of --config/--model)")
    one_off.add_argument("--backend", choices=BACKENDS, help="backend of a one-off model")
    one_off.add_argument("--base-url", help="server URL, e.g. http://127.0.0.1:8000/v1")
    one_off.add_argument("--model-name", help="served model name (openai) or model path (transformers, vllm, recorded)")
    one_off.add_argument("--api-key-env", default="", help="name of the environment variable that holds the API key")
    one_off.add_argument("--concurrency", type=_count(1), help="requests in flight (openai)")
    one_off.add_argument("--revision", default="", help="model revision: part of every cache key")
    parser.add_argument("--max-tokens", type=_count(1), help="override sampling.max_tokens")
    parser.add_argument("--prompts", type=Path, required=True, help="input JSONL: id + prompt or messages")
    parser.add_argument("--out", type=Path, required=True, help="output JSONL (written atomically)")
    parser.add_argument("--home", help="ARENA_HOME (default: $ARENA_HOME or ./.arena); the cache lives under it")
    parser.add_argument("--template-version", default="", help="prompt template version: part of every cache key")
    parser.add_argument("--batch-size", type=_count(1), default=64,
                        help="requests per batch of a batch backend (and per token-budget check)")
    parser.add_argument("--max-requests", type=_count(0), help="budget: stop cleanly after this many generated requests")
    parser.add_argument("--max-total-tokens", type=_count(0), help="budget: stop cleanly after this many tokens in+out")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def read_models_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path` (a `models:` mapping of name -> model config); errors are one line."""
    import yaml

    fix = "give a YAML file with a `models:` mapping of name -> model config to --config"
    if not path.exists():
        raise ModelConfigError("model config file not found", str(path), fix)
    try:
        data = yaml.safe_load(read_text(path))
    except RecordFileError as exc:
        raise ModelConfigError(f"model config file: {exc.what}", exc.input, fix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ModelConfigError(f"not valid YAML ({getattr(exc, 'problem', None) or exc})", where, fix) from None
    if not isinstance(data, dict):
        raise ModelConfigError("a model config file must be a YAML mapping", str(path), fix)
    problem = text_problem(data)
    if problem:
        raise ModelConfigError(f"{problem[0].replace('_', ' ')} in a value: {problem[1]}", str(path), fix)
    return data


def _spec_from_args(args: argparse.Namespace) -> ModelSpec:
    if args.config or args.model:
        if args.backend or args.model_name or args.base_url:
            raise ModelConfigError("give either --config/--model or --backend/--model-name, not both")
        if not (args.config and args.model):
            raise ModelConfigError("--config and --model go together")
        config = read_models_file(args.config)
        models = config.get("models")
        if not isinstance(models, dict) or not models:
            raise ModelConfigError(f"{args.config}: no `models:` mapping")
        if args.model not in models:
            raise ModelConfigError(f"{args.config}: no model {args.model!r} (known: {', '.join(sorted(models))})")
        spec = model_spec_from_config(args.model, models[args.model])
        overrides: dict[str, Any] = {}
        if args.concurrency:
            overrides["concurrency"] = args.concurrency
        if overrides:
            spec = dataclasses.replace(spec, **overrides)
    else:
        if not (args.backend and args.model_name):
            raise ModelConfigError("give --config and --model, or --backend and --model-name")
        cfg: dict[str, Any] = {"backend": args.backend, "model": args.model_name, "revision": args.revision}
        if args.base_url:
            cfg["base_url"] = args.base_url
        if args.api_key_env:
            cfg["api_key_env"] = args.api_key_env
        if args.concurrency:
            cfg["concurrency"] = args.concurrency
        spec = model_spec_from_config(args.model_name, cfg)
    if args.max_tokens:
        spec = dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling, max_tokens=args.max_tokens))
    return spec


def read_prompts(path: Path, sampling: SamplingParams, template_version: str = "") -> list[ChatRequest]:
    """Chat requests from a prompt file (JSONL, JSON, CSV or Parquet; the package's reader: a BOM or CRLF
    reads as clean UTF-8); a bad row (bad text, malformed, incomplete) is an error naming its line."""
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist", fix="give an existing JSONL file to --prompts")
    requests: list[ChatRequest] = []
    seen: dict[str, int] = {}
    try:
        for number, row in strict_records(path):
            where = f"{path}:{number}"
            row_id = row.get("id")
            if row_id is None or str(row_id) == "":
                raise PromptFileError(f"{where}: missing `id`")
            row_id = str(row_id)
            if row_id in seen:
                raise PromptFileError(f"{where}: duplicate id {row_id!r} (first on line {seen[row_id]})")
            seen[row_id] = number
            messages = row.get("messages")
            if messages is not None:
                if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages
                ):
                    raise PromptFileError(f"{where}: `messages` must be a non-empty list of {{role, content}} strings")
                chat = tuple({"role": m["role"], "content": m["content"]} for m in messages)
            elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
                chat = ({"role": "user", "content": row["prompt"]},)
            else:
                raise PromptFileError(f"{where}: row {row_id!r} needs a non-empty `prompt` string or `messages`")
            requests.append(ChatRequest(row_id, chat, sampling=sampling, template_version=template_version))
    except RecordFileError as exc:
        fix = "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)" if "UTF-8" in exc.what else None
        raise PromptFileError(f"{exc.input}: {exc.what}", fix=fix) from None
    return requests


def run(args: argparse.Namespace) -> int:
    """Run `generate`; a user error is one line on stderr and exit status 2 (`--debug`: the traceback)."""

    def say(message: str) -> None:
        if not args.quiet:
            print(redact(message), file=sys.stderr, flush=True)

    try:
        return _generate(args, say)
    except ArenaError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"arena-dagster: {redact(exc)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("arena-dagster: interrupted: every answer received so far is in the cache; "
              "run the same command again to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _generate(args: argparse.Namespace, say: Any) -> int:
    from arena_dagster.backends.cache import CompletionCache
    from arena_dagster.backends.generation import GenerationBudget, generate_cached
    from arena_dagster.backends.registry import make_backend
    from arena_dagster.config import resolve_home

    spec = _spec_from_args(args)
    requests = read_prompts(args.prompts, spec.sampling, args.template_version)
    backend = make_backend(spec)  # a bad model config or an unset key variable fails before the cache is touched
    cache = CompletionCache(resolve_home(args.home) / "cache" / "completions.sqlite")
    budget = None
    if args.max_requests is not None or args.max_total_tokens is not None:
        budget = GenerationBudget(max_requests=args.max_requests, max_tokens=args.max_total_tokens)
    result = generate_cached(backend, requests, cache, batch_size=args.batch_size, budget=budget, log=say)
    write_output(
        args.out,
        [
            {
                "id": c.request_id,
                "model": spec.name,
                "completion": c.text,
                "tokens_in": c.tokens_in,
                "tokens_out": c.tokens_out,
                "finish_reason": c.finish_reason,
                "cached": c.cached,
            }
            for c in result.completions
        ],
    )
    say(
        f"{spec.name}: wrote {len(result.completions)} rows to {args.out} "
        f"({result.hits} cached, {result.generated} generated, {result.tokens_in}+{result.tokens_out} tokens, "
        f"{result.wall_s:.2f} s)"
    )
    if result.stopped_by_budget:
        say(f"{spec.name}: budget reached, {len(result.missing_request_ids)} prompts unanswered; rerun to resume")
        return EXIT_BUDGET
    return 0


def write_output(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    try:
        write_jsonl_atomic(path, rows)
    except OSError as exc:
        detail = exc.strerror or str(exc)
        if exc.filename and str(exc.filename) != str(path):
            detail += f": {exc.filename}"
        raise OutputFileError(
            f"cannot write the answers ({detail})", str(path),
            "choose a writable --out (and free disk space); the answers are cached, so the rerun sends nothing",
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="arena-dagster generate", description=__doc__.split("\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
