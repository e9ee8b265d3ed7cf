"""Calibrating a model folder: from a finished training run, or from any image classifier and a dataset split.

* :func:`calibrate_run` — the end of ``scripts/train.py``: reads the run's saved validation logits
  (``validation_predictions.npz``), writes ``risk_calibration.json`` beside the weights and scores the
  certified pipeline once on the saved test logits. The test split is read *after* the calibration
  is written and never enters it. When the npz holds a ``groups`` array (the split's ``group_id``,
  saved by runs of a dataset that has one) the certificate is group-level; an npz written before
  that, without groups, gives the image-level certificate (``unit`` in the record says which).
* :func:`calibrate_folder` — ``rcl-calibrate``: embeds a dataset split with the model's own
  preprocessing (:func:`rcl_hf.inference.forward_logits`) and calibrates on it; works for a model
  trained with rcl_hf, with a plain ``transformers.Trainer`` (no severity in its config: pass a
  severity, matched to the model's labels by name) or a timm model saved in the Hugging Face format.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..severity import SeverityMatrix
from .fit import calibrate, evaluate_calibration
from .record import RiskCalibration

logger = logging.getLogger(__name__)

__all__ = ["calibrate_run", "calibrate_folder"]


def _load_predictions(path: str):
    """``(logits, labels, groups or None)`` of a saved ``*_predictions.npz``."""
    with np.load(path) as z:
        groups = [str(g) for g in z["groups"]] if "groups" in z.files else None
        return np.asarray(z["logits"], dtype=np.float64), np.asarray(z["labels"]).astype(np.int64), groups


def calibrate_run(out_dir: str, severity: SeverityMatrix, *, risk_kind: str, alpha: float, delta: float,
                  groups: Optional[Sequence[Any]] = None, train_groups: Optional[Sequence[Any]] = None,
                  dataset: Optional[str] = None, seed: int = 0, conditional: Optional[str] = None,
                  predictions: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None) -> Dict[str, Any]:
    """Calibrate a finished run on its validation logits; returns ``{"calibration": ..., "test": ...}``
    (``test``: what the certified pipeline does on the test split, and the argmax beside it).
    ``groups``: the validation cases' group ids; ``None`` reads them from the npz when it has them.
    ``predictions``: ``{"validation": (logits, labels), "test": ...}`` to use instead of the saved npz files (a
    run trained on the resized-image cache passes those of the original images, as ``predict`` sees them)."""
    predictions = predictions or {}
    z_val, y_val, saved_groups = _load_predictions(os.path.join(out_dir, "validation_predictions.npz"))
    if "validation" in predictions:
        z_val, y_val = (np.asarray(a) for a in predictions["validation"])
    if groups is None:
        groups = saved_groups
    cal = calibrate(z_val, y_val, severity, risk_kind=risk_kind, alpha=alpha, delta=delta, groups=groups,
                    train_groups=train_groups, dataset=dataset, split="validation", seed=seed, conditional=conditional)
    cal.save(out_dir)
    out: Dict[str, Any] = {"calibration": cal.to_dict()}
    test_path = os.path.join(out_dir, "test_predictions.npz")
    if "test" in predictions or os.path.isfile(test_path):
        z_test, y_test = (np.asarray(a) for a in predictions["test"]) if "test" in predictions else _load_predictions(test_path)[:2]
        out["test"] = evaluate_calibration(cal, z_test, y_test, severity)
        argmax = replace(cal, temperature=1.0, class_scale=None, class_bias=None, blend_weight=0.0, threshold=1.0)
        out["test_argmax"] = evaluate_calibration(argmax, z_test, y_test, severity)
        out["test"]["guarantee_held"] = bool(out["test"][risk_kind] <= alpha)
    return out


def calibrate_folder(model_dir: str, split: Any, *, severity: Any = None, out_dir: Optional[str] = None,
                     risk_kind: str = "critical_miss", alpha: float = 0.1, delta: float = 0.1, method: str = "ltt",
                     conditional: Optional[str] = None,
                     train_groups: Optional[Sequence[Any]] = None, dataset: Optional[str] = None,
                     split_name: str = "validation", batch_size: int = 32, label_column: str = "label",
                     image_column: str = "image", seed: int = 0) -> RiskCalibration:
    """Calibrate the model in ``model_dir`` on a labelled dataset split and write ``risk_calibration.json``
    (into ``out_dir``, a copy of the model folder, when given). The split's label names must be the model's."""
    import shutil

    from ..inference import forward_logits, load_model

    model = load_model(model_dir, severity=severity)
    sev = model.severity
    names = split.features[label_column].names if hasattr(split, "features") and hasattr(split.features[label_column], "names") else None
    if names is not None and list(names) != list(sev.labels):
        if sorted(names) != sorted(sev.labels):
            raise ValueError(f"the dataset's labels {list(names)} are not the model's {list(sev.labels)}")
        remap = np.asarray([list(sev.labels).index(n) for n in names])
    else:
        remap = None
    labels = np.asarray(split[label_column]).astype(np.int64)
    if remap is not None:
        labels = remap[labels]
    groups = split["group_id"] if hasattr(split, "column_names") and "group_id" in split.column_names else None
    logger.info("embedding %d %s images with the model's preprocessing", len(labels), split_name)
    logits, _ = forward_logits(model, split[image_column], batch_size=batch_size)
    cal = calibrate(logits, labels, sev, risk_kind=risk_kind, alpha=alpha, delta=delta, conditional=conditional,
                    method=method, groups=groups, train_groups=train_groups, dataset=dataset, split=split_name, seed=seed)
    target = out_dir or model_dir
    if out_dir and os.path.abspath(out_dir) != os.path.abspath(model_dir):
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    cal.save(target)
    return cal
