"""The compute engine: the `compute` section, the flags, the seam, and curation on a local Ray cluster (2 CPUs)."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from arena_dagster.compute.settings import ComputeSettings
from arena_dagster.config import profile_hash
from arena_dagster.profile_schema.curation import PRESETS, CurationConfig
from arena_dagster.prompts.curation import curate
from arena_dagster.prompts.curation_ray import curate_with, stage_one_chunks
from arena_dagster.prompts.curation_ray_embed import first_flagged_turns, top_k_turns
from arena_dagster.prompts.curation_rows import first_of_groups, greedy_keep
from arena_dagster.prompts.sharegpt import load_sharegpt
from arena_dagster.shards import connection_config

REPO = Path(__file__).resolve().parents[1]
RAY2 = ComputeSettings(engine="ray", workers=2)


# ---------------------------------------------------------------- settings and flags (no cluster)


def test_compute_section_defaults_overrides_and_errors():
    settings = ComputeSettings.model_validate({"engine": "ray", "workers": 4, "address": "ray://head:10001"})
    assert settings.overridden(workers=2).workers == 2 and settings.overridden().address == "ray://head:10001"
    assert settings.ray_init_options()["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "num_cpus" not in settings.ray_init_options()  # joining a cluster: its size is the cluster's
    assert ComputeSettings(workers=3, cpus_per_worker=2).ray_init_options()["num_cpus"] == 6
    for bad in ({"engine": "spark"}, {"workers": 0}, {"address": "nowhere"}, {"worker": 2}, {"gpus_per_worker": -1}):
        with pytest.raises(ValueError):
            ComputeSettings.model_validate(bad)
    tagged = ComputeSettings.from_run_tags(settings, {"arena/engine": "local", "arena/ray_address": "local"})
    assert tagged.engine == "local" and tagged.address is None and tagged.workers == 4


def test_engine_is_not_part_of_the_profile_identity():
    from arena_dagster.config import load_profile

    profile = load_profile("skills_smoke")
    assert profile_hash(profile) == profile_hash({**profile, "compute": {"engine": "ray", "workers": 8}})


def test_profile_with_a_wrong_compute_key_fails_at_load(tmp_path):
    from arena_dagster.config import load_profile

    path = tmp_path / "p.yaml"
    path.write_text("extends: skills_smoke\ncompute: {engine: ray, wrokers: 2}\n")
    with pytest.raises(Exception, match="compute.wrokers"):
        load_profile(str(path))
    path.write_text("extends: skills_smoke\ncompute: {engine: ray, workers: 2}\n")
    assert load_profile(str(path))["compute"]["workers"] == 2


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--engine", "spark"]])
def test_bad_engine_flags_are_one_line_and_exit_2(tmp_path, flags):
    proc = subprocess.run([sys.executable, "-m", "arena_dagster.cli", "curate", "sharegpt", "--out", str(tmp_path / "o.jsonl"),
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("--workers" in proc.stderr) or ("--engine" in proc.stderr)


def test_flywheel_engine_flags_become_run_tags():
    from arena_dagster.cli import build_parser
    from arena_dagster.compute.cli import engine_tags

    args = build_parser().parse_args(["flywheel", "--rounds", "1", "--engine", "ray", "--workers", "3",
                                      "--ray-address", "auto"])
    assert engine_tags(args) == {"arena/engine": "ray", "arena/workers": "3", "arena/ray_address": "auto"}
    assert engine_tags(build_parser().parse_args(["flywheel"])) == {}  # the profile's compute section decides


def test_progress_logs_every_few_percent_with_a_rate():
    from arena_dagster.compute.progress import Progress

    lines: list[str] = []
    bar = Progress("embedding", 200, log=lines.append, every=0.25)
    for _ in range(20):
        bar.update(10)
    bar.close()
    assert len(lines) == 4 and lines[-1].startswith("embedding: 200/200 rows (100%), ")
    assert lines[0].startswith("embedding: 50/200 rows (25%)") and lines[0].endswith(" rows/s")


def test_first_of_groups_keeps_the_smallest_id_whatever_the_order():
    config = CurationConfig(prefix_dedup_chars=3)
    ids, exact, prefix = [7, 2, 5, 9], ["a", "a", "b", "c"], ["p", "p", "p", "q"]
    removed = {r[0]: (r[1], r[3]) for r in first_of_groups(ids, exact, prefix, config)}
    assert removed == {7: ("exact_dup", 2), 5: ("prefix_dup", 2)}
    shuffled = {r[0]: (r[1], r[3]) for r in first_of_groups(ids[::-1], exact[::-1], prefix[::-1], config)}
    assert shuffled == removed


def test_greedy_keep_is_curates_pass_in_id_order():
    # 1~2, 2~3, 1 !~ 3: 2 goes (matches 1); 3 stays because its only match (2) was removed.
    assert greedy_keep({(1, 2): 0.9, (2, 3): 0.95}) == {2: (1, 0.9)}
    # The most similar kept row is the one named; a tie goes to the smaller id.
    assert greedy_keep({(1, 4): 0.85, (2, 4): 0.9, (3, 4): 0.9}) == {4: (2, 0.9)}


def test_stage_one_chunks_cover_the_pool_evenly_a_multiple_of_the_workers():
    for n, workers in [(1000, 1), (1000, 2), (4000, 2), (3, 2), (1, 4), (10**6, 2), (999, 3)]:
        chunks = stage_one_chunks(n, workers)
        sizes = [stop - start for start, stop in chunks]
        assert chunks[0][0] == 0 and chunks[-1][1] == n and all(a[1] == b[0] for a, b in pairwise(chunks))
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        assert len(chunks) == n or (len(chunks) % workers == 0 and len(chunks) >= 4 * workers)
    assert len(stage_one_chunks(1000, 2)) == 8 and len(stage_one_chunks(4000, 2)) == 20  # <= 200 rows a chunk
    assert len(stage_one_chunks(10**6, 2)) == 128  # at most 64 a worker


def test_top_k_turns_keeps_a_turn_scored_in_several_blocks_once():
    # Rows (test, score, turn): -1 a batch's size, -2 one of its first turns. "a" was scored in two blocks.
    batches = [(-1, 3.0, ""), (-2, 0.0, "a"), (-2, 0.0, "b"), (0, 0.9, "a"), (0, 0.8, "b"), (1, 0.7, "b"),
               (-1, 2.0, ""), (-2, 0.0, "a"), (-2, 0.0, "c"), (0, 0.9000001, "a"), (0, 0.85, "c")]
    k, best = top_k_turns(batches, top_k=2)
    # Test 0's top-2 is a and c (a counted once, at its best score, so b is third); b is test 1's.
    assert (k, best) == (2, {"a": (0.9000001, 0), "c": (0.85, 0), "b": (0.7, 1)})
    # A pool of fewer distinct turns than top_k: k is their number, whatever the copies (the local rule).
    assert top_k_turns(batches, top_k=5)[0] == 3


def test_a_row_is_removed_for_its_first_flagged_turn_from_the_hits_rows():
    # (row id, position of the turn in the row's turns) of each hit turn, as the scorer hands them back from its blocks.
    rows_of = {"a": {(1, 2), (2, 0)}, "b": {(1, 0), (3, 1)}, "c": {(4, 0)}}
    assert first_flagged_turns({"a": None, "b": None}, rows_of) == {1: "b", 2: "a", 3: "b"}
    assert first_flagged_turns({"a": None}, rows_of) == {1: "a", 2: "a"}


def test_a_curation_worker_cuts_the_shuffle_and_the_turns_into_parts_that_cover_them():
    """The actor's methods run in-process here: stage 1's shuffle input split by partition holds every survivor's
    key and band rows once; a chunk's pieces of turns hold each surviving distinct turn once, scored as a whole is."""
    import numpy as np
    import pyarrow as pa

    from arena_dagster.prompts.curation_ray_embed import block_turns
    from arena_dagster.prompts.curation_ray_worker import CurationWorker, dedup_parts
    from arena_dagster.prompts.curation_rows import survivors

    rows = _pool()
    against = [rows[10]["prompt"]]
    config = CurationConfig(prefix_dedup_chars=None)
    worker = CurationWorker(config, against, [], threads=1, partitions=3)
    chunk = pa.table({"id": pa.array(range(len(rows)), type=pa.int64()), "row": [json.dumps(r) for r in rows]})
    features, facts, *parts = worker.stage_one(chunk)
    whole = dedup_parts(survivors(features, ()), group="exact_key", near=True, partitions=1)[0]
    assert len(parts) == 3 and sum(map(len, parts)) == len(whole) > len(rows)
    assert sorted(zip(*pa.concat_tables(parts).select(["key", "id"]).to_pydict().values())) == \
        sorted(zip(*whole.select(["key", "id"]).to_pydict().values()))
    assert all(set(part["part"].to_pylist()) <= {number} for number, part in enumerate(parts))
    assert set(facts["id"].to_pylist()) == {i for i, f in enumerate(features.to_pylist()) if f["step"] or f["dc_step"]}
    gone = np.array([5, 6], dtype=np.int64)
    turns, _ = block_turns(survivors(features, gone))
    assert len(turns) and not {5, 6} & set(survivors(features, gone)["id"].to_pylist())
    pieces = [worker.score_turns(features, gone, piece, 4) for piece in range(4)]
    assert [t for p in pieces for t, test in zip(p["turn"], p["test"]) if test == -1] == [""] * 4
    assert sum(p["score"][0] for p in pieces) == len(turns)  # each turn scored in exactly one piece
    one = worker.score_turns(features, gone, 0, 1)
    hits = {(test, turn) for p in pieces for test, turn in zip(p["test"], p["turn"]) if test >= 0}
    assert {(test, turn) for test, turn in zip(one["test"], one["turn"]) if test >= 0} <= hits
    assert worker.score_turns(features, np.array(range(len(rows)), dtype=np.int64), 0, 2)["score"] == [0]  # no turn left


