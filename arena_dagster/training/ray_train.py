"""A training stage on Ray Train: the same TRL code in `compute.workers` workers under `TorchTrainer`.

The entry point (training/entrypoint.py) calls `train_on_ray` when the spec's `compute.engine`
is `ray`; that process (the Ray job an asset submits, defs/training_jobs.py) is then Ray's
driver: it joins the run's cluster through the engine seam (compute/cluster.py;
`compute.address`, or a local cluster of `workers` CPUs), and runs
`ray.train.torch.TorchTrainer` with one worker per `compute.workers`, each with
`cpus_per_worker` CPUs and `gpus_per_worker` GPUs (DDP over gloo on CPU, NCCL on GPU).

Every worker runs `entrypoint.train` on its share: the global batch stays the stage's (rank 0
draws the local run's batches and each rank trains on its slice; or else the gradient
accumulation is divided by the number of workers), the
seed is the stage's, and rank 0 writes the same folder and manifest as a local run, with
`engine: ray` and `world_size`. Every `checkpoint_every` steps the workers hand Ray Train a
checkpoint (`ray.train.report`); a lost worker restarts the group (`FailureConfig`), which then
resumes from the latest one instead of step 0.

Rank 0's log lines, per-step metrics and final manifest travel to the driver through a Ray
queue, and the driver sends them on through its own reporter (Dagster Pipes when a Pipes client
started it: PipesRayJobClient reads them from the job's log), so the run's log and the asset's
metadata are the same as with a local process. When the driver ends (a canceled run stops its
job), Ray ends the workers it started.

Every actor is a process of its own, on the cores the training waits for: a stage starts Ray Train's controller, its
workers, their synchronization actor and the queue, and none of the controller's other helpers (`stage_trainer`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from arena_dagster.compute.capacity import Demand, check_capacity
from arena_dagster.compute.cluster import ray_cluster
from arena_dagster.profile_schema.compute import ComputeSettings
from arena_dagster.training.data import load_rows
from arena_dagster.training.launch_config import ray_worker_environment
from arena_dagster.training.pipes import Reporter
from arena_dagster.training.spec import TrainingSpecError, read_manifest, validate_spec

# A lost worker restarts the group this many times, from the latest checkpoint.
MAX_FAILURES = 2
# Checkpoints per run: each holds the model and the optimizer state.
CHECKPOINTS_PER_RUN = 4
# What the driver passes to the workers' environment from its own (where the package and its settings are).
_DRIVER_ENV = ("PYTHONPATH", "ARENA_TORCH_THREADS", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# Set by Ray in a job's entry point: the job's configuration, its runtime_env included.
_RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Ray Train's settings for a stage where the job's environment does not set them (the driver hands them to the controller).
STAGE_RAY_TRAIN_ENV = {
    # How often the controller polls the workers: the end of the training is noticed within it (Ray's default: 2 s).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # The preemption watcher (an actor, so a process of its own, each stage) polls the nodes' drain notices to checkpoint
    # before a node goes: a stage lasts a minute, and a lost worker restarts the group from its latest checkpoint.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def ray_storage(output_dir: Path) -> Path:
    """Where Ray Train keeps a run's checkpoints: beside output_dir, removed when the run ends (a leftover otherwise)."""
    return Path(str(output_dir) + ".ray")


