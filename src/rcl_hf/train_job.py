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

Launching: ``python scripts/train.py ...`` or ``accelerate launch ... scripts/train.py``
(configs in ``configs/accelerate/``).  Without CUDA, a multi-process launch
(``--multi_gpu --num_processes 2`` / ``torchrun``) becomes one gloo DDP job
(``use_cpu``; :func:`multiprocess_cpu_launch`).  Evaluation metrics do not depend
on the number of processes: the Trainer gathers all predictions (padding of
uneven splits dropped) and :class:`BroadcastBuffersCallback` gives every rank the
saved model's BatchNorm statistics.  Training augmentation is seeded per
``(seed, epoch, row)`` (:class:`SeededAugmentation`), so ``--resume_from_checkpoint``
ends at the weights of an uninterrupted run.  ``--eval_only`` scores a saved
checkpoint folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from .data.splits import SUBSET_MODES, subsample
from .metrics import critical_error_rate, make_compute_metrics
from .plots import plot_confusion_matrix
from .severity import SeverityMatrix
from .trainer import RiskArguments, RiskCalibratedTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "ModelArguments",
    "DataArguments",
    "run_training",
    "load_data",
    "default_training_args",
    "format_table",
    "multiprocess_cpu_launch",
    "SeededAugmentation",
    "AugmentationEpochCallback",
    "BroadcastBuffersCallback",
]

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
                          "(rcl_hf.gpu_defaults). No effect on CPU."},
    )
    eval_only: bool = field(
        default=False,
        metadata={"help": "Skip training: evaluate the checkpoint folder given as --backbone on the validation and test "
                          "splits (on as many processes as launched) and write the results to output_dir."},
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
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Train on this many rows of the training split."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Score this many rows of validation and test."})
    subset: str = field(
        default="stratified",
        metadata={"help": "How max_train_samples / max_eval_samples pick rows: 'stratified' (a sample seeded by "
                          "split_seed, every class in proportion) or 'first' (the split's first rows; splits of "
                          "folder-per-class layouts are ordered by class, so this can leave classes out)."},
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Cache for resized images and frozen-backbone embeddings (default: $RCL_HF_CACHE or "
                          "~/.cache/rcl_hf, outside the repository); 'none' disables it."},
    )
    cache_resized: bool = field(default=False, metadata={"help": "Cache images resized to image_size (faster later epochs)."})
    augmentation: Optional[str] = field(
        default=None,
        metadata={"help": "Training augmentation: 'crop_flip' (random resized crop 0.8-1 + h-flip), 'flip' (h/v flips "
                          "only, no resampling), 'none'. Default: 'flip' for synthetic, else 'crop_flip'."},
    )

    def __post_init__(self) -> None:
        if self.subset not in SUBSET_MODES:
            raise ValueError(f"--subset must be one of {SUBSET_MODES}, got {self.subset!r}")


AUGMENTATIONS = {
    "crop_flip": {},
    "flip": {"scale": (1.0, 1.0), "hflip": 0.5, "vflip": 0.5},
    "none": {"scale": (1.0, 1.0), "hflip": 0.0, "vflip": 0.0},
}


