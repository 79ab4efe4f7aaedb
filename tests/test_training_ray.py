"""Training stages on Ray Train (training/ray_train.py): the batch split, the spec's `compute`, and SFT (with DPO and the
reward model on an uneven batch) on the local 2-CPU cluster, launched as the assets launch it (defs/training_jobs.py: a Ray
job through dagster-ray's PipesRayJobClient), and a failed job's cause."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from arena_dagster.defs.training_jobs import materialize_stage
from arena_dagster.progress import step_failures
from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.ray_job import (
    OUTPUT_DIR_KEY,
    failure_cause,
    job_failure,
    job_submission,
    readable_log,
    stop_job,
    stop_leftover_jobs,
)
from arena_dagster.training.ray_train import (
    STAGE_RAY_TRAIN_ENV,
    per_worker_hyperparams,
    stage_ray_train_env,
    stage_trainer,
)
from arena_dagster.training.runner import ENTRYPOINT_MODULE, leftovers, run_training
from arena_dagster.training.spec import (
    TrainingSpecError,
    read_manifest,
    spec_hash,
    validate_spec,
)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}


def test_workers_share_the_global_batch():
    hyper = {"batch_size": 8, "gradient_accumulation_steps": 3}
    assert per_worker_hyperparams(hyper, 1) == hyper
    # Rank 0 draws the stage's batches of 8 and each of 2 ranks trains on its half; RLOO divides its per-device batch.
    assert per_worker_hyperparams(hyper, 2) == {"batch_size": 8, "gradient_accumulation_steps": 3, "split_batches": True}
    assert per_worker_hyperparams(hyper, 2, "rl") == {"batch_size": 4, "gradient_accumulation_steps": 3}
    assert per_worker_hyperparams(hyper, 3) == {"batch_size": 8, "gradient_accumulation_steps": 1}
    with pytest.raises(TrainingSpecError, match="compute.workers=5 cannot share the global batch"):
        per_worker_hyperparams(hyper, 5)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A tiny random Llama and its tokenizer (saved, no training), an SFT file and a preference pairs file."""
    from transformers import AutoModelForCausalLM, LlamaConfig, set_seed

    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    home = tmp_path_factory.mktemp("ray-training")
    items = make_items(48, seed=3)
    tokenizer = build_tokenizer([i.prompt for i in items] + [i.reference for i in items])
    base = save_tokenizer(tokenizer, home / "base")
    set_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **TINY_MODEL)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    data = write_jsonl(home / "sft.jsonl", (chat_row(i.prompt, i.reference) for i in items))
    # Preference pairs, one per prompt: the reference answer over its reversal.
    write_jsonl(home / "pairs.jsonl", ({"prompt": i.prompt, "chosen": i.reference, "rejected": i.reference[::-1] + " ?"}
                                       for i in items))
    spec = {"stage": "sft", "round": 1, "base_model": str(base), "dataset_path": str(data), "threads": 1,
            "hyperparams": {"max_steps": 4, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1}}
    return {"home": home, "spec": spec}


def _on_ray(spec: dict, address: str, workers: int, output_dir: Path, **hyper) -> dict:
    return {**spec, "output_dir": str(output_dir), "hyperparams": {**spec["hyperparams"], **hyper},
            "compute": {"engine": "ray", "workers": workers, "address": address}}


def test_compute_is_where_a_run_trains_not_what_it_is(workspace):
    spec = {**workspace["spec"], "output_dir": str(workspace["home"] / "x")}
    on_ray = {**spec, "compute": {"engine": "ray", "workers": 2}}
    # One Ray worker trains the local weights bit for bit: the same revision. Two sum gradients in another order.
    assert spec_hash({**spec, "compute": {"engine": "ray", "workers": 1, "cpus_per_worker": 2}}) == spec_hash(spec)
    assert spec_hash(on_ray) != spec_hash(spec) == spec_hash({**spec, "compute": {"engine": "local", "workers": 2}})
    with pytest.raises(TrainingSpecError, match="spec.launch .* and compute.engine ray"):
        validate_spec({**on_ray, "launch": {"num_processes": 2}})
    with pytest.raises(TrainingSpecError, match="spec.compute: .*workers"):
        validate_spec({**spec, "compute": {"engine": "ray", "workers": 0}})
    storage = Path(spec["output_dir"] + ".ray")
    storage.mkdir()
    assert storage in leftovers(Path(spec["output_dir"]))  # Ray Train's checkpoints of a killed run are removed


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _run_stage(spec: dict, engine: dict | None) -> tuple[dg.ExecuteInProcessResult, dict | None, list]:
    """`spec` trained as a training asset trains it (`launch_training`); the run, its manifest and its log's entries."""
    return materialize_stage(spec, engine)


