"""Out-of-distribution guard: does an input resemble the model's training data?

Method (Lee et al. 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS): on the
penultimate-layer embedding ``z`` (the input of the classifier's last
``nn.Linear``, :func:`rcl_hf.frozen.find_classifier`), fit class-conditional
Gaussians with one shared covariance on the TRAINING images,

    score(z) = min_k (z - μ_k)^T Σ^{-1} (z - μ_k),

with ``Σ`` estimated by Ledoit–Wolf shrinkage (``sklearn.covariance.LedoitWolf``;
embeddings are often wider than the number of images). The threshold ``τ_ood`` is the
``k``-th smallest score of ``n`` held-out calibration (VALIDATION) images, ``k`` chosen by one of two
conformal rules (Vovk et al. 2005; Angelopoulos & Bates 2021, "A Gentle Introduction to Conformal
Prediction"), for a target false-alarm rate ``ε`` (``false_alarm_rate``, default 5%):

* with a confidence ``1 − δ`` (``delta``, default 0.1; the default rule): the false-alarm rate of the
  fitted threshold, ``FA = P(new in-distribution score > τ_ood | calibration set)``, is itself at most
  ``ε`` with probability at least ``1 − δ`` over the draw of the calibration set (training-conditional
  validity, Vovk 2012, "Conditional validity of inductive conformal predictors", ACML). For continuous
  scores ``FA ~ Beta(n + 1 − k, k)``, so ``k`` is the smallest with ``P(Beta(n + 1 − k, k) > ε) ≤ δ``;
  ties only lower ``FA``. A guard on a finite test split then stays at or under ``ε`` in most draws
  instead of scattering around it.
* ``delta=None``: split-conformal, ``k = ⌈(n + 1)(1 − ε)⌉``: ``FA ≤ ε`` on average over
  calibration draws only (a given guard is above ``ε`` about half the time when ``n`` is large).

An input is *outside what the model was trained on* when ``score > τ_ood``.

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

from .atomic_io import atomic_write_bytes

__all__ = ["OODGuard", "OOD_GUARD_FILE", "DEFAULT_FALSE_ALARM_RATE", "DEFAULT_FALSE_ALARM_DELTA", "fit_guard_from_embeddings",
           "conformal_threshold", "min_calibration_size"]

OOD_GUARD_FILE = "ood_guard.safetensors"
DEFAULT_FALSE_ALARM_RATE = 0.05
#: ``δ`` of the default rule: the guard's false-alarm rate is at most ``ε`` with 90% confidence.
DEFAULT_FALSE_ALARM_DELTA = 0.1
_METHOD = "mahalanobis_tied_ledoit_wolf"


@dataclass
class OODGuard:
    """Class-conditional Gaussian (shared covariance) on penultimate embeddings, with a fitted threshold."""

    means: np.ndarray  # (K, D) class means of the training embeddings
    precision: np.ndarray  # (D, D) inverse of the shared (shrunk) covariance
    threshold: float  # flag when score > threshold
    false_alarm_rate: float  # share of validation images above the threshold (target)
    meta: Dict[str, Any]
    delta: Optional[float] = None  # FA <= false_alarm_rate with probability 1 - delta; None: on average (split-conformal)

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

    def guarantee(self) -> str:
        """One sentence that says what the guard guarantees: the one wording of it, for cards, CLIs, checks and
        the Space (:meth:`rcl_hf.DecisionLayer.guarantees`)."""
        n = self.meta.get("n_calibration") if isinstance(self.meta, dict) else None
        images = f" {n:,} validation images" if isinstance(n, int) and not isinstance(n, bool) else " the validation images"
        rule = ("on average over calibration draws (split-conformal)" if self.delta is None else
                f"with {1 - self.delta:.0%} confidence over the draw of{images} (training-conditional conformal)")
        return (f"At most {self.false_alarm_rate:.0%} of images like the training images are flagged as outside what "
                f"the model knows, {rule}; a flagged image gets no diagnosis and is referred.")

    def save(self, folder: Union[str, os.PathLike]) -> Path:
        """Write ``ood_guard.safetensors`` into ``folder``; returns its path."""
        from safetensors.numpy import save

        path = Path(folder) / OOD_GUARD_FILE
        meta = {"threshold": repr(float(self.threshold)), "false_alarm_rate": repr(float(self.false_alarm_rate)),
                "method": _METHOD, "meta": json.dumps(self.meta)}
        if self.delta is not None:
            meta["delta"] = repr(float(self.delta))
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
                   false_alarm_rate=float(meta["false_alarm_rate"]), meta=json.loads(meta.get("meta", "{}")),
                   delta=float(meta["delta"]) if "delta" in meta else None)


def min_calibration_size(false_alarm_rate: float, delta: Optional[float] = None) -> int:
    """The fewest calibration scores for which :func:`conformal_threshold` can place a threshold: ``⌈1/ε⌉ − 1``
    split-conformal, ``⌈log δ / log(1 − ε)⌉`` with confidence ``1 − δ`` (then even the largest score is above
    ``ε`` of the distribution with probability ``(1 − ε)^n``)."""
    if delta is None:
        return int(np.ceil(1.0 / false_alarm_rate)) - 1
    return int(np.ceil(np.log(delta) / np.log1p(-false_alarm_rate) - 1e-9))


def conformal_threshold(scores: np.ndarray, false_alarm_rate: float, delta: Optional[float] = None) -> float:
    """The ``k``-th smallest of ``n`` calibration scores, ``k`` by the module's rule: with ``delta``, the smallest
    ``k`` with ``P(Beta(n + 1 − k, k) > ε) ≤ δ`` (the fitted threshold's false-alarm rate exceeds ``ε`` with
    probability at most ``δ``); with ``delta=None``, ``k = ⌈(n + 1)(1 − ε)⌉`` (at most ``ε`` on average).
    ``ValueError`` when ``n`` is below :func:`min_calibration_size`."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n < min_calibration_size(false_alarm_rate, delta):
        conf = "" if delta is None else f" with {1 - delta:.0%} confidence"
        raise ValueError(f"{n} calibration scores cannot certify a false-alarm rate of {false_alarm_rate:g}{conf} "
                         f"(need at least {min_calibration_size(false_alarm_rate, delta)})")
    if delta is None:
        k = int(np.ceil((n + 1) * (1.0 - false_alarm_rate)))
    else:
        from scipy.stats import beta

        ks = np.arange(1, n + 1)
        k = int(ks[np.argmax(beta.sf(false_alarm_rate, n + 1 - ks, ks) <= delta)])  # the tail falls with k
    return float(s[k - 1])


