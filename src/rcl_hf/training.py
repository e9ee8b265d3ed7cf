"""The fine-tuning job behind ``scripts/train.py`` (and each cell of the experiment grid).

``run_training(model_args, data_args, risk_args, training_args)`` loads a dataset
(a registered loader, a ``save_to_disk`` folder or a Hub id), builds the backbone
with the severity matrix in its config, trains with
:class:`~rcl_hf.trainer.RiskCalibratedTrainer` (or, with ``freeze_backbone``, only
the head on cached embeddings), evaluates with the CER metric each epoch, keeps
the best checkpoint by ``metric_for_best_model``, and writes to ``output_dir``:

* the model folder (safetensors, ``config.json`` with labels and severity,
  ``preprocessor_config.json``);
* ``test_results.json`` / ``all_results.json`` (Trainer metrics), ``rcl_run.json``
  (the recipe), ``test_predictions.npz`` (logits and labels);
* ``confusion_matrix_test.png`` with the critical cells outlined.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from transformers import TrainingArguments, set_seed

from .metrics import critical_error_rate, make_compute_metrics
from .plots import plot_confusion_matrix
from .severity import SeverityMatrix
from .trainer import RiskArguments, RiskCalibratedTrainer

logger = logging.getLogger(__name__)

__all__ = ["ModelArguments", "DataArguments", "run_training", "load_data", "default_training_args", "format_table"]

TABLE_KEYS = ("accuracy", "balanced_accuracy", "cer", "critical_miss_rate", "expected_cost", "n_critical")


@dataclass
class ModelArguments:
    """Which network to train."""

    backbone: str = field(
        default="resnet18",
        metadata={"help": "timm name (resnet18, efficientnet_lite0, vit_small_patch16_224, ...), hf-vit / hf-swin / "
                          "hf-convnext / hf-resnet, a checkpoint folder, or a Hub id."},
    )
    pretrained: Optional[str] = field(
        default=None, metadata={"help": "Offline ImageNet weights: 'efficientnet-lite0-package' (efficientnet_lite0 only)."}
    )
    image_size: Optional[int] = field(default=None, metadata={"help": "Input side in pixels (default: 32 synthetic, 224 otherwise)."})
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Embed once with the frozen backbone (cached) and train only the head."}
    )
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format (faster CNNs on GPU)."})
    gpu_path: bool = field(
        default=True,
        metadata={"help": "With CUDA: bf16 autocast, TF32, channels_last for CNNs, dataloader workers, pinned memory "
                          "(rcl_hf.performance). No effect on CPU."},
    )


@dataclass
class DataArguments:
    """Which data to train on."""

    dataset: str = field(
        default="synthetic",
        metadata={"help": "A registered loader (synthetic, brain_tumor_mri, isic2018, breakhis, sicapv2), a "
                          "save_to_disk folder, or a Hub dataset id."},
    )
    data_dir: Optional[str] = field(default=None, metadata={"help": "Raw dataset folder for a registered loader."})
    split_seed: int = field(default=0, metadata={"help": "Seed of derived (grouped) splits and of synthetic data."})
    val_size: float = field(default=0.15, metadata={"help": "Share of groups carved out for validation when missing."})
    test_size: Optional[float] = field(default=None, metadata={"help": "Share of groups carved out for test when missing."})
    drop_cross_split_duplicates: bool = field(default=True, metadata={"help": "Drop evaluation images byte-identical to training ones."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training split (smoke runs)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate validation and test splits."})
    cache_dir: Optional[str] = field(default=".cache/rcl_hf", metadata={"help": "Cache for resized images and embeddings."})
    cache_resized: bool = field(default=False, metadata={"help": "Cache images resized to image_size (faster later epochs)."})
    augmentation: Optional[str] = field(
        default=None,
        metadata={"help": "Training augmentation: 'crop_flip' (random resized crop 0.8-1 + h-flip), 'flip' (h/v flips "
                          "only, no resampling), 'none'. Default: 'flip' for synthetic, else 'crop_flip'."},
    )


AUGMENTATIONS = {
    "crop_flip": {},
    "flip": {"scale": (1.0, 1.0), "hflip": 0.5, "vflip": 0.5},
    "none": {"scale": (1.0, 1.0), "hflip": 0.0, "vflip": 0.0},
}


def default_training_args(output_dir: str, **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` with the settings image classification with this Trainer needs."""
    kw: Dict[str, Any] = dict(
        output_dir=output_dir,
        remove_unused_columns=False,
        label_names=["labels"],
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="expected_cost",
        greater_is_better=False,
        report_to=[],
        logging_steps=20,
    )
    kw.update(overrides)
    return TrainingArguments(**kw)


