"""``accelerate launch``: the shipped configs, and two real gloo DDP processes on this GPU-less machine."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "cer", "critical_miss_rate", "expected_cost", "n_critical")

# Run by each launched process: the training job, then a record of the process group it ran in.
LAUNCH_WRAPPER = '''
import json, os, sys
import torch.distributed as dist
from rcl_hf.commands.train import train_main

train_main(sys.argv[1:])
info = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
        "env_rank": int(os.environ["RANK"]), "pid": os.getpid()}
with open(os.path.join(os.environ["RCL_TEST_RANK_DIR"], f"rank{info['rank']}.json"), "w") as fh:
    json.dump(info, fh)
'''


def _launch_args(config: Path, *extra: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), *extra, "scripts/train.py"])
    args, _, _ = _validate_launch_command(args)
    return args


def test_shipped_accelerate_configs_resolve():
    from accelerate.commands.launch import prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    names = sorted(os.path.basename(p) for p in glob.glob(str(ACCELERATE_CONFIGS / "*.yaml")))
    assert names == ["cpu_ddp_2proc.yaml", "fsdp.yaml", "multi_gpu_ddp.yaml", "multi_node.yaml", "single_gpu.yaml"]

    single = _launch_args(ACCELERATE_CONFIGS / "single_gpu.yaml")
    assert not single.multi_gpu and not single.use_fsdp and single.num_processes == 1
    _, env = prepare_simple_launcher_cmd_env(single)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and env["ACCELERATE_USE_CPU"] == "False"

    ddp = _launch_args(ACCELERATE_CONFIGS / "multi_gpu_ddp.yaml")
    assert ddp.multi_gpu and ddp.num_processes == 8 and ddp.mixed_precision == "bf16"
    assert prepare_multi_gpu_env(ddp)["ACCELERATE_MIXED_PRECISION"] == "bf16"

    fsdp = _launch_args(ACCELERATE_CONFIGS / "fsdp.yaml")
    assert fsdp.use_fsdp and fsdp.mixed_precision == "bf16"
    env = prepare_multi_gpu_env(fsdp)
    assert env["FSDP_VERSION"] == "2" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "SIZE_BASED_WRAP"

    node = _launch_args(ACCELERATE_CONFIGS / "multi_node.yaml", "--machine_rank", "1")
    assert node.multi_gpu and node.num_machines == 2 and node.num_processes == 16 and node.machine_rank == 1
    assert node.main_process_ip and node.main_process_port
    text = (ACCELERATE_CONFIGS / "multi_node.yaml").read_text()
    assert "PLACEHOLDER" in text and "--machine_rank" in text

    cpu = _launch_args(ACCELERATE_CONFIGS / "cpu_ddp_2proc.yaml")
    # The real 2-process setup: multi-GPU launcher (torchrun, gloo without CUDA), not --cpu (one process).
    assert cpu.multi_gpu and cpu.num_processes == 2 and not cpu.cpu and cpu.mixed_precision == "no"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 25-35 s of subprocesses; CI runs it (make test-slow)
def test_two_process_ddp_on_cpu_matches_one_process_evaluation(tmp_path, tiny_dataset):
    """Two gloo ranks train and evaluate; evaluating the saved model on one process gives identical metrics."""
    from rcl_hf.trainer import RiskArguments
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training

    out = tmp_path / "ddp"
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    wrapper = tmp_path / "launch_train.py"
    wrapper.write_text(LAUNCH_WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "RCL_TEST_RANK_DIR": str(ranks), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / "cpu_ddp_2proc.yaml"),
           "--main_process_port", str(_free_port()), str(wrapper),
           "--dataset", tiny_dataset, "--backbone", "resnet18", "--image_size", "32", "--loss", "rcl", "--lam", "1",
           "--output_dir", str(out), "--num_train_epochs", "2", "--per_device_train_batch_size", "16",
           "--per_device_eval_batch_size", "16", "--learning_rate", "2e-3", "--seed", "0",
           "--cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true",
           # No checkpoints: the evaluated model is the in-memory one of each rank, not a reloaded file.
           "--save_strategy", "no", "--load_best_model_at_end", "false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    infos = sorted((json.loads(p.read_text()) for p in ranks.glob("rank*.json")), key=lambda i: i["rank"])
    assert [i["rank"] for i in infos] == [0, 1] and [i["env_rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["backend"] == "gloo" for i in infos)
    assert infos[0]["pid"] != infos[1]["pid"]
    recipe = json.loads((out / "rcl_run.json").read_text())
    assert recipe["world_size"] == 2 and recipe["distributed_type"] == "MULTI_CPU"  # gloo DDP on the CPU
    # 200 samples, global batch 2 x 16: 7 steps per epoch (one process alone would take 13).
    assert recipe["global_step"] == 14
    two_proc = json.loads((out / "test_results.json").read_text())
    assert len(__import__("numpy").load(out / "test_predictions.npz")["labels"]) == 61  # padding dropped

    one = run_training(
        ModelArguments(backbone=str(out), image_size=32, eval_only=True),
        DataArguments(dataset=tiny_dataset, cache_dir=str(tmp_path / "cache")),
        RiskArguments(loss="rcl", lam=1.0),
        default_training_args(str(tmp_path / "eval1"), per_device_eval_batch_size=64, disable_tqdm=True),
    )
    assert json.loads((tmp_path / "eval1" / "rcl_run.json").read_text())["world_size"] == 1
    for key in METRIC_KEYS:
        assert one["test"][key] == two_proc[f"test_{key}"], key
        assert one["test"][f"bayes_{key}"] == two_proc[f"test_bayes_{key}"], key
    two_val = json.loads((out / "rcl_results.json").read_text())["validation"]
    for key in METRIC_KEYS:
        assert one["validation"][key] == two_val[key], key
