"""Where a training process reports: its own stdout, and Dagster Pipes when a Pipes launcher started it.

Started by Dagster's PipesSubprocessClient (or PipesK8sClient, or any Pipes client), the
process finds the Pipes bootstrap parameters in its environment: it then opens the Pipes
context, sends its log lines through `PipesContext.log` (they appear in the Dagster UI's
run log), every step's metrics as a custom message (`{"kind": "step", "step": 12, "loss": ...}`,
read on the Dagster side with `invocation.get_custom_messages()`), and at the end the
manifest's figures as the asset's materialization metadata (first/final loss, the stage's
reward and KL or accuracy, the loss curve), with the spec hash as data version.

Only `dagster_pipes` is imported (a small package without dagster itself), and only when a
Pipes launcher is present; outside Pipes every report is a plain print. Under `accelerate
launch` only the main rank talks to Dagster.

Pipes extras the process reads: `asset_key` (which asset the materialization is for, needed
when the step has several) and `report_materialization` (false: send the figures as a
custom message only, for an asset that reports its own materialization).
"""

from __future__ import annotations

import math
import os
from typing import Any


class Reporter:
    """Plain output: log lines on stdout; steps and results are printed by the caller's log lines only."""

    def log(self, line: str) -> None:
        print(line, flush=True)

    def error(self, line: str) -> None:
        import sys

        print(line, file=sys.stderr, flush=True)

    def step(self, step: int, values: dict[str, float]) -> None:
        pass

    def result(self, manifest: dict) -> None:
        pass

    def close(self, exc: BaseException | None = None) -> None:
        pass


class PipesReporter(Reporter):
    """Also sends everything through the Dagster Pipes context."""

    def __init__(self, context) -> None:
        self.context = context

    def log(self, line: str) -> None:
        super().log(line)
        self.context.log.info(line)

    def error(self, line: str) -> None:
        super().error(line)
        self.context.log.error(line)

    def step(self, step: int, values: dict[str, float]) -> None:
        self.context.report_custom_message({"kind": "step", "step": step, **values})

    def result(self, manifest: dict) -> None:
        metadata = materialization_metadata(manifest)
        self.context.report_custom_message({"kind": "manifest", "spec_hash": manifest["spec_hash"], "metrics": manifest["metrics"]})
        extras = self.context.extras or {}
        if not self.context.is_asset_step or extras.get("report_materialization") is False:
            return
        self.context.report_asset_materialization(
            metadata=metadata, data_version=manifest["spec_hash"], asset_key=extras.get("asset_key")
        )

    def close(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self.context.close()
        else:
            self.context.__exit__(type(exc), exc, exc.__traceback__)


def open_reporter() -> Reporter:
    """A PipesReporter when a Pipes launcher started this (main) process, else plain output."""
    if int(os.environ.get("RANK") or 0) != 0:
        return Reporter()
    try:
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
    except ImportError:
        return Reporter()
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return Reporter()
    return PipesReporter(open_dagster_pipes())


def materialization_metadata(manifest: dict) -> dict[str, Any]:
    """The manifest's figures as Pipes metadata: one float per metric (the UI plots them across runs)."""
    metadata: dict[str, Any] = {
        "model": {"raw_value": manifest.get("name"), "type": "text"},
        "stage": {"raw_value": manifest["stage"], "type": "text"},
        "spec_hash": {"raw_value": manifest["spec_hash"], "type": "text"},
        "dataset_hash": {"raw_value": manifest.get("dataset_hash"), "type": "text"},
        "dataset_rows": {"raw_value": int(manifest.get("dataset_rows") or 0), "type": "int"},
        "parameters": {"raw_value": int(manifest.get("parameters") or 0), "type": "int"},
        "wall_s": {"raw_value": float(manifest.get("wall_s") or 0.0), "type": "float"},
    }
    for key, value in (manifest.get("metrics") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        metadata[key] = {"raw_value": value, "type": "int" if isinstance(value, int) else "float"}
    if manifest.get("curves"):
        metadata["curves"] = {"raw_value": manifest["curves"], "type": "json"}
    return metadata
