"""The KubeRay cluster the README shows, built and rendered to its Kubernetes manifest without a cluster."""

from __future__ import annotations

import dagster as dg

from arena_dagster.backends.base import ModelSpec
from arena_dagster.backends.replicas import RayReplicas, backend_for
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.defs.compute import ArenaCompute
from arena_dagster.defs.kuberay import kuberay_cluster

GPU4 = ComputeSettings(engine="ray", workers=4, cpus_per_worker=8, gpus_per_worker=1, address="auto")


def test_the_readme_kuberay_cluster_has_a_gpu_worker_per_vllm_replica():
    cluster = kuberay_cluster("ghcr.io/acme/arena-dagster:1.0", GPU4, namespace="arena")
    manifest = cluster.ray_cluster.to_k8s(dg.build_init_resource_context(), image="unused:default")
    assert manifest["kind"] == "RayCluster" and cluster.ray_cluster.namespace == "arena"
    [group] = manifest["spec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu" and group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    assert group["rayStartParams"] == {"num-cpus": "8", "num-gpus": "1"}
    [worker] = group["template"]["spec"]["containers"]
    assert worker["image"] == "ghcr.io/acme/arena-dagster:1.0"
    assert worker["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in worker["env"]
    head = manifest["spec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0"} and "nvidia.com/gpu" not in str(head)
    # Created when a step starts, connected only when its heavy work asks, deleted when it ends.
    assert (cluster.lifecycle.create, cluster.lifecycle.connect, cluster.lifecycle.cleanup) == (True, False, "always")
    assert cluster.ray_init_options["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"

    # The vLLM judge or competitor: one replica per worker pod, one GPU each.
    replicas = backend_for(ModelSpec(name="judge", backend="vllm", path="Qwen/Qwen2.5-72B-Instruct"), GPU4)
    assert isinstance(replicas, RayReplicas)
    _actor, _arguments, resources = replicas._actors()
    assert resources == {"num_cpus": 8, "num_gpus": 1} and replicas.settings.workers == group["replicas"]

    # The compute resource connects through it: no `ray.init` of its own address.
    compute = ArenaCompute(settings_json=GPU4.model_dump_json(), cluster=cluster)
    connect = compute.connector(dg.build_init_resource_context())
    assert connect.func == cluster.connect
    assert dg.Definitions(resources={"compute": compute}).get_repository_def().get_top_level_resources()["compute"]


def test_a_training_stage_on_kubernetes_is_a_rayjob_of_the_profile_s_worker_group(tmp_path):
    """The RayJob PipesKubeRayJobClient creates for a stage: the job the local cluster runs, on a RayCluster of its own."""
    import yaml

    from arena_dagster.defs.kuberay import kuberay_training_job
    from arena_dagster.training.ray_job import OUTPUT_DIR_KEY, job_submission

    gpus = GPU4.model_copy(update={"runtime_env": {"env_vars": {"HF_HOME": "/models"}}})
    submission = job_submission(["python", "-m", "arena_dagster.training.entrypoint", "/home/checkpoints/SFT-I1.spec.json"],
                                {"PYTHONPATH": "/app", "PATH": "/bin"}, gpus.model_dump(), tmp_path / "SFT-I1")
    manifest = kuberay_training_job(dg.build_init_resource_context(), "ghcr.io/acme/arena-dagster:1.0", gpus, submission,
                                    namespace="arena")
    assert manifest["kind"] == "RayJob" and manifest["metadata"]["namespace"] == "arena"
    spec = manifest["spec"]
    assert spec["entrypoint"] == "python -m arena_dagster.training.entrypoint /home/checkpoints/SFT-I1.spec.json"
    assert spec["jobId"] == submission["submission_id"] and spec["metadata"] == {OUTPUT_DIR_KEY: str(tmp_path / "SFT-I1")}
    assert spec["entrypointNumCpus"] == 0 and spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["HF_HOME"] == "/models" and env["HF_HUB_OFFLINE"] == "1" and env["PYTHONPATH"] == "/app" and "PATH" not in env
    [group] = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu" and group["replicas"] == 4 and group["rayStartParams"] == {"num-cpus": "8", "num-gpus": "1"}
    [worker] = group["template"]["spec"]["containers"]
    assert worker["image"] == "ghcr.io/acme/arena-dagster:1.0" and worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
