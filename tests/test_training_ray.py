"""Training stages on Ray Train (training/ray_train.py): the batch split, the spec's `compute`, and SFT on the local 2-CPU cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arena_dagster.prompts.skills import make_items
from arena_dagster.training.base_models import chat_row, write_jsonl
from arena_dagster.training.ray_train import per_worker_hyperparams
from arena_dagster.training.runner import ENTRYPOINT_MODULE, leftovers, run_training
from arena_dagster.training.spec import (
    TrainingSpecError,
    read_manifest,
    spec_hash,
    validate_spec,
)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}


def test_workers_share_the_global_batch():
    hyper = {"batch_size": 8, "gradient_accumulation_steps": 3}
    assert per_worker_hyperparams(hyper, 1) == hyper
    assert per_worker_hyperparams(hyper, 2) == {"batch_size": 4, "gradient_accumulation_steps": 3}
    assert per_worker_hyperparams(hyper, 3) == {"batch_size": 8, "gradient_accumulation_steps": 1}
    with pytest.raises(TrainingSpecError, match="compute.workers=5 cannot share the global batch"):
        per_worker_hyperparams(hyper, 5)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A tiny random Llama and its tokenizer (saved, no training), and an SFT file."""
    from transformers import AutoModelForCausalLM, LlamaConfig, set_seed

    from arena_dagster.training.tokenizer import build_tokenizer, save_tokenizer

    home = tmp_path_factory.mktemp("ray-training")
    items = make_items(48, seed=3)
    tokenizer = build_tokenizer([i.prompt for i in items] + [i.reference for i in items])
    base = save_tokenizer(tokenizer, home / "base")
    set_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **TINY_MODEL)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    data = write_jsonl(home / "sft.jsonl", (chat_row(i.prompt, i.reference) for i in items))
    spec = {"stage": "sft", "round": 1, "base_model": str(base), "dataset_path": str(data), "threads": 1,
            "hyperparams": {"max_steps": 4, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1}}
    return {"home": home, "spec": spec}


def _on_ray(spec: dict, address: str, workers: int, output_dir: Path, **hyper) -> dict:
    return {**spec, "output_dir": str(output_dir), "hyperparams": {**spec["hyperparams"], **hyper},
            "compute": {"engine": "ray", "workers": workers, "address": address}}


def test_compute_is_where_a_run_trains_not_what_it_is(workspace):
    spec = {**workspace["spec"], "output_dir": str(workspace["home"] / "x")}
    on_ray = {**spec, "compute": {"engine": "ray", "workers": 2}}
    # One Ray worker trains the local weights bit for bit: the same revision. Two sum gradients in another order.
    assert spec_hash({**spec, "compute": {"engine": "ray", "workers": 1, "cpus_per_worker": 2}}) == spec_hash(spec)
    assert spec_hash(on_ray) != spec_hash(spec) == spec_hash({**spec, "compute": {"engine": "local", "workers": 2}})
    with pytest.raises(TrainingSpecError, match="spec.launch .* and compute.engine ray"):
        validate_spec({**on_ray, "launch": {"num_processes": 2}})
    with pytest.raises(TrainingSpecError, match="spec.compute: .*workers"):
        validate_spec({**spec, "compute": {"engine": "ray", "workers": 0}})
    storage = Path(spec["output_dir"] + ".ray")
    storage.mkdir()
    assert storage in leftovers(Path(spec["output_dir"]))  # Ray Train's checkpoints of a killed run are removed


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_sft_on_one_ray_worker_equals_the_local_run_and_two_workers_keep_the_batch(workspace, ray_local_cluster):
    import torch

    home, spec = workspace["home"], workspace["spec"]
    local = run_training({**spec, "output_dir": str(home / "local")}, log=lambda _: None, timeout_s=300)
    lines: list[str] = []
    one = run_training(_on_ray(spec, ray_local_cluster, 1, home / "ray1"), log=lines.append, timeout_s=600)
    assert local["engine"] == "local" and local["world_size"] == 1
    assert one["engine"] == "ray" and one["world_size"] == 1 and one["spec_hash"] == local["spec_hash"]
    assert one["curves"]["loss"] == local["curves"]["loss"]
    ours, theirs = _weights(home / "ray1"), _weights(home / "local")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Rank 0's lines reached the caller's log, as a local process's do; no checkpoint folder stayed behind.
    assert any("[sft] step 4/4 loss" in line for line in lines) and any("on Ray Train: 1 worker(s)" in line for line in lines)
    assert not list((home / "ray1").glob("checkpoint-*")) and not leftovers(home / "ray1")

    two = run_training(_on_ray(spec, ray_local_cluster, 2, home / "ray2"), log=lambda _: None, timeout_s=600)
    assert two["world_size"] == 2 and two["hyperparams"]["batch_size"] == 8 and two["metrics"]["steps"] == 4
    for figure in ("first_loss", "final_loss"):
        assert two["metrics"][figure] == pytest.approx(one["metrics"][figure], rel=0.05), figure
    assert json.loads((home / "ray2" / "config.json").read_text())["hidden_size"] == 32


def _start_driver(spec: dict, tmp_path: Path) -> subprocess.Popen:
    """The training process a Pipes client starts (here without Pipes: its lines on stdout)."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, "-m", ENTRYPOINT_MODULE, str(spec_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_a_killed_driver_stops_its_ray_train_workers(workspace, ray_local_cluster, tmp_path):
    """A canceled run kills the training process (Pipes' client, the guard): the workers it started on the cluster end too."""
    import ray

    output_dir = tmp_path / "killed"
    spec = _on_ray(workspace["spec"], ray_local_cluster, 2, output_dir, max_steps=100000)
    driver = _start_driver(spec, tmp_path)
    try:
        for line in driver.stdout:
            if "[sft] step" in line:
                break
        assert ray.available_resources().get("CPU", 0) < 1  # both workers hold their CPU
    finally:
        driver.kill()
        driver.wait()
    deadline = time.time() + 120
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == 2
    assert read_manifest(output_dir) is None
