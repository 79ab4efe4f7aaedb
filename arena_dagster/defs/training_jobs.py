"""How a training asset launches its stage: a local process through PipesSubprocessClient, or a Ray job
through dagster-ray's PipesRayJobClient.

Either way the training's log lines, per-step metrics and final figures come back through Dagster
Pipes (training/pipes.py): lines to the run's log, the figures to the asset's metadata.

On the Ray engine the entry point is submitted as a Ray job to the step's cluster (its job
server, the dashboard: a local cluster started for the step has one, `ArenaCompute.training`);
the job is Ray Train's driver (training/ray_train.py). A canceled run (SIGTERM, SIGINT, the UI)
interrupts the wait and the job is stopped (the client does it on Dagster's interrupt; any other
way out of the wait stops it here), and the Ray driver's end ends its workers. A failed job raises
a TrainingError with its driver's own error line, and the end of its log goes to the run's log
(training/ray_job.py `job_failure`): the client's own error says only that it failed. A submitter
killed with kill -9 leaves its job to the next launch of the same stage, which stops it first
(training/ray_job.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from arena_dagster.backends.redact import redact
from arena_dagster.training.ray_job import (
    dashboard_address,
    job_failure,
    job_submission,
    stop_job,
    stop_leftover_jobs,
    submit_when_ready,
)
from arena_dagster.training.runner import TrainingError


class RayJobLaunch:
    """`run_training`'s launch on the Ray engine: the command as a Ray job, through PipesRayJobClient."""

    def __init__(self, context: dg.AssetExecutionContext, compute: dict[str, Any], output_dir: Path,
                 extras: dict[str, Any]) -> None:
        self.context, self.compute, self.output_dir, self.extras = context, compute, Path(output_dir), extras
        self.invocations: list[dg.PipesClientCompletedInvocation] = []

    def __call__(self, command: list[str], env: dict[str, str]) -> int:
        from dagster_ray import PipesRayJobClient

        # A client per job: its message reader keeps the state of one job (a second job would find it closed).
        client = PipesRayJobClient(address=dashboard_address(self.compute["address"]), poll_interval=0.5)
        submit_when_ready(client.client)
        for job_id in stop_leftover_jobs(client.client, self.output_dir):
            self.context.log.warning(f"{self.output_dir.name}: stopped Ray job {job_id}, left running by a run that did not finish")
        params = job_submission(command, env, self.compute, self.output_dir)
        job_id = params["submission_id"]
        try:
            self.invocations.append(client.run(context=self.context, submit_job_params=params, extras=self.extras))
        except BaseException as exc:
            try:
                status = stop_job(client.client, job_id)
            except Exception as stop_error:  # noqa: BLE001 - e.g. never submitted: the launch's own error is the one to raise
                status = f"unknown ({stop_error})"
            self.context.log.warning(f"{self.output_dir.name}: Ray job {job_id} ended {status}")
            failure = self._failure(client.client, job_id) if status == "FAILED" and isinstance(exc, Exception) else None
            if failure is not None:
                raise failure from None
            raise
        return 0

    def _failure(self, client, job_id: str) -> TrainingError | None:
        """The failed job's error: its cause and the last lines of its log in the run's log (the client's own error only
        says that the job failed); None where the job server cannot tell."""
        try:
            summary, tail = job_failure(client, job_id, redact)
        except Exception as exc:  # noqa: BLE001 - the cluster is gone: the client's own error is raised
            self.context.log.warning(f"{self.output_dir.name}: the log of Ray job {job_id} cannot be read: {exc}")
            return None
        # The first line is the step's error (the terminal's FAIL line shows it); the tail follows.
        self.context.log.error("\n".join([summary, f"the last {len(tail)} lines of the job's log:", *tail]))
        return TrainingError(f"{self.output_dir.name}: {summary}")


def launch_training(context: dg.AssetExecutionContext, spec: dict, pipes: dg.PipesSubprocessClient,
                    engine: dict[str, Any] | None) -> tuple[dict, dict[str, Any]]:
    """Train `spec` (on the Ray engine where `engine`, the step's compute, says so); returns the manifest and the
    figures for the asset's metadata."""
    from arena_dagster.training.runner import run_training

    extras = {"asset_key": context.asset_key.to_user_string()}
    invocations: list[dg.PipesClientCompletedInvocation] = []
    if engine:
        # The spec's `compute` (not part of its identity): the entry point drives Ray Train on this step's cluster.
        spec = {**spec, "compute": engine}
        launch: Any = RayJobLaunch(context, engine, Path(spec["output_dir"]), extras)
        invocations = launch.invocations
    else:
        def launch(command: list[str], env: dict[str, str]) -> int:
            # A non-zero exit raises DagsterPipesExecutionError; the runner turns it into a TrainingError.
            invocations.append(pipes.run(command=command, context=context, env=env, extras=extras))
            return 0

    manifest = run_training(spec, log=context.log.info, launch=launch, guard=not engine)
    # A finished run with the same spec hash is reused without a process: its figures come from the manifest.
    reported = (dict(invocations[0].get_materialize_result().metadata) if invocations else
                {key: value for key, value in manifest.get("metrics", {}).items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool)})
    return manifest, reported


def materialize_stage(spec: dict, engine: dict[str, Any] | None) -> tuple[dg.ExecuteInProcessResult, dict | None, list]:
    """`spec` trained as its training asset trains it (`launch_training`), on a Dagster instance of its own: the run,
    the manifest (None where it failed) and the run's log entries. For the tests and the benchmark of a stage."""
    trained: dict = {}

    @dg.asset(name="stage")
    def stage(context) -> dg.MaterializeResult:  # annotated, Dagster would need the class itself, not its name
        trained["manifest"], reported = launch_training(context, spec, dg.PipesSubprocessClient(), engine)
        return dg.MaterializeResult(metadata=reported)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([stage], instance=instance, raise_on_error=False)
    return result, trained.get("manifest"), list(instance.all_logs(result.run_id))
