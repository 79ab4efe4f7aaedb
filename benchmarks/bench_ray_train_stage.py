"""One training stage on Ray Train against the same stage in a local process (issue 21: the fixed cost of a stage).

    python benchmarks/bench_ray_train_stage.py [--home /work/cache/smoke-b3b] [--stages sft,dpo] [--workers 2]

Copies a flywheel home's round-1 data and base model (the stage's `manifest.json` names them) into a temporary
folder, then trains each stage as its asset does (`launch_training` under `dg.materialize`): in a local process,
then as a Ray job (dagster-ray's PipesRayJobClient) on a local cluster of `workers` CPUs started here with its
dashboard, as the flywheel's own. The phases come from the run's log entries (their timestamps):
  submit   step start -> the job's driver opened Dagster Pipes (job submission, runtime_env, driver start)
  driver   -> "[stage] on Ray Train" (the driver's spec and data checks)
  group    -> "[stage] N rows" (Ray Train's controller, the worker group, gloo, imports, model and data load)
  train    -> "[stage] wrote" (the steps, the save)
  end      -> the step's success (the worker group's and driver's end, the job's end noticed)
The CPU seconds are those of this process's descendants (the local training process, or the cluster's
processes), sampled every 0.2 s. Run it on an idle machine, or read the figures beside `uptime`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

PHASES = (("submit", "opened dagster pipes"), ("driver", "on Ray Train"), ("group", " rows (+"), ("train", "] wrote "))
MANIFEST_STAGES = {"sft": "SFT-I1", "dpo": "DPO-I1"}


def stage_spec(home: Path, stage: str, work: Path) -> dict:
    """The stage's round-1 spec from its manifest in `home`, its files copied into `work`."""
    manifest = json.loads((home / "checkpoints" / MANIFEST_STAGES[stage] / "manifest.json").read_text())

    def copied(path: str) -> str:
        # The manifest names the folders of the home that built it: the same path below `home` here.
        relative = Path(path).relative_to(next(p for p in Path(path).parents if p.name == "home"))
        target = work / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (home / relative).is_dir() else shutil.copy2)(home / relative, target)
        return str(target)

    spec = {"stage": stage, "round": manifest["round"], "base_model": copied(manifest["base_model"]),
            "dataset_path": copied(manifest["dataset_path"]), "hyperparams": manifest["hyperparams"]}
    if manifest.get("replay"):
        replay = manifest["replay"]
        spec["replay"] = {"dataset_path": copied(replay["dataset_path"]), "rows": replay["rows"], "seed": replay["seed"]}
    return spec


class CpuSampler:
    """CPU seconds (user + system) of this process's descendants while the block runs, sampled every `every` s."""

    def __init__(self, every: float = 0.2) -> None:
        import psutil

        self.every, self.me, self.seen, self.before, self.titles = every, psutil.Process(), {}, {}, {}
        self._stop = threading.Event()

    def _sample(self, into: dict) -> None:
        import psutil

        for child in self.me.children(recursive=True):
            try:
                times, key = child.cpu_times(), (child.pid, child.create_time())
                into[key] = times.user + times.system
                # Ray names a worker process by its task or actor (`ray::RayTrainWorker`); the title changes as it runs.
                title = " ".join(child.cmdline())
                if key not in self.titles or (title.startswith("ray::") and title != "ray::IDLE"):
                    self.titles[key] = title[:70]
            except psutil.Error:
                continue

    def __enter__(self):
        self.started = time.time()
        self._sample(self.before)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample(self.seen)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        self._sample(self.seen)

    @property
    def seconds(self) -> float:
        return sum(cpu for cpu, _ in self.by_process().values())

    def by_process(self) -> dict[str, tuple[float, float | None]]:
        """CPU seconds by process title (the processes of one title summed), and when the first of them started
        (seconds from the block's start; None: before it)."""
        totals: dict[str, tuple[float, float | None]] = {}
        for (pid, created), cpu in self.seen.items():
            title = self.titles.get((pid, created), "?")
            total, first = totals.get(title, (0.0, None))
            started = created - self.started if created >= self.started else None
            first = started if first is None else (first if started is None else min(first, started))
            totals[title] = (total + cpu - self.before.get((pid, created), 0.0), first)
        return {title: row for title, row in sorted(totals.items(), key=lambda item: -item[1][0]) if row[0] >= 0.05}


