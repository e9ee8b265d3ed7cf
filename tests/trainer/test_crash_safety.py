"""Crash safety, resuming, numerical faults and determinism of real (tiny) training runs.

* a ``scripts/train.py`` run killed with SIGKILL after a checkpoint resumes with
  ``--resume_from_checkpoint last`` and ends with the metrics and weights of an
  uninterrupted run;
* checkpoints are written atomically: a crash in the middle of a save leaves the
  previous checkpoint loadable, no ``checkpoint-N`` half-written, and a resume from
  the last complete one reproduces the uninterrupted run;
* damaged checkpoint folders are skipped (or refused when named) with a clear reason;
* a NaN/inf loss or gradient stops the run naming the step, or skips the optimizer
  step (``--nonfinite_loss skip``); a NaN model is never saved or returned;
* the same seed gives identical metrics and weights on CPU.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"
METRIC_KEYS = ("loss", "accuracy", "balanced_accuracy", "cer", "critical_miss_rate", "expected_cost", "n_critical")

# The embedded synthetic data, generated once (256 train / 32 validation / 64 test) and saved with
# save_to_disk, so that each run loads it instead of drawing the default 4,200 images.
# CLI runs: batch 16, 16 optimizer steps per epoch, 2 epochs, a checkpoint every 4 steps (so the kill and the
# resume fall mid-epoch), random flips as for the synthetic default (seeded per sample and epoch by
# rcl_hf.train_job, so a resumed epoch gets the same augmentation as an uninterrupted one).
CLI_ARGS = [
    "--backbone", "hf-resnet", "--image_size", "32", "--augmentation", "flip",
    "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
    "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "epoch",
    "--load_best_model_at_end", "false", "--logging_steps", "4", "--seed", "7",
    "--use_cpu", "true", "--disable_tqdm", "true", "--report_to", "none", "--dataloader_num_workers", "0",
]


@pytest.fixture(scope="module")
def synthetic_dir(synthetic_dataset_dir) -> Path:
    return synthetic_dataset_dir(seed=0, n_train=256, n_validation=32, n_test=64)


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def _train_cmd(data: Path, out_dir: Path, *extra: str) -> List[str]:
    return [sys.executable, str(TRAIN_SCRIPT), *CLI_ARGS, "--dataset", str(data), "--output_dir", str(out_dir),
            "--cache_dir", str(out_dir.parent / "cache"), *extra]


def _test_metrics(out_dir: Path) -> Dict[str, float]:
    data = json.loads((out_dir / "test_results.json").read_text())
    return {k: data[f"test_{k}"] for k in METRIC_KEYS}


def _assert_same_metrics(a: Dict[str, float], b: Dict[str, float]) -> None:
    for key in METRIC_KEYS:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a[key], b[key])


def _assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=atol, rtol=1e-5), key


def _checkpoint_steps(out_dir: Path) -> List[int]:
    return sorted(int(p.name.split("-")[1]) for p in out_dir.glob("checkpoint-*"))


# ============================================================================ crash and resume
@pytest.mark.slow  # 25-35 s of subprocesses; CI runs it (make test-slow)
def test_sigkilled_run_resumes_to_the_uninterrupted_result(synthetic_dir, tmp_path):
    """SIGKILL after a checkpoint, resume with ``--resume_from_checkpoint last``: same metrics and weights."""
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("ref", "killed", "resumed")}
    ref = subprocess.Popen(_train_cmd(synthetic_dir, ref_dir), cwd=tmp_path, env=_env(), stdout=logs["ref"], stderr=subprocess.STDOUT)
    victim = subprocess.Popen(_train_cmd(synthetic_dir, run_dir), cwd=tmp_path, env=_env(), stdout=logs["killed"], stderr=subprocess.STDOUT)
    killed_after: Optional[List[int]] = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and victim.poll() is None:
            if list(run_dir.glob("checkpoint-*/trainer_state.json")):
                victim.send_signal(signal.SIGKILL)
                victim.wait(30)
                killed_after = _checkpoint_steps(run_dir)
                break
            time.sleep(0.01)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(30)
    assert victim.returncode == -signal.SIGKILL, (victim.returncode, (tmp_path / "killed.log").read_text()[-3000:])
    assert killed_after and max(killed_after) < 32, killed_after  # killed mid-run, with a checkpoint on disk
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "test_results.json").exists()

    resumed = subprocess.run(_train_cmd(synthetic_dir, run_dir, "--resume_from_checkpoint", "last"), cwd=tmp_path, env=_env(),
                             stdout=logs["resumed"], stderr=subprocess.STDOUT, timeout=300)
    assert ref.wait(300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    for fh in logs.values():
        fh.close()
    resumed_log = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0, resumed_log[-3000:]
    # it really resumed: it trained (and logged, every 4 steps) only the steps after the last checkpoint, and the
    # final state's history still starts at step 4
    start = max(killed_after)
    assert resumed_log.count("{'loss': ") == (32 - start) // 4, resumed_log[-3000:]
    state = json.loads((run_dir / "checkpoint-32" / "trainer_state.json").read_text())
    assert state["global_step"] == 32
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(4, 33, 4))
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".tmp-")]
    _assert_same_metrics(_test_metrics(ref_dir), _test_metrics(run_dir))
    _assert_same_weights(ref_dir / "model.safetensors", run_dir / "model.safetensors")


# ============================================================================ in-process runs
def _args(data: Path, out_dir: Path, *, seed: int = 5, lr: float = 5e-5, nonfinite: str = "raise", epochs: float = 1,
          save_steps: Optional[int] = 2, max_train: int = 96):
    from transformers import TrainingArguments

    from rcl_hf.trainer import RiskArguments
    from rcl_hf.train_job import DataArguments, ModelArguments

    model_args = ModelArguments(backbone="hf-resnet", image_size=32)
    data_args = DataArguments(dataset=str(data), augmentation="flip", max_train_samples=max_train, max_eval_samples=32,
                              cache_dir=str(out_dir.parent / "cache"))
    risk_args = RiskArguments(nonfinite_loss=nonfinite, max_nonfinite_skips=2)
    training_args = TrainingArguments(
        output_dir=str(out_dir), seed=seed, learning_rate=lr, num_train_epochs=epochs, per_device_train_batch_size=16,
        per_device_eval_batch_size=32, save_strategy="steps" if save_steps else "epoch", save_steps=save_steps or 500,
        eval_strategy="no",
        load_best_model_at_end=False, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0,
    )
    return model_args, data_args, risk_args, training_args


def _run(data: Path, out_dir: Path, **kw):
    from rcl_hf.train_job import run_training

    return run_training(*_args(data, out_dir, **kw))


#: In-process reference: 64 samples, batch 16, 2 epochs = 8 steps, flip augmentation, checkpoints at 4 and 8.
EPOCH_RUN = dict(epochs=2, max_train=64, save_steps=None)


@pytest.fixture(scope="module")
def reference_run(synthetic_dir, tmp_path_factory):
    """One uninterrupted in-process run (:data:`EPOCH_RUN`)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, _run(synthetic_dir, out, **EPOCH_RUN)


