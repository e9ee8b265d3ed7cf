"""Training throughput: ``RiskCalibratedTrainer`` vs a plain ``transformers.Trainer`` with cross-entropy.

Same model (timm ResNet-18 through ``TimmWrapperForImageClassification``, one
initial state copied into every variant), same data (the synthetic default
dataset at 64 px through :func:`rcl_hf.data.transforms.apply_transforms`: PNG bytes
decoded and transformed lazily per batch, random flips), same
``TrainingArguments`` (batch 32, AdamW, max_grad_norm 1.0, ``remove_unused_columns=False``).

* ``hf_trainer_ce``: ``transformers.Trainer``; the model returns its own
  cross-entropy from ``labels`` (the plain Hugging Face recipe);
* ``rcl_trainer``: ``RiskCalibratedTrainer`` with the risk-calibrated loss
  (expected form, λ = 1), logging its parts.

Target: images/s of ``rcl_trainer`` / ``hf_trainer_ce`` >= 1.0.

What costs, measured in the same rounds on ``rcl_trainer``: dataloader workers
(2), pre-decoded tensors (no decoding or augmentation: the data pipeline's share),
``remove_unused_columns=True`` (possible only on pre-decoded data: with a lazy
transform it drops the ``image`` column the transform needs), and
channels_last weights. The Trainer's own dataloader is also timed alone
(decode + transform + collate) and the collator alone.

Throughput is :class:`rcl_hf.performance.ThroughputCallback`: images per second
between the end of warm-up step 2 and the last step of a ``train()`` call; each
round calls ``train()`` once per variant, in alternating order.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

TARGET = 1.0


def _quiet() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("rcl_hf").setLevel(logging.WARNING)


def run(quick: bool = False, real: bool = False, repeats: Optional[int] = None, **_: Any) -> Dict[str, Any]:
    import datasets
    import numpy as np
    import torch
    from transformers import PrinterCallback, Trainer, default_data_collator

    from benchmarks import interleave, make_ratio, stats
    from rcl_hf.data.synthetic import load_synthetic
    from rcl_hf.data.transforms import apply_transforms
    from rcl_hf.models import build_model
    from rcl_hf.performance import ThroughputCallback
    from rcl_hf.severity import SeverityMatrix
    from rcl_hf.trainer import RiskArguments, RiskCalibratedTrainer
    from rcl_hf.training import AUGMENTATIONS, default_training_args

    _quiet()
    image_size, batch, steps, skip = (32, 8, 3, 1) if quick else (64, 32, 8, 2)
    rounds = repeats or (1 if quick else 3)
    n_train = batch * (steps + 2)
    severity = SeverityMatrix.preset("synthetic")
    dsd = load_synthetic(seed=0, n_train=n_train, n_validation=0, n_test=0, image_size=image_size)
    torch.manual_seed(0)
    model0, data_config = build_model("resnet18", severity, image_size=image_size)
    lazy = apply_transforms(datasets.DatasetDict({"train": dsd["train"]}), image_size=image_size,
                            mean=data_config["mean"], std=data_config["std"], **AUGMENTATIONS["flip"])["train"]
    # Pre-decoded: the same images, transformed once (eval transform: no augmentation), held as arrays.
    eval_tf = apply_transforms(dsd["train"], image_size=image_size, mean=data_config["mean"], std=data_config["std"])
    decoded = eval_tf[:]
    pre = datasets.Dataset.from_dict({"pixel_values": decoded["pixel_values"].numpy(), "labels": decoded["labels"],
                                      "patient_id": dsd["train"]["patient_id"]}).with_format("torch")
    use_cpu = not torch.cuda.is_available()
    work = tempfile.mkdtemp(prefix="rcl_bench_trainer_")

    def args(name: str, **over: Any):
        kw = dict(eval_strategy="no", save_strategy="no", load_best_model_at_end=False, max_steps=steps + skip,
                  per_device_train_batch_size=batch, logging_steps=steps + skip, learning_rate=1e-4,
                  disable_tqdm=True, use_cpu=use_cpu, seed=0, dataloader_num_workers=0)
        kw.update(over)
        return default_training_args(os.path.join(work, name), **kw)

    risk = RiskArguments(loss="rcl", lam=1.0)
    variants: Dict[str, Dict[str, Any]] = {
        "hf_trainer_ce": dict(cls=Trainer, data=lazy, args={}, desc="transformers.Trainer, model's own CE, lazy decode"),
        "rcl_trainer": dict(cls=RiskCalibratedTrainer, data=lazy, args={}, desc="RiskCalibratedTrainer, RCL, lazy decode"),
        "rcl_trainer + 2 workers": dict(cls=RiskCalibratedTrainer, data=lazy, args={"dataloader_num_workers": 2},
                                        desc="dataloader_num_workers=2"),
        "rcl_trainer + pre-decoded": dict(cls=RiskCalibratedTrainer, data=pre, args={},
                                          desc="tensors decoded once (no decode, no augmentation)"),
        "rcl_trainer + pre-decoded + remove_unused_columns": dict(
            cls=RiskCalibratedTrainer, data=pre, args={"remove_unused_columns": True},
            desc="pre-decoded, remove_unused_columns=True drops patient_id"),
        "rcl_trainer + channels_last": dict(cls=RiskCalibratedTrainer, data=lazy, args={}, channels_last=True,
                                            desc="channels_last weights"),
    }
    if quick:  # the two compared variants and one ablation are enough for a smoke run
        variants = {k: v for k, v in variants.items() if k in ("hf_trainer_ce", "rcl_trainer", "rcl_trainer + pre-decoded")}
    trainers: Dict[str, Any] = {}
    callbacks: Dict[str, ThroughputCallback] = {}
    ips: Dict[str, List[float]] = {}
    for name, spec in variants.items():
        model = copy.deepcopy(model0)
        if spec.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        cb = ThroughputCallback(batch, skip=skip)
        kw: Dict[str, Any] = dict(model=model, args=args(name.replace(" ", "_"), **spec["args"]),
                                  train_dataset=spec["data"], data_collator=default_data_collator, callbacks=[cb])
        if spec["cls"] is RiskCalibratedTrainer:
            kw.update(risk_args=risk, severity=severity)
        trainer = spec["cls"](**kw)
        trainer.remove_callback(PrinterCallback)  # no log lines in the benchmark's output
        trainers[name], callbacks[name], ips[name] = trainer, cb, []

    def one_run(name: str) -> Callable[[], None]:
        def go() -> None:
            trainers[name].train()
            ips[name].append(callbacks[name].samples_per_second)

        return go

    try:
        wall = interleave({name: one_run(name) for name in trainers}, repeats=rounds, warmup=0)
        # The Trainer's own loader alone (decode + transform + collate), and the collator alone.
        loader = trainers["rcl_trainer"].get_train_dataloader()
        rows_for_collate = [lazy[i] for i in range(batch)]

        def loader_pass() -> None:
            for _ in loader:
                pass

        def collate() -> None:
            default_data_collator(rows_for_collate)

        data_t = interleave({"loader": loader_pass, "collate": collate}, repeats=max(2, rounds), warmup=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n_batches = len(loader)
    loader_ips = stats([n_batches * batch / t for t in data_t["loader"]])["median"]
    collate_ms = stats(data_t["collate"])["median"] * 1e3
    med = {k: stats(v)["median"] for k, v in ips.items()}
    base = med["rcl_trainer"]
    ratios = [make_ratio("training images/s, RiskCalibratedTrainer (RCL) vs transformers.Trainer (CE)",
                         "rcl_trainer img/s", "hf_trainer_ce img/s", base, med["hf_trainer_ce"], TARGET, ">=", "img/s")]
    rows = []
    for name, spec in variants.items():
        s = stats(ips[name])
        rows.append([name, spec["desc"], s["median"], s["p10"], s["p90"], s["n"], 1e3 * batch / s["median"], s["median"] / base])
    step_ms = 1e3 * batch / base
    data_ms = 1e3 * batch / loader_ips
    findings = [
        f"Data loading (the Trainer's own loader, decode + transform + collate, workers 0): {loader_ips:.0f} img/s, "
        f"{data_ms:.1f} ms per batch of {batch} = {100 * data_ms / step_ms:.1f}% of a {step_ms:.0f} ms training step; "
        f"collation alone {collate_ms:.2f} ms per batch.",
        "remove_unused_columns=True cannot be used with lazily transformed images (it drops the image column "
        "before the transform runs); RiskCalibratedTrainer's docs and run_training set it to False. The transform "
        "returns only pixel_values and labels, so passing the other columns through costs nothing measurable.",
    ]
    per_round = [a / b for a, b in zip(ips["rcl_trainer"], ips["hf_trainer_ce"])]
    findings.append("Per-round ratios rcl_trainer / hf_trainer_ce: " + ", ".join(f"{r:.3f}" for r in per_round) + ".")
    return {
        "benchmark": "trainer_throughput",
        "title": f"Training throughput: RiskCalibratedTrainer vs transformers.Trainer, ResNet-18 at {image_size} px, "
                 f"batch {batch} ({'cpu' if use_cpu else 'cuda'})",
        "config": {"model": "timm resnet18", "image_size": image_size, "batch": batch, "measured_steps": steps,
                   "warmup_steps": skip, "rounds": rounds, "data": f"synthetic PNG, {n_train} images",
                   "device": "cpu" if use_cpu else "cuda", "quick": quick},
        "ratios": ratios,
        "table": {"columns": ["variant", "what", "median img/s", "p10", "p90", "rounds", "ms/step",
                              "vs rcl_trainer"], "rows": rows},
        "findings": findings,
        "raw": {"images_per_s": ips, "round_wall_s": wall, "loader_s": data_t["loader"], "collate_s": data_t["collate"],
                "loader_images_per_s": loader_ips, "collate_ms": collate_ms, "timestamp": time.time(),
                "pixel_mean_check": float(np.asarray(decoded["pixel_values"]).mean())},
    }
