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
  (the recipe), ``validation_predictions.npz`` / ``test_predictions.npz`` (logits, labels and, when the
  dataset has a ``group_id`` column, ``groups``: the lesion / patient of each row);
* ``confusion_matrix_test.png`` with the critical cells outlined.

Launching: ``python scripts/train.py ...`` or ``accelerate launch ... scripts/train.py``
(configs in ``configs/accelerate/``).  Without CUDA, a multi-process launch
(``--multi_gpu --num_processes 2`` / ``torchrun``) becomes one gloo DDP job
(``use_cpu``; :func:`multiprocess_cpu_launch`).  Evaluation metrics do not depend
on the number of processes: the Trainer gathers all predictions (padding of
uneven splits dropped) and the Trainer's :class:`BroadcastBuffersCallback` gives every rank the
saved model's BatchNorm statistics.  Training augmentation is seeded per
``(seed, epoch, row)`` (:class:`SeededAugmentation`), so ``--resume_from_checkpoint``
ends at the weights of an uninterrupted run.  ``--eval_only`` scores a saved
checkpoint folder.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from .atomic_io import atomic_write_json
from .data.metadata import dataset_metadata
from .metrics import critical_error_rate, make_compute_metrics
from .plots import plot_confusion_matrix
from .run_files import RESULTS_FILE, RUN_FILE, predictions_file
from .severity import SeverityMatrix
from .train_args import AUGMENTATIONS, DataArguments, ModelArguments, default_training_args, multiprocess_cpu_launch
from .train_data import (
    AugmentationEpochCallback,
    SeededAugmentation,
    _augmentation,
    _seeded_train_split,
    carve_missing_splits,
    load_data,
    run_splits,
)
from .trainer import RiskArguments, RiskCalibratedTrainer
from .trainer_callbacks import BroadcastBuffersCallback

logger = logging.getLogger(__name__)

__all__ = [
    "ModelArguments",
    "DataArguments",
    "run_training",
    "load_data",
    "default_training_args",
    "multiprocess_cpu_launch",
    "SeededAugmentation",
    "AugmentationEpochCallback",
    "BroadcastBuffersCallback",
    "AUGMENTATIONS",
    "carve_missing_splits",
    "collapse_warning",
    "resolve_severity",
]

def resolve_severity(risk_args: RiskArguments, dataset_severity: Optional[SeverityMatrix], labels: List[str]) -> SeverityMatrix:
    """The severity matrix of a run, in the order of the dataset's ``labels``: ``--severity`` (a preset
    name or JSON) when given, else the one the dataset carries.

    Raises:
        ValueError: neither gives one, or its labels are not the dataset's.
    """
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


def collapse_warning(predictions: Sequence[int], labels: Sequence[str], split: str = "validation") -> Optional[str]:
    """A warning when every prediction on ``split`` is one class (a collapsed, one-class predictor), else ``None``."""
    predictions = np.asarray(predictions)
    if predictions.size < 2 or len(labels) < 2 or np.unique(predictions).size > 1:
        return None
    return (f"The model predicts one class ({labels[int(predictions[0])]!r}) for all {predictions.size} {split} images: "
            "it has not learned. Train longer (--num_train_epochs), change --learning_rate, or start from a "
            "pretrained backbone (--backbone efficientnet_lite0 --pretrained efficientnet-lite0-package "
            "--freeze_backbone true).")


