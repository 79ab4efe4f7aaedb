"""A training stage as a Ray job: what the job is submitted with, and the stop of a job its submitter left behind.

With `compute.engine: ray` the asset submits the entry point (the Ray Train driver, training/ray_train.py)
as a job to the cluster's job server (its dashboard), through dagster-ray's PipesRayJobClient
(defs/training_jobs.py). The job runs on the head node with the `runtime_env` built here: the
profile's (`compute.runtime_env`: pip, working_dir, ...), the offline variables every worker
gets, and the training's own environment (PYTHONPATH with the package, the thread counts, the
HF settings), never the whole environment of the submitting process.

A failed job's cause lies in its driver's log on the cluster (job-driver-<id>.log): `job_failure` reads
it back through the job server, so the step's error names the driver's own error line and the
run's log holds the last lines, secrets redacted, with the command that prints the whole log.

A job outlives the process that submitted it: a canceled run stops it (the Pipes client, and
`stop_job` on any other way out), and a submitter killed with kill -9 leaves it running on a
cluster that outlives it, so every launch first stops the jobs still running for the same
checkpoint folder (found by the job's metadata), as the lock and the orphan guard do for a
local process.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arena_dagster.profile_schema.compute import ComputeSettings
from arena_dagster.training.guard import PARENT_ENV

# The job's metadata key naming the checkpoint folder it trains.
OUTPUT_DIR_KEY = "arena_output_dir"
# What the job's entry point takes from the training's environment (the rest is the cluster's).
_JOB_ENV = ("PYTHONPATH", "PYTHONUNBUFFERED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
            "TQDM_DISABLE")
_JOB_ENV_PREFIXES = ("ARENA_", "HF_", "TRANSFORMERS_")
# How long a stopped job may take to end (Ray sends SIGTERM, then SIGKILL after 3 s).
STOP_TIMEOUT_S = 60.0


def dashboard_address(address: str) -> str:
    """The job server of the cluster at `address`: a GCS address (`host:6379`) or `auto` resolves through the
    cluster itself; a Ray Client address (`ray://head:10001`) is the head's dashboard on its default port."""
    if address.startswith("ray://"):
        return f"http://{address.removeprefix('ray://').rsplit(':', 1)[0]}:8265"
    return address


def job_submission(command: list[str], env: dict[str, str], compute: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """`JobSubmissionClient.submit_job`'s arguments (dagster-ray's SubmitJobParams) for the training `command`."""
    settings = ComputeSettings.model_validate(compute)
    runtime_env = settings.worker_env()
    picked = {key: value for key, value in env.items() if key in _JOB_ENV or key.startswith(_JOB_ENV_PREFIXES)}
    # The guard's launcher pid is emptied, not only left out: a local cluster started by a flywheel's step process
    # hands that process's environment (with its own launcher's pid) to every job, and the entry point would take
    # that pid for a dead parent and exit. The job's end is Ray's to decide (stop_job), not a parent's.
    runtime_env["env_vars"] = {**picked, **runtime_env["env_vars"], PARENT_ENV: ""}
    name = Path(output_dir).name
    return {
        "entrypoint": shlex.join(command),
        "runtime_env": runtime_env,
        "metadata": {OUTPUT_DIR_KEY: str(output_dir)},
        # Ray job ids are never reused, finished jobs included: the folder's name and a random tail.
        "submission_id": f"arena-{name}-{secrets.token_hex(4)}",
        # The driver only waits on the workers: it takes no CPU from them (a 2-CPU cluster runs 2 workers).
        "entrypoint_num_cpus": 0,
    }


# The job server answers before its node's agent has registered (a cluster started a moment ago): it refuses the
# submission with this message and no job is made, so the same submission is sent again.
_NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 120.0


def submit_when_ready(client, wait_s: float = AGENT_WAIT_S) -> None:
    """Make `client.submit_job` (a JobSubmissionClient's) retry while the cluster's job agent is not up yet."""
    from tenacity import (
        Retrying,
        retry_if_exception,
        stop_after_delay,
        wait_exponential,
    )

    submit = client.submit_job

    def submit_job(**params):
        for attempt in Retrying(retry=retry_if_exception(lambda exc: _NO_AGENT in str(exc)), stop=stop_after_delay(wait_s),
                                wait=wait_exponential(multiplier=0.25, max=4), reraise=True):
            with attempt:
                return submit(**params)
        raise AssertionError("unreachable: tenacity reraises the last error")

    client.submit_job = submit_job


def stop_job(client, job_id: str, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Stop `job_id` if it still runs and wait until it has ended; returns its final status."""
    status = client.get_job_status(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
        deadline = time.monotonic() + timeout_s
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get_job_status(job_id)
    return str(status.value if hasattr(status, "value") else status)


def stop_leftover_jobs(client, output_dir: Path) -> list[str]:
    """Stop the jobs still running for `output_dir` (their submitter was killed); returns their ids."""
    stopped = []
    for job in client.list_jobs():
        if (job.metadata or {}).get(OUTPUT_DIR_KEY) == str(output_dir) and not job.status.is_terminal():
            stop_job(client, job.submission_id)
            stopped.append(job.submission_id)
    return stopped


# How many of a failed job's last log lines reach the run's log.
FAILURE_LOG_LINES = 40
# A line that says why a driver ended: the entry point's own `error: ...`, or a traceback's last line.
_ENTRY_POINT_ERROR = re.compile(r"^error: ")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
# Every Dagster Pipes message (a JSON line in the job's log) holds this key.
_PIPES_FIELD = "__dagster_pipes_version"


def readable_log(text: str) -> list[str]:
    """A job log's lines as a person reads them: without the Dagster Pipes messages (the entry point prints every
    line it sends through Pipes, training/pipes.py, and a traceback goes to stderr)."""
    lines = []
    for line in text.splitlines():
        if _PIPES_FIELD in line:
            try:
                if _PIPES_FIELD in json.loads(line):
                    continue
            except (ValueError, TypeError):
                pass
        if line.strip():
            lines.append(line.rstrip())
    return lines


def failure_cause(lines: list[str]) -> str | None:
    """The line of a driver's log that says why it failed: its last `error: ` line, else its last exception line."""
    for pattern in (_ENTRY_POINT_ERROR, _EXCEPTION_LINE):
        found = [line.strip() for line in lines if pattern.match(line.strip())]
        if found:
            return found[-1]
    return None


def job_failure(client, job_id: str, redact: Callable[[str], str]) -> tuple[str, list[str]]:
    """Why the ended job `job_id` failed, read from the job server: one line (its status, exit code, the driver's own
    error line and the command printing its whole log), and the last FAILURE_LOG_LINES lines of its log, both through
    `redact` (the backends' credential scrubber: a log may print a URL with its token)."""
    info = client.get_job_info(job_id)
    lines = readable_log(redact(client.get_job_logs(job_id)))
    message = [line.strip() for line in redact(info.message or "").splitlines() if line.strip()]
    cause = failure_cause(lines) or failure_cause(message) or (lines or message or ["its log is empty"])[-1]
    status = str(getattr(info.status, "value", info.status))
    exit_code = f" (exit code {info.driver_exit_code})" if info.driver_exit_code is not None else ""
    summary = (f"Ray job {job_id} {status}{exit_code}: {cause}; its whole log: "
               f"ray job logs {job_id} --address {client.get_address()}")
    return summary, (lines or message)[-FAILURE_LOG_LINES:]