def test_same_seed_gives_identical_metrics_and_weights_on_cpu(synthetic_dir, reference_run, tmp_path):
    ref_dir, ref = reference_run
    again = _run(synthetic_dir, tmp_path / "again", **EPOCH_RUN)
    assert {k: v for k, v in again["test"].items() if "runtime" not in k and "per_second" not in k} == {
        k: v for k, v in ref["test"].items() if "runtime" not in k and "per_second" not in k
    }
    wa, wb = load_file(str(ref_dir / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-identical
    logits_a = np.load(ref_dir / "test_predictions.npz")["logits"]
    logits_b = np.load(tmp_path / "again" / "test_predictions.npz")["logits"]
    assert np.array_equal(logits_a, logits_b)
    # the weights did move during training: the equality above is not between two untouched initialisations
    w4 = load_file(str(ref_dir / "checkpoint-4" / "model.safetensors"))
    assert not all(torch.equal(wa[k], w4[k]) for k in wa)


def test_crash_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(synthetic_dir, reference_run, tmp_path,
                                                                                monkeypatch, caplog):
    """The weights of checkpoint-8 are written, then the optimizer save dies half-way: checkpoint-4 stays
    complete, no checkpoint-8 appears, and resuming from the last complete one reproduces the reference."""
    from transformers import AutoModelForImageClassification

    from rcl_hf.checkpoints import checkpoint_problem, last_complete_checkpoint
    from rcl_hf.trainer import RiskCalibratedTrainer
    from rcl_hf.train_job import run_training

    ref_dir, ref = reference_run
    out = tmp_path / "run"
    original = RiskCalibratedTrainer._save_optimizer_and_scheduler

    def dying_save(self, output_dir):
        if self.state.global_step == 8:
            assert (Path(output_dir) / "model.safetensors").is_file()  # weights already written
            (Path(output_dir) / "optimizer.pt").write_bytes(b"PK\x03\x04 half an optimizer state")
            raise OSError(28, "No space left on device (simulated)")
        return original(self, output_dir)

    monkeypatch.setattr(RiskCalibratedTrainer, "_save_optimizer_and_scheduler", dying_save)
    with pytest.raises(OSError, match="No space left"):
        _run(synthetic_dir, out, **EPOCH_RUN)
    assert _checkpoint_steps(out) == [4]
    assert checkpoint_problem(out / "checkpoint-4") is None
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]  # the failed save cleaned up
    assert not (out / "model.safetensors").exists() and not (out / "rcl_results.json").exists()
    model = AutoModelForImageClassification.from_pretrained(out / "checkpoint-4")
    assert model.config.id2label[0] == "normal"

    # a SIGKILL during a save leaves a staging folder instead: simulate one, then resume
    staging = out / ".tmp-checkpoint-8"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    assert last_complete_checkpoint(out) == (str(out / "checkpoint-4"), [])
    monkeypatch.setattr(RiskCalibratedTrainer, "_save_optimizer_and_scheduler", original)
    model_args, data_args, risk_args, training_args = _args(synthetic_dir, out, **EPOCH_RUN)
    training_args.resume_from_checkpoint = "last"
    with caplog.at_level(logging.WARNING, logger="rcl_hf.atomic_io"):
        resumed = run_training(model_args, data_args, risk_args, training_args)
    assert "unfinished save" in caplog.text and ".tmp-checkpoint-8" in caplog.text
    assert not staging.exists()
    assert _checkpoint_steps(out) == [4, 8]
    # resumed at an epoch boundary: identical even with random (flip) augmentation
    _assert_same_metrics({k: ref["test"][k] for k in METRIC_KEYS}, {k: resumed["test"][k] for k in METRIC_KEYS})
    _assert_same_weights(ref_dir / "model.safetensors", out / "model.safetensors")


def test_resume_skips_incomplete_checkpoints_and_refuses_a_named_one(reference_run, tmp_path, caplog):
    import shutil

    from rcl_hf.checkpoints import IncompleteCheckpointError, checkpoint_problem, resolve_resume_checkpoint

    ref_dir, _ = reference_run
    run = tmp_path / "run"
    shutil.copytree(ref_dir / "checkpoint-4", run / "checkpoint-4")
    cases = {
        "checkpoint-6": lambda d: (d / "trainer_state.json").unlink(),
        "checkpoint-8": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
        "checkpoint-10": lambda d: (d / "optimizer.pt").write_bytes((d / "optimizer.pt").read_bytes()[:300]),
        "checkpoint-12": lambda d: (d / "trainer_state.json").write_text("{\"global_step\": 12, "),
        "checkpoint-14": lambda d: (d / "model.safetensors").unlink(),
    }
    reasons = {
        "checkpoint-6": "no trainer_state.json", "checkpoint-8": "truncated", "checkpoint-10": "optimizer.pt is truncated",
        "checkpoint-12": "trainer_state.json is unreadable", "checkpoint-14": "no model weights",
    }
    for name, damage in cases.items():
        shutil.copytree(ref_dir / "checkpoint-8", run / name)
        damage(run / name)
        assert reasons[name] in checkpoint_problem(run / name)
    assert checkpoint_problem(run / "checkpoint-4") is None
    with caplog.at_level(logging.WARNING, logger="rcl_hf.checkpoints"):
        for spec in (True, "last", "true", str(run)):
            assert resolve_resume_checkpoint(spec, run) == str(run / "checkpoint-4")
    assert caplog.text.count("Skipping incomplete checkpoint") >= 5
    with pytest.raises(IncompleteCheckpointError, match=r"checkpoint-8.*truncated.*newest complete checkpoint beside it is .*checkpoint-4"):
        resolve_resume_checkpoint(str(run / "checkpoint-8"), run)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_resume_checkpoint(str(run / "checkpoint-99"), run)
    with pytest.raises(ValueError, match="no checkpoint-"):
        resolve_resume_checkpoint("last", tmp_path / "empty")
    assert resolve_resume_checkpoint(None, run) is None and resolve_resume_checkpoint(False, run) is None


# ============================================================================ numerical faults
class _Poison:
    """Corrupt chosen training batches: NaN pixels (``calls``) or a NaN gradient with a finite loss (``grad_calls``).

    Counts the model's training forward passes (1-based); evaluation passes are not counted.
    """

    def __init__(self, monkeypatch, calls=(), grad_calls=()):
        import rcl_hf.models

        self.calls, self.grad_calls, self.count = set(calls), set(grad_calls), 0
        original = rcl_hf.models.build_model

        def build(*args, **kwargs):
            model, cfg = original(*args, **kwargs)
            model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            model.register_forward_hook(self._hook)
            return model, cfg

        monkeypatch.setattr(rcl_hf.models, "build_model", build)

    def _pre_hook(self, module, args, kwargs):
        if not module.training:
            return None
        self.count += 1
        if self.count in self.calls:  # a corrupt batch: NaN reaches BatchNorm and the logits
            kwargs = {**kwargs, "pixel_values": kwargs["pixel_values"] * float("nan")}
        return args, kwargs

    def _hook(self, module, inputs, output):
        if module.training and self.count in self.grad_calls:
            output.logits.register_hook(lambda g: g * float("nan"))
        return None


def _optimizer_steps(checkpoint: Path) -> int:
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)["state"]
    return int(max(float(s["step"]) for s in state.values()))


