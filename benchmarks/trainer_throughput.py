"""Training throughput: ``RiskCalibratedTrainer`` vs a plain ``transformers.Trainer`` with cross-entropy.

Same model (timm ResNet-18 through ``TimmWrapperForImageClassification``, one
initial state copied into every variant), same data (the synthetic default
dataset at 64 px through :func:`rcl_hf.data.transforms.apply_transforms`: PNG bytes
decoded and transformed lazily per batch, random flips), same
``TrainingArguments`` (batch 32, AdamW, max_grad_norm 1.0, ``remove_unused_columns=False``).

* ``hf_trainer_ce``: ``transformers.Trainer``; the model returns its own
  cross-entropy from ``labels`` (the plain Hugging Face recipe);
* ``rcl_trainer``: ``RiskCalibratedTrainer`` with the risk-calibrated loss
  (expected form, λ = 1), logging its parts;
* ``hf_trainer_ce (A/A)``: ``hf_trainer_ce`` again, last in each round: its
  ratio to ``hf_trainer_ce`` is the noise floor of the method on this machine.

Target: images/s of ``rcl_trainer`` / ``hf_trainer_ce`` >= 1.0.

What costs, measured in the same rounds on ``rcl_trainer``: dataloader workers
(2); pre-decoded tensors (no decoding or augmentation: the data pipeline's
share), stored as a fixed-shape ``Array3D`` column with
``remove_unused_columns=True`` (possible only on pre-decoded data: with a lazy
transform it drops the ``image`` column the transform needs), and stored as
nested lists (what ``Dataset.map`` writes for an array unless told the
features); and channels_last weights. The Trainer's own dataloader is also timed alone
(decode + transform + collate) and the collator alone.

Throughput is :class:`benchmarks.throughput.ThroughputCallback`: images per second
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
    from torch.utils.data import DataLoader
    from transformers import PrinterCallback, Trainer, default_data_collator

    from benchmarks import interleave, make_ratio, stats
    from benchmarks.throughput import ThroughputCallback
    from rcl_hf.data.synthetic import load_synthetic
    from rcl_hf.data.transforms import apply_transforms
    from rcl_hf.models import build_model
    from rcl_hf.severity import SeverityMatrix
    from rcl_hf.trainer import RiskArguments, RiskCalibratedTrainer
    from rcl_hf.train_job import AUGMENTATIONS, default_training_args

    _quiet()
    image_size, batch, steps, skip = (32, 8, 3, 1) if quick else (64, 32, 6, 2)
    rounds = repeats or (1 if quick else 4)
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
    columns = {"pixel_values": decoded["pixel_values"].numpy(), "labels": decoded["labels"],
               "patient_id": dsd["train"]["patient_id"]}
    # As a fixed-shape Array3D column (read back as one block) ...
    features = datasets.Features({"pixel_values": datasets.Array3D(shape=(3, image_size, image_size), dtype="float32"),
                                  "labels": datasets.Value("int64"), "patient_id": datasets.Value("string")})
    pre = datasets.Dataset.from_dict(columns, features=features).with_format("torch")
    # ... and as Dataset.map / from_dict store arrays by default: nested lists, converted value by value.
    pre_nested = datasets.Dataset.from_dict(columns).with_format("torch")
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
        "rcl_trainer + pre-decoded (Array3D)": dict(
            cls=RiskCalibratedTrainer, data=pre, args={"remove_unused_columns": True},
            desc="decoded once into an Array3D column (no decode, no augmentation); remove_unused_columns=True"),
        "rcl_trainer + pre-decoded (nested lists)": dict(
            cls=RiskCalibratedTrainer, data=pre_nested, args={},
            desc="decoded once, stored as Dataset.map stores arrays by default (nested lists)"),
        "rcl_trainer + channels_last": dict(cls=RiskCalibratedTrainer, data=lazy, args={}, channels_last=True,
                                            desc="channels_last weights"),
        "hf_trainer_ce (A/A)": dict(cls=Trainer, data=lazy, args={}, desc="hf_trainer_ce again: the noise floor"),
    }
    if quick:  # the two compared variants and one ablation are enough for a smoke run
        variants = {k: v for k, v in variants.items() if k in ("hf_trainer_ce", "rcl_trainer", "rcl_trainer + pre-decoded (Array3D)",
                                                            "hf_trainer_ce (A/A)")}
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
        # The Trainer's own loader alone (decode + transform + collate), the pre-decoded stores read
        # through the same kind of loader, and the collator alone.
        loader = trainers["rcl_trainer"].get_train_dataloader()
        loaders = {"lazy decode": loader,
                   "Array3D": DataLoader(pre, batch_size=batch, collate_fn=default_data_collator),
                   "nested lists": DataLoader(pre_nested, batch_size=batch, collate_fn=default_data_collator)}
        rows_for_collate = [lazy[i] for i in range(batch)]

        def loader_pass(dl: Any) -> Callable[[], None]:
            def go() -> None:
                for _ in dl:
                    pass

            return go

        def collate() -> None:
            default_data_collator(rows_for_collate)

        data_t = interleave({**{k: loader_pass(v) for k, v in loaders.items()}, "collate": collate},
                            repeats=max(2, rounds), warmup=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    batch_ms = {k: 1e3 * stats(data_t[k])["median"] / len(v) for k, v in loaders.items()}
    loader_ips = 1e3 * batch / batch_ms["lazy decode"]
    collate_ms = stats(data_t["collate"])["median"] * 1e3
    med = {k: stats(v)["median"] for k, v in ips.items()}
    base = med["rcl_trainer"]
    ratios = [make_ratio("training images/s, RiskCalibratedTrainer (RCL) vs transformers.Trainer (CE)",
                         "rcl_trainer img/s", "hf_trainer_ce img/s", base, med["hf_trainer_ce"], TARGET, ">=", "img/s"),
              make_ratio("A/A control: transformers.Trainer (CE) timed twice (noise floor)", "hf_trainer_ce (A/A) img/s",
                         "hf_trainer_ce img/s", med["hf_trainer_ce (A/A)"], med["hf_trainer_ce"], None, ">=", "img/s")]
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
        f"Pre-decoded tensors read back: {batch_ms['Array3D']:.1f} ms per batch from an Array3D column, "
        f"{batch_ms['nested lists']:.1f} ms from nested lists (the default when arrays are stored without features) "
        f"vs {batch_ms['lazy decode']:.1f} ms decoding and transforming the PNGs: pre-computing pixel values only pays "
        "with a fixed-shape Array3D feature, and loses the random augmentation.",
        "remove_unused_columns=True cannot be used with lazily transformed images (it drops the image column "
        "before the transform runs); RiskCalibratedTrainer's docs and run_training set it to False. The transform "
        "returns only pixel_values and labels, so passing the other columns through costs nothing measurable.",
    ]
    per_round = [a / b for a, b in zip(ips["rcl_trainer"], ips["hf_trainer_ce"])]
    per_round_aa = [a / b for a, b in zip(ips["hf_trainer_ce (A/A)"], ips["hf_trainer_ce"])]
    findings.append("Per-round ratios rcl_trainer / hf_trainer_ce: " + ", ".join(f"{r:.3f}" for r in per_round)
                    + "; A/A control (the same Trainer twice): " + ", ".join(f"{r:.3f}" for r in per_round_aa)
                    + ". A difference between rcl_trainer and hf_trainer_ce no larger than the A/A one is noise.")
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
        "raw": {"images_per_s": ips, "round_wall_s": wall, "loader_s": {k: data_t[k] for k in loaders}, "batch_ms": batch_ms, "collate_s": data_t["collate"],
                "loader_images_per_s": loader_ips, "collate_ms": collate_ms, "timestamp": time.time(),
                "pixel_mean_check": float(np.asarray(decoded["pixel_values"]).mean())},
    }
