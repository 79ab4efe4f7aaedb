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
