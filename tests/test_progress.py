"""The terminal's view of a run: one line per finished step with its time; a failure shows the asset's own error."""

from __future__ import annotations

import io
from types import SimpleNamespace as NS

from arena_dagster.progress import RunPrinter


def _event(kind, step, message="", at=0.0, level=20, error=None):
    data = NS(error=error) if error is not None else None
    return NS(dagster_event=NS(event_type_value=kind, event_specific_data=data) if kind else None,
              step_key=step, user_message=message, timestamp=at, level=level)


def test_steps_print_one_line_each_and_a_failure_names_the_cause(tmp_path):
    out = io.StringIO()
    printer = RunPrinter(tmp_path / "run.log", out=out)
    printer(_event("STEP_START", "sft_responses", at=100.0))
    printer(_event("", "sft_responses", "SFT-I1: 96/240 generated", at=101.0))
    printer(_event("STEP_SUCCESS", "sft_responses", at=112.5))
    printer(_event("STEP_START", "promotion_gate", at=113.0))
    printer(_event("", "promotion_gate", "round 2 cannot start", at=113.1, level=40))
    cause = NS(message="RegistryError: round 2 cannot start: round 1's gate decision is not recorded\n", cause=None)
    wrapper = NS(message='Error occurred while executing op "promotion_gate":', cause=cause)
    printer(_event("STEP_FAILURE", "promotion_gate", at=114.0, error=wrapper))
    printer.close()
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ok", "sft_responses", "12.5", "s"]
    assert lines[1].startswith("  FAIL promotion_gate") and "RegistryError: round 2 cannot start" in lines[1]
    assert printer.failures[0].startswith("promotion_gate: RegistryError: round 2 cannot start")
    # Everything, the progress lines included, is in the log file; the terminal (not a TTY) shows no bars.
    assert "96/240 generated" in (tmp_path / "run.log").read_text() and "96/240" not in out.getvalue()


def test_a_failed_pipes_process_shows_its_own_exception(tmp_path):
    out = io.StringIO()
    printer = RunPrinter(tmp_path / "run.log", out=out)
    printer(_event("STEP_START", "dpo_checkpoint", at=10.0))
    crash = NS(message="ValueError: num_samples should be a positive integer value, but got num_samples=0\n", cause=None)
    printer(_event("ENGINE_EVENT", "dpo_checkpoint", "[pipes] external process pipes closed with exception", at=12.0,
                   error=crash))
    exited = NS(message='dagster._core.errors.DagsterPipesExecutionError: External execution process failed with code 1\n',
                cause=None)
    printer(_event("STEP_FAILURE", "dpo_checkpoint", at=12.5, error=exited))
    printer.close()
    line = out.getvalue().splitlines()[0]
    assert line.startswith("  FAIL dpo_checkpoint") and "ValueError: num_samples should be a positive integer" in line
    assert "External execution process failed with code 1" in line


def test_an_os_error_of_the_step_itself_is_named(tmp_path):
    from arena_dagster.progress import step_failures

    try:  # a real one: a folder under a regular file
        (tmp_path / "file").write_text("")
        (tmp_path / "file" / "datasets").mkdir()
    except OSError as exc:
        cause = NS(message=f"{type(exc).__name__}: {exc}\n", cause=None)
    wrapper = NS(message='Error occurred while executing op "sft_checkpoint":', cause=cause)
    events = [_event("STEP_START", "sft_checkpoint", at=1.0),
              # Dagster's own STEP_FAILURE message is an error-level line too: it must not hide the cause.
              _event("STEP_FAILURE", "sft_checkpoint", 'Execution of step "sft_checkpoint" failed.', at=2.0, level=40,
                     error=wrapper)]
    out = io.StringIO()
    printer = RunPrinter(tmp_path / "run.log", out=out)
    for event in events:
        printer(event)
    printer.close()
    expected = f"NotADirectoryError: ENOTDIR: Not a directory: '{tmp_path / 'file' / 'datasets'}'"
    assert out.getvalue().rstrip().endswith(expected)
    assert step_failures(events) == [f"sft_checkpoint: {expected}"]
