"""One trained run as the comparison sees it: identity, severity and the saved logits of validation and test.

A run folder written by :func:`rcl_hf.train_job.run_training` holds ``rcl_run.json`` (the recipe, with the
severity matrix) and ``validation_predictions.npz`` / ``test_predictions.npz`` (``logits``, ``labels``);
:func:`load_run_folder` reads them back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from rcl_hf.metrics.functional import softmax
from rcl_hf.run_files import RUN_FILE, predictions_file
from rcl_hf.severity import SeverityMatrix

__all__ = ["Run", "family_name", "load_run_folder", "SPLITS", "POINT_METRICS"]

SPLITS = ("val", "test")
POINT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "cer", "critical_miss_rate", "expected_cost", "n_critical")


@dataclass
class Run:
    """One finished training run: identity, severity and the saved logits of both evaluation splits."""

    dataset: str
    backbone: str
    method: str
    point: str
    seed: int
    severity: SeverityMatrix
    logits: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray]
    loss: str = ""
    wall_time_s: float = float("nan")
    params: Dict[str, Any] = field(default_factory=dict)
    split_seed: Optional[int] = None

    def probs(self, split: str) -> np.ndarray:
        return softmax(self.logits[split])


def family_name(method: str, rule: str) -> str:
    """``m`` (argmax), ``m + Bayes`` or ``m + blend``."""
    return {"argmax": method, "bayes": f"{method} + Bayes", "blend": f"{method} + blend"}[rule]



def load_run_folder(run_dir: str, dataset: str, backbone: str, method: str, point: str, seed: int,
                    loss: Optional[str] = None, wall_time_s: Optional[float] = None,
                    params: Optional[Dict[str, Any]] = None, split_seed: Optional[int] = None) -> Run:
    """Read a finished run folder (``rcl_run.json`` and both predictions files) into a :class:`Run`.

    ``loss`` / ``params`` / ``wall_time_s`` default to the recipe's. Raises ``ValueError`` naming the
    missing file when the run has no validation or test predictions.
    """
    recipe_path = os.path.join(run_dir, RUN_FILE)
    if not os.path.exists(recipe_path):
        raise ValueError(f"{run_dir} has no {RUN_FILE}: not a finished rcl_hf run folder")
    with open(recipe_path, encoding="utf-8") as fh:
        recipe = json.load(fh)
    logits, labels = {}, {}
    for split, fname in (("val", predictions_file("validation")), ("test", predictions_file("test"))):
        path = os.path.join(run_dir, fname)
        if not os.path.exists(path):
            raise ValueError(f"{run_dir} has no {fname}: the comparison needs validation and test splits")
        with np.load(path) as z:
            logits[split] = np.asarray(z["logits"], dtype=np.float64)
            labels[split] = np.asarray(z["labels"]).astype(np.int64)
    risk = recipe.get("risk", {})
    return Run(dataset, backbone, method, point, seed, SeverityMatrix.from_dict(recipe["severity"]), logits, labels,
               loss=risk.get("loss", "") if loss is None else loss,
               wall_time_s=float(recipe.get("wall_time_s", float("nan")) if wall_time_s is None else wall_time_s),
               params=dict(risk) if params is None else dict(params), split_seed=split_seed)