def _no_validation_error(name: str, splits: Sequence[str]) -> ValueError:
    return ValueError(
        f"Dataset {name!r} has no validation split (splits: {list(splits)}): evaluation during training and the "
        "best-checkpoint selection must not read the test split. Carve one (--val_size 0.15 for a registered "
        "loader or a single-split folder), give --validation_dir, or train without selection "
        "(--eval_strategy no --load_best_model_at_end false)."
    )


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
    if risk_args.requires_frozen_backbone() and not model_args.freeze_backbone:
        raise ValueError(f"these risk arguments ({type(risk_args).__name__}) need the frozen-backbone mode "
                         "(--freeze_backbone true): e.g. cross-fitted weights would need K extra fine-tunes")
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
    cache_dir = data_args.resolved_cache_dir()
    set_seed(training_args.seed)
    dsd, dataset_severity = load_data(data_args)
    labels = dsd["train"].features["label"].names
    severity = resolve_severity(risk_args, dataset_severity, labels)
    raw_splits = run_splits(dsd, data_args)
    counts = np.bincount(np.asarray(raw_splits["train"]["label"]), minlength=severity.num_labels)
    missing = [severity.labels[i] for i in np.flatnonzero(counts == 0)]
    if missing and not model_args.eval_only:
        raise ValueError(f"Classes {missing} have no training sample; the loss and metrics need every class")

    image_size = model_args.input_size(data_args.dataset)
    set_seed(training_args.seed)
    model, data_config = build_model(model_args.backbone, severity, image_size=image_size, pretrained=model_args.pretrained)
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    from .gpu_defaults import apply_gpu_path, plan_gpu_path

    training_args, model = apply_gpu_path(plan_gpu_path(model, training_args, enabled=model_args.gpu_path), training_args, model)
    processor = build_image_processor(model, data_config)
    splits = datasets.DatasetDict(raw_splits)
    if data_args.cache_resized:
        if not cache_dir:
            raise ValueError("--cache_resized needs a cache directory (--cache_dir)")
        with training_args.main_process_first(desc="resized-image cache"):
            splits = cache_resized(splits, image_size, os.path.join(cache_dir, "resized"))
    transformed = apply_transforms(
        splits, source=processor,  # the saved processor is the one definition of evaluation's preprocessing
        # Frozen embeddings are computed once: no random augmentation then.
        train_splits=() if model_args.freeze_backbone else ("train",),
        **_augmentation(data_args),
    )
    eval_split = "validation" if "validation" in transformed else None
    selects = training_args.load_best_model_at_end or str(getattr(training_args.eval_strategy, "value",
                                                                  training_args.eval_strategy)) != "no"
    if eval_split is None and selects and not model_args.eval_only:
        raise _no_validation_error(data_args.dataset, list(transformed))
    if eval_split is None:
        training_args.load_best_model_at_end = False
        training_args.eval_strategy = "no"

    compute_metrics = make_compute_metrics(severity)
    callbacks: List[TrainerCallback] = []  # the Trainer adds its own (non-finite guard, DDP buffer sync)
    if not model_args.freeze_backbone and not model_args.eval_only:
        seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        train_split, augmentation = _seeded_train_split(transformed["train"], seed)
        transformed = datasets.DatasetDict({**transformed, "train": train_split})
        callbacks.append(AugmentationEpochCallback(augmentation))
        if training_args.dataloader_num_workers > 0 and training_args.dataloader_persistent_workers:
            # A persistent worker keeps the copy of the augmentation it got at the first epoch and never sees
            # the epoch the callback sets: every epoch would repeat epoch 0's augmentations.
            logger.info("dataloader_persistent_workers off: the seeded augmentation must see each epoch")
            training_args.dataloader_persistent_workers = False
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
            np.savez_compressed(os.path.join(out_dir, predictions_file(split)), logits=logits, labels=pred.label_ids,
                                **_group_array(splits.get(split), pred.label_ids))
            full = critical_error_rate(logits.argmax(-1), pred.label_ids, severity, return_confusion=True, per_class=True)
            results[split]["per_class_recall"] = full["per_class_recall"]
            results[split]["confusion_matrix"] = full["confusion_matrix"]
            collapsed = collapse_warning(logits.argmax(-1), severity.labels, split)
            results[split]["one_class"] = collapsed is not None
            if collapsed and split == "validation":
                logger.warning(collapsed)
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
            # the loader's name when the data carry rcl_hf metadata (also for a save_to_disk folder): cards and
            # the Space push read it (a folder path names nothing; a synthetic-trained model must be recognised)
            "dataset_name": dataset_metadata(splits).get("dataset"),
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
        atomic_write_json(os.path.join(out_dir, RUN_FILE), recipe)
        if (model_args.wants_ood_guard(data_args.dataset) and not model_args.eval_only
                and "validation" in splits and len(splits["validation"]) >= 20):
            from .ood_fit import fit_ood_guard, fit_ood_guard_on_embeddings

            delta = _guard_delta(model_args.ood_guard_delta, len(splits["validation"]))
            # the guard is calibrated on images as predict() sees them: the original files, not the resized cache
            # (re-encoded at the training size; its validation scores would not be the ones inference gives)
            if model_args.freeze_backbone and not data_args.cache_resized:  # the embeddings at hand: none computed again
                train_emb, val_emb = (eval_sets[s].with_format("numpy") for s in ("train", "validation"))
                fit_ood_guard_on_embeddings(out_dir, train_emb["embeddings"], train_emb["labels"], val_emb["embeddings"],
                                            labels=severity.labels, max_samples=model_args.ood_guard_samples,
                                            seed=training_args.seed, delta=delta)
            else:
                fit_ood_guard(out_dir, raw_splits["train"], raw_splits["validation"],
                              max_samples=model_args.ood_guard_samples, seed=training_args.seed, delta=delta)
        if model_args.calibrate and not model_args.eval_only and "validation" in results:
            results["risk_control"] = _calibrate(out_dir, splits, severity, model_args, dataset_metadata(splits).get("dataset"),
                                                 training_args.seed, raw_splits if data_args.cache_resized else None)
        if not model_args.eval_only:  # what the saved decision layer certifies, in its own words
            from .decision_layer import DecisionLayer

            results["guarantees"] = DecisionLayer.from_pretrained(out_dir).guarantees()
        atomic_write_json(os.path.join(out_dir, RESULTS_FILE), results)
    if training_args.push_to_hub and trainer.is_world_process_zero() and not model_args.eval_only:
        from . import hub

        hub.push_model(out_dir, training_args.hub_model_id or os.path.basename(os.path.abspath(out_dir)),
                       token=training_args.hub_token, private=bool(training_args.hub_private_repo))
    results["split_sizes"] = {s: len(d) for s, d in splits.items()}
    results["wall_time_s"] = time.time() - t0
    return results