def test_a_curation_worker_embeds_on_the_gpu_ray_gave_it(monkeypatch):
    """`compute.gpus_per_worker` gives each curation actor a GPU: its MiniLM runs there, else on the CPU."""
    import ray
    import torch

    from arena_dagster.prompts.curation_ray_worker import embedding_device

    assert embedding_device() == "cpu"  # in this process, no actor: the CPU
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", list)
    assert embedding_device() == "cpu"
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert embedding_device() == "cpu"  # a GPU id without a CUDA torch: the CPU, not an error at the first batch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert embedding_device() == "cuda"


def test_replica_pool_calls_go_to_the_free_actor_in_any_number_of_returns(ray_local_cluster):
    import os
    import time

    import ray

    from arena_dagster.compute.pools import ReplicaPool

    class Slow:
        def __init__(self, pause: float) -> None:
            self.pause = pause

        def work(self, value: int):
            time.sleep(self.pause if value else 10 * self.pause)  # the first call is long: the other actor takes the rest
            return os.getpid(), value * value

    pool = ReplicaPool("slow", Slow, {"pause": 0.2}, {"num_cpus": 1}, 2)
    try:
        ray.get([actor.work.remote(1) for actor in pool.actors])  # both started
        refs = pool.in_order("work", [(value,) for value in range(6)], num_returns=2)
        results = [ray.get(pair) for pair in refs]
        assert [square for _, square in results] == [v * v for v in range(6)]
        pids = [pid for pid, _ in results]
        assert len(set(pids)) == 2 and pids.count(pids[0]) == 1  # the slow first call's actor took no other
        assert sorted(position for position, _ in pool.finished("work", [(1,), (2,), (3,)])) == [0, 1, 2]
    finally:
        pool.close()


