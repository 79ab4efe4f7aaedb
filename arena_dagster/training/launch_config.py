"""An accelerate config file (`launch.config_file`) applied to Ray Train's workers.

Locally, `accelerate launch --config_file F` starts the ranks and hands each one F's settings as
`ACCELERATE_*` environment variables, which the trainer's `Accelerator` reads (DeepSpeed ZeRO
stage, offloading, mixed precision...). On Ray Train the workers are the ranks, so nothing
launches them through accelerate: each worker sets the same variables itself before it builds its
trainer (`ray_train._worker_loop`). The variables are the ones `accelerate.utils.launch.
prepare_deepspeed_cmd_env` derives from the file (accelerate 1.x); the file is read as YAML here,
without importing torch, so a config that cannot apply on Ray fails when the spec is validated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from arena_dagster.profile_schema.training import TrainingSpecError

# deepspeed_config key of an accelerate config -> the variable `accelerate launch` sets from it.
_DEEPSPEED_VARIABLES = {
    "zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
    "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING",
    "offload_optimizer_device": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
    "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
    # Not set by `accelerate launch` 1.16, but read by the DeepSpeedPlugin the trainer builds.
    "offload_optimizer_nvme_path": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_NVME_PATH",
    "offload_param_nvme_path": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_NVME_PATH",
    "zero3_init_flag": "ACCELERATE_DEEPSPEED_ZERO3_INIT",
    "zero3_save_16bit_model": "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
    "deepspeed_config_file": "ACCELERATE_DEEPSPEED_CONFIG_FILE",
    "deepspeed_moe_layer_cls_names": "ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES",
}
# Keys that only tell the launcher how to start processes: Ray Train starts them instead.
_LAUNCHER_ONLY = ("deepspeed_multinode_launcher", "deepspeed_hostfile", "deepspeed_inclusion_filter",
                  "deepspeed_exclusion_filter")
# Distributed types whose per-rank settings are environment variables this module sets.
_RAY_TYPES = ("DEEPSPEED", "MULTI_GPU", "NO")


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def ray_worker_environment(launch: dict | None) -> dict[str, str]:
    """The `ACCELERATE_*` variables a Ray Train worker sets from the spec's `launch` ({} without a config file)."""
    config_file = (launch or {}).get("config_file")
    if not config_file:
        return {}
    if (launch or {}).get("num_processes"):
        raise TrainingSpecError("spec.launch.num_processes and compute.engine ray both count the training processes: "
                                "leave num_processes out and set compute.workers")
    try:
        config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TrainingSpecError(f"spec.launch.config_file {config_file} is not a readable accelerate config ({exc})") from None
    if not isinstance(config, dict):
        raise TrainingSpecError(f"spec.launch.config_file {config_file} is not an accelerate config (a YAML mapping)")
    kind = str(config.get("distributed_type") or "NO")
    if kind not in _RAY_TYPES:
        raise TrainingSpecError(f"spec.launch.config_file {config_file}: distributed_type {kind} cannot apply on Ray Train "
                                f"workers (only {', '.join(_RAY_TYPES)})")
    precision = launch.get("mixed_precision") or config.get("mixed_precision") or "no"
    env = {"ACCELERATE_MIXED_PRECISION": str(precision)}
    if kind != "DEEPSPEED":
        return env
    deepspeed = dict(config.get("deepspeed_config") or {})
    unknown = sorted(set(deepspeed) - set(_DEEPSPEED_VARIABLES) - set(_LAUNCHER_ONLY))
    if unknown:
        raise TrainingSpecError(f"spec.launch.config_file {config_file}: deepspeed_config keys {unknown} have no "
                                f"per-rank setting (known: {sorted(_DEEPSPEED_VARIABLES)})")
    # As `accelerate launch`: the DeepSpeed keys the file set (and its mixed precision) are the ones a
    # DeepSpeed JSON config (deepspeed_config_file) must not contradict.
    fields = list(deepspeed)
    if not launch.get("mixed_precision") and config.get("mixed_precision"):
        fields.append("mixed_precision")
    env.update({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_CONFIG_DS_FIELDS": ",".join(fields)})
    env.update({_DEEPSPEED_VARIABLES[key]: _text(value) for key, value in deepspeed.items()
                if key in _DEEPSPEED_VARIABLES and value is not None})
    return env