def test_nonfinite_loss_stops_the_run_naming_the_step_and_writes_no_model(synthetic_dir, tmp_path, monkeypatch):
    from rcl_hf.trainer import NonFiniteLossError

    _Poison(monkeypatch, calls={4})
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"Training loss is nan at global step 3 \(micro-batch 1 of optimizer step 4"):
        _run(synthetic_dir, out)
    assert _checkpoint_steps(out) == [2]  # the checkpoint before the fault, complete
    assert not any((out / n).exists() for n in ("model.safetensors", "rcl_results.json", "test_results.json"))


def test_nonfinite_gradient_with_finite_loss_stops_or_skips_the_step(synthetic_dir, tmp_path, monkeypatch):
    from rcl_hf.trainer import NonFiniteLossError

    _Poison(monkeypatch, grad_calls={2})
    with pytest.raises(NonFiniteLossError, match=r"Gradient norm is nan at global step 1 .*although the loss is finite"):
        _run(synthetic_dir, tmp_path / "raise")
    poison = _Poison(monkeypatch, grad_calls={2})
    res = _run(synthetic_dir, tmp_path / "skip", nonfinite="skip")
    assert poison.count == 6 and np.isfinite(res["test"]["loss"])
    assert _optimizer_steps(tmp_path / "skip" / "checkpoint-6") == 5  # 6 steps, one skipped


