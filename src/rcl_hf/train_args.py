"""Command-line arguments of ``scripts/train.py`` besides ``RiskArguments`` and ``TrainingArguments``.

:class:`ModelArguments` (which network), :class:`DataArguments` (which data), the
augmentation presets, the ``TrainingArguments`` defaults of this Trainer, and the
first-run defaults per mode (:func:`first_run_defaults`), applied by the command line
only to flags the user did not give.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from transformers import TrainingArguments

from .data.splits import SUBSET_MODES
from .ood import DEFAULT_FALSE_ALARM_DELTA

__all__ = ["ModelArguments", "DataArguments", "AUGMENTATIONS", "multiprocess_cpu_launch", "default_training_args",
           "first_run_defaults"]


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
    ood_guard: Optional[bool] = field(
        default=None,
        metadata={"help": "Fit the out-of-distribution guard (rcl_hf.ood: Mahalanobis on embeddings, threshold set on "
                          "validation so that at most 5%% of in-domain images are flagged, with confidence 1 - "
                          "ood_guard_delta) and save ood_guard.safetensors with the model; default: on for "
                          "every registered dataset but synthetic."},
    )
    ood_guard_delta: Optional[float] = field(
        default=DEFAULT_FALSE_ALARM_DELTA,
        metadata={"help": "Guard false alarms <= 5%% with probability 1 - ood_guard_delta (None or < 45 validation "
                          "images: on average only)."},
    )
    ood_guard_samples: Optional[int] = field(
        default=500,
        metadata={"help": "Training images (a seeded sample; None: all) for the guard's class means and covariance; its "
                          "threshold uses up to 5000 validation images. A frozen-backbone run fits the guard from the "
                          "embeddings it already has."},
    )
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

    calibrate: bool = field(
        default=True,
        metadata={"help": "At the end, calibrate the decision layer on the validation split (temperature, decision "
                          "rule, certified referral threshold: rcl_hf.calibration) and save risk_calibration.json "
                          "with the model; the test split is then scored once with it."},
    )
    risk_kind: str = field(
        default="critical_miss",
        metadata={"help": "Risk to certify: 'critical_miss' (share of critical cases neither diagnosed safely nor "
                          "referred) or 'cer_accepted' (critical error rate among the cases the model decides).",
                  "choices": ["critical_miss", "cer_accepted"]},
    )
    risk_alpha: float = field(default=0.1, metadata={"help": "Certify risk <= risk_alpha ..."})
    risk_delta: float = field(default=0.1, metadata={"help": "... with probability >= 1 - risk_delta."})
    risk_conditional: Optional[str] = field(default=None, metadata={"help": "'class': per-disease certificates too."})

    def input_size(self, dataset: str) -> int:
        """The input side in pixels: ``image_size``, else 32 for the synthetic data and 224 otherwise."""
        return self.image_size or (32 if dataset == "synthetic" else 224)

    def wants_ood_guard(self, dataset: str) -> bool:
        """Whether to fit the OOD guard: ``--ood_guard`` if given, else on for the four registered medical datasets
        and for your own class folders (``imagefolder``)."""
        return self.ood_guard if self.ood_guard is not None else dataset in (
            "brain_tumor_mri", "isic2018", "breakhis", "sicapv2", "imagefolder")


@dataclass
class DataArguments:
    """Which data to train on."""

    dataset: str = field(
        default="synthetic",
        metadata={"help": "A registered loader (synthetic, brain_tumor_mri, isic2018, breakhis, sicapv2, imagefolder), "
                          "a save_to_disk folder or a Hub id."},
    )
    data_dir: Optional[str] = field(default=None, metadata={"help": "Raw dataset folder for a registered loader."})
    split_seed: int = field(default=0, metadata={"help": "Seed of derived (grouped) splits and of synthetic data."})
    val_size: float = field(default=0.15, metadata={"help": "Share of groups carved out of train for validation when the "
                                                            "dataset has none (0: none; training then needs "
                                                            "--eval_strategy no)."})
    test_size: Optional[float] = field(default=None, metadata={"help": "Share of groups carved out of train for test when "
                                                                     "the dataset has none (default 0.15)."})
    drop_cross_split_duplicates: bool = field(default=True, metadata={"help": "Drop evaluation images byte-identical to training ones."})
    perceptual_grouping: Optional[bool] = field(
        default=None,
        metadata={"help": "Group perceptual near-copies (dHash) so they never straddle splits; default: the "
                          "dataset's own (on for brain_tumor_mri, which has no patient ids)."},
    )
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
    cache_resized: bool = field(default=False, metadata={"help": "Cache images resized to image_size (faster later epochs; "
                                                                 "guard and calibration still see the originals)."})
    train_dir: Optional[str] = field(
        default=None,
        metadata={"help": "A folder of class sub-folders (<train_dir>/<class>/*.jpg) to train on, as in transformers' "
                          "run_image_classification.py (loaded with the 'imagefolder' builder); pass --severity too."},
    )
    validation_dir: Optional[str] = field(
        default=None, metadata={"help": "Class-folder validation images, beside --train_dir (else carved from it)."}
    )
    image_column_name: str = field(default="image", metadata={"help": "Name of the image column of the dataset."})
    label_column_name: str = field(default="label", metadata={"help": "Name of the label column of the dataset."})
    augmentation: Optional[str] = field(
        default=None,
        metadata={"help": "Training augmentation: 'crop_flip' (random resized crop 0.8-1 + h-flip), 'flip' (h/v flips "
                          "only, no resampling), 'none'. Default: 'flip' for synthetic, else 'crop_flip'."},
    )

    def __post_init__(self) -> None:
        if self.subset not in SUBSET_MODES:
            raise ValueError(f"--subset must be one of {SUBSET_MODES}, got {self.subset!r}")

    def resolved_cache_dir(self) -> Optional[str]:
        """The cache folder: ``cache_dir``; ``None`` (no cache) for ``'none'``, ``'false'`` or ``''``; by
        default :func:`rcl_hf.data.images.default_cache_dir` (``$RCL_HF_CACHE`` or ``~/.cache/rcl_hf``)."""
        if self.cache_dir is None:
            from .data.images import default_cache_dir

            return str(default_cache_dir())
        if self.cache_dir.strip().lower() in ("", "none", "false"):
            return None
        return self.cache_dir


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


#: Defaults of a first run, per mode (learning rate and epochs that give a usable model, measured on
#: Brain Tumor MRI: frozen EfficientNet-Lite0 head, lr 1e-3, 3 epochs: 89.4% accuracy; the old default
#: lr 5e-5 gave 67% after 1 epoch).
FIRST_RUN_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "frozen": {"learning_rate": 1e-3, "num_train_epochs": 5},
    "finetune_pretrained": {"learning_rate": 3e-4, "num_train_epochs": 5, "warmup_steps": 0.05,
                            "lr_scheduler_type": "cosine", "weight_decay": 0.05},
    "scratch": {"learning_rate": 2e-3, "num_train_epochs": 5, "warmup_steps": 0.05,
                "lr_scheduler_type": "cosine", "weight_decay": 0.05},
}
#: A real dataset with no --backbone: a pretrained EfficientNet-Lite0 (offline weights), backbone frozen.
REAL_DATA_BACKBONE: Dict[str, Any] = {"backbone": "efficientnet_lite0", "pretrained": "efficientnet-lite0-package",
                                      "freeze_backbone": True}


def first_run_defaults(model_args: "ModelArguments", data_args: "DataArguments", given: set) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(model overrides, training overrides)`` for the flags the user did not give.

    * a real dataset (anything but ``synthetic``) and no ``--backbone``: :data:`REAL_DATA_BACKBONE`
      (a randomly initialised ResNet-18 at 224 px collapses to one class in a CPU budget);
    * then by mode: frozen backbone (head on cached embeddings), fine-tuning pretrained weights
      (``--pretrained``, a checkpoint folder or a Hub id), or training from scratch
      (:data:`FIRST_RUN_DEFAULTS`).

    Only keys missing from ``given`` (the flags and config keys the user set) are returned.
    """
    model: Dict[str, Any] = {}
    if "backbone" not in given and data_args.dataset != "synthetic":
        model = {k: v for k, v in REAL_DATA_BACKBONE.items() if k not in given}
    frozen = model.get("freeze_backbone", model_args.freeze_backbone)
    backbone = model.get("backbone", model_args.backbone)
    pretrained = model.get("pretrained", model_args.pretrained) or os.path.isdir(backbone) or "/" in backbone
    mode = "frozen" if frozen else ("finetune_pretrained" if pretrained else "scratch")
    training = {k: v for k, v in FIRST_RUN_DEFAULTS[mode].items() if k not in given}
    return model, training