def test_a_pool_actor_whose_process_dies_is_started_again_and_its_call_run_again(ray_local_cluster, tmp_path):
    """A worker killed mid-call (out of memory, a preempted node) costs its call, not the step."""
    import os

    import ray

    from arena_dagster.compute.pools import ReplicaPool

    class DiesOnce:
        def __init__(self, marker: str, offset: int) -> None:
            self.marker, self.offset = marker, offset

        def work(self, value: int):
            if value == 3 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)  # the process ends mid-call, as the kernel's OOM killer ends it
            return os.getpid(), value * value + self.offset

    # An argument in the object store (as curation's earlier rounds), which only the pool keeps: the restart reads it again.
    pool = ReplicaPool("dies-once", DiesOnce, {"marker": str(tmp_path / "died"), "offset": ray.put(100)}, {"num_cpus": 1}, 2)
    try:
        results = {position: ray.get(ref) for position, ref in pool.finished("work", [(v,) for v in range(8)])}
        assert (tmp_path / "died").exists()
        assert [results[v][1] for v in range(8)] == [v * v + 100 for v in range(8)]
        assert len({pid for pid, _ in results.values()}) == 3  # two actors, one of them in a second process
    finally:
        pool.close()


# ---------------------------------------------------------------- on the local cluster


def _removed(result) -> set[tuple]:
    return {(r["input_index"], r["step"], json.dumps(r["matched"], default=str)) for r in result.removed_rows}


