"""`--engine/--workers/--ray-address`: the same three flags on `flywheel` and `curate`."""

from __future__ import annotations

import argparse

from arena_dagster.compute.settings import ENGINES, ComputeSettings


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of workers, 1 or more, got {text!r}")
    return value


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compute engine (overrides the profile's `compute` section)")
    group.add_argument("--engine", choices=ENGINES, default=None, help="run the heavy steps here (local) or on Ray")
    group.add_argument("--workers", type=_positive, default=None, help="Ray workers (model replicas, map workers)")
    group.add_argument("--ray-address", default=None, metavar="A",
                       help="join this Ray cluster ('auto' or ray://host:10001); default: start a local one")


def engine_tags(args: argparse.Namespace) -> dict[str, str]:
    """The run tags that carry the flags to the runs a `flywheel` submits (`ArenaCompute` reads them)."""
    tags = {}
    if args.engine:
        tags["arena/engine"] = args.engine
    if args.workers:
        tags["arena/workers"] = str(args.workers)
    if args.ray_address:
        tags["arena/ray_address"] = args.ray_address
    return tags


def engine_settings(args: argparse.Namespace, base: ComputeSettings | None = None) -> ComputeSettings:
    return (base or ComputeSettings()).overridden(args.engine, args.workers, args.ray_address)