def timed_stage(spec: dict, engine: dict | None) -> dict:
    """The stage trained as its asset trains it; the phases' seconds, the whole step's, the CPU seconds, the loss."""
    from arena_dagster.defs.training_jobs import materialize_stage

    with CpuSampler() as cpu:
        result, manifest, entries = materialize_stage(spec, engine)
    messages = [(entry.timestamp, entry.user_message or "") for entry in entries]
    if not result.success:
        raise SystemExit("\n".join(message for _, message in messages[-30:]))
    start = next(entry.timestamp for entry in entries if entry.dagster_event and entry.dagster_event.event_type_value == "STEP_START")
    end = next(entry.timestamp for entry in entries if entry.dagster_event and entry.dagster_event.event_type_value == "STEP_SUCCESS")
    phases, previous = {}, start
    for name, marker in PHASES:
        at = next((stamp for stamp, message in messages if marker in message), None)
        if at is not None:
            phases[name], previous = at - previous, at
    phases["end"] = end - previous
    return {"phases": phases, "step_s": end - start, "cpu_s": cpu.seconds, "cpu_by_process": cpu.by_process(),
            "loss": manifest["metrics"]["final_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/work/cache/smoke-b3b", help="a flywheel home with round 1 (read only)")
    parser.add_argument("--stages", default="sft", help="comma-separated: sft, dpo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="Ray runs of each stage on the same cluster")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--by-process", action="store_true", help="print each run's CPU seconds by process title")
    args = parser.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    import ray

    from arena_dagster.compute.cluster import own_agent_port
    from arena_dagster.profile_schema.compute import ComputeSettings

    work = Path(tempfile.mkdtemp(prefix="bench-ray-train-"))
    settings = ComputeSettings(engine="ray", workers=args.workers)
    own_agent_port()
    ray.init(logging_level="WARNING", log_to_driver=False, **settings.ray_init_options(dashboard=True))
    engine = {**settings.model_dump(mode="json"), "address": ray.get_runtime_context().gcs_address}
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; ray {ray.__version__}, {args.workers} workers; {work}")
    try:
        for stage in args.stages.split(","):
            spec = stage_spec(Path(args.home), stage, work)
            runs = [] if args.skip_local else [("local", timed_stage({**spec, "output_dir": str(work / f"{stage}-local")}, None))]
            for attempt in range(args.repeat):
                runs.append((f"ray #{attempt + 1}", timed_stage({**spec, "output_dir": str(work / f"{stage}-ray{attempt}")}, engine)))
            for label, run in runs:
                phases = "  ".join(f"{name} {seconds:5.1f}" for name, seconds in run["phases"].items())
                print(f"{stage} {label:<7} step {run['step_s']:6.1f} s  cpu {run['cpu_s']:6.1f} s  loss {run['loss']:.4f}  "
                      f"| {phases}")
                for title, (seconds, started) in run["cpu_by_process"].items() if args.by_process else ():
                    print(f"    cpu {seconds:5.1f} s  started {'  before' if started is None else f'{started:6.1f} s'}  {title}")
            if not args.skip_local:
                local = runs[0][1]
                for label, run in runs[1:]:
                    print(f"{stage} {label}/local: step x{run['step_s'] / local['step_s']:.2f}, "
                          f"cpu x{run['cpu_s'] / max(local['cpu_s'], 1e-9):.2f}")
            print(f"  (load {os.getloadavg()[0]:.2f})")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