def _pool() -> list[dict]:
    rows, _ = load_sharegpt(max_conversations=30)
    first = rows[0]["prompt"]
    # An exact copy (later in the pool), a near duplicate (a word changed), a copy of a test item.
    rows.append(dict(rows[4]))
    long_first_turn = next(r for r in rows if r["turn"] == 1 and len(r["prompt"].split()) >= 30)
    words = long_first_turn["prompt"].split()
    rows.append({"prompt": " ".join(words[:-1] + ["please"]), "source_id": "near"})
    rows.insert(0, {"prompt": "I just got back from Hawaii. Can you write a fun blog post about the trip that highlights "
                              "the culture and the must-see sights?", "source_id": "paraphrase-of-a-test-item"})
    rows.append({"prompt": first, "source_id": "late-copy-of-first"})
    return rows


def test_ray_curation_keeps_the_local_rows_and_reasons(ray_local_cluster):
    rows = _pool()
    against = ["Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
               "experiences and must-see attractions.", rows[10]["prompt"]]
    config = CurationConfig(prefix_dedup_chars=None)  # the paper's steps, near duplicates by MinHash
    local = curate(rows, config=config, against=against)
    on_ray = curate_with(RAY2, rows, config=config, against=against)
    assert [r["source_id"] for r in on_ray.kept] == [r["source_id"] for r in local.kept]
    assert on_ray.removed == local.removed and _removed(on_ray) == _removed(local)
    assert local.removed["exact_dup"] and local.removed["near_dup"] and local.removed["decontam_exact"]
    assert local.removed["decontam_embedding"]  # the paraphrase of the test item


def test_ray_semantic_dedup_and_templated_preset_match_local(ray_local_cluster):
    rows, _ = load_sharegpt(max_conversations=8)
    config = CurationConfig(semantic_dedup_threshold=0.9, decontam_embedding_threshold=None)
    local, on_ray = curate(rows, config=config), curate_with(ComputeSettings(engine="ray", workers=1), rows, config=config)
    assert local.removed["semantic_dup"] and _removed(on_ray) == _removed(local)
    templated = [{"prompt": p} for p in ("Add 12 and 35.", "add 12 and 35", "Add 12 and 36.", "Add 12 and 35!",
                                         "Sort 5, 3, 9 in ascending order.", "sort 5, 3, 9 in ascending order")]
    local, on_ray = curate(templated, config=PRESETS["templated"]), curate_with(RAY2, templated, config=PRESETS["templated"])
    assert _removed(on_ray) == _removed(local) and len(local.kept) == 3


def test_ray_curation_of_blocks_of_removed_and_mixed_rows_keeps_the_local_ids(ray_local_cluster):
    """Stage 1's blocks differ (the first all removed by the single-row filters, the next mixed): each block's facts
    have one schema (removed rows lack most of them), so the shuffles and the embedding steps still agree with local."""
    import pyarrow as pa

    from arena_dagster.prompts.curation_rows import RowJudge, feature_schema

    rows, _ = load_sharegpt(max_conversations=40)
    pool = ([{"prompt": "hi"} for _ in range(300)] + [{"prompt": ""}] * 20
            + [row if i % 2 else {"prompt": f"x{i}"} for i, row in enumerate(rows[:60])] + rows[:20])
    config = CurationConfig(semantic_dedup_threshold=0.9)
    against = [rows[3]["prompt"]]
    local = curate(pool, config=config, against=against)
    on_ray = curate_with(RAY2, pool, config=config, against=against)
    assert [r.get("source_id") for r in on_ray.kept] == [r.get("source_id") for r in local.kept]
    assert on_ray.removed == local.removed and _removed(on_ray) == _removed(local)
    assert local.removed["too_short"] >= 330 and local.removed["invalid"] == 20 and local.removed["exact_dup"]
    judge = RowJudge(config, against)
    kept, removed = judge(rows[0], 0), judge({"prompt": "hi"}, 1)
    assert set(kept) == set(feature_schema().names)
    assert pa.Table.from_pylist([removed, kept], schema=feature_schema()).column("has_history").to_pylist() == [None, False]


