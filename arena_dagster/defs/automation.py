"""Jobs, the nightly schedule and the sensors: what starts a round, whoever asks (UI, schedule, CLI).

Automation returns requests, it never acts: the round partitions a pool's slices call for are
added by `round_partitions` through `dynamic_partitions_requests` in its tick result, and the
schedule only asks for the next round that exists. Evaluating a tick (a UI preview, a test)
twice changes nothing. The CLI uses the same functions to decide what to run.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from arena_dagster.defs.resources import round_partitions
from arena_dagster.home import logs_dir
from arena_dagster.progress import step_failures

SETUP_ASSETS = ["raw_prompts", "arena_testset", "prompt_pool", "prompt_quarantine", "competitor_models",
                "initial_target_model", "baseline_leaderboard"]
ROUND_JOB = "flywheel_round"
SETUP_JOB = "flywheel_setup"
GATE_ASSET = dg.AssetKey("target_model")


def flywheel_jobs(tags: dict[str, str]) -> list:
    """The two jobs every way of running uses; `tags` (profile, profile hash, home) go on every run."""
    return [
        dg.define_asset_job(
            SETUP_JOB,
            selection=dg.AssetSelection.assets(*SETUP_ASSETS),
            tags=tags,
            description="Everything the rounds share: prompt pool and quarantine, arena test set, base models, and "
                        "the baseline evaluation (round 0) that makes the initial target round 1's target.",
        ),
        dg.define_asset_job(
            ROUND_JOB,
            selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*SETUP_ASSETS),
            partitions_def=round_partitions,
            tags=tags,
            description="One flywheel round r: its target, per stage (SFT, DPO, RL) battles, preference data and "
                        "training, the arena evaluation of every stage checkpoint, and the gate that names round "
                        "r+1's target. Round r refuses to start before round r-1's gate is recorded.",
        ),
    ]


def pool_rounds(instance: dg.DagsterInstance) -> int:
    """How many round slices the last materialized prompt pool has (0 before setup)."""
    event = instance.get_latest_materialization_event(dg.AssetKey("prompt_pool"))
    if event is None or event.asset_materialization is None:
        return 0
    value = event.asset_materialization.metadata.get("rounds")
    return int(value.value) if value is not None else 0


def missing_round_partitions(instance: dg.DagsterInstance) -> list[str]:
    """Round keys the pool has a slice for but the instance does not know yet."""
    existing = set(instance.get_dynamic_partitions(round_partitions.name))
    return [str(r) for r in range(1, pool_rounds(instance) + 1) if str(r) not in existing]


def add_missing_round_partitions(instance: dg.DagsterInstance, attempts: int = 3) -> list[str]:
    """Add the round partitions the pool calls for; returns the keys this call added.

    The daemon's `round_partitions_sensor` adds the same keys. Dagster's add checks which keys exist and
    then inserts the others, not atomically, so when the sensor's insert lands between the two the
    unique index refuses ours: the keys then exist, which is all the caller needs, so read again.
    """
    from sqlalchemy.exc import IntegrityError

    added: list[str] = []
    for _ in range(attempts):
        missing = missing_round_partitions(instance)
        if not missing:
            return added
        try:
            instance.add_dynamic_partitions(round_partitions.name, missing)
        except IntegrityError:
            continue
        added += missing
    left = missing_round_partitions(instance)
    if left:
        raise RuntimeError(f"round partitions {left} could not be added in {attempts} attempts")
    return added


def finished_rounds(instance: dg.DagsterInstance) -> set[int]:
    """Rounds whose gate (target_model[r]) has been materialized."""
    return {int(key) for key in instance.get_materialized_partitions(GATE_ASSET) if key.isdigit()}


def baseline_done(instance: dg.DagsterInstance) -> bool:
    return instance.get_latest_materialization_event(dg.AssetKey("baseline_leaderboard")) is not None


def next_round(instance: dg.DagsterInstance) -> int | None:
    """The round to run next: the first one after the last finished one, if the pool has its slice."""
    done = finished_rounds(instance)
    candidate = 1
    while candidate in done:
        candidate += 1
    existing = set(instance.get_dynamic_partitions(round_partitions.name))
    return candidate if str(candidate) in existing else None


def _active_round_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(
        job_name=ROUND_JOB,
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                  dg.DagsterRunStatus.STARTED],
    )))


def next_round_request(instance: dg.DagsterInstance, reason: str, event_id: int | None = None) -> dg.RunRequest | dg.SkipReason:
    """A RunRequest for the next round, or why there is none (shared by the schedule and the sensor).

    `event_id` (the sensor's gate materialization) makes the run key unique per gate decision: a sensor never reuses a
    run key, so a round rerun after a failure or a profile switch would otherwise be skipped for good.
    """
    if not baseline_done(instance):
        return dg.SkipReason("the baseline has not run: materialize the flywheel_setup job (or `arena-dagster flywheel`)")
    active = _active_round_runs(instance)
    if active:
        return dg.SkipReason(f"a round is already queued or running (run {active[0].run_id[:8]}, round "
                             f"{active[0].tags.get('dagster/partition')})")
    key = next_round(instance)
    if key is None:
        slices = pool_rounds(instance)
        return dg.SkipReason(
            f"every round slice of the prompt pool has run ({slices} slices): add prompts (more prompt files under "
            "the profile's prompts.files, or a larger prompts.rounds / raw pool) and re-materialize prompt_pool; "
            "the round_partitions sensor then adds the new rounds"
        )
    run_key = f"round-{key}-{reason}" + (f"-{event_id}" if event_id is not None else "")
    return dg.RunRequest(run_key=run_key, partition_key=str(key),
                         tags={"arena/round": str(key), "arena/started_by": reason})


@dg.schedule(
    job_name=ROUND_JOB,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every night at 02:00, the next flywheel round on the target the last gate kept; skips, saying "
                "why, while a round runs or when the pool has no slice left.",
)
def nightly_flywheel(context: dg.ScheduleEvaluationContext):
    return next_round_request(context.instance, "schedule")


@dg.sensor(
    job_name=ROUND_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `round` partition for every slice of the prompt pool that has none yet (after setup, or "
                "after the pool grew); it only requests partitions, it starts no run.",
)
def round_partitions_sensor(context: dg.SensorEvaluationContext):
    missing = missing_round_partitions(context.instance)
    if not missing:
        return dg.SkipReason(f"every slice of the prompt pool ({pool_rounds(context.instance)}) has its round partition")
    return dg.SensorResult(dynamic_partitions_requests=[round_partitions.build_add_request(missing)])


@dg.sensor(
    job_name=ROUND_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Continuous flywheel: when a round's gate is recorded, start the next round (turn on for back-to-back "
                "rounds instead of one a night).",
)
def next_round_sensor(context: dg.SensorEvaluationContext):
    # A plain sensor over the gate's materialization records, not `@asset_sensor`: the storage id lives on the
    # record (the run key needs it), and an asset sensor hands over only the record's EventLogEntry.
    seen = int(context.cursor) if (context.cursor or "").isdigit() else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=GATE_ASSET, after_storage_id=seen), limit=1, ascending=False).records
    if not records:
        return dg.SkipReason(f"no gate decision (target_model) recorded since the last tick (event {seen})")
    gate = records[0]
    request = next_round_request(context.instance, "sensor", gate.storage_id)
    if isinstance(request, dg.SkipReason):
        return dg.SensorResult(skip_reason=request, cursor=str(gate.storage_id))
    return dg.SensorResult(run_requests=[request], cursor=str(gate.storage_id))


def failed_rounds_log(home: Path) -> Path:
    return logs_dir(home) / "failed_rounds.jsonl"


def failed_round_sensor_for(home: Path) -> dg.RunStatusSensorDefinition:
    @dg.run_failure_sensor(
        name="failed_round_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records every failed setup or round run (round, failed step, error) in logs/failed_rounds.jsonl "
                    "of the home, which `arena-dagster flywheel` and the README's day-in-the-life point to.",
    )
    def failed_round_sensor(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        if run.job_name not in (ROUND_JOB, SETUP_JOB):
            return
        steps = [event.step_key for event in context.get_step_failure_events()]
        path = failed_rounds_log(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Each failed step's own cause (an OS error by name and path), as the terminal's FAIL line says it.
        causes = step_failures(context.instance.all_logs(run.run_id))
        record = {"run_id": run.run_id, "job": run.job_name, "round": run.tags.get("dagster/partition"),
                  "failed_steps": steps, "causes": causes, "error": causes[0] if causes else context.failure_event.message,
                  "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    return failed_round_sensor
