"""Per-step training metrics: the manifest's figures and curves, and the lines a watcher sees.

The trainer logs every step (TrainingArguments.logging_steps=1), so the figures do not depend
on `hyperparams.logging_steps`, which only sets how often a progress line is printed.
`StepSeries` keeps the series that matter for each stage (TRL's log keys):

- base, sft: `loss`, `mean_token_accuracy`
- dpo: `loss`, `rewards/margins`, `rewards/accuracies`, `rewards/chosen`, `rewards/rejected`
- reward: `loss`, `accuracy` and `margin` (training batches), `eval_accuracy` (held-out pairs,
  measured a few times along the run and at its end)
- rl: `loss`, `reward`, `kl` (RLOO; `kl` only when beta > 0)

`summary()` gives, per series, the mean of the first and of the last tenth of its points
(`first_loss`, `final_loss`, ...; at least one point each), and a curve of at most
CURVE_POINTS points (the mean of consecutive steps, at the last step of each bucket).
"""

from __future__ import annotations

import math
from typing import Callable

SERIES: dict[str, tuple[str, ...]] = {
    "base": ("loss", "mean_token_accuracy"),
    "sft": ("loss", "mean_token_accuracy"),
    "dpo": ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"),
    "reward": ("loss", "accuracy", "margin", "eval_accuracy"),
    "rl": ("loss", "reward", "kl"),
}
CURVE_POINTS = 20
# Held-out evaluations of a reward model along its run (besides the final one), and the pairs each uses.
REWARD_EVALS = 4
REWARD_EVAL_PAIRS = 256


class StepSeries:
    """The per-step values of one run's series, in step order."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.points: dict[str, list[tuple[int, float]]] = {name: [] for name in SERIES[stage]}

    def record(self, step: int, logs: dict) -> dict[str, float]:
        """Keep this step's values of the stage's series; returns them."""
        values = {}
        for name in self.points:
            value = logs.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.points[name].append((int(step), float(value)))
                values[name] = float(value)
        return values

    def summary(self) -> tuple[dict[str, float | None], dict[str, list[list[float]]]]:
        """(figures, curves): first/final means per series and the downsampled curves."""
        figures: dict[str, float | None] = {}
        curves: dict[str, list[list[float]]] = {}
        for name, points in self.points.items():
            if not points:
                continue
            window = max(1, math.ceil(len(points) / 10))
            first = sum(v for _, v in points[:window]) / window
            final = sum(v for _, v in points[-window:]) / window
            figures.update(_figure_names(name, first, final))
            curves[name] = downsample(points)
        figures.setdefault("first_loss", None)
        figures.setdefault("final_loss", None)
        return figures, curves


def _figure_names(name: str, first: float, final: float) -> dict[str, float]:
    # The names manifests had before per-step metrics, where they existed.
    if name == "loss":
        return {"first_loss": first, "final_loss": final}
    if name == "reward":
        return {"first_mean_reward": first, "last_mean_reward": final}
    if name == "kl":
        return {"first_kl": first, "last_kl": final}
    if name == "eval_accuracy":
        return {"first_eval_accuracy": first}  # the final one is the end-of-run measurement
    if name.startswith("rewards/"):
        return {name: final, f"first_{name.replace('/', '_')}": first}
    return {f"first_{name}": first, f"final_{name}": final}


def downsample(points: list[tuple[int, float]], limit: int = CURVE_POINTS) -> list[list[float]]:
    """At most `limit` [step, mean value] points: consecutive points averaged in equal buckets."""
    if len(points) <= limit:
        return [[step, round(value, 6)] for step, value in points]
    curve = []
    for bucket in range(limit):
        part = points[bucket * len(points) // limit : (bucket + 1) * len(points) // limit]
        curve.append([part[-1][0], round(sum(v for _, v in part) / len(part), 6)])
    return curve


def step_metrics_callback(
    series: StepSeries,
    *,
    print_every: int,
    log: Callable[[str], None],
    on_step: Callable[[int, dict[str, float]], None],
    evaluate: Callable[[object], float | None] | None = None,
):
    """A TrainerCallback that records every step's metrics into `series`, prints a line every
    `print_every` steps (and at the last) through `log`, and hands each step's values to `on_step`.

    `evaluate(model)` (the reward stage's held-out accuracy) runs REWARD_EVALS times along the
    run; its value is recorded as `eval_accuracy`.
    """
    from transformers import TrainerCallback

    pending: dict[str, float] = {}

    class StepMetrics(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            step, total_steps = state.global_step, state.max_steps
            eval_every = max(1, math.ceil(total_steps / (REWARD_EVALS + 1)))
            if evaluate is not None and step % eval_every == 0 and step < total_steps:
                accuracy = evaluate(model)
                if accuracy is not None:
                    pending["eval_accuracy"] = accuracy

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "loss" not in logs and not pending:
                return  # the end-of-training summary (train_runtime, train_loss ...)
            logs.update(pending)
            pending.clear()
            step, total_steps = state.global_step, state.max_steps
            values = series.record(step, logs)
            if not values:
                return
            on_step(step, values)
            if state.is_world_process_zero and (step % print_every == 0 or step >= total_steps):
                shown = " ".join(f"{name} {value:.4g}" for name, value in values.items())
                log(f"[{series.stage}] step {step}/{total_steps} {shown}")

    return StepMetrics()