def _guard_delta(delta: Optional[float], n_validation: int) -> Optional[float]:
    """The OOD guard's ``delta`` for a validation split of ``n_validation`` images: ``delta`` when the confidence
    rule can place a threshold on that many, else ``None`` (split-conformal, at most 5% on average), with a warning."""
    from .ood import DEFAULT_FALSE_ALARM_RATE, min_calibration_size

    if delta is None or n_validation >= min_calibration_size(DEFAULT_FALSE_ALARM_RATE, delta):
        return delta
    logger.warning("the OOD guard's threshold holds its %.0f%% false alarms on average only (split-conformal): %d "
                   "validation images are too few for %.0f%% confidence (at least %d are needed)", 100 * DEFAULT_FALSE_ALARM_RATE,
                   n_validation, 100 * (1 - delta), min_calibration_size(DEFAULT_FALSE_ALARM_RATE, delta))
    return None


def _group_array(split: Any, label_ids: Any) -> Dict[str, np.ndarray]:
    """``{"groups": the split's group ids as strings}`` for a prediction file, in the split's row order, when
    the split has a ``group_id`` column and its labels are the predictions' labels in that order (so the rows
    line up with the logits); ``{}`` otherwise (the calibration is then image-level)."""
    if split is None or "group_id" not in split.column_names or "label" not in split.column_names:
        return {}
    if not np.array_equal(np.asarray(split["label"]), np.asarray(label_ids).reshape(-1)):
        logger.warning("prediction labels are not in the split's row order: no group ids saved beside them")
        return {}
    return {"groups": np.asarray([str(g) for g in split["group_id"]], dtype=str)}