def fit_guard_from_embeddings(
    train_embeddings: np.ndarray,
    train_labels: Sequence[int],
    validation_embeddings: np.ndarray,
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    delta: Optional[float] = DEFAULT_FALSE_ALARM_DELTA,
    labels: Optional[Sequence[str]] = None,
) -> OODGuard:
    """The guard from penultimate embeddings: class means + Ledoit–Wolf shared covariance on the training
    embeddings, threshold by the conformal rule on the validation scores (:func:`conformal_threshold`: false
    alarms at most ``false_alarm_rate`` with confidence ``1 − delta``; ``delta=None``: on average).

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
    min_n = min_calibration_size(false_alarm_rate, delta)
    if len(z_val) < min_n:
        conf = "" if delta is None else f" with {1 - delta:.0%} confidence"
        raise ValueError(f"{len(z_val)} calibration images cannot place a {false_alarm_rate:.0%} false-alarm threshold"
                         f"{conf} (the conformal rule needs at least {min_n})")
    present = np.unique(y)
    means = np.stack([z_train[y == c].mean(0) for c in present])
    lw = LedoitWolf(assume_centered=True).fit(z_train - means[np.searchsorted(present, y)])
    guard = OODGuard(means=means, precision=lw.precision_, threshold=0.0, false_alarm_rate=false_alarm_rate, meta={},
                     delta=delta)
    val_scores = guard.score(z_val)
    guard.threshold = conformal_threshold(val_scores, false_alarm_rate, delta)
    guard.meta = {
        "classes": [labels[int(c)] if labels else int(c) for c in present], "n_fit": int(len(z_train)),
        "n_calibration": int(len(z_val)), "shrinkage": float(lw.shrinkage_),
        "validation_flagged": float((val_scores > guard.threshold).mean()), "embedding_dim": int(z_train.shape[1]),
        "reference": "Lee et al. 2018, Mahalanobis distance on penultimate features; "
                     + ("split-conformal threshold" if delta is None else
                        f"training-conditional conformal threshold (Vovk 2012), {1 - delta:.0%} confidence"),
    }
    return guard