def per_worker_hyperparams(hyper: dict, world_size: int, stage: str = "sft") -> dict:
    """The stage's hyperparameters for one of `world_size` workers: the same global batch, split between them.

    Where the batch divides, every rank draws the stage's own batches (the local run's, from the
    same seeded sampler) and collates its share of each batch's rows (`split_batches`); an epoch's
    short last batch is shared as it is where it divides, else completed with as few rows of the
    epoch's start as make it divide (`trainers.share_short_batches`). RLOO samples its prompts per
    rank (TRL's own sampler): its per-device batch is divided instead.
    """
    if world_size == 1:
        return hyper
    batch, accumulation = int(hyper["batch_size"]), int(hyper.get("gradient_accumulation_steps") or 1)
    if batch % world_size == 0:
        return {**hyper, "batch_size": batch // world_size} if stage == "rl" else {**hyper, "split_batches": True}
    if accumulation % world_size == 0:
        return {**hyper, "gradient_accumulation_steps": accumulation // world_size}
    raise TrainingSpecError(
        f"compute.workers={world_size} cannot share the global batch: neither hyperparams.batch_size ({batch}) nor "
        f"gradient_accumulation_steps ({accumulation}) divides by {world_size}; choose a worker count that does"
    )


def worker_resources(settings: ComputeSettings) -> dict[str, float]:
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    return resources


def scaling_config(settings: ComputeSettings):
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                         resources_per_worker=worker_resources(settings))


class QueueReporter(Reporter):
    """Rank 0's reporter: every report goes to the driver, which reports it (training/pipes.py) in its place."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def log(self, line: str) -> None:
        self.queue.put(("log", line))

    def error(self, line: str) -> None:
        self.queue.put(("error", line))

    def step(self, step: int, values: dict[str, float]) -> None:
        self.queue.put(("step", step, values))

    def result(self, manifest: dict) -> None:
        self.queue.put(("result", manifest))


def relay(message: tuple, reporter: Reporter) -> None:
    """One of rank 0's reports, made by the driver's reporter."""
    kind, *payload = message
    getattr(reporter, kind)(*payload)


class RayWorker:
    """A worker's share of the run, as `entrypoint.train` uses it (its `worker` argument)."""

    engine = "ray"

    def __init__(self, world_size: int, rank: int, resume_from: str | None) -> None:
        self.world_size, self.rank, self.resume_from = world_size, rank, resume_from

    def trainer_spec(self, resolved: dict) -> dict:
        return {**resolved, "hyperparams": per_worker_hyperparams(resolved["hyperparams"], self.world_size, resolved["stage"])}

    def callbacks(self) -> list:
        return [_checkpoint_callback(self.rank)]


def _checkpoint_callback(rank: int):
    """A TRL trainer callback: a checkpoint every few steps, handed to Ray Train, then removed from the model's folder."""
    import ray.train
    from transformers import TrainerCallback

    class RayCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            every = max(1, state.max_steps // CHECKPOINTS_PER_RUN)
            if state.global_step % every == 0 and state.global_step < state.max_steps:
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if rank == 0 and folder.is_dir() else None
            losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
            metrics = {"step": state.global_step, **({"loss": losses[-1]} if losses else {})}
            # Every rank reports (a collective); Ray Train copies rank 0's checkpoint into its storage.
            ray.train.report(metrics, checkpoint=checkpoint)
            if rank == 0:
                shutil.rmtree(folder, ignore_errors=True)

    return RayCheckpoints()


def _worker_loop(config: dict) -> None:
    import ray.train

    train = config["train"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    reporter = QueueReporter(config["queue"]) if rank == 0 else Reporter()
    # What `accelerate launch --config_file` hands each rank (DeepSpeed ZeRO, mixed precision), before the trainer exists.
    os.environ.update(ray_worker_environment(config["spec"].get("launch")))
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume_from:
        if resume_from:
            reporter.log(f"[{config['spec']['stage']}] resuming from Ray Train's checkpoint {Path(resume_from).name}")
        train(config["spec"], reporter, RayWorker(context.get_world_size(), rank, resume_from))


def stage_ray_train_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Ray Train's settings for a stage's driver: STAGE_RAY_TRAIN_ENV, where `environ` (the job's) does not set them."""
    return {key: environ.get(key, value) for key, value in STAGE_RAY_TRAIN_ENV.items()}


def stage_trainer(**trainer_args):
    """Ray Train's TorchTrainer (no `datasets`) without the controller's helper actors a stage's job has no use for.

    Each actor is a worker process of its own (a second or more of CPU to start, on the cores the training waits for):
    the dataset manager serves `datasets` (a stage has none: its workers read their rows themselves), and the
    placement-group cleaner, a detached actor the controller waits for as the group starts, removes the workers'
    placement group if the controller dies while its driver lives on (a stage's driver ends with its controller, and
    its job's end frees the job's placement groups). Ray Train 2.60 has no setting for either: its default callbacks
    start them (ray/train/v2/api/data_parallel_trainer.py).
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    unneeded = (DatasetsCallback, PlacementGroupCleanerCallback)

    class StageTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            return [callback for callback in super()._create_default_callbacks() if not isinstance(callback, unneeded)]

    return StageTrainer(**trainer_args)


def _job_connect(settings: ComputeSettings) -> Callable[[], None] | None:
    """Inside a Ray job (the asset's launch): join the cluster with the job's runtime_env, which is already the
    workers' (training/ray_job.py); Ray refuses a driver's runtime_env that sets the same variables again."""
    if _RAY_JOB_CONFIG not in os.environ:
        return None

    def connect() -> None:
        import ray

        ray.init(address=settings.address, logging_level=logging.WARNING, log_to_driver=False)

    return connect


def train_on_ray(spec: dict, reporter: Reporter, train: Callable[..., dict | None]) -> dict:
    """Train `spec` on Ray Train (the driver's side); returns the manifest rank 0 wrote.

    `train(spec, reporter, worker)`: what each worker runs (`entrypoint.train`, handed in: it calls this).
    """
    resolved = validate_spec(spec)
    load_rows(resolved)  # bad data fails here, before a cluster is joined
    settings = ComputeSettings.model_validate(spec["compute"])
    per_worker_hyperparams(resolved["hyperparams"], settings.workers)
    output_dir = Path(resolved["output_dir"])
    storage = ray_storage(output_dir)
    shutil.rmtree(storage, ignore_errors=True)
    env_vars = {key: os.environ[key] for key in _DRIVER_ENV if os.environ.get(key)}
    settings = settings.model_copy(update={"runtime_env": {**settings.runtime_env, "env_vars": {
        **env_vars, **dict(settings.runtime_env.get("env_vars") or {})}}})
    reporter.log(f"[{resolved['stage']}] on Ray Train: {settings.workers} worker(s) x {settings.cpus_per_worker} CPU, "
                 f"{settings.gpus_per_worker} GPU, cluster {settings.address or 'local'}")
    with ray_cluster(settings, _job_connect(settings)):
        # A cluster that can never hold the workers fails here; Ray Train would wait for their placement group silently.
        check_capacity(Demand(settings.workers, worker_resources(settings)), reporter.log)
        from ray.train import FailureConfig, RunConfig
        from ray.train.torch import TorchConfig
        from ray.util.queue import Empty, Queue

        queue = Queue()
        done = threading.Event()

        def drain() -> None:
            while not done.is_set() or not queue.empty():
                try:
                    relay(queue.get(timeout=0.2), reporter)
                except Empty:
                    continue

        relaying = threading.Thread(target=drain, daemon=True)
        relaying.start()
        os.environ.update(stage_ray_train_env(os.environ))
        trainer = stage_trainer(
            train_loop_per_worker=_worker_loop,
            train_loop_config={"spec": spec, "queue": queue, "train": train},
            scaling_config=scaling_config(settings),
            torch_config=TorchConfig(backend="nccl" if settings.gpus_per_worker else "gloo"),
            run_config=RunConfig(name=output_dir.name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=MAX_FAILURES)),
        )
        try:
            trainer.fit()
        finally:
            done.set()
            relaying.join(timeout=30)
    shutil.rmtree(storage, ignore_errors=True)
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise RuntimeError(f"{output_dir}: Ray Train finished but rank 0 wrote no manifest.json")
    return manifest
