"""Base models of a profile from a cold and from a warm shared cache (issue 15: a second home starts in seconds).

    python benchmarks/bench_base_model_cache.py [--profile skills] [--workdir DIR]

Builds the profile's base models (tokenizer, competitors, initial target) three times, each in
a fresh home: with the cache off (what every home paid before the cache), into an empty cache
(cold: trains and publishes), and into a second home from that cache (warm: copies). Prints the
wall time of each and the warm/cold ratio. The arena test set is not excluded here (the
flywheel excludes it; that changes the data, not the time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from arena_dagster.config import load_settings
from arena_dagster.profile_schema.models import SkillsModels
from arena_dagster.training.base_models import build_base_models


def _timed(home: Path, models: SkillsModels, cache: Path | None) -> tuple[float, dict]:
    if cache is None:
        os.environ["ARENA_CACHE"] = "off"
    else:
        os.environ["ARENA_CACHE"] = str(cache)
    lines: list[str] = []
    started = time.perf_counter()
    built = build_base_models(home, models, log=lines.append)
    return time.perf_counter() - started, {"built": built, "lines": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="skills")
    parser.add_argument("--workdir", default=None, help="where the homes and the cache go (default: a temporary folder)")
    parser.add_argument("--skip-uncached", action="store_true", help="only cold and warm (the uncached run is the cold one's time)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    models = load_settings(args.profile).models
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cache-"))
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    if not args.skip_uncached:
        rows.append(("cache off", *_timed(work / "home-off" / "models", models, None)))
    rows.append(("cold cache", *_timed(work / "home-cold" / "models", models, cache)))
    rows.append(("warm cache", *_timed(work / "home-warm" / "models", models, cache)))
    names = list(models["competitors"]) + [models["initial_target"]["name"]]
    print(f"profile {args.profile}: {len(names)} base models ({', '.join(names)}), {os.cpu_count()} cores")
    for label, seconds, result in rows:
        copied = sum("copied from the base-model cache" in line for line in result["lines"])
        trained = sum("] wrote" in line for line in result["lines"])
        print(f"  {label:<11} {seconds:8.1f} s   trained {trained}, copied {copied} (tokenizer included)")
    cold = next(s for label, s, _ in rows if label == "cold cache")
    warm = next(s for label, s, _ in rows if label == "warm cache")
    print(f"  warm / cold: {warm / cold:.3f} ({cold / warm:.0f}x faster)")
    hashes = {label: {n: r["built"]["manifests"][n]["spec_hash"][:12] for n in names} for label, _, r in rows}
    print(f"  same identities in every home: {len({tuple(sorted(h.items())) for h in hashes.values()}) == 1}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
