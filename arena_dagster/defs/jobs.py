"""Jobs and the nightly schedule of the flywheel."""


import dagster as dg

from arena_dagster.defs.common import round_partitions

SETUP_ASSETS = ["raw_prompts", "arena_testset", "prompt_pool", "competitor_models", "initial_target_model"]
EVALUATION_ASSETS = ["arena_responses", "arena_judgments", "arena_battles", "leaderboard", "target_model"]

flywheel_setup_job = dg.define_asset_job(
    "flywheel_setup",
    selection=dg.AssetSelection.assets(*SETUP_ASSETS),
    description="Prompt pool, arena test set and base models: everything the rounds share.",
)

flywheel_round_job = dg.define_asset_job(
    "flywheel_round",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*SETUP_ASSETS),
    partitions_def=round_partitions,
    description="One flywheel round: per stage (SFT, DPO, RL) battles, preference data and training; arena evaluation; the promotion gate.",
)

baseline_evaluation_job = dg.define_asset_job(
    "baseline_evaluation",
    selection=dg.AssetSelection.assets(*EVALUATION_ASSETS),
    partitions_def=round_partitions,
    description="Round 0: the initial target and the competitors on the arena, before any training.",
)


def next_round(existing: list[str]) -> str:
    rounds = sorted(int(key) for key in existing if key.isdigit())
    return str(rounds[-1] + 1 if rounds else 1)


@dg.schedule(
    job=flywheel_round_job,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every night, the next flywheel round (a new round partition) on the last promoted target.",
)
def nightly_flywheel(context: dg.ScheduleEvaluationContext):
    existing = context.instance.get_dynamic_partitions(round_partitions.name)
    if "0" not in existing:
        return dg.SkipReason("round 0 (baseline evaluation) has not run yet: run `arena-dagster flywheel` first")
    key = next_round(existing)
    context.instance.add_dynamic_partitions(round_partitions.name, [key])
    return dg.RunRequest(run_key=f"round-{key}", partition_key=key)
