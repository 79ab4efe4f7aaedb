"""The `gpu` profile (assets/profiles/gpu.yaml) and the small-scale forms benchmarks/gpu_check.sh runs: what a GPU
machine would run, checked here without a GPU through the functions that build it (specs, Ray Train's
ScalingConfig, the replicas' resources, the KubeRay manifests)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from arena_dagster.backends.models import declared_models, generation_spec
from arena_dagster.backends.registry import model_spec_from_config
from arena_dagster.backends.replicas import RayReplicas, backend_for
from arena_dagster.config import ConfigError, load_profile, settings_of
from arena_dagster.defs.kuberay import kuberay_cluster, kuberay_training_job
from arena_dagster.paths import ASSETS_DIR
from arena_dagster.training.launch_config import ray_worker_environment
from arena_dagster.training.ray_job import job_submission
from arena_dagster.training.ray_train import per_worker_hyperparams, scaling_config
from arena_dagster.training.runner import ENTRYPOINT_MODULE, training_command
from arena_dagster.training.spec import (
    MANIFEST,
    TrainingSpecError,
    spec_hash,
    validate_spec,
)
from arena_dagster.training.stages import TRAINING_STAGES, stage_training_spec

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
ZERO3 = (ASSETS_DIR / "accelerate" / "deepspeed_zero3.yaml").resolve()


def stage_specs(settings, root: Path) -> dict[str, dict]:
    """Every stage's training spec as the training asset hands it to the launch on the Ray engine (with `compute`)."""
    base, reward = root / "base", root / "reward"
    base.mkdir(exist_ok=True)
    reward.mkdir(exist_ok=True)
    (reward / MANIFEST).write_text(json.dumps({"stage": "reward", "spec_hash": "r"}))
    dataset = root / "rows.jsonl"
    dataset.write_text("{}\n")
    return {stage: {**stage_training_spec(stage, round_key=1, base_model=base, dataset=dataset, output_dir=root / stage,
                                          models=settings.models, locally_built=False,
                                          reward_model=reward if stage == "rl" else None),
                    "compute": settings.compute.model_dump()}
            for stage in TRAINING_STAGES}


def test_the_gpu_profile_trains_every_stage_with_zero3_in_bf16_on_8_gpus(tmp_path):
    settings = settings_of(load_profile("gpu"))
    compute = settings.compute
    assert (compute.engine, compute.workers, compute.gpus_per_worker) == ("ray", 8, 1.0)
    # The accelerate config is named relative to the profile file, and loading makes it absolute.
    config_file = settings.models.launch.config_file
    assert Path(config_file).is_absolute() and Path(config_file).resolve() == ZERO3
    for stage, spec in stage_specs(settings, tmp_path).items():
        resolved = validate_spec(spec)
        assert resolved["device"] == "cuda" and resolved["hyperparams"]["bf16"] is True, stage
        assert resolved["launch"] == {"config_file": config_file, "mixed_precision": "bf16"}
        env = ray_worker_environment(resolved["launch"])
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3", stage
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
        # Ray Train's workers are the ranks: the job runs the entry point itself, not `accelerate launch`.
        assert training_command(resolved, "spec.json")[1:] == ["-m", ENTRYPOINT_MODULE, "spec.json"]
        # The global batch divides over the 8 workers (refused before training otherwise).
        per_worker_hyperparams(resolved["hyperparams"], compute.workers, stage)
        # ZeRO-3 is part of the checkpoint's identity: the same stage without it is another revision.
        assert spec_hash(spec) != spec_hash({key: value for key, value in spec.items() if key != "launch"})
    scaling = scaling_config(compute)
    assert (scaling.num_workers, scaling.use_gpu) == (8, True)
    assert scaling.resources_per_worker == {"CPU": 12.0, "GPU": 1.0}


def test_the_gpu_profile_answers_and_judges_on_vllm_replicas_of_one_gpu_each():
    profile = load_profile("gpu")
    settings = settings_of(profile)
    declared = [(name, config) for name, _kind, config in declared_models(settings.models)]
    declared.append(("judge", profile["judge"]["model"]))
    checkpoint = generation_spec({"model": "SFT-I1", "path": "/home/checkpoints/SFT-I1", "revision": "r", "manifest": {}},
                                 settings.generation)
    specs = [checkpoint, *(model_spec_from_config(name, config) for name, config in declared
                           if config["backend"] != "recorded")]
    assert len(specs) == 6 and {spec.backend for spec in specs} == {"vllm"}
    for spec in specs:
        replicas = backend_for(spec, settings.compute)
        assert isinstance(replicas, RayReplicas), spec.name
        assert replicas._actors()[2] == {"num_cpus": 12.0, "num_gpus": 1.0} and replicas.settings.workers == 8
        assert spec.options["engine"]["dtype"] == "bfloat16"