def _calibrate(out_dir: str, splits: Any, severity: SeverityMatrix, model_args: ModelArguments,
               dataset: Optional[str], seed: int, originals: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Calibrate the saved model's decision layer on its validation logits (:func:`rcl_hf.calibration.
    model_folder.calibrate_run`); a validation split too small to certify is a warning, not a lost run.
    ``originals``: the raw splits of a run trained on the resized-image cache: the saved model's logits on the
    original validation and test images are used instead, as ``predict`` will see images."""
    from .calibration.model_folder import calibrate_run

    predictions = None
    if originals is not None:
        from .inference import forward_logits, load_model

        model = load_model(out_dir)
        predictions = {}
        for name in ("validation", "test"):
            if name in originals:
                logits, _ = forward_logits(model, originals[name]["image"])
                predictions[name] = (logits, np.asarray(originals[name]["label"]))
    grouped = all("group_id" in splits[s].column_names for s in ("train", "validation"))
    try:
        return calibrate_run(out_dir, severity, risk_kind=model_args.risk_kind, alpha=model_args.risk_alpha,
                             delta=model_args.risk_delta, dataset=dataset, seed=seed,
                             conditional=model_args.risk_conditional,
                             groups=splits["validation"]["group_id"] if grouped else None,
                             train_groups=splits["train"]["group_id"] if grouped else None, predictions=predictions)
    except ValueError as err:
        logger.warning("risk calibration skipped: %s", err)
        return {"error": str(err)}


def _frozen_trainer(model, transformed, splits, model_args, data_args, risk_args, training_args, severity, counts,
                    compute_metrics, image_size, data_config, cache_dir):
    """Embed every split once (cached on disk), then a Trainer over the head alone.

    Under several processes the main process embeds first and the others load its
    cache (``main_process_first``).
    """
    from .frozen import LinearHead, cached_embeddings, copy_head_into_model, embedding_key_parts, find_classifier

    def key(split: str) -> Dict[str, Any]:
        return embedding_key_parts(model, data_config, backbone=model_args.backbone, pretrained=model_args.pretrained,
                                   image_size=image_size, dataset=data_args.dataset, split=split)

    with training_args.main_process_first(desc="frozen-backbone embeddings"):
        emb = {s: cached_embeddings(model, transformed[s], splits[s], cache_dir, key(s),
                                    batch_size=max(8, training_args.per_device_eval_batch_size))
               for s in transformed}
    train = emb["train"].with_format("numpy")
    groups = splits["train"]["group_id"] if "group_id" in splits["train"].column_names else None
    weights = risk_args.train_sample_weights(train["embeddings"], train["labels"], groups, severity, training_args.seed)
    if weights is not None:  # e.g. cross-fitted risk weights: the Trainer reads the sample_weight column
        emb["train"] = emb["train"].add_column("sample_weight", np.asarray(weights).tolist()).with_format("torch")
    classifier = find_classifier(model)
    set_seed(training_args.seed)
    head = LinearHead(classifier.in_features, severity.num_labels)

    class _CopyHeadIntoModel(TrainerCallback):  # the full model gets the trained (best) head
        def on_train_end(self, args, state, control, model=None, **kwargs):
            copy_head_into_model(model, full_model)

    full_model = model

    eval_split = "validation" if "validation" in emb else None
    trainer = RiskCalibratedTrainer(
        model=head, args=training_args, train_dataset=emb["train"],
        eval_dataset=emb.get(eval_split) if eval_split else None,
        compute_metrics=compute_metrics, risk_args=risk_args, severity=severity, class_counts=counts.tolist(),
        callbacks=[_CopyHeadIntoModel()], sample_weight_start_epoch=risk_args.sample_weight_start_epoch,
    )
    return trainer, emb
