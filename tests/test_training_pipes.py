"""Training through Dagster Pipes: a test-only asset runs the training command with PipesSubprocessClient;
the loss arrives as materialization metadata, per-step metrics as custom messages, log lines in the run log."""


import io
import json
import sys

import dagster as dg
import pytest

from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.runner import TrainingError, run_training

TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}


def _pipes_asset(spec: dict, seen: dict):
    @dg.asset(name="tiny_checkpoint")
    def tiny_checkpoint(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        invocations = []

        def launch(command: list[str], env: dict[str, str]) -> int:
            invocations.append(pipes.run(command=command, context=context, env=env))
            return 0

        manifest = run_training(spec, log=context.log.info, launch=launch)
        reported = invocations[0].get_materialize_result()
        seen["steps"] = [m for m in invocations[0].get_custom_messages() if m.get("kind") == "step"]
        seen["manifest"] = manifest
        return dg.MaterializeResult(metadata={**reported.metadata, "path": dg.MetadataValue.path(spec["output_dir"])},
                                    data_version=reported.data_version)

    return tiny_checkpoint


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    root = tmp_path_factory.mktemp("pipes")
    items = make_items(60, seed=6)
    return {
        "root": root,
        "tokenizer": save_tokenizer(build_tokenizer([i.prompt for i in items] + [i.reference for i in items]), root / "tok"),
        "data": write_jsonl(root / "base.jsonl", (chat_row(i.prompt, i.reference) for i in items)),
    }


def test_training_reports_its_loss_through_pipes(workspace):
    spec = {
        "stage": "base",
        "output_dir": str(workspace["root"] / "models" / "tiny"),
        "dataset_path": str(workspace["data"]),
        "tokenizer": str(workspace["tokenizer"]),
        "model_config": TINY_MODEL,
        # logging_steps above max_steps: the figures must not depend on it.
        "hyperparams": {"max_steps": 8, "batch_size": 8, "learning_rate": 3e-3, "logging_steps": 4},
        "threads": 1,
    }
    seen: dict = {}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([_pipes_asset(spec, seen)], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance)
    assert result.success
    metadata = result.asset_materializations_for_node("tiny_checkpoint")[0].metadata
    manifest = seen["manifest"]
    assert metadata["first_loss"].value == pytest.approx(manifest["metrics"]["first_loss"])
    assert metadata["final_loss"].value == pytest.approx(manifest["metrics"]["final_loss"])
    assert metadata["final_loss"].value < metadata["first_loss"].value
    assert metadata["steps"].value == 8 and metadata["spec_hash"].value == manifest["spec_hash"]
    assert [point[0] for point in metadata["curves"].value["loss"]] == list(range(1, 9))
    # One custom message per step, with the step's loss.
    assert [m["step"] for m in seen["steps"]] == list(range(1, 9)) and all(m["loss"] > 0 for m in seen["steps"])
    # The training's log lines are in the run's log (the UI shows them), every logging_steps steps.
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("[base] step 4/8 loss" in m for m in messages) and any("[base] step 8/8 loss" in m for m in messages)
    assert not any("[base] step 3/8" in m for m in messages)
    assert any("[base] wrote" in m for m in messages)


def test_a_failed_training_reports_its_error_through_pipes(workspace):
    bad = workspace["root"] / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    spec = {
        "stage": "base",
        "output_dir": str(workspace["root"] / "models" / "bad"),
        "dataset_path": str(bad),
        "tokenizer": str(workspace["tokenizer"]),
        "model_config": TINY_MODEL,
        "threads": 1,
    }
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([_pipes_asset(spec, {})], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance,
                            raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert TrainingError.__name__ in str(failure.step_failure_data.error.cause or failure.step_failure_data.error)
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("error: " in m and "the last message must be the assistant" in m for m in messages)
    assert not (workspace["root"] / "models" / "bad").exists()


def test_an_os_error_in_the_training_process_is_named_with_its_path(workspace, tmp_path):
    """A real OS error in the Pipes training process of a round (EFBIG: RLIMIT_FSIZE bounds every file it writes, and
    root obeys it too): the terminal's FAIL line and the failed-rounds log name it, with its message and the path."""
    from arena_dagster.defs.automation import ROUND_JOB, failed_round_sensor_for, failed_rounds_log
    from arena_dagster.progress import RunPrinter, step_failures

    spec = {
        "stage": "base",
        "output_dir": str(workspace["root"] / "models" / "too-big"),
        "dataset_path": str(workspace["data"]),
        "tokenizer": str(workspace["tokenizer"]),
        "model_config": TINY_MODEL,
        "hyperparams": {"max_steps": 2, "batch_size": 8, "learning_rate": 3e-3, "logging_steps": 1},
        "threads": 1,
    }
    limit = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384)); os.execv(sys.argv[1], sys.argv[1:])"

    @dg.asset(name="too_big_checkpoint")
    def too_big_checkpoint(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient) -> None:
        def launch(command: list[str], env: dict[str, str]) -> int:
            pipes.run(command=[sys.executable, "-c", limit, *command], context=context, env=env)
            return 0

        run_training(spec, log=context.log.info, launch=launch)

    defs = dg.Definitions(assets=[too_big_checkpoint], jobs=[dg.define_asset_job(ROUND_JOB, selection=[too_big_checkpoint])],
                          resources={"pipes": dg.PipesSubprocessClient()})
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(ROUND_JOB).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    out = io.StringIO()
    printer = RunPrinter(tmp_path / "run.log", out=out)
    for entry in instance.all_logs(result.run_id):
        printer(entry)
    printer.close()
    fail = next(line for line in out.getvalue().splitlines() if line.startswith("  FAIL"))
    assert "EFBIG: File too large" in fail and str(workspace["root"] / "models" / "too-big") in fail, fail
    assert not (workspace["root"] / "models" / "too-big").exists()

    # The daemon's failed_round_sensor, on this run's failure, records the same cause.
    home = tmp_path / "home"
    failure = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records[0]
    failure = failure.event_log_entry.dagster_event
    context = dg.build_run_status_sensor_context(sensor_name="failed_round_sensor", dagster_event=failure,
                                                 dagster_instance=instance, dagster_run=result.dagster_run).for_run_failure()
    failed_round_sensor_for(home)(context)
    record = json.loads(failed_rounds_log(home).read_text().splitlines()[-1])
    assert record["failed_steps"] == ["too_big_checkpoint"]
    assert record["causes"] == printer.failures == step_failures(instance.all_logs(result.run_id))
    assert record["error"].startswith("too_big_checkpoint: error: EFBIG: File too large"), record