def test_the_gpu_profile_on_kuberay_is_8_worker_pods_of_one_gpu(tmp_path):
    compute = settings_of(load_profile("gpu")).compute
    manifest = kuberay_cluster("ghcr.io/acme/arena-dagster:1.0", compute).ray_cluster.to_k8s(
        dg.build_init_resource_context(), image="unused:default")
    submission = job_submission(["python", "-m", ENTRYPOINT_MODULE, "/home/checkpoints/SFT-I1.spec.json"], {},
                                compute.model_dump(), tmp_path / "SFT-I1")
    job = kuberay_training_job(dg.build_init_resource_context(), "ghcr.io/acme/arena-dagster:1.0", compute, submission)
    for [group] in (manifest["spec"]["workerGroupSpecs"], job["spec"]["rayClusterSpec"]["workerGroupSpecs"]):
        assert group["groupName"] == "gpu" and group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 8
        assert group["rayStartParams"] == {"num-cpus": "12", "num-gpus": "1"}
        [worker] = group["template"]["spec"]["containers"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("name", ["gpu_smoke_1gpu", "gpu_smoke_cpu"])
def test_the_small_forms_the_gpu_check_runs_are_valid(tmp_path, name):
    """gpu_smoke itself (2+ GPUs; below) and the check's 1-GPU and CPU forms load, and their training specs pass the
    entry point's checks at every worker count the check uses."""
    profile = load_profile(name)
    settings = settings_of(profile)
    assert settings.models.launch is None  # `launch: null` drops gpu's ZeRO-3: nothing to shard, no DeepSpeed needed
    on_cpu = name == "gpu_smoke_cpu"
    backends = {profile["generation"]["backend"], profile["judge"]["model"]["backend"],
                *(config["backend"] for _name, _kind, config in declared_models(settings.models))}
    assert backends == ({"transformers", "recorded"} if on_cpu else {"vllm", "recorded"})
    assert settings.compute.gpus_per_worker == (0.0 if on_cpu else 1.0)
    for stage, spec in stage_specs(settings, tmp_path).items():
        resolved = validate_spec(spec)
        assert resolved["device"] == ("cpu" if on_cpu else "cuda") and resolved["hyperparams"]["bf16"] is not on_cpu
        for workers in (1, 2, 4, 8):
            per_worker_hyperparams(resolved["hyperparams"], workers, stage)


def test_gpu_smoke_keeps_zero3_and_divides_its_batches_over_8_gpus(tmp_path):
    settings = settings_of(load_profile("gpu_smoke"))
    assert Path(settings.models.launch.config_file).resolve() == ZERO3
    for stage, spec in stage_specs(settings, tmp_path).items():
        resolved = validate_spec({**spec, "compute": {**spec["compute"], "workers": 8}})
        per_worker_hyperparams(resolved["hyperparams"], 8, stage)
        assert resolved["hyperparams"]["bf16"] is True and resolved["hyperparams"]["max_steps"] <= 4


def test_the_gpu_check_without_a_gpu_exits_2_in_one_line(tmp_path):
    # PATH holds nothing: the script must decide with shell builtins alone, before anything slow.
    done = subprocess.run(["/bin/bash", str(SCRIPT)], check=False, capture_output=True, text=True, timeout=10,
                          env={"PATH": str(tmp_path)}, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and output.count("\n") == 1, output
    assert output.startswith("gpu_check: no NVIDIA GPU here (nvidia-smi is not on PATH)")


def test_an_accelerate_config_applies_on_ray_train_only_as_per_rank_settings(tmp_path):
    assert ray_worker_environment(None) == {} and ray_worker_environment({"mixed_precision": "bf16"}) == {}
    ddp = ray_worker_environment({"config_file": str(ASSETS_DIR / "accelerate" / "multi_gpu_bf16.yaml")})
    assert ddp == {"ACCELERATE_MIXED_PRECISION": "bf16"}
    env = ray_worker_environment({"config_file": str(ZERO3), "mixed_precision": "no"})
    assert env["ACCELERATE_MIXED_PRECISION"] == "no" and env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"] == "none"
    assert "mixed_precision" not in env["ACCELERATE_CONFIG_DS_FIELDS"].split(",")  # the spec's, not the file's
    with pytest.raises(TrainingSpecError, match="num_processes and compute.engine ray both count"):
        ray_worker_environment({"config_file": str(ZERO3), "num_processes": 8})
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\nmixed_precision: bf16\n")
    with pytest.raises(TrainingSpecError, match="distributed_type FSDP cannot apply on Ray Train"):
        ray_worker_environment({"config_file": str(fsdp)})
    odd = tmp_path / "odd.yaml"
    odd.write_text("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3, nvme_path: /x}\n")
    with pytest.raises(TrainingSpecError, match=r"deepspeed_config keys \['nvme_path'\] have no per-rank setting"):
        ray_worker_environment({"config_file": str(odd)})


def test_a_ray_profile_that_also_counts_accelerate_processes_is_refused_in_one_line(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text(f"extends: {REPO / 'assets/profiles/gpu.yaml'}\nname: both\nmodels: {{launch: {{num_processes: 8}}}}\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    line = str(info.value)
    assert line.startswith("models.launch.num_processes and compute.engine ray both count the training processes")
    assert "\n" not in line and "Ray Train runs compute.workers" in line


def test_the_trainer_arguments_a_ray_worker_builds_take_zero3_from_its_environment(monkeypatch, tmp_path):
    """What `_worker_loop` sets is read as `accelerate launch`'s: TrainingArguments asks for ZeRO-3's DeepSpeed plugin."""
    from transformers import TrainingArguments

    for key, value in ray_worker_environment({"config_file": str(ZERO3), "mixed_precision": "no"}).items():
        monkeypatch.setenv(key, value)
    try:
        plugin = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none").deepspeed_plugin
    except ImportError as exc:  # DeepSpeed is not a dependency: where it is absent, the plugin's import is what fails
        assert "deepspeed" in str(exc).lower()
    else:
        assert plugin is not None and plugin.zero_stage == 3 and plugin.zero3_save_16bit_model is True
