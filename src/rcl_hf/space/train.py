"""Train the Space's model pair on a real dataset folder in minutes on a CPU.

A frozen ImageNet EfficientNet-Lite0 backbone (the package's offline weights)
embeds the images once (the embedding cache is shared by both runs); a cross-entropy
head and a risk-calibrated (RCL) head are trained on the cached embeddings
(``run_training`` with ``freeze_backbone``, lr 1e-3), and each run fits its OOD guard
from those same embeddings (:func:`rcl_hf.ood_fit.fit_ood_guard_on_embeddings`: no image
is embedded twice, and both heads get the same guard: it reads the frozen backbone's
embeddings, not the head) and writes its default ``risk_calibration.json``. Then each
model is calibrated at every target risk the Space offers
(:func:`rcl_hf.space.certified.save_alpha_calibrations`, from the run's validation logits,
grouped by the dataset's group ids when it has them).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

from ..run_files import RUN_FILE

__all__ = ["train_space_pair", "SPACE_LOSSES"]

#: Name of the run folder -> loss.
SPACE_LOSSES = {"ce": "ce", "rcl": "rcl"}


def train_space_pair(
    dataset: str,
    data_dir: Optional[str],
    out_dir: str,
    *,
    max_train_samples: Optional[int] = 600,
    max_eval_samples: Optional[int] = 200,
    epochs: float = 5,
    learning_rate: float = 1e-3,
    image_size: int = 224,
    seed: int = 0,
    alphas: Optional[Sequence[float]] = None,
) -> Dict[str, str]:
    """Train ``{"ce": folder, "rcl": folder}`` under ``out_dir`` with their OOD guards and per-α calibrations.

    Folders that already hold a model, its guard and its calibrations are reused (delete them to retrain).
    """
    from transformers import AutoConfig

    from ..models import severity_from_config
    from ..ood import OOD_GUARD_FILE
    from ..train_data import load_data, run_splits
    from ..train_job import DataArguments, ModelArguments, default_training_args, run_training
    from ..trainer import RiskArguments
    from .certified import CALIBRATIONS_DIR, SPACE_ALPHAS, save_alpha_calibrations

    alphas = tuple(SPACE_ALPHAS if alphas is None else alphas)
    data_args = DataArguments(dataset=dataset, data_dir=data_dir, max_train_samples=max_train_samples,
                              max_eval_samples=max_eval_samples, split_seed=seed)
    model_args = ModelArguments(backbone="efficientnet_lite0", pretrained="efficientnet-lite0-package",
                                image_size=image_size, freeze_backbone=True, ood_guard=True,
                                ood_guard_samples=max_train_samples)
    out = {name: os.path.join(out_dir, name) for name in SPACE_LOSSES}

    def done(folder: str) -> bool:
        return all(os.path.exists(os.path.join(folder, f)) for f in ("config.json", OOD_GUARD_FILE, CALIBRATIONS_DIR))

    todo = [name for name in SPACE_LOSSES if not done(out[name])]
    if not todo:
        return out
    for name in todo:
        if not os.path.isfile(os.path.join(out[name], OOD_GUARD_FILE)):
            training_args = default_training_args(
                out[name], num_train_epochs=epochs, learning_rate=learning_rate, per_device_train_batch_size=64,
                per_device_eval_batch_size=64, seed=seed, save_strategy="no", load_best_model_at_end=False,
                eval_strategy="no", disable_tqdm=True, logging_strategy="no",
            )
            run_training(model_args, data_args, RiskArguments(loss=SPACE_LOSSES[name]), training_args)
    splits = run_splits(load_data(data_args)[0], data_args)
    grouped = all("group_id" in splits[s].column_names for s in ("train", "validation"))
    for name in todo:
        severity = severity_from_config(AutoConfig.from_pretrained(out[name]))
        save_alpha_calibrations(out[name], severity, alphas, delta=model_args.risk_delta, risk_kind=model_args.risk_kind,
                                groups=splits["validation"]["group_id"] if grouped else None,
                                train_groups=splits["train"]["group_id"] if grouped else None,
                                dataset=_dataset_name(out[name]), seed=seed)
    return out


def _dataset_name(folder: str) -> Optional[str]:
    import json

    try:
        with open(os.path.join(folder, RUN_FILE), encoding="utf-8") as f:
            return json.load(f).get("dataset_name")
    except (OSError, ValueError):
        return None
