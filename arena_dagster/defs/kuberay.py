"""The Ray cluster on Kubernetes: dagster-ray's `KubeRayCluster` with a GPU worker group for model replicas.

`kuberay_cluster(...)` is what the README's KubeRay section shows: a `RayCluster` (KubeRay's
CRD) with a head and one worker group of `workers` pods, each with `gpus_per_worker` GPUs, so the
profile's `compute: {engine: ray, workers: N, gpus_per_worker: G}` places one vLLM (or
transformers) replica on each pod (`backends/replicas.py`). dagster-ray creates the cluster when
a step that uses the `compute` resource starts and deletes it when the step ends; the step
connects only when its heavy work asks (`ArenaCompute.connector`).
"""

from __future__ import annotations

from typing import Any

import yaml
from dagster_ray import Lifecycle
from dagster_ray.kuberay import KubeRayCluster, RayClusterConfig
from dagster_ray.kuberay.configs import RayJobConfig, RayJobSpec

from arena_dagster.compute.settings import WORKER_ENV, ComputeSettings


def _group_spec(container: str, image: str, cpus: int, memory: str, gpus: int) -> dict:
    limits = {"cpu": str(cpus), "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {"spec": {"containers": [{
        "name": container, "image": image, "imagePullPolicy": "IfNotPresent",
        "resources": {"limits": limits, "requests": limits},
        "env": [{"name": key, "value": value} for key, value in sorted(WORKER_ENV.items())],
        "volumeMounts": [{"mountPath": "/tmp/ray", "name": "ray-logs"}],
    }], "volumes": [{"name": "ray-logs", "emptyDir": {}}]}}


def _cluster_spec(image: str, settings: ComputeSettings, memory: str, head_cpus: int) -> dict[str, Any]:
    gpus = int(settings.gpus_per_worker)
    cpus = max(1, int(settings.cpus_per_worker))
    workers = {
        "groupName": "gpu" if gpus else "cpu",
        "replicas": settings.workers, "minReplicas": settings.workers, "maxReplicas": settings.workers,
        "rayStartParams": {"num-cpus": str(cpus), **({"num-gpus": str(gpus)} if gpus else {})},
        "template": _group_spec("ray-worker", image, cpus, memory, gpus),
    }
    head = {"serviceType": "ClusterIP", "rayStartParams": {"num-cpus": "0"},  # no replica on the head
            "template": _group_spec("ray-head", image, head_cpus, "16Gi", 0)}
    return {"head_group_spec": head, "worker_group_specs": [workers]}


def kuberay_cluster(image: str, settings: ComputeSettings, *, memory: str = "64Gi", head_cpus: int = 4,
                    namespace: str = "default") -> KubeRayCluster:
    """A `KubeRayCluster` sized by the profile's `compute` section: `settings.workers` worker pods of
    `cpus_per_worker` CPUs and `gpus_per_worker` GPUs (the `gpu` group), `image` with arena-dagster installed."""
    config = RayClusterConfig(metadata={"namespace": namespace}, spec=_cluster_spec(image, settings, memory, head_cpus))
    # Created and awaited when the step starts, deleted when it ends; `ray.init` only when heavy work asks.
    return KubeRayCluster(ray_cluster=config, lifecycle=Lifecycle(create=True, wait=True, connect=False, cleanup="always"),
                          ray_init_options={"runtime_env": settings.worker_env()})


def kuberay_training_job(context: Any, image: str, settings: ComputeSettings, submission: dict[str, Any], *,
                         memory: str = "64Gi", head_cpus: int = 4, namespace: str = "default") -> dict[str, Any]:
    """The `RayJob` manifest (KubeRay's CRD) a training stage runs as on Kubernetes, for dagster-ray's
    PipesKubeRayJobClient (`run(context=context, ray_job=manifest)`): a RayCluster of its own with the worker group
    of `kuberay_cluster`, deleted when the job ends, and the job's entry point, runtime_env, id and metadata from
    `submission` (training/ray_job.py's `job_submission`, as PipesRayJobClient submits it to a running cluster)."""
    spec = RayJobSpec(
        ray_cluster_spec=_cluster_spec(image, settings, memory, head_cpus),
        runtime_env_yaml=yaml.safe_dump(submission["runtime_env"]),
        entrypoint_num_cpus=submission.get("entrypoint_num_cpus"),
        metadata=submission.get("metadata"),
        job_id=submission.get("submission_id"),
        entrypoint=submission["entrypoint"],
    )
    manifest = RayJobConfig(metadata={"namespace": namespace}, spec=spec).to_k8s(context, image=image)
    manifest["metadata"]["namespace"] = namespace  # where the client creates and watches it
    return manifest