def test_curate_cli_on_ray_writes_the_local_rows(ray_local_cluster, tmp_path, capsys):
    from arena_dagster.commands.curate import main

    data = REPO / "tests" / "data"
    args = [str(data / "prompts_mixed.jsonl"), str(data / "sharegpt_truncated.json"), "--json"]
    assert main([*args, "--out", str(tmp_path / "local.jsonl")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--workers", "2"]) == 0
    local, on_ray = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:])
    assert local == on_ray
    assert (tmp_path / "local.jsonl").read_text() == (tmp_path / "ray.jsonl").read_text()


def test_prompt_pool_on_ray_through_dagster_equals_the_local_build(ray_local_cluster, smoke_home, tmp_path):
    """The curated pool and its quarantine, rebuilt on Ray by the real asset, equal the local build's tables; tagged."""
    import shutil

    import dagster as dg
    import duckdb

    from arena_dagster.defs import build_definitions
    from arena_dagster.defs.prompts import prompt_pool

    home = tmp_path / "copy"
    home.mkdir()
    for name in ("warehouse.duckdb", "arena.json"):
        shutil.copy2(smoke_home / name, home / name)
    if (smoke_home / "tables").is_dir():  # the big tables' Parquet shards
        shutil.copytree(smoke_home / "tables", home / "tables", symlinks=True)
    defs = build_definitions(home)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([prompt_pool], instance=instance, resources=defs.resources,
                            tags={"arena/engine": "ray", "arena/workers": "2"})
    assert result.success
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags["arena/engine"] == "ray" and tags["arena/ray_address"] == "local"
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("curation on engine ray (2 workers)" in m for m in logs)
    order = {"prompt_pool": "prompt_id", "prompt_quarantine": "source_id, step, reason, prompt"}
    for table, key in order.items():
        with duckdb.connect(str(smoke_home / "warehouse.duckdb"), read_only=True, config=connection_config(smoke_home)) as local, \
                duckdb.connect(str(home / "warehouse.duckdb"), read_only=True, config=connection_config(home)) as on_ray:
            expected = local.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            assert on_ray.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall() == expected, table


def test_fingerprints_through_a_round_leave_out_later_rounds_only():
    """`table_fingerprints(through_round=1)`: a home of rounds 0-1 equals the first rounds of a longer one, and
    any difference in those rounds or in an unpartitioned table still shows."""
    import duckdb
    import polars as pl

    from arena_dagster.warehouse import table_fingerprints, write_table

    def home(rounds: int, first_score: float = 1.0, pool: tuple[str, ...] = ("a", "b")) -> duckdb.DuckDBPyConnection:
        conn = duckdb.connect(":memory:")
        write_table(conn, "raw_prompts", pl.DataFrame({"prompt": list(pool)}))
        for r in range(rounds + 1):
            write_table(conn, "leaderboard", pl.DataFrame({"model": ["m"], "score": [first_score + r]}), round_key=r)
        return conn

    longer = table_fingerprints(home(2), through_round=1)
    assert table_fingerprints(home(1), through_round=1) == longer
    assert table_fingerprints(home(1)) != table_fingerprints(home(2))
    assert table_fingerprints(home(1, first_score=2.0), through_round=1)["leaderboard"] != longer["leaderboard"]
    assert table_fingerprints(home(1, pool=("a",)), through_round=1)["raw_prompts"] != longer["raw_prompts"]