def load_data(data_args: DataArguments, seed: Optional[int] = None):
    """Return ``(DatasetDict, SeverityMatrix or None)`` from the data arguments."""
    import datasets

    from . import data as rcl_data

    name = data_args.dataset
    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_dict.json")) or os.path.exists(os.path.join(name, "dataset_info.json"))
    ):
        dsd = datasets.load_from_disk(name)
    elif name in rcl_data.available_datasets():
        kwargs: Dict[str, Any] = {"seed": data_args.split_seed if seed is None else seed}
        if name != "synthetic":
            kwargs.update(val_size=data_args.val_size, test_size=data_args.test_size,
                          drop_cross_split_duplicates=data_args.drop_cross_split_duplicates)
        dsd = rcl_data.load_dataset(name, data_args.data_dir, **kwargs)
    else:
        try:
            dsd = datasets.load_dataset(name)
        except Exception as err:  # offline / unknown id
            raise ValueError(
                f"Cannot load dataset {name!r}: not a registered loader {rcl_data.available_datasets()}, not a "
                f"save_to_disk folder, and the Hub id failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            ) from None
    if not isinstance(dsd, datasets.DatasetDict):
        raise ValueError(f"Dataset {name!r} must have splits (a DatasetDict), got {type(dsd).__name__}")
    if "train" not in dsd:
        raise ValueError(f"Dataset {name!r} has no 'train' split: {list(dsd)}")
    for split in dsd:
        if len(dsd[split]) == 0:
            raise ValueError(f"Split {split!r} of dataset {name!r} is empty")
        if "label" not in dsd[split].column_names or "image" not in dsd[split].column_names:
            raise ValueError(f"Split {split!r} needs 'image' and 'label' columns, has {dsd[split].column_names}")
    try:
        severity = rcl_data.severity_for(dsd)
    except ValueError:
        severity = None
    return dsd, severity


def _resolve_severity(risk_args: RiskArguments, dataset_severity: Optional[SeverityMatrix], labels: List[str]) -> SeverityMatrix:
    if risk_args.severity:
        sev = SeverityMatrix.resolve(risk_args.severity)
    elif dataset_severity is not None:
        sev = dataset_severity
    else:
        raise ValueError(f"No severity matrix: the dataset (labels {labels}) carries none; pass --severity PRESET_OR_JSON")
    if sev.labels != labels:
        if sorted(sev.labels) == sorted(labels):
            sev = sev.reorder(labels)
        else:
            sev.check_labels(labels, what="Dataset")
    return sev


def format_table(rows: Dict[str, Dict[str, float]], keys: Tuple[str, ...] = TABLE_KEYS) -> str:
    """A markdown table: one row per run, rates in percent."""
    head = "| run | " + " | ".join(k.replace("_", " ") + ("" if k.startswith("n_") else " %") for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]
    for name, m in rows.items():
        cells = [f"{int(m[k])}" if k.startswith("n_") else f"{100 * m[k]:.2f}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _augmentation(data_args: DataArguments) -> Dict[str, Any]:
    name = data_args.augmentation or ("flip" if data_args.dataset == "synthetic" else "crop_flip")
    if name not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {name!r}; choose one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]


def _subset(ds, n: Optional[int]):
    return ds.select(range(min(n, len(ds)))) if n else ds


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=float)
    os.replace(tmp, path)


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    risk_args: RiskArguments,
    training_args: TrainingArguments,
) -> Dict[str, Any]:
    """Train, evaluate and save one run; returns ``{"test": metrics, "validation": metrics, "output_dir": ...}``."""
    import datasets

    from .data.transforms import apply_transforms, cache_resized
    from .models import build_image_processor, build_model, ensure_label_maps_in_config_file

    t0 = time.time()
    # Image datasets with on-the-fly transforms need these two settings.
    training_args.remove_unused_columns = False
    training_args.label_names = ["labels"]
    set_seed(training_args.seed)
    dsd, dataset_severity = load_data(data_args)
    labels = dsd["train"].features["label"].names
    severity = _resolve_severity(risk_args, dataset_severity, labels)
    train_raw = _subset(dsd["train"], data_args.max_train_samples)
    eval_raw = {s: _subset(dsd[s], data_args.max_eval_samples) for s in ("validation", "test") if s in dsd}
    counts = np.bincount(np.asarray(train_raw["label"]), minlength=severity.num_labels)
    missing = [severity.labels[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        raise ValueError(f"Classes {missing} have no training sample; the loss and metrics need every class")

    image_size = model_args.image_size or (32 if data_args.dataset == "synthetic" else 224)
    set_seed(training_args.seed)
    model, data_config = build_model(model_args.backbone, severity, image_size=image_size, pretrained=model_args.pretrained)
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    from .performance import apply_gpu_path, plan_gpu_path

    training_args, model = apply_gpu_path(plan_gpu_path(model, training_args, enabled=model_args.gpu_path), training_args, model)
    processor = build_image_processor(model, data_config)
    splits = datasets.DatasetDict({"train": train_raw, **eval_raw})
    if data_args.cache_resized:
        if not data_args.cache_dir:
            raise ValueError("--cache_resized needs --cache_dir")
        splits = cache_resized(splits, image_size, os.path.join(data_args.cache_dir, "resized"))
    transformed = apply_transforms(
        splits, image_size=image_size, mean=data_config["mean"], std=data_config["std"],
        # Frozen embeddings are computed once: no random augmentation then.
        train_splits=() if model_args.freeze_backbone else ("train",),
        **_augmentation(data_args),
    )
    eval_split = "validation" if "validation" in transformed else ("test" if "test" in transformed else None)
    if eval_split is None and training_args.load_best_model_at_end:
        training_args.load_best_model_at_end = False
    if eval_split is None:
        training_args.eval_strategy = "no"

    compute_metrics = make_compute_metrics(severity)
    if model_args.freeze_backbone:
        trainer, eval_sets = _frozen_trainer(model, transformed, splits, model_args, data_args, risk_args, training_args,
                                             severity, counts, compute_metrics, image_size, data_config)
    else:
        eval_sets = transformed
        trainer = RiskCalibratedTrainer(
            model=model,
            args=training_args,
            train_dataset=transformed["train"],
            eval_dataset=transformed.get(eval_split) if eval_split else None,
            processing_class=processor,
            compute_metrics=compute_metrics,
            risk_args=risk_args,
            severity=severity,
            class_counts=counts.tolist(),
        )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    out_dir = training_args.output_dir
    results: Dict[str, Any] = {"output_dir": out_dir}
    metrics_all = {f"train_{k}" if not k.startswith("train") else k: v for k, v in train_result.metrics.items()}
    for split in ("validation", "test"):
        if split not in eval_sets:
            continue
        prefix = "eval" if split == "validation" else "test"
        pred = trainer.predict(eval_sets[split], metric_key_prefix=prefix)
        metrics_all.update(pred.metrics)
        results[split] = {k[len(prefix) + 1:]: v for k, v in pred.metrics.items()}
        if trainer.is_world_process_zero():
            logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            np.savez_compressed(os.path.join(out_dir, f"{split}_predictions.npz"), logits=logits, labels=pred.label_ids)
            full = critical_error_rate(logits.argmax(-1), pred.label_ids, severity, return_confusion=True, per_class=True)
            results[split]["per_class_recall"] = full["per_class_recall"]
            results[split]["confusion_matrix"] = full["confusion_matrix"]
            plot_confusion_matrix(full["confusion_matrix"], severity, os.path.join(out_dir, f"confusion_matrix_{split}.png"),
                                  title=f"{model_args.backbone} / {risk_args.loss} - {split}")
    if trainer.is_world_process_zero():
        if model_args.freeze_backbone:
            model.save_pretrained(out_dir)
            processor.save_pretrained(out_dir)
            ensure_label_maps_in_config_file(out_dir)
        else:
            trainer.save_model(out_dir)
        trainer.save_metrics("all", metrics_all, combined=False)
        if "test" in results:
            trainer.save_metrics("test", {f"test_{k}": v for k, v in results["test"].items()
                                          if not isinstance(v, (dict, list))}, combined=False)
        recipe = {
            "backbone": model_args.backbone, "pretrained": model_args.pretrained, "image_size": image_size,
            "freeze_backbone": model_args.freeze_backbone, "dataset": data_args.dataset, "data_dir": data_args.data_dir,
            "split_seed": data_args.split_seed, "seed": training_args.seed, "epochs": training_args.num_train_epochs,
            "learning_rate": training_args.learning_rate, "batch_size": training_args.per_device_train_batch_size,
            "world_size": training_args.world_size, "risk": asdict(risk_args), "severity": severity.to_dict(),
            "split_sizes": {s: len(d) for s, d in splits.items()}, "wall_time_s": round(time.time() - t0, 2),
            "metric_for_best_model": training_args.metric_for_best_model,
        }
        _write_json(os.path.join(out_dir, "rcl_run.json"), recipe)
        _write_json(os.path.join(out_dir, "rcl_results.json"), results)
    if training_args.push_to_hub and trainer.is_world_process_zero():
        from . import hub

        hub.push_model(out_dir, training_args.hub_model_id or os.path.basename(os.path.abspath(out_dir)),
                       token=training_args.hub_token, private=bool(training_args.hub_private_repo))
    results["wall_time_s"] = time.time() - t0
    return results


def _frozen_trainer(model, transformed, splits, model_args, data_args, risk_args, training_args, severity, counts,
                    compute_metrics, image_size, data_config):
    """Embed every split once (cached), then a Trainer over the head alone."""
    from .frozen import LinearHead, cached_embeddings, copy_head_into_model, find_classifier

    key = {"backbone": model_args.backbone, "pretrained": model_args.pretrained, "image_size": image_size,
           "mean": data_config["mean"], "std": data_config["std"], "dataset": data_args.dataset}
    emb = {s: cached_embeddings(model, transformed[s], splits[s], data_args.cache_dir, {**key, "split": s},
                                batch_size=training_args.per_device_eval_batch_size * 8)
           for s in transformed}
    classifier = find_classifier(model)
    set_seed(training_args.seed)
    head = LinearHead(classifier.in_features, severity.num_labels)

    class _HeadTrainer(RiskCalibratedTrainer):
        def train(self, *args, **kwargs):  # the full model gets the trained head
            out = super().train(*args, **kwargs)
            copy_head_into_model(self.model, model)
            return out

        def _save(self, output_dir=None, state_dict=None):  # checkpoints hold the head only
            os.makedirs(output_dir or self.args.output_dir, exist_ok=True)
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()},
                      os.path.join(output_dir or self.args.output_dir, "model.safetensors"))

    eval_split = "validation" if "validation" in emb else ("test" if "test" in emb else None)
    trainer = _HeadTrainer(
        model=head, args=training_args, train_dataset=emb["train"],
        eval_dataset=emb.get(eval_split) if eval_split else None,
        compute_metrics=compute_metrics, risk_args=risk_args, severity=severity, class_counts=counts.tolist(),
    )
    return trainer, emb
