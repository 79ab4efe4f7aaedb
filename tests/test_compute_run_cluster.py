"""A run's steps on the Ray engine share one cluster: reached by the first heavy step, kept until the run ends.

The run happens in a process of its own: a pytest worker may hold a test's session cluster, which the resource
would use as it is (tests/conftest.py's `ray_local_cluster`), and this test is about the cluster the run starts."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, flywheel_env

RUN = r'''
import json

import dagster as dg
import ray

from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.defs.compute import ArenaCompute
from arena_dagster.training.ray_job import dashboard_address

seen = []


def cluster(step):
    seen.append({"step": step, "node": ray.get_runtime_context().get_node_id(), "cpus": ray.cluster_resources()["CPU"]})


@dg.asset
def first(context, compute: ArenaCompute):
    with compute.session(context):
        pass
    cluster("first")  # after the step's block: the cluster stays for the run


@dg.asset(deps=[first])
def answered(context, compute: ArenaCompute):
    with compute.session(context):
        cluster("answered")


@dg.asset(deps=[answered])
def trained(context, compute: ArenaCompute):
    from ray.job_submission import JobSubmissionClient

    with compute.training(context) as engine:
        JobSubmissionClient(dashboard_address(engine["address"])).list_jobs()  # the job server answers
        cluster("trained")


@dg.asset(deps=[trained])
def judged(context, compute: ArenaCompute):
    with compute.session(context):
        cluster("judged")


instance = dg.DagsterInstance.ephemeral()
compute = ArenaCompute(settings_json=ComputeSettings(engine="ray", workers=1).model_dump_json())
result = dg.materialize([first, answered, trained, judged], instance=instance, resources={"compute": compute})
logs = [e.message for e in instance.all_logs(result.run_id) if e.message and e.message.startswith("Ray: ")]
print(json.dumps({"success": result.success, "seen": seen, "logs": logs,
                  "left": not ray.is_initialized()}))
'''


def test_a_runs_steps_share_one_cluster_with_its_job_server_and_the_run_leaves_it():
    proc = subprocess.run([sys.executable, "-c", RUN], check=False, cwd=REPO, env=flywheel_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["success"] and run["left"], run
    node = {each["step"]: each["node"] for each in run["seen"]}
    assert [each["cpus"] for each in run["seen"]] == [1.0] * 4
    # Every step on the cluster the first one started, with the job server a training step submits its Ray job to.
    assert len(set(node.values())) == 1, node
    assert run["logs"] == ["Ray: a local cluster of 1 CPU(s) with its job server, kept for this run's steps"], run["logs"]
