"""Out-of-distribution guard: does an input resemble the model's training data?

Method (Lee et al. 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS): on the
penultimate-layer embedding ``z`` (the input of the classifier's last
``nn.Linear``, :func:`rcl_hf.frozen.find_classifier`), fit class-conditional
Gaussians with one shared covariance on the TRAINING images,

    score(z) = min_k (z - μ_k)^T Σ^{-1} (z - μ_k),

with ``Σ`` estimated by Ledoit–Wolf shrinkage (``sklearn.covariance.LedoitWolf``;
embeddings are often wider than the number of images). The threshold ``τ_ood`` is set by
the split-conformal rule on ``n`` held-out calibration (VALIDATION) images (Vovk et al. 2005;
Angelopoulos & Bates 2021, "A Gentle Introduction to Conformal Prediction"): the
``k = ⌈(n + 1)(1 − ε)⌉``-th smallest calibration score, so that a new in-distribution image
is flagged with probability at most ``ε`` (``false_alarm_rate``, default 5%), for any ``n``
with ``k ≤ n``. An input is *outside what the model was trained on* when ``score > τ_ood``.

The guard is stored beside the weights as ``ood_guard.safetensors`` (tensors
``means``, ``precision``; threshold and provenance in the safetensors metadata):
no pickle, loadable with the same safety as ``weights_only``. Fitting the guard of a
saved model from its dataset splits is :func:`rcl_hf.ood_fit.fit_ood_guard` (it needs
:mod:`rcl_hf.inference`, which loads this module).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from .crash_safety import atomic_write_bytes

__all__ = ["OODGuard", "OOD_GUARD_FILE", "DEFAULT_FALSE_ALARM_RATE", "fit_guard_from_embeddings", "conformal_threshold"]

OOD_GUARD_FILE = "ood_guard.safetensors"
DEFAULT_FALSE_ALARM_RATE = 0.05
_METHOD = "mahalanobis_tied_ledoit_wolf"


@dataclass
class OODGuard:
    """Class-conditional Gaussian (shared covariance) on penultimate embeddings, with a fitted threshold."""

    means: np.ndarray  # (K, D) class means of the training embeddings
    precision: np.ndarray  # (D, D) inverse of the shared (shrunk) covariance
    threshold: float  # flag when score > threshold
    false_alarm_rate: float  # share of validation images above the threshold (target)
    meta: Dict[str, Any]

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Minimum squared Mahalanobis distance to a class mean, ``(N,)``."""
        z = np.asarray(embeddings, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.means.shape[1]:
            raise ValueError(f"embeddings must be (N, {self.means.shape[1]}), got shape {z.shape}")
        means, precision = self._float64()
        d = z[:, None, :] - means[None]  # (N, K, D)
        # (d Σ⁻¹) · d through one matrix product: the three-operand einsum looped in C over N·K·D² terms (12 ms for
        # one 1280-wide embedding, ten times this) and the float64 copy of Σ⁻¹ was made again at every call
        maha = np.einsum("nkd,nkd->nk", d @ precision, d)
        return maha.min(1)

    def _float64(self):
        """``(means, precision)`` as float64, converted once per array (the guard is loaded once, scored per image)."""
        cache = self.__dict__.get("_f64")
        if cache is None or cache[0] is not self.means or cache[1] is not self.precision:
            cache = (self.means, self.precision, np.asarray(self.means, dtype=np.float64),
                     np.ascontiguousarray(self.precision, dtype=np.float64))
            self.__dict__["_f64"] = cache
        return cache[2], cache[3]

    def flag(self, embeddings: np.ndarray) -> np.ndarray:
        """``True`` where an embedding lies outside the training distribution."""
        return self.score(embeddings) > self.threshold

    def save(self, folder: Union[str, os.PathLike]) -> Path:
        """Write ``ood_guard.safetensors`` into ``folder``; returns its path."""
        from safetensors.numpy import save

        path = Path(folder) / OOD_GUARD_FILE
        meta = {"threshold": repr(float(self.threshold)), "false_alarm_rate": repr(float(self.false_alarm_rate)),
                "method": _METHOD, "meta": json.dumps(self.meta)}
        atomic_write_bytes(path, save({"means": np.ascontiguousarray(self.means, dtype=np.float32),
                                       "precision": np.ascontiguousarray(self.precision, dtype=np.float32)}, metadata=meta))
        return path

    @classmethod
    def load(cls, folder: Union[str, os.PathLike]) -> Optional["OODGuard"]:
        """The guard saved in ``folder`` (a model folder or the file itself), or ``None`` when there is none."""
        from safetensors import safe_open

        path = Path(folder)
        if path.is_dir():
            path = path / OOD_GUARD_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("method") != _METHOD:
                raise ValueError(f"{path}: unknown OOD guard method {meta.get('method')!r} (expected {_METHOD!r})")
            means, precision = f.get_tensor("means"), f.get_tensor("precision")
        return cls(means=means, precision=precision, threshold=float(meta["threshold"]),
                   false_alarm_rate=float(meta["false_alarm_rate"]), meta=json.loads(meta.get("meta", "{}")))


def conformal_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The split-conformal threshold: the ``⌈(n + 1)(1 − ε)⌉``-th smallest of ``n`` calibration scores
    (P(new in-distribution score > threshold) ≤ ε); ``ValueError`` when ``n`` is too small for ``ε``."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(np.ceil((len(s) + 1) * (1.0 - false_alarm_rate)))
    if k > len(s):
        raise ValueError(f"{len(s)} calibration scores cannot certify a false-alarm rate of {false_alarm_rate:g} "
                         f"(need at least {int(np.ceil(1 / false_alarm_rate)) - 1})")
    return float(s[k - 1])


def fit_guard_from_embeddings(
    train_embeddings: np.ndarray,
    train_labels: Sequence[int],
    validation_embeddings: np.ndarray,
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    labels: Optional[Sequence[str]] = None,
) -> OODGuard:
    """The guard from penultimate embeddings: class means + Ledoit–Wolf shared covariance on the training
    embeddings, threshold by the split-conformal rule on the validation scores (:func:`conformal_threshold`).

    The embeddings must come from the same preprocessing as :func:`rcl_hf.inference.predict`
    (its image processor), or the threshold will not hold at inference.
    """
    from sklearn.covariance import LedoitWolf

    if not 0 < false_alarm_rate <= 0.5:
        raise ValueError(f"false_alarm_rate must be in (0, 0.5], got {false_alarm_rate}")
    z_train = np.asarray(train_embeddings, dtype=np.float64)
    y = np.asarray(train_labels, dtype=np.int64)
    z_val = np.asarray(validation_embeddings, dtype=np.float64)
    if z_train.ndim != 2 or len(z_train) != len(y) or len(z_train) < 2:
        raise ValueError(f"need (N, D) training embeddings with N labels, N >= 2; got {z_train.shape} and {y.shape}")
    if z_val.ndim != 2 or z_val.shape[1] != z_train.shape[1] or len(z_val) < 20:
        raise ValueError(f"need (M >= 20, {z_train.shape[1]}) validation embeddings, got {z_val.shape}")
    min_n = int(np.ceil(1.0 / false_alarm_rate)) - 1
    if len(z_val) < min_n:
        raise ValueError(f"{len(z_val)} calibration images cannot place a {false_alarm_rate:.0%} false-alarm threshold "
                         f"(the split-conformal rule needs at least {min_n})")
    present = np.unique(y)
    means = np.stack([z_train[y == c].mean(0) for c in present])
    lw = LedoitWolf(assume_centered=True).fit(z_train - means[np.searchsorted(present, y)])
    guard = OODGuard(means=means, precision=lw.precision_, threshold=0.0, false_alarm_rate=false_alarm_rate, meta={})
    val_scores = guard.score(z_val)
    guard.threshold = conformal_threshold(val_scores, false_alarm_rate)
    guard.meta = {
        "classes": [labels[int(c)] if labels else int(c) for c in present], "n_fit": int(len(z_train)),
        "n_calibration": int(len(z_val)), "shrinkage": float(lw.shrinkage_),
        "validation_flagged": float((val_scores > guard.threshold).mean()), "embedding_dim": int(z_train.shape[1]),
        "reference": "Lee et al. 2018, Mahalanobis distance on penultimate features; split-conformal threshold",
    }
    return guard
