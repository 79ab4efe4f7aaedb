"""`arena-dagster curate`: the prompt curation on files, outside Dagster.

    arena-dagster curate IN.jsonl... --out OUT.jsonl [--against TEST.jsonl...] [--json]

Inputs, `--against` and `--previous` files: JSONL / JSON / CSV / Parquet rows with `prompt`, `messages` or
`turns` (MT-Bench's question.jsonl), ShareGPT JSON, or `sharegpt` for the packaged
ShareGPT conversations. Kept rows are written atomically (a temporary file renamed over
OUT); removed rows go to `--removed PATH` when asked, with the step and the reason.
A record that cannot be read (not UTF-8, a NUL, a lone surrogate, malformed JSON, no prompt)
is quarantined, counted by reason (`quarantine_reasons`) and named on stderr; exit status 0.
The default configuration is the paper's (`--preset paper`); `--set KEY=VALUE` overrides
any `CurationConfig` field (YAML values: `--set decontam_embedding_threshold=null`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from arena_dagster.compute.cli import add_engine_arguments, engine_settings
from arena_dagster.compute.cluster import ClusterError
from arena_dagster.profile_schema.curation import PRESETS, CurationConfig, CurationError
from arena_dagster.prompts.curation_ray import curate_with
from arena_dagster.prompts.ingest import IngestError, against_texts, ingest
from arena_dagster.record_files import write_jsonl_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="prompt files (.jsonl/.json/.csv/.parquet) or 'sharegpt'")
    parser.add_argument("--out", required=True, type=Path, help="where to write the kept rows (JSONL)")
    parser.add_argument("--against", nargs="*", default=[], metavar="TEST",
                        help="test sets to decontaminate against (same forms, or MT-Bench question.jsonl)")
    parser.add_argument("--previous", nargs="*", default=[], metavar="PREV",
                        help="earlier rounds' prompt files: kept rows must not repeat them")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="base configuration (default: paper)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a CurationConfig field; repeatable")
    parser.add_argument("--removed", type=Path, help="also write the removed rows (with step and reason) here")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    add_engine_arguments(parser)


def _config(preset: str, overrides: Iterable[str]) -> CurationConfig:
    import yaml

    settings: dict[str, Any] = {"preset": preset}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CurationError(f"--set expects KEY=VALUE, got {item!r}")
        settings[key.strip()] = yaml.safe_load(value)
    return CurationConfig.from_dict(settings)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        config = _config(args.preset, args.overrides)
        pool = ingest(args.inputs)
        tests, test_ingest = against_texts(args.against) if args.against else ([], None)
        previous_ingest = ingest(args.previous) if args.previous else None
        previous = previous_ingest.rows if previous_ingest is not None else []
        result = curate_with(engine_settings(args), pool.rows, config=config, against=tests, previous=previous)
    except (IngestError, CurationError, FileNotFoundError, ClusterError) as err:
        print(f"arena-dagster curate: {err}", file=sys.stderr)
        return 2
    write_jsonl_atomic(args.out, result.kept)
    if args.removed:
        write_jsonl_atomic(args.removed, result.removed_rows)
    summary = result.summary()
    summary["quarantined"] = sum(int(stats.get("quarantined", 0)) for stats in pool.stats.values())
    summary["quarantine_reasons"] = _reasons(pool)
    summary["against"] = len(tests)
    summary["against_quarantined"] = len(test_ingest.quarantine) if test_ingest is not None else 0
    summary["previous_quarantined"] = len(previous_ingest.quarantine) if previous_ingest is not None else 0
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"input {summary['input']} prompts from {len(args.inputs)} source(s)"
              f" ({summary['quarantined']} unreadable record(s) quarantined)")
        for step, count in summary["removed"].items():
            print(f"  {step:<20} -{count}")
        print(f"kept {summary['kept']} -> {args.out}  ({time.perf_counter() - started:.1f} s)")
    for label, read in (("", pool), ("test-set ", test_ingest), ("previous-round ", previous_ingest)):
        if read is None or not read.quarantine:
            continue
        if label:  # a test item that is not read cannot decontaminate; an earlier prompt not read is not excluded
            print(f"{len(read.quarantine)} unreadable {label}record(s) ignored: {_reasons(read)}", file=sys.stderr)
        for quarantined in read.quarantine[:5]:
            print(f"quarantined {quarantined['source']}:{quarantined['source_line']}: {quarantined['reason']}", file=sys.stderr)
    return 0


def _reasons(read) -> dict[str, int]:
    """Quarantined records by the reader's reason (`invalid_utf8`, `lone_surrogate`, ...) or the row's problem."""
    counts: dict[str, int] = {}
    for quarantined in read.quarantine:
        reason = quarantined["reason"].split(":")[0]
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arena-dagster curate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