def _materialize(spec: dict, engine: dict | None) -> tuple[dict, dict, list[str]]:
    """`spec` trained as a training asset trains it; its manifest, metadata and the run's log."""
    result, manifest, entries = _run_stage(spec, engine)
    lines = [entry.user_message for entry in entries]
    assert result.success, "\n".join(lines[-20:])
    [materialization] = result.asset_materializations_for_node("stage")
    return manifest, {key: value.value for key, value in materialization.metadata.items()}, lines


def test_a_ray_job_has_the_training_environment_not_the_submitter_s(tmp_path):
    # ARENA_GUARD_PARENT: a flywheel's step process holds its launcher's pid (a job would exit at once on it).
    env = {"PYTHONPATH": "/repo", "OMP_NUM_THREADS": "1", "HF_HOME": "/hf", "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/bin",
           "ARENA_GUARD_PARENT": "4242"}
    compute = {"engine": "ray", "workers": 2, "runtime_env": {"pip": ["arena-dagster"], "env_vars": {"HF_HOME": "/cluster"}}}
    params = job_submission(["/venv/bin/python", "-m", ENTRYPOINT_MODULE, "/home/x y.spec.json"], env, compute, tmp_path / "SFT-I1")
    assert params["entrypoint"] == f"/venv/bin/python -m {ENTRYPOINT_MODULE} '/home/x y.spec.json'"
    assert params["runtime_env"]["pip"] == ["arena-dagster"] and params["entrypoint_num_cpus"] == 0
    # The profile's env_vars win; the offline variables are always there; secrets and PATH stay behind.
    assert params["runtime_env"]["env_vars"] == {"PYTHONPATH": "/repo", "OMP_NUM_THREADS": "1", "HF_HOME": "/cluster",
                                                 "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                                 "ARENA_GUARD_PARENT": ""}
    assert params["metadata"] == {OUTPUT_DIR_KEY: str(tmp_path / "SFT-I1")} and params["submission_id"].startswith("arena-SFT-I1-")
    assert job_submission([], env, compute, tmp_path / "SFT-I1")["submission_id"] != params["submission_id"]


class _Jobs:
    """A job server in memory (a unit test's fake: the real one is exercised by the cancel test below)."""

    def __init__(self, jobs: dict[str, tuple[str, str]]) -> None:
        from ray.job_submission import JobStatus

        self.status, self.stopped = {job_id: JobStatus(status) for job_id, (_, status) in jobs.items()}, []
        self.folders = {job_id: folder for job_id, (folder, _) in jobs.items()}

    def list_jobs(self):
        from types import SimpleNamespace

        return [SimpleNamespace(submission_id=job_id, status=self.status[job_id], metadata={OUTPUT_DIR_KEY: folder})
                for job_id, folder in self.folders.items()]

    def get_job_status(self, job_id):
        return self.status[job_id]

    def stop_job(self, job_id):
        from ray.job_submission import JobStatus

        self.stopped.append(job_id)
        self.status[job_id] = JobStatus.STOPPED


def test_a_launch_first_stops_the_job_a_killed_run_left_for_its_checkpoint():
    jobs = _Jobs({"a": ("/home/SFT-I1", "RUNNING"), "b": ("/home/SFT-I1", "SUCCEEDED"), "c": ("/home/DPO-I1", "PENDING")})
    assert stop_leftover_jobs(jobs, Path("/home/SFT-I1")) == ["a"] and jobs.stopped == ["a"]
    assert str(jobs.status["a"].value) == "STOPPED" and str(jobs.status["c"].value) == "PENDING"
    assert stop_job(jobs, "b") == "SUCCEEDED" and jobs.stopped == ["a"]  # an ended job is left as it is


def test_sft_on_one_ray_worker_equals_the_local_run_and_two_workers_keep_the_batch(workspace, ray_local_cluster):
    import torch

    home, spec = workspace["home"], workspace["spec"]
    local, local_metadata, _ = _materialize({**spec, "output_dir": str(home / "local")}, None)
    one, metadata, lines = _materialize({**spec, "output_dir": str(home / "ray1")},
                                        {"engine": "ray", "workers": 1, "address": ray_local_cluster})
    assert local["engine"] == "local" and local["world_size"] == 1
    assert one["engine"] == "ray" and one["world_size"] == 1 and one["spec_hash"] == local["spec_hash"]
    assert one["curves"]["loss"] == local["curves"]["loss"]
    ours, theirs = _weights(home / "ray1"), _weights(home / "local")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Through the Ray job: rank 0's lines reached the run's log, the figures the asset's metadata, as a local process's do.
    assert any("[pipes] Ray job arena-ray1-" in line for line in lines)
    assert any("[sft] step 4/4 loss" in line for line in lines) and any("on Ray Train: 1 worker(s)" in line for line in lines)
    assert metadata["final_loss"] == local_metadata["final_loss"] == one["metrics"]["final_loss"]
    assert metadata["spec_hash"] == one["spec_hash"]
    assert not list((home / "ray1").glob("checkpoint-*")) and not leftovers(home / "ray1")

    two, _, _ = _materialize({**spec, "output_dir": str(home / "ray2")},
                             {"engine": "ray", "workers": 2, "address": ray_local_cluster})
    assert two["world_size"] == 2 and two["hyperparams"]["batch_size"] == 8 and two["metrics"]["steps"] == 4
    for figure in ("first_loss", "final_loss"):
        assert two["metrics"][figure] == pytest.approx(one["metrics"][figure], rel=0.05), figure
    assert json.loads((home / "ray2" / "config.json").read_text())["hidden_size"] == 32


def test_a_stage_s_trainer_is_ray_train_s_without_the_helper_actors_a_stage_has_no_use_for(tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    args = {"train_loop_per_worker": lambda config: None, "scaling_config": ScalingConfig(num_workers=2),
            "run_config": RunConfig(name="x", storage_path=str(tmp_path))}
    ours, theirs = ({type(callback).__name__ for callback in trainer._create_default_callbacks()}
                    for trainer in (stage_trainer(**args), TorchTrainer(**args)))
    assert theirs - ours == {"DatasetsCallback", "PlacementGroupCleanerCallback"} and ours < theirs
    assert isinstance(stage_trainer(**args), TorchTrainer)
    # The preemption watcher is off and the controller polls its workers every 0.5 s, unless the job's environment says.
    assert stage_ray_train_env({}) == STAGE_RAY_TRAIN_ENV == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                                                              "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert stage_ray_train_env({"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"})["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"


def test_a_stage_on_the_cluster_starts_only_the_actors_it_uses(workspace, ray_local_cluster):
    """Each actor is a process of its own on the cores the training waits for (issue 21): a stage's job starts Ray Train's
    controller, its workers and their synchronization actor, and the queue of rank 0's reports, nothing else."""
    from ray.util.state import list_actors

    home, spec = workspace["home"], workspace["spec"]
    before = {actor.actor_id for actor in list_actors(address=ray_local_cluster, limit=10000, raise_on_missing_output=False)}
    _materialize({**spec, "output_dir": str(home / "actors"), "hyperparams": {**spec["hyperparams"], "max_steps": 1}},
                 {"engine": "ray", "workers": 1, "address": ray_local_cluster})
    classes = {actor.class_name for actor in list_actors(address=ray_local_cluster, limit=10000, raise_on_missing_output=False)
               if actor.actor_id not in before}
    assert {"TrainController", "RayTrainWorker", "SynchronizationActor", "_QueueActor"} <= classes
    assert not classes & {"DatasetManager", "PlacementGroupCleaner", "PreemptionWatcher"}, classes


# A stage's rows and hyperparameters that end its data on an epoch's short last batch, and how many steps are full
# batches. SFT: 43 rows in 5 batches of 8 and one of 3, which 2 workers cannot halve: found by the skills profile on
# Ray (stop 26), where rank 0 dispatching collated batches completed it with the epoch's first rows by concatenating
# tensors of other lengths and died (`Sizes of tensors must match`) after 25 of 240 steps; now it gets one row of the
# epoch's start (`trainers.share_short_batches`), so that step and the next epoch's lie within 5%. DPO and the reward
# model: 6 pairs in batches of 4 and 2 (the reward model holds 2 of its 8 pairs out), shared 1 + 1 (not padded to a
# full batch), every step the local run's; the dispatching loader sliced their [chosen; rejected] rows so that one
# worker got every chosen answer and the other every rejected one. DPO as the flywheel trains it: with the NLL term.
UNEVEN = {
    "sft": ("sft.jsonl", 43, {"max_steps": 7}, 5),
    "dpo": ("pairs.jsonl", 6, {"max_steps": 2, "batch_size": 4, "beta": 0.1, "rpo_alpha": 1.0}, 2),
    "reward": ("pairs.jsonl", 8, {"max_steps": 2, "batch_size": 4, "eval_fraction": 0.25}, 2),
}


@pytest.mark.parametrize("stage", list(UNEVEN))
def test_two_workers_learn_the_local_loss_on_an_uneven_last_batch(stage, workspace, ray_local_cluster):
    home, spec = workspace["home"], workspace["spec"]
    data, count, hyper, exact = UNEVEN[stage]
    rows = [json.loads(row) for row in (home / data).read_text().splitlines()[:count]]
    uneven = {**spec, "stage": stage, "dataset_path": str(write_jsonl(home / f"{stage}-{count}.jsonl", rows)),
              "hyperparams": {**spec["hyperparams"], **hyper}}
    # The local run is one Ray worker's, bit for bit (the test above).
    local = run_training({**uneven, "output_dir": str(home / f"uneven-{stage}-local")}, log=lambda _: None, timeout_s=300)
    two = run_training(_on_ray(uneven, ray_local_cluster, 2, home / f"uneven-{stage}-ray2"), log=lambda _: None, timeout_s=600)
    ours, theirs = ([loss for _step, loss in run["curves"]["loss"]] for run in (two, local))
    assert len(ours) == hyper["max_steps"], ours
    for figure in ("first_loss", "final_loss"):
        assert two["metrics"][figure] == pytest.approx(local["metrics"][figure], rel=0.05), f"2 workers {ours}, local {theirs}"
    # Every full batch learns from the local run's rows: the same loss, to the order of summation.
    assert ours[:exact] == pytest.approx(theirs[:exact], rel=1e-3), f"2 workers {ours}, local {theirs}"
    assert ours[exact:] == pytest.approx(theirs[exact:], rel=0.05), f"2 workers {ours}, local {theirs}"


def test_a_failed_ray_job_says_why_in_the_step_s_error_and_the_run_s_log(workspace, ray_local_cluster):
    """The driver fails at once on a row the submitter never reads (a conversation cut before its answer): the step's
    error is its own error line, with the job id and the command printing the whole log, not only `FAILED`."""
    home, spec = workspace["home"], workspace["spec"]
    cut = json.dumps({"messages": [{"role": "user", "content": "What is 2 + 2?"}]})
    data = home / "sft-cut.jsonl"
    data.write_text((home / "sft.jsonl").read_text() + cut + "\n")
    output_dir = home / "failed"
    result, _, entries = _run_stage({**spec, "dataset_path": str(data), "output_dir": str(output_dir)},
                                    {"engine": "ray", "workers": 1, "address": ray_local_cluster})
    assert not result.success
    # The step's error as the terminal's FAIL line shows it (its first line; the client's own says only `FAILED`).
    [failure] = step_failures(entries)
    cause = f"error: {data} row 49: the last message must be the assistant's answer"
    assert cause in failure and " FAILED (exit code 3): " in failure, failure
    assert "ray job logs arena-failed-" in failure and "--address http://" in failure
    # The run's log: the same line, then the end of the job's log without the Pipes messages.
    [report] = [entry.user_message for entry in entries if entry.user_message.startswith("Ray job arena-failed-")]
    assert report.splitlines()[0] in failure and cause in report.splitlines()[2:], report
    assert "__dagster_pipes_version" not in report
    assert read_manifest(output_dir) is None


def test_the_cause_of_a_failed_job_is_its_driver_s_error_line():
    from types import SimpleNamespace

    from arena_dagster.backends.redact import redact

    pipes = json.dumps({"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": "error: x", "level": "ERROR"}})
    log = f"[sft] 48 rows\nerror: /data/sft.jsonl row 3: no answer\n{pipes}\nRay shutting down\n"
    assert readable_log(log) == ["[sft] 48 rows", "error: /data/sft.jsonl row 3: no answer", "Ray shutting down"]
    assert failure_cause(readable_log(log)) == "error: /data/sft.jsonl row 3: no answer"
    # Before the entry point could report (a cluster without the package): the traceback's last line.
    crashed = "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 88\nModuleNotFoundError: No module named 'arena_dagster'\n"
    assert failure_cause(readable_log(crashed)) == "ModuleNotFoundError: No module named 'arena_dagster'"
    assert failure_cause(["[sft] step 1/4 loss 3.2"]) is None

    class JobServer:  # a unit test's fake: the real job server answers the test above
        def get_job_info(self, job_id):
            return SimpleNamespace(status="FAILED", driver_exit_code=1, message="Job entrypoint command failed with exit code 1")

        def get_job_logs(self, job_id):
            return "fetching http://user:hunter22@hub:80/x?token=abc\n" + crashed

        def get_address(self):
            return "http://127.0.0.1:8265"

    summary, tail = job_failure(JobServer(), "arena-x", redact)
    assert summary == ("Ray job arena-x FAILED (exit code 1): ModuleNotFoundError: No module named 'arena_dagster'; "
                       "its whole log: ray job logs arena-x --address http://127.0.0.1:8265")
    assert tail[0] == "fetching http://***@hub:80/x?token=***" and tail[-1].startswith("ModuleNotFoundError")


def _wait_for_cpus(ray, cpus: float, timeout_s: float = 120) -> float:
    deadline = time.time() + timeout_s
    while ray.available_resources().get("CPU", 0) < cpus and time.time() < deadline:
        time.sleep(1)
    return ray.available_resources().get("CPU", 0)


def _start_driver(spec: dict, tmp_path: Path) -> subprocess.Popen:
    """The training process a Pipes client starts (here without Pipes: its lines on stdout)."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, "-m", ENTRYPOINT_MODULE, str(spec_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_a_killed_driver_stops_its_ray_train_workers(workspace, ray_local_cluster, tmp_path):
    """A canceled run kills the training process (Pipes' client, the guard): the workers it started on the cluster end too."""
    import ray

    output_dir = tmp_path / "killed"
    spec = _on_ray(workspace["spec"], ray_local_cluster, 2, output_dir, max_steps=100000)
    driver = _start_driver(spec, tmp_path)
    try:
        for line in driver.stdout:
            if "[sft] step" in line:
                break
        assert ray.available_resources().get("CPU", 0) < 1  # both workers hold their CPU
    finally:
        driver.kill()
        driver.wait()
    assert _wait_for_cpus(ray, 2) == 2
    assert read_manifest(output_dir) is None


_CANCELED_RUN = '''
import json, sys
import dagster as dg
from dagster._utils.interrupts import setup_interrupt_handlers
from arena_dagster.defs.training_jobs import launch_training
from arena_dagster.progress import step_failures

spec, engine = json.loads(open(sys.argv[1]).read()), json.loads(open(sys.argv[2]).read())
setup_interrupt_handlers()  # SIGTERM as SIGINT, as in Dagster's run worker (a canceled run gets SIGTERM)

@dg.asset(name="stage")
def stage(context):
    launch_training(context, spec, dg.PipesSubprocessClient(), engine)

dg.materialize([stage])
'''


def test_a_canceled_run_stops_its_ray_job(workspace, ray_local_cluster, tmp_path):
    """A canceled run (SIGTERM to the run's process) stops the training's Ray job: its status is STOPPED, its
    Ray Train workers end and give back their CPUs, and no checkpoint is left."""
    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    output_dir = tmp_path / "canceled"
    spec = {**workspace["spec"], "output_dir": str(output_dir), "hyperparams": {**workspace["spec"]["hyperparams"], "max_steps": 100000}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "engine.json").write_text(json.dumps({"engine": "ray", "workers": 2, "address": ray_local_cluster}))
    (tmp_path / "run.py").write_text(textwrap.dedent(_CANCELED_RUN))
    run = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "spec.json"), str(tmp_path / "engine.json")],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        for line in run.stdout:
            seen.append(line)
            if "[sft] step" in line:  # the step lines reach the run's log while the job runs
                break
        assert ray.available_resources().get("CPU", 0) < 1, "".join(seen[-20:])  # both workers hold their CPU
        run.send_signal(signal.SIGTERM)
        rest, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    client = JobSubmissionClient(ray_local_cluster)
    [job] = [job for job in client.list_jobs() if (job.metadata or {}).get(OUTPUT_DIR_KEY) == str(output_dir)]
    assert job.status == JobStatus.STOPPED, rest[-2000:]
    assert "Terminating RayJob" in rest or "ended STOPPED" in rest
    assert _wait_for_cpus(ray, 2) == 2
    assert read_manifest(output_dir) is None


