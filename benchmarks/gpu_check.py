"""GPU check: training throughput with CE vs RCL on ResNet-50 and ViT-S/16 at 224 px, and a short fine-tuning run.

Run by ``bash benchmarks/gpu_check.sh`` on a machine with a CUDA GPU (about 2-4
minutes on one H100); prints one table and writes
``benchmarks/results/gpu_check.json`` / ``.md``. ``--cpu`` runs the same code on
the CPU with tiny sizes (a smoke test of the script, not a measurement).

Throughput (images/s, :class:`benchmarks.throughput.ThroughputCallback`; in-memory
random tensors so the data pipeline is not what is measured), for each model,
the variants interleaved over ``--rounds`` rounds, each with the GPU path of
:func:`rcl_hf.gpu_defaults.plan_gpu_path` (bf16 autocast, channels_last for the
CNN, TF32, pinned memory, workers):

* ``hf Trainer, CE``: ``transformers.Trainer``, the model's own cross-entropy;
* ``rcl Trainer, CE``: ``RiskCalibratedTrainer`` with ``loss="ce"`` (the
  Trainer's own overhead);
* ``rcl Trainer, RCL``: ``RiskCalibratedTrainer`` with the risk-calibrated loss;
* with ``--compile``, ``rcl Trainer, RCL, compiled`` (``torch_compile=True``).

Fine-tuning: :func:`rcl_hf.train_job.run_training` on the synthetic default at 224
px, EfficientNet-Lite0 from the offline ImageNet weights, RCL loss, 2 epochs:
wall time, training images/s (decode + transform included), test CER and
accuracy, and the GPU-path settings it applied.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch


class RandomImages(torch.utils.data.Dataset):
    """``length`` samples drawn (modulo) from a pool of random ``(3, size, size)`` tensors and labels."""

    def __init__(self, length: int, size: int, num_labels: int, pool: int = 256, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.length = int(length)
        self.x = torch.randn(min(pool, length), 3, size, size, generator=g)
        self.y = torch.randint(0, num_labels, (min(pool, length),), generator=g)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        j = i % len(self.y)
        return {"pixel_values": self.x[j], "labels": self.y[j]}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", "--quick", dest="cpu", action="store_true",
                   help="run on the CPU with tiny sizes (smoke test of the script)")
    p.add_argument("--models", nargs="+", default=["resnet50", "vit_small_patch16_224"])
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default 128 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per round (default 20 on GPU)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3 on GPU)")
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant (adds compile time)")
    p.add_argument("--no-finetune", dest="finetune", action="store_false", help="skip the fine-tuning run")
    p.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--no-write", dest="write", action="store_false")
    return p.parse_args(argv)


def _quiet() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("rcl_hf").setLevel(logging.WARNING)


def throughput(model_name: str, *, cpu: bool, batch: int, steps: int, rounds: int, image_size: int,
               compile_variant: bool, work: str) -> Dict[str, Any]:
    """Images/s of each Trainer variant on ``model_name`` (same initial weights, interleaved rounds)."""
    from transformers import PrinterCallback, Trainer, default_data_collator

    from benchmarks import interleave, stats
    from benchmarks.throughput import ThroughputCallback
    from rcl_hf.models import build_model
    from rcl_hf.gpu_defaults import apply_gpu_path, plan_gpu_path
    from rcl_hf.severity import SeverityMatrix
    from rcl_hf.trainer import RiskArguments, RiskCalibratedTrainer
    from rcl_hf.train_job import default_training_args

    severity = SeverityMatrix.preset("isic2018")
    skip = 1 if cpu else 3
    torch.manual_seed(0)
    # timm ViTs fix their input size at creation; CNNs take any size.
    extra = {"img_size": image_size} if "vit" in model_name else None
    model0, _ = build_model(model_name, severity, image_size=image_size, model_args=extra)
    data = RandomImages(batch * (steps + skip), image_size, severity.num_labels)
    variants = {"hf Trainer, CE": (Trainer, None, False), "rcl Trainer, CE": (RiskCalibratedTrainer, "ce", False),
                "rcl Trainer, RCL": (RiskCalibratedTrainer, "rcl", False)}
    if compile_variant:
        variants["rcl Trainer, RCL, compiled"] = (RiskCalibratedTrainer, "rcl", True)
    trainers, cbs, ips, notes = {}, {}, {}, []
    for name, (cls, loss, compiled) in variants.items():
        args = default_training_args(
            os.path.join(work, f"{model_name}-{len(trainers)}"), eval_strategy="no", save_strategy="no",
            load_best_model_at_end=False, max_steps=steps + skip, per_device_train_batch_size=batch,
            logging_steps=steps + skip, learning_rate=1e-4, disable_tqdm=True, use_cpu=cpu, seed=0,
            torch_compile=compiled)
        model = copy.deepcopy(model0)
        plan = plan_gpu_path(model, args)
        args, model = apply_gpu_path(plan, args, model)
        notes = plan.notes
        cb = ThroughputCallback(batch, skip=skip)
        kw: Dict[str, Any] = dict(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                                  callbacks=[cb])
        if cls is RiskCalibratedTrainer:
            kw.update(risk_args=RiskArguments(loss=loss), severity=severity)
        trainer = cls(**kw)
        trainer.remove_callback(PrinterCallback)
        trainers[name], cbs[name], ips[name] = trainer, cb, []

    def go(name: str):
        def run() -> None:
            trainers[name].train()
            ips[name].append(cbs[name].samples_per_second)

        return run

    interleave({name: go(name) for name in trainers}, repeats=rounds, warmup=0)
    out = {name: stats(v) for name, v in ips.items()}
    trainers.clear()  # free the models before the GPU cache is emptied
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"images_per_s": out, "raw": ips, "gpu_path": notes}


def finetune(*, cpu: bool, work: str) -> Dict[str, Any]:
    """A short real run of :func:`rcl_hf.train_job.run_training` (synthetic data, EfficientNet-Lite0, RCL)."""
    from rcl_hf.trainer import RiskArguments
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training

    image_size = 64 if cpu else 224
    model_args = ModelArguments(backbone="efficientnet_lite0", pretrained="efficientnet-lite0-package",
                                image_size=image_size)
    data_args = DataArguments(dataset="synthetic", max_train_samples=32 if cpu else None,
                              max_eval_samples=16 if cpu else None, cache_dir=os.path.join(work, "cache"))
    args = default_training_args(os.path.join(work, "finetune"), num_train_epochs=1 if cpu else 2,
                                 per_device_train_batch_size=16 if cpu else 64, per_device_eval_batch_size=16 if cpu else 128,
                                 learning_rate=1e-3, warmup_steps=0, disable_tqdm=True, use_cpu=cpu, seed=0,
                                 save_total_limit=1, logging_steps=10_000)
    t = time.perf_counter()
    result = run_training(model_args, data_args, RiskArguments(loss="rcl"), args)
    wall = time.perf_counter() - t
    import json

    with open(os.path.join(args.output_dir, "all_results.json"), encoding="utf-8") as fh:
        metrics = json.load(fh)
    return {"wall_s": wall, "image_size": image_size, "train_samples_per_second": metrics.get("train_samples_per_second"),
            "test_cer": result["test"]["cer"], "test_accuracy": result["test"]["accuracy"],
            "epochs": args.num_train_epochs}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here. Pass --cpu to run the script on the CPU with tiny sizes.", file=sys.stderr)
        raise SystemExit(2)
    _quiet()
    from benchmarks import finish, load_average, make_ratio, render_markdown, write_result

    started, load_before = time.perf_counter(), load_average()
    batch = args.batch or (4 if args.cpu else 128)
    steps = args.steps or (2 if args.cpu else 20)
    rounds = args.rounds or (1 if args.cpu else 3)
    image_size = 32 if args.cpu else 224
    models = [m for m in args.models] if not args.cpu else ["resnet18", "vit_tiny_patch16_224"][: len(args.models)]
    work = tempfile.mkdtemp(prefix="rcl_gpu_check_")
    rows: List[List[Any]] = []
    ratios, findings, raw = [], [], {}
    try:
        for name in models:
            res = throughput(name, cpu=args.cpu, batch=batch, steps=steps, rounds=rounds,
                             image_size=image_size, compile_variant=args.compile, work=work)
            raw[name] = res
            ce = res["images_per_s"]["hf Trainer, CE"]["median"]
            for variant, s in res["images_per_s"].items():
                rows.append([name, variant, s["median"], s["p10"], s["p90"], s["n"], s["median"] / ce])
            ratios.append(make_ratio(f"{name}: images/s, rcl Trainer RCL vs hf Trainer CE", "rcl img/s", "hf CE img/s",
                                     res["images_per_s"]["rcl Trainer, RCL"]["median"], ce, 1.0, ">=", "img/s"))
            findings.append(f"{name} GPU path: " + "; ".join(res["gpu_path"]))
        if args.finetune:
            ft = finetune(cpu=args.cpu, work=work)
            raw["finetune"] = ft
            rows.append([f"efficientnet_lite0 fine-tune ({ft['epochs']} epochs, {ft['image_size']} px, synthetic)",
                         f"run_training, RCL: {ft['wall_s']:.1f} s wall, test CER {100 * ft['test_cer']:.2f}%, "
                         f"accuracy {100 * ft['test_accuracy']:.2f}%", ft["train_samples_per_second"] or 0.0, "-", "-", 1, "-"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else "cpu"
    result = finish({
        "benchmark": "gpu_check" if not args.cpu else "gpu_check_cpu_smoke",
        "title": f"GPU check on {device}: training images/s, CE vs RCL, {image_size} px, batch {batch}",
        "config": {"models": models, "batch": batch, "measured_steps": steps, "rounds": rounds, "image_size": image_size,
                   "compile": args.compile, "cpu_smoke": args.cpu},
        "ratios": ratios,
        "table": {"columns": ["model", "variant", "median img/s", "p10", "p90", "rounds", "vs hf CE"], "rows": rows},
        "findings": findings,
        "raw": raw,
    }, started=started, load_before=load_before, argv=argv)
    result["command"] = "bash benchmarks/gpu_check.sh " + " ".join(sys.argv[1:] if argv is None else list(argv))
    if args.write:
        write_result(result, Path(args.output_dir))
    print(render_markdown(result), flush=True)
    return result


if __name__ == "__main__":
    main()