def test_cli_nonfinite_loss_skip_skips_the_step_and_the_model_stays_finite(synthetic_dir, tmp_path, monkeypatch, capsys):
    from rcl_hf.commands.train import train_main

    poison = _Poison(monkeypatch, calls={3})
    out = tmp_path / "cli"
    argv = ["--dataset", str(synthetic_dir), "--image_size", "32", "--backbone", "hf-resnet", "--max_train_samples", "96", "--max_eval_samples", "32", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "16", "--save_strategy", "steps", "--save_steps", "3", "--eval_strategy", "no",
            "--load_best_model_at_end", "false", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
            "--use_cpu", "true", "--seed", "5", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
            "--nonfinite_loss", "skip"]
    results = train_main(argv)
    assert poison.count == 6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e for e in state["log_history"] if "loss" in e][-1]["nonfinite_skipped"] == 1
    assert max(e.get("skipped_optimizer_steps", 0) for e in state["log_history"]) == 1
    assert _optimizer_steps(out / "checkpoint-6") == 5
    weights = load_file(str(out / "model.safetensors"))
    assert any("running_mean" in k for k in weights)  # BatchNorm statistics saw the NaN batch, and were restored
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert np.isfinite(results["test"]["loss"]) and "test (rcl)" in capsys.readouterr().out


def test_diverging_run_never_returns_or_saves_a_nan_model(synthetic_dir, tmp_path):
    """A huge learning rate sends the weights to inf: skip mode gives up with a clear error, no model is saved."""
    from rcl_hf.trainer import NonFiniteLossError

    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="diverged|non-finite"):
        _run(synthetic_dir, out, lr=1e30, nonfinite="skip", save_steps=1)
    assert not (out / "model.safetensors").exists()
    for ckpt in out.glob("checkpoint-*"):
        assert all(torch.isfinite(w).all() for w in load_file(str(ckpt / "model.safetensors")).values()), ckpt


