"""Operating the flywheel through Dagster: CLI runs are the code location's runs, the home remembers its
profile, automation asks and never acts, rounds run in order, one writer per home, dead runs are failed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from arena_dagster.home import HomeProfileMismatch, read_home_record
from arena_dagster.locks import flywheel_lock, writer_lock
from conftest import REPO, flywheel_command, flywheel_env

pytestmark = pytest.mark.slow


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def test_cli_runs_are_runs_of_the_code_location_with_profile_tags(smoke_home):
    instance = _instance(smoke_home)
    record = read_home_record(smoke_home)
    rounds = instance.get_runs(filters=dg.RunsFilter(job_name="flywheel_round"))
    setup = instance.get_runs(filters=dg.RunsFilter(job_name="flywheel_setup"))
    assert len(setup) == 1 and sorted(r.tags["dagster/partition"] for r in rounds) == ["1", "2"]
    for run in [*setup, *rounds]:
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.remote_job_origin.location_name == "arena_dagster"  # under its job in the UI, re-executable
        assert run.tags["arena/profile"] == "skills_smoke" == record["profile"]
        assert run.tags["arena/profile_hash"] == record["profile_hash"]
        assert run.tags["arena/home"] == str(smoke_home) and run.tags["arena/started_by"] == "cli"
    # Training reports through Dagster Pipes: its per-step figures are the checkpoint's metadata, its lines the run's log.
    sft = instance.get_latest_materialization_event(dg.AssetKey("sft_checkpoint")).asset_materialization.metadata
    assert isinstance(sft["first_loss"].value, float) and isinstance(sft["final_loss"].value, float)
    [round_two] = [r for r in rounds if r.tags["dagster/partition"] == "2"]
    messages = [r.event_log_entry.user_message for r in instance.get_records_for_run(round_two.run_id, limit=100000).records]
    assert any(m.startswith("[sft] step") for m in messages), "training lines did not arrive through Pipes"
    # Every materialization records the profile that made it.
    for key in ("prompt_pool", "baseline_leaderboard", "sft_checkpoint", "leaderboard", "target_model"):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        assert event.asset_materialization.metadata["arena/profile_hash"].value == record["profile_hash"], key


def test_every_round_partition_of_every_asset_is_materialized(smoke_home):
    from arena_dagster.defs import build_definitions

    instance = _instance(smoke_home)
    graph = build_definitions(smoke_home).resolve_asset_graph()
    partitions = set(instance.get_dynamic_partitions("round"))
    assert partitions == {"1", "2"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        expected = partitions if node.partitions_def is not None else set()
        materialized = instance.get_materialized_partitions(key) if node.partitions_def is not None else set()
        assert materialized == expected, key
        if node.partitions_def is None:
            assert instance.get_latest_materialization_event(key) is not None, key


def test_the_home_remembers_its_profile(smoke_home):
    from arena_dagster.defs import build_definitions
    from arena_dagster.commands.flywheel import prepare_ui

    defs = build_definitions(smoke_home)
    assert defs.resources["arena"].profile == "skills_smoke"
    with pytest.raises(HomeProfileMismatch, match="built with profile 'skills_smoke'"):
        build_definitions(smoke_home, "skills")
    command = prepare_ui(smoke_home, None, "127.0.0.1", 3999)
    assert command[1:3] == ["dev", "-w"] and command[3] == str(smoke_home / "dagster" / "workspace.yaml")
    proc = subprocess.run([*flywheel_command(smoke_home)[:4], "--profile", "skills", "--home", str(smoke_home)],
                          cwd=REPO, env=flywheel_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("arena-dagster: this home was built with profile 'skills_smoke'")


def test_schedule_and_sensors_evaluated_twice_change_nothing(smoke_home, tmp_path):
    from arena_dagster.defs.automation import next_round_request, nightly_flywheel, round_partitions_sensor

    instance = _instance(smoke_home)
    before = instance.get_dynamic_partitions("round")
    for _ in range(2):
        tick = nightly_flywheel(dg.build_schedule_context(instance=instance))
        assert isinstance(tick, dg.SkipReason) and "every round slice of the prompt pool has run (2 slices)" in tick.skip_message
        assert isinstance(round_partitions_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
        assert isinstance(next_round_request(instance, "sensor"), dg.SkipReason)
    assert instance.get_dynamic_partitions("round") == before
    # A pool with a slice that has no partition yet: the sensor asks for it, and only asks.
    instance.delete_dynamic_partition("round", "2")
    try:
        for _ in range(2):
            result = round_partitions_sensor(dg.build_sensor_context(instance=instance))
            [request] = result.dynamic_partitions_requests
            assert list(request.partition_keys) == ["2"]
        assert instance.get_dynamic_partitions("round") == ["1"]
    finally:
        instance.add_dynamic_partitions("round", ["2"])


def _copy_home(home: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name in ("warehouse.duckdb", "arena.json"):
        shutil.copy2(home / name, to / name)
    if (home / "tables").is_dir():  # the big tables' Parquet shards
        shutil.copytree(home / "tables", to / "tables", symlinks=True)
    return to


def test_a_round_refuses_to_start_before_the_previous_gate(smoke_home, tmp_path):
    from arena_dagster.defs import build_definitions
    from arena_dagster.defs.gate import round_target

    home = _copy_home(smoke_home, tmp_path / "copy")
    defs = build_definitions(home)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("round", ["3", "4"])
    ok = dg.materialize([round_target], partition_key="3", instance=instance, resources=defs.resources)
    assert ok.success
    metadata = ok.asset_materializations_for_node("round_target")[0].metadata
    assert metadata["decided_in_round"].value == 2
    failed = dg.materialize([round_target], partition_key="4", instance=instance, resources=defs.resources,
                            raise_on_error=False)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "round 4 cannot start: round 3's gate decision is not recorded" in failure.event_specific_data.error.message


def test_a_finished_home_reruns_as_a_no_op(smoke_home):
    instance = _instance(smoke_home)
    runs_before = len(instance.get_runs())
    proc = subprocess.run(flywheel_command(smoke_home), cwd=REPO, env=flywheel_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every round up to 2 is done with this profile: verified" in proc.stdout
    assert len(instance.get_runs()) == runs_before


def test_a_second_flywheel_on_the_same_home_refuses_or_waits(smoke_home):
    lock = flywheel_lock(smoke_home)
    assert lock.acquire(wait=False, command="flywheel")
    try:
        proc = subprocess.run([*flywheel_command(smoke_home), "--no-wait"], cwd=REPO, env=flywheel_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert proc.stderr.startswith(f"arena-dagster: another flywheel works on this home (pid {__import__('os').getpid()}")
        waiting = subprocess.Popen(flywheel_command(smoke_home), cwd=REPO, env=flywheel_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        first = waiting.stdout.readline()
        assert "another flywheel works on this home" in first and "waiting" in first
        assert time.monotonic() < deadline and waiting.poll() is None
    finally:
        lock.release()
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err[-2000:]
    assert "verified" in out


READER_HOLDER = """
import sys, time, duckdb
from pathlib import Path
from arena_dagster.locks import writer_lock
home = Path(sys.argv[1])
lock = writer_lock(home)
lock.acquire(run_id="run-under-test", job="flywheel_round", round="7")
conn = duckdb.connect(str(home / "warehouse.duckdb"))
conn.execute("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
print("holding", flush=True)
time.sleep(60)
"""


def test_readers_retry_a_written_warehouse_then_say_who_writes(tmp_path):
    from arena_dagster.warehouse import WarehouseError, open_readonly

    holder = subprocess.Popen([sys.executable, "-c", READER_HOLDER, str(tmp_path)], cwd=REPO, env=flywheel_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with pytest.raises(WarehouseError) as error:
            with open_readonly(tmp_path, timeout_s=2):
                pass
        assert time.monotonic() - started >= 2
        message = str(error.value)
        assert f"pid {holder.pid}" in message and "run_id run-under-test" in message and "round 7" in message
        assert "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    with open_readonly(tmp_path, timeout_s=2) as conn:  # the lock died with its holder
        assert conn.execute("SELECT x FROM t").fetchone() == (1,)
    assert writer_lock(tmp_path).acquire(wait=False)


def test_runs_left_started_by_a_dead_process_are_marked_failed(tmp_path):
    from dagster._core.events import EngineEventData

    from arena_dagster.operate import reap_dead_runs

    instance = dg.DagsterInstance.ephemeral()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    @dg.op
    def noop():
        return None

    @dg.job
    def some_job():
        noop()

    alive = instance.create_run_for_job(some_job, status=dg.DagsterRunStatus.STARTED)
    orphan = instance.create_run_for_job(some_job, status=dg.DagsterRunStatus.STARTED)
    instance.report_engine_event("Started process for run", orphan, EngineEventData.in_process(dead.pid))
    instance.report_engine_event("Started process for run", alive, EngineEventData.in_process(__import__("os").getpid()))
    queued = instance.create_run_for_job(some_job, status=dg.DagsterRunStatus.NOT_STARTED, tags={"arena/cli_pid": str(dead.pid)})
    said = []
    assert set(reap_dead_runs(instance, said.append)) == {orphan.run_id, queued.run_id}
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.CANCELED
    assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
    assert any("its process" in line for line in said)
    json.dumps(said)


def _full_copy(home: Path, to: Path) -> Path:
    """The whole home (warehouse, Dagster instance with its runs and materializations), to change it."""
    shutil.copytree(home, to, symlinks=True)
    return to


def test_the_continuous_sensor_ticks_like_the_daemon(smoke_home, tmp_path):
    from datetime import datetime, timezone

    from arena_dagster.defs import build_definitions
    from arena_dagster.defs.gate import promotion_gate

    home = _full_copy(smoke_home, tmp_path / "copy")
    defs = build_definitions(home)
    repo = defs.get_repository_def()
    instance = _instance(home)
    sensor = defs.resolve_sensor_def("next_round_sensor")

    def tick(cursor: str | None):
        # As the daemon's code server builds it: with the instance's ref, so the run request's partition is checked.
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                                            repository_def=repo, cursor=cursor))

    gate_id = instance.fetch_materializations(dg.AssetKey("target_model"), limit=1).records[0].storage_id
    # Every slice has run: the gate decision is seen and passed over, saying why.
    first = tick(None)
    assert not first.run_requests and "every round slice of the prompt pool has run" in first.skip_message
    assert first.cursor == str(gate_id)
    # The pool grew a third slice: the last gate decision asks for round 3, once per decision.
    instance.add_dynamic_partitions("round", ["3"])
    [request] = tick(None).run_requests
    assert (request.partition_key, request.run_key) == ("3", f"round-3-sensor-{gate_id}")
    assert request.tags["arena/round"] == "3" and request.tags["arena/started_by"] == "sensor"
    for _ in range(2):
        again = tick(first.cursor)
        assert not again.run_requests and "no gate decision" in again.skip_message and again.cursor == first.cursor
    # The nightly schedule asks for the same round.
    nightly = defs.resolve_schedule_def("nightly_flywheel").evaluate_tick(dg.build_schedule_context(
        instance=instance, repository_def=repo, scheduled_execution_time=datetime(2026, 1, 2, 2, tzinfo=timezone.utc)))
    [scheduled] = nightly.run_requests
    assert scheduled.partition_key == "3" and scheduled.tags["arena/started_by"] == "schedule"
    # Round 2's gate decided again (a rerun after a fix): a new decision, a new run key, not skipped as a repeat.
    assert dg.materialize([promotion_gate], partition_key="2", instance=instance, resources=defs.resources).success
    rerun = tick(first.cursor)
    [request_again] = rerun.run_requests
    assert request_again.partition_key == "3" and request_again.run_key != request.run_key
    assert int(rerun.cursor) > gate_id and not tick(rerun.cursor).run_requests


def test_runs_launched_outside_the_cli_get_round_and_launcher_tags():
    from arena_dagster.defs.resources import missing_run_tags

    home = {"arena/profile": "p", "arena/profile_hash": "h", "arena/home": "/h"}
    ui = missing_run_tags({"dagster/partition": "3", "dagster/from_ui": "true"}, home)
    assert ui == {**home, "arena/round": "3", "arena/started_by": "ui"}
    cli = {**home, "dagster/partition": "3", "arena/round": "3", "arena/started_by": "cli"}
    assert missing_run_tags(cli, home) == {}
    assert missing_run_tags({**home, "dagster/sensor_name": "next_round_sensor", "arena/started_by": "sensor",
                             "arena/round": "3", "dagster/partition": "3"}, home) == {}
    assert missing_run_tags({**home, "dagster/backfill": "abc"}, home) == {"arena/started_by": "backfill"}
    assert missing_run_tags(home, home) == {"arena/started_by": "dagster"}
    # The UI's Re-execute of a CLI run copies the CLI's tags; the re-execution says the UI started it.
    again = {**cli, "dagster/parent_run_id": "x", "dagster/from_ui": "true"}
    assert missing_run_tags(again, home) == {"arena/started_by": "ui"}


def test_a_round_launched_from_the_ui_is_tagged_and_plots_stable_roles(smoke_home, tmp_path):
    from arena_dagster.defs import build_definitions

    home = _full_copy(smoke_home, tmp_path / "copy")
    defs = build_definitions(home)
    instance = _instance(home)
    record = read_home_record(home)
    # What the UI's Materialize dialog submits: a run of the round job for a partition, tagged by Dagster only.
    job = defs.resolve_job_def("flywheel_round")
    result = job.execute_in_process(
        partition_key="2", instance=instance, tags={"dagster/from_ui": "true"},
        asset_selection=[dg.AssetKey(k) for k in ("leaderboard", "target_model", "promotions", "model_registry")])
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags["arena/round"] == "2" and run.tags["arena/started_by"] == "ui"
    assert run.tags["arena/profile_hash"] == record["profile_hash"] and run.tags["arena/home"] == str(home)
    by_round = instance.get_runs(filters=dg.RunsFilter(tags={"arena/round": "2"}))
    assert result.run_id in {r.run_id for r in by_round} and len(by_round) == 2  # the CLI's and the UI's
    # The Plots tab: floats in roles that are the same thing every round, and no constant.
    board = result.asset_materializations_for_node("leaderboard")[0].metadata
    gate = next(m.metadata for m in result.asset_materializations_for_node("promotion_gate")
                if m.asset_key == dg.AssetKey("target_model"))
    figures = {k for k, v in {**board, **gate}.items() if isinstance(v, (dg.FloatMetadataValue, dg.IntMetadataValue))}
    anchor = board["anchor"].value.rpartition("=")[0]
    assert {"rating/sft", "rating/best_candidate", "rating/initial", "rating/target", "gate/diff"} <= figures
    assert "rating/incumbent" not in figures and f"rating/{anchor}" not in figures
    assert not {"gate/margin", "arena/seed"} & figures
    assert gate["rating/best_candidate"].value == max(board[f"rating/{s}"].value for s in ("sft", "dpo", "rl")
                                                     if f"rating/{s}" in board)
    graph = defs.resolve_asset_graph()
    for key, names in (("leaderboard", ("rating/best_candidate", "rating/initial", "rating/target")),
                       ("target_model", ("rating/target", "rating/best_candidate", "gate/diff"))):
        description = graph.get(dg.AssetKey(key)).description
        assert all(name in description for name in names), key


def test_end_processes_stops_a_tree_even_one_that_ignores_sigterm():
    import subprocess
    import time

    from arena_dagster.operate import end_processes, process_tree

    # A parent with two children, one of which ignores SIGTERM (bash execs the last command, ignoring it): all end.
    parent = subprocess.Popen(["bash", "-c", "sleep 300 & bash -c 'trap \"\" TERM; sleep 300' & wait"])
    deadline = time.monotonic() + 10
    while len(process_tree(parent.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = process_tree(parent.pid)
    assert len(tree) == 3
    stopped = end_processes(tree, grace_s=0.5)
    parent.wait(timeout=10)
    assert set(stopped) == {p.pid for p in tree}
    assert not [p for p in tree if p.is_running() and p.status() != "zombie"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_before_any_run_is_one_line_and_128_plus_the_signal(tmp_path, sig):
    import signal

    home = tmp_path / "home"
    lock = flywheel_lock(home)
    assert lock.acquire(wait=False, command="test")  # the command waits for this "other flywheel"
    try:
        process = subprocess.Popen(flywheel_command(home), cwd=REPO, env=flywheel_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert "waiting for it to finish" in process.stdout.readline()
        process.send_signal(getattr(signal, sig))
        out, err = process.communicate(timeout=60)
    finally:
        lock.release()
    assert process.returncode == 128 + getattr(signal, sig)
    assert err.splitlines() == [f"arena-dagster: interrupted by {sig}: run the same command again to resume"]


def test_round_partitions_the_sensor_adds_meanwhile_are_not_an_error(monkeypatch):
    """The flywheel adds the pool's round partitions while its daemon's sensor may add the same keys
    (CI, stop 27: UNIQUE constraint failed on dynamic_partitions): Dagster checks, then inserts."""
    from dagster._core.storage.event_log.schema import DynamicPartitionsTable
    from sqlalchemy.exc import IntegrityError

    from arena_dagster.defs.automation import add_missing_round_partitions

    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("prompt_pool", metadata={"rounds": 3}))
    instance.add_dynamic_partitions("round", ["1"])
    add = instance.add_dynamic_partitions
    calls: list[list[str]] = []

    def sensor_wins_the_race(name, keys):
        calls.append(list(keys))
        if len(calls) == 1:  # the sensor's insert lands between Dagster's check and its insert
            add(name, keys)
            with instance.event_log_storage.index_connection() as conn:
                conn.execute(DynamicPartitionsTable.insert(), [{"partitions_def_name": name, "partition": k} for k in keys])
        return add(name, keys)

    monkeypatch.setattr(instance, "add_dynamic_partitions", sensor_wins_the_race)
    with pytest.raises(IntegrityError):  # what the flywheel command died of
        sensor_wins_the_race("round", ["2"])
    instance.delete_dynamic_partition("round", "2")
    calls.clear()
    assert add_missing_round_partitions(instance) == []
    assert calls == [["2", "3"]]
    assert instance.get_dynamic_partitions("round") == ["1", "2", "3"]
    instance.report_runless_asset_event(dg.AssetMaterialization("prompt_pool", metadata={"rounds": 4}))
    assert add_missing_round_partitions(instance) == ["4"]
    assert add_missing_round_partitions(instance) == []
    assert instance.get_dynamic_partitions("round") == ["1", "2", "3", "4"]