def multiprocess_cpu_launch() -> bool:
    """True when launched as several processes (``WORLD_SIZE`` > 1) on a machine without CUDA.

    ``accelerate launch --multi_gpu --num_processes 2`` / ``torchrun`` then start real
    processes, but ``TrainingArguments`` only joins them into one gloo DDP job with
    ``use_cpu=True`` (accelerate's ``MULTI_CPU``); otherwise every process would
    train alone and all of them would write the same output folder.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


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
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if multiprocess_cpu_launch():
        kw["use_cpu"] = True
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
        try:
            dsd = datasets.load_from_disk(name)
        except (IndexError, KeyError) as err:  # datasets fails this way on a saved empty split
            empty = []
            for split in (json.load(open(os.path.join(name, "dataset_dict.json"))).get("splits", [])
                          if os.path.exists(os.path.join(name, "dataset_dict.json")) else []):
                try:
                    if len(datasets.load_from_disk(os.path.join(name, split))) == 0:
                        empty.append(split)
                except (IndexError, KeyError):
                    empty.append(split)
            if empty:
                raise ValueError(f"Split {empty[0]!r} of dataset {name!r} is empty (or unreadable)") from None
            raise ValueError(f"Cannot read the saved dataset {name!r}: {type(err).__name__}: {err}") from None
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


ROW_COLUMN = "rcl_row_index"


class SeededAugmentation:
    """Training transform whose random draws depend only on ``(seed, epoch, row)``.

    The torchvision augmentations draw from torch's global generator, so the
    augmentation a sample gets would depend on how many draws came before it: on
    the number of processes, of DataLoader workers, and -- on
    ``--resume_from_checkpoint`` -- on the Trainer restoring its RNG state only
    after the first resumed batch was prefetched.  Here every sample is
    transformed with torch's CPU generator seeded by ``SeedSequence([seed, epoch, row])``
    (its previous state is restored afterwards: the global stream is untouched), so a
    resumed or multi-process run sees exactly the augmentations of an
    uninterrupted single-process run.  ``epoch`` is set by
    :class:`AugmentationEpochCallback`.

    Args:
        transform: the batch transform (``rcl_hf.data.transforms.ImageTransform``).
        seed: base seed (``TrainingArguments.data_seed`` or ``seed``).
    """

    def __init__(self, transform: Any, seed: int) -> None:
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def __call__(self, batch: Dict[str, list]) -> Dict[str, Any]:
        rows = batch[ROW_COLUMN]
        parts = []
        # Reseed torch's CPU generator per sample and restore it afterwards (``Generator.manual_seed``:
        # ``torch.manual_seed`` also seeds every device and costs milliseconds per call).
        generator = torch.default_generator
        saved = generator.get_state()
        try:
            for j, row in enumerate(rows):
                one = {k: [v[j]] for k, v in batch.items() if k != ROW_COLUMN}
                generator.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, int(row)]).generate_state(1)[0]))
                parts.append(self.transform(one))
        finally:
            generator.set_state(saved)
        out: Dict[str, Any] = {}
        for key in parts[0] if parts else ():
            values = [p[key] for p in parts]
            out[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else [x for v in values for x in v]
        return out


class AugmentationEpochCallback(TrainerCallback):
    """Tell a :class:`SeededAugmentation` which epoch starts (``floor(state.epoch)``, also on resume)."""

    def __init__(self, augmentation: SeededAugmentation) -> None:
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmentation.epoch = int(math.floor((state.epoch or 0.0) + 1e-9))


class BroadcastBuffersCallback(TrainerCallback):
    """Under DDP, give every process the buffers of process 0 before it evaluates or saves, and at the end.

    DDP broadcasts buffers (BatchNorm running statistics) from rank 0 at the start
    of each training forward, after which every rank updates them with its own
    micro-batch: at an evaluation the ranks would hold different statistics, the
    sharded evaluation would mix models, and its metrics would not be those of the
    saved (rank-0) model.  Broadcasting them first makes distributed evaluation
    score exactly the model that is saved (tested: 2 gloo processes vs 1).
    """

    @staticmethod
    def _sync(model: Optional[torch.nn.Module]) -> None:
        import torch.distributed as dist

        if model is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate or control.should_save:
            self._sync(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate or control.should_save:
            self._sync(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._sync(model)


def _seeded_train_split(train_ds: Any, seed: int) -> Tuple[Any, SeededAugmentation]:
    """Wrap the (already transformed) training split in a :class:`SeededAugmentation`."""
    fmt = train_ds.format
    transform = (fmt.get("format_kwargs") or {}).get("transform")
    if transform is None:
        raise ValueError("The training split has no transform to seed")
    augmentation = SeededAugmentation(transform, seed)
    ds = train_ds.with_format(None).add_column(ROW_COLUMN, np.arange(len(train_ds), dtype=np.int64))
    return ds.with_transform(augmentation), augmentation


def _cache_dir(data_args: DataArguments) -> Optional[str]:
    """The cache folder: ``--cache_dir``, ``None`` for 'none', else :func:`rcl_hf.data.images.default_cache_dir`."""
    if data_args.cache_dir is None:
        from .data.images import default_cache_dir

        return str(default_cache_dir())
    if data_args.cache_dir.strip().lower() in ("", "none", "false"):
        return None
    return data_args.cache_dir


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
    """Train, evaluate and save one run; returns ``{"test": metrics, "validation": metrics, "output_dir": ...}``.

    Works unchanged under ``accelerate launch`` / ``torchrun``: the Trainer shards
    batches across processes and gathers every process's predictions (dropping the
    padding of uneven splits) before ``compute_metrics``, so evaluation metrics are
    identical in value on one or many processes.  Only the main process writes files.
    With ``model_args.eval_only`` nothing is trained: the checkpoint folder given as
    ``backbone`` is evaluated.
    """
    import datasets

    from .data.transforms import apply_transforms, cache_resized
    from .models import build_image_processor, build_model, ensure_label_maps_in_config_file

    t0 = time.time()
    if getattr(risk_args, "crossfit_weight", 0) > 0 and not model_args.freeze_backbone:
        raise ValueError("crossfit_weight needs the frozen-backbone mode (--freeze_backbone true): under full "
                         "fine-tuning its out-of-fold models would be K extra fine-tunes")
    if model_args.eval_only and model_args.freeze_backbone:
        raise ValueError("--eval_only evaluates a saved model: drop --freeze_backbone")
    if model_args.eval_only and not os.path.isdir(model_args.backbone):
        raise ValueError(f"--eval_only needs a checkpoint folder as --backbone, got {model_args.backbone!r}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise ValueError(
            f"Launched as {launched} processes but TrainingArguments see world_size={training_args.world_size}: "
            "without CUDA pass --use_cpu true (gloo DDP); scripts/train.py does this by itself"
        )
    # Image datasets with on-the-fly transforms need these two settings.
    training_args.remove_unused_columns = False
    training_args.label_names = ["labels"]
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False
    cache_dir = _cache_dir(data_args)
    set_seed(training_args.seed)
    dsd, dataset_severity = load_data(data_args)
    labels = dsd["train"].features["label"].names
    severity = _resolve_severity(risk_args, dataset_severity, labels)
    train_raw = subsample(dsd["train"], data_args.max_train_samples, data_args.subset, seed=data_args.split_seed)
    eval_raw = {s: subsample(dsd[s], data_args.max_eval_samples, data_args.subset, seed=data_args.split_seed)
                for s in ("validation", "test") if s in dsd}
    counts = np.bincount(np.asarray(train_raw["label"]), minlength=severity.num_labels)
    missing = [severity.labels[i] for i in np.flatnonzero(counts == 0)]
    if missing and not model_args.eval_only:
        raise ValueError(f"Classes {missing} have no training sample; the loss and metrics need every class")

    image_size = model_args.image_size or (32 if data_args.dataset == "synthetic" else 224)
    set_seed(training_args.seed)
    model, data_config = build_model(model_args.backbone, severity, image_size=image_size, pretrained=model_args.pretrained)
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    from .gpu_defaults import apply_gpu_path, plan_gpu_path

    training_args, model = apply_gpu_path(plan_gpu_path(model, training_args, enabled=model_args.gpu_path), training_args, model)
    processor = build_image_processor(model, data_config)
    splits = datasets.DatasetDict({"train": train_raw, **eval_raw})
    if data_args.cache_resized:
        if not cache_dir:
            raise ValueError("--cache_resized needs a cache directory (--cache_dir)")
        with training_args.main_process_first(desc="resized-image cache"):
            splits = cache_resized(splits, image_size, os.path.join(cache_dir, "resized"))
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
    callbacks: List[TrainerCallback] = [BroadcastBuffersCallback()]
    if not model_args.freeze_backbone and not model_args.eval_only:
        seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        train_split, augmentation = _seeded_train_split(transformed["train"], seed)
        transformed = datasets.DatasetDict({**transformed, "train": train_split})
        callbacks.append(AugmentationEpochCallback(augmentation))
    if model_args.freeze_backbone:
        trainer, eval_sets = _frozen_trainer(model, transformed, splits, model_args, data_args, risk_args, training_args,
                                             severity, counts, compute_metrics, image_size, data_config, cache_dir)
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
            class_counts=np.maximum(counts, 1).tolist(),
            callbacks=callbacks,
        )
    out_dir = training_args.output_dir
    os.makedirs(out_dir, exist_ok=True)
    results: Dict[str, Any] = {"output_dir": out_dir}
    metrics_all: Dict[str, Any] = {}
    if not model_args.eval_only:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
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
                                  title=f"{os.path.basename(model_args.backbone.rstrip('/'))} / {risk_args.loss} - {split}")
    if trainer.is_world_process_zero():
        if model_args.eval_only:
            pass  # the evaluated checkpoint stays where it is
        elif model_args.freeze_backbone:
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
            "freeze_backbone": model_args.freeze_backbone, "eval_only": model_args.eval_only,
            "dataset": data_args.dataset, "data_dir": data_args.data_dir,
            "split_seed": data_args.split_seed, "seed": training_args.seed, "epochs": training_args.num_train_epochs,
            "subset": data_args.subset if (data_args.max_train_samples or data_args.max_eval_samples) else None,
            "learning_rate": training_args.learning_rate, "batch_size": training_args.per_device_train_batch_size,
            "world_size": training_args.world_size, "distributed_type": str(trainer.accelerator.distributed_type.value),
            "risk": asdict(risk_args), "severity": severity.to_dict(),
            "split_sizes": {s: len(d) for s, d in splits.items()}, "wall_time_s": round(time.time() - t0, 2),
            "metric_for_best_model": training_args.metric_for_best_model,
            "greater_is_better": training_args.greater_is_better,
            "global_step": trainer.state.global_step,
            "best_checkpoint": os.path.basename(trainer.state.best_model_checkpoint or "") or None,
        }
        _write_json(os.path.join(out_dir, "rcl_run.json"), recipe)
        _write_json(os.path.join(out_dir, "rcl_results.json"), results)
    if training_args.push_to_hub and trainer.is_world_process_zero() and not model_args.eval_only:
        from . import hub

        hub.push_model(out_dir, training_args.hub_model_id or os.path.basename(os.path.abspath(out_dir)),
                       token=training_args.hub_token, private=bool(training_args.hub_private_repo))
    results["split_sizes"] = {s: len(d) for s, d in splits.items()}
    results["wall_time_s"] = time.time() - t0
    return results


def _frozen_trainer(model, transformed, splits, model_args, data_args, risk_args, training_args, severity, counts,
                    compute_metrics, image_size, data_config, cache_dir):
    """Embed every split once (cached on disk), then a Trainer over the head alone.

    Under several processes the main process embeds first and the others load its
    cache (``main_process_first``).
    """
    from .frozen import LinearHead, cached_embeddings, copy_head_into_model, find_classifier

    key = {"backbone": model_args.backbone, "pretrained": model_args.pretrained, "image_size": image_size,
           "mean": data_config["mean"], "std": data_config["std"], "dataset": data_args.dataset,
           "model_args": getattr(model.config, "model_args", None)}
    with training_args.main_process_first(desc="frozen-backbone embeddings"):
        emb = {s: cached_embeddings(model, transformed[s], splits[s], cache_dir, {**key, "split": s},
                                    batch_size=max(8, training_args.per_device_eval_batch_size))
               for s in transformed}
    if getattr(risk_args, "crossfit_weight", 0) > 0:  # cross-fitted risk weights (rcl_hf.experiments.crossfit)
        train = emb["train"].with_format("numpy")
        groups = splits["train"]["group_id"] if "group_id" in splits["train"].column_names else None
        weights = risk_args.train_sample_weights(train["embeddings"], train["labels"], groups, severity,
                                                 training_args.seed)
        emb["train"] = emb["train"].add_column("sample_weight", weights.tolist()).with_format("torch")
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