# ============================================================================ atomic files
def test_final_model_files_are_replaced_atomically(tmp_path, monkeypatch):
    """``save_model`` outside a checkpoint stages the files and ``os.replace``s them: a failure mid-save
    leaves the previous model untouched and no staging folder behind."""
    from transformers import TrainingArguments

    from rcl_hf.models import build_model
    from rcl_hf.severity import SeverityMatrix
    from rcl_hf.trainer import RiskArguments, RiskCalibratedTrainer

    sev = SeverityMatrix.preset("synthetic")
    torch.manual_seed(0)
    model, _ = build_model("hf-resnet", sev, image_size=32)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], hub_token="hf_" + "x" * 30)
    trainer = RiskCalibratedTrainer(model=model, args=args, risk_args=RiskArguments(), severity=sev)
    out = tmp_path / "model"
    trainer.save_model(str(out))
    before = (out / "model.safetensors").read_bytes()
    assert json.loads((out / "config.json").read_text())["id2label"]["0"] == "normal"
    assert b"hf_xxxx" not in (out / "training_args.bin").read_bytes()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)

    def dying_finish(self, folder):
        assert Path(folder).name.startswith(".tmp-save-") and (Path(folder) / "model.safetensors").is_file()
        raise OSError(5, "I/O error (simulated)")

    monkeypatch.setattr(RiskCalibratedTrainer, "_finish_model_folder", dying_finish)
    with pytest.raises(OSError, match="simulated"):
        trainer.save_model(str(out))
    assert (out / "model.safetensors").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.undo()
    trainer.save_model(str(out))
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(after[k], v) for k, v in trainer.model.state_dict().items() if k in after)
    assert (out / "model.safetensors").read_bytes() != before


def test_atomic_write_bytes_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    from rcl_hf import atomic_io as reliability

    target = tmp_path / "results.json"
    reliability.atomic_write_bytes(target, b'{"cer": 0.1}')
    assert target.read_bytes() == b'{"cer": 0.1}'

    def no_space(fd):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(reliability.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        reliability.atomic_write_bytes(target, b'{"cer": 0.2, "truncated')
    assert target.read_bytes() == b'{"cer": 0.1}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.slow
def test_two_process_ddp_run_killed_and_resumed_matches_uninterrupted(synthetic_dir, tmp_path):
    """Real gloo DDP (2 processes, ``accelerate launch``): every checkpoint is complete with both ranks' RNG
    states, and a run SIGKILLed (whole process group) after a checkpoint resumes to the uninterrupted result."""
    import socket

    from rcl_hf.checkpoints import checkpoint_problem

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def cmd(out: Path, *extra: str) -> List[str]:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs" / "accelerate" / "cpu_ddp_2proc.yaml"), "--main_process_port", str(port()),
                *_train_cmd(synthetic_dir, out, *extra)[1:]]

    env = {**_env(), "CUDA_VISIBLE_DEVICES": ""}
    ref = subprocess.run(cmd(tmp_path / "ref"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-3000:]
    # 256 samples, global batch 2 x 16: 8 steps per epoch, 16 in all; checkpoints every 4
    checkpoints = list((tmp_path / "ref").glob("checkpoint-*"))
    assert len(checkpoints) >= 2 and (tmp_path / "ref" / "checkpoint-16").is_dir()
    for ckpt in checkpoints:
        assert checkpoint_problem(ckpt) is None
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ckpt.iterdir()}

    run = tmp_path / "killed"
    victim = subprocess.Popen(cmd(run), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and victim.poll() is None and not list(run.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.01)
    # torch.distributed.run starts each rank in a session of its own, so killing the launcher's process group would
    # leave both ranks running (and writing checkpoints) as orphans: kill the whole process tree, as a crash would.
    import psutil

    tree = [psutil.Process(victim.pid)]
    tree += tree[0].children(recursive=True)
    assert len(tree) >= 3, tree  # the launcher and two ranks
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, alive
    victim.wait(60)
    steps = _checkpoint_steps(run)
    assert steps and max(steps) < 16 and not (run / "model.safetensors").exists(), steps
    resumed = subprocess.run(cmd(run, "--resume_from_checkpoint", "last"), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    _assert_same_metrics(_test_metrics(tmp_path / "ref"), _test_metrics(run))
    _assert_same_weights(tmp_path / "ref" / "model.safetensors", run / "model.safetensors")


def test_publish_new_dir_first_writer_wins_and_failures_leave_nothing(tmp_path):
    from rcl_hf.atomic_io import publish_new_dir

    def writer(text):
        def write(folder):
            os.makedirs(folder)
            with open(os.path.join(folder, "x.txt"), "w") as fh:
                fh.write(text)
        return write

    target = tmp_path / "cache"
    assert publish_new_dir(target, writer("first")) is True
    assert publish_new_dir(target, writer("second")) is False
    assert (target / "x.txt").read_text() == "first"

    def dying(folder):
        writer("partial")(folder)
        raise OSError(28, "No space left on device (simulated)")

    with pytest.raises(OSError):
        publish_new_dir(tmp_path / "other", dying)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