def test_a_submission_waits_for_the_clusters_job_agent_and_other_errors_raise_at_once():
    from arena_dagster.training.ray_job import submit_when_ready

    class Server:
        def __init__(self, failures: list[Exception]) -> None:
            self.failures, self.calls = failures, 0

        def submit_job(self, **params):
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return params["submission_id"]

    no_agent = RuntimeError("Request failed with status code 500: No available agent to submit job, please try again later..")
    server = Server([no_agent, no_agent])
    submit_when_ready(server, wait_s=30)
    assert server.submit_job(submission_id="arena-x") == "arena-x" and server.calls == 3
    refused = Server([RuntimeError("Request failed with status code 400: bad runtime_env")])
    submit_when_ready(refused, wait_s=30)
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        refused.submit_job(submission_id="arena-y")
    assert refused.calls == 1


@pytest.mark.parametrize("rows, last", [(42, [[40], [41]]), (43, [[40, 41], [42, 0]]), (41, [[40], [0]])])
def test_an_epochs_short_batch_is_shared_with_as_few_extra_rows_as_make_it_divide(rows, last):
    """Two processes, global batches of 8 drawn in order: full batches are halved; the short last batch (2, 3 or 1
    rows) is halved as it is, or completed with the epoch's first rows only up to an even count."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    from arena_dagster.training.trainers import share_short_batches

    share_short_batches()
    shards = [list(BatchSamplerShard(BatchSampler(SequentialSampler(range(rows)), 8, drop_last=False), num_processes=2,
                                     process_index=rank, split_batches=True)) for rank in (0, 1)]
    assert [len(shard) for shard in shards] == [rows // 8 + 1] * 2
    assert shards[0][:-1] == [list(range(b, b + 4)) for b in range(0, 40, 8)]
    assert shards[1][:-1] == [list(range(b + 4, b + 8)) for b in range(0, 40, 8)]
    assert [shard[-1] for shard in shards] == last


def test_a_training_worker_killed_mid_stage_resumes_from_the_last_checkpoint(workspace, ray_local_cluster, tmp_path):
    """A lost worker (a preempted node, the kernel's OOM killer) restarts the group from Ray Train's latest checkpoint,
    not from step 0, and the stage still ends with its manifest and every step."""
    import os

    import psutil

    from arena_dagster.training.ray_train import ray_storage

    output_dir, steps, every = tmp_path / "preempted", 1000, 250  # a checkpoint every max_steps // 4 steps
    driver = _start_driver(_on_ray(workspace["spec"], ray_local_cluster, 1, output_dir, max_steps=steps), tmp_path)
    lines, killed = [], []
    try:
        for line in driver.stdout:
            lines.append(line)
            if not killed and f"[sft] step {every + 10}/{steps}" in line:
                # Ray Train's controller takes a reported checkpoint at its next poll of the workers (0.5 s here).
                deadline = time.time() + 30
                while not list(ray_storage(output_dir).glob("**/checkpoint_*")) and time.time() < deadline:
                    time.sleep(0.1)
                time.sleep(1.5)
                workers = [p for p in psutil.Process().children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]
                assert len(workers) == 1, [p.cmdline() for p in psutil.Process().children(recursive=True)]
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
        assert driver.wait(timeout=300) == 0, "".join(lines[-30:])
    finally:
        driver.kill()
    said = [line for line in lines if not line.startswith("[sft] step ")]
    assert killed and any("resuming from Ray Train's checkpoint" in line for line in lines), "".join(said)
    resumed = next(i for i, line in enumerate(lines) if "resuming from Ray Train's checkpoint" in line)
    after = [int(line.split()[2].split("/")[0]) for line in lines[resumed:] if line.startswith("[sft] step ")]
    # From the step after a checkpoint, not from step 1: only the steps since it are paid again.
    assert after and after[0] > 1 and (after[0] - 1) % every == 0, after[:3]
    manifest = read_manifest(output_dir)
    assert manifest is not None and manifest["metrics"]["steps"] == steps
