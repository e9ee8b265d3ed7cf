"""Train the Space's model pair on a real dataset folder in minutes on a CPU.

A frozen ImageNet EfficientNet-Lite0 backbone (the package's offline weights)
embeds the images once; a cross-entropy head and a risk-calibrated (RCL) head
are trained on the cached embeddings (``run_training`` with ``freeze_backbone``,
lr 1e-3), then the OOD guard of each is fitted (:func:`rcl_hf.ood_fit.fit_ood_guard`,
threshold on validation).
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Optional

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
    false_alarm_rate: float = 0.05,
) -> Dict[str, str]:
    """Train ``{"ce": folder, "rcl": folder}`` under ``out_dir`` and fit their OOD guards.

    Folders that already hold a model and its guard are reused (delete them to retrain).
    """
    from ..data.splits import subsample
    from ..ood import OOD_GUARD_FILE
    from ..ood_fit import fit_ood_guard
    from ..train_job import DataArguments, ModelArguments, default_training_args, load_data, run_training
    from ..trainer import RiskArguments

    data_args = DataArguments(dataset=dataset, data_dir=data_dir, max_train_samples=max_train_samples,
                              max_eval_samples=max_eval_samples, split_seed=seed)
    model_args = ModelArguments(backbone="efficientnet_lite0", pretrained="efficientnet-lite0-package",
                                image_size=image_size, freeze_backbone=True)
    out: Dict[str, str] = {}
    splits = None
    for name, loss in SPACE_LOSSES.items():
        folder = os.path.join(out_dir, name)
        out[name] = folder
        if os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder, OOD_GUARD_FILE)):
            continue
        training_args = default_training_args(
            folder, num_train_epochs=epochs, learning_rate=learning_rate, per_device_train_batch_size=64,
            per_device_eval_batch_size=64, seed=seed, save_strategy="no", load_best_model_at_end=False,
            eval_strategy="no", disable_tqdm=True, logging_strategy="no",
        )
        run_training(model_args, data_args, RiskArguments(loss=loss), training_args)
        if splits is None:
            dsd, _ = load_data(data_args)
            splits = {s: subsample(dsd[s], max_train_samples if s == "train" else max_eval_samples,
                                   data_args.subset, seed=seed) for s in ("train", "validation") if s in dsd}
        guard = next((os.path.join(f, OOD_GUARD_FILE) for f in out.values() if f != folder
                      and os.path.isfile(os.path.join(f, OOD_GUARD_FILE))), None)
        if guard:  # same frozen backbone, same images: the same embeddings, so the same guard
            shutil.copyfile(guard, os.path.join(folder, OOD_GUARD_FILE))
        else:
            fit_ood_guard(folder, splits["train"], splits["validation"], false_alarm_rate=false_alarm_rate,
                          max_samples=max_train_samples, seed=seed)
    return out
