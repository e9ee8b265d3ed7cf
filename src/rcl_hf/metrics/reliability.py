"""Per-image quantities derived from saved logits, for the study's reports.

The decision rules themselves (argmax, Bayes, blend, temperature) live in
:mod:`rcl_hf.decision`, the one definition the library and the study share.

Here: the top-label expected calibration error (ECE, Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017) and risk–coverage curves
(Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks",
NeurIPS 2017) where the riskiest cases, ranked by the expected clinical cost of
the decision taken, are referred to a specialist.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from .functional import expected_costs
from ..severity import SeverityMatrix

__all__ = [
    "calibration_bins",
    "check_probabilities",
    "expected_calibration_error",
    "risk_coverage",
]


def check_probabilities(probs: Any, labels: Any, atol: float = 1e-6) -> tuple:
    """``(probs, labels)`` as float64 ``(N, K)`` and int64 ``(N,)`` arrays, or a ``ValueError`` that says what is wrong.

    Rules: ``N >= 1`` rows of ``K >= 2`` finite probabilities in [0, 1] that sum to 1 (within ``atol``: pass
    probabilities, not logits), and one integer class index in [0, K) per row.
    """
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("probabilities must be an (N, K) array of numbers (rows of equal length)") from None
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be a non-empty (N, K) array with K >= 2 classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1] (logits? apply a softmax first)")
    if not np.allclose(p.sum(1), 1.0, atol=atol):
        raise ValueError("each row of probabilities must sum to 1 (logits or unnormalised scores? apply a softmax first)")
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must be 1-D with one class index per row of probabilities ({p.shape[0]}), "
                         f"got shape {y.shape}")
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                                      and np.all(np.isfinite(y)) and np.all(y % 1 == 0))):
        raise ValueError(f"labels must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels hold a class index outside [0, {p.shape[1] - 1}]")
    return p, y.astype(np.int64)


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> Dict[str, np.ndarray]:
    """Per-image top-label confidence, correctness and equal-width bin index (for ECE and reliability plots)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    # bins (i/n, (i+1)/n]; a confidence of exactly 0 cannot occur for a top-label probability >= 1/K
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return {"confidence": conf, "correct": correct, "bin": b}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE ``Σ_b (|B_b| / N) · |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins."""
    c = calibration_bins(probs, labels, n_bins)
    n = len(c["bin"])
    if n == 0:
        raise ValueError("expected_calibration_error needs at least one case")
    gap = np.bincount(c["bin"], weights=c["confidence"] - c["correct"], minlength=n_bins)
    return float(np.abs(gap).sum() / n)


def risk_coverage(
    probs: np.ndarray,
    labels: np.ndarray,
    decisions: np.ndarray,
    severity: SeverityMatrix,
    coverages: Sequence[float] = (0.9, 0.95),
) -> Dict[str, Any]:
    """Risk–coverage curve: refer the cases whose decision carries the highest expected cost.

    Each case's risk is ``r_n = Σ_i p_i M[i, ŷ_n]`` for the decision ``ŷ_n`` taken.
    Cases are kept in increasing order of ``r_n`` (stable sort, ties by index);
    at coverage ``c`` the first ``ceil(c·N)`` are decided by the model and the
    rest referred. The selective CER at ``c`` is the share of critical errors
    among the kept cases.

    Returns ``{"coverage": (N,), "cer": (N,), "cer_at": {c: CER at coverage c}}``
    where ``coverage[k] = (k+1)/N`` and ``cer[k]`` is the CER of the ``k+1``
    lowest-risk cases.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    d = np.asarray(decisions).astype(np.int64)
    n = len(y)
    if n == 0 or p.shape[0] != n or d.shape[0] != n:
        raise ValueError(f"probs ({p.shape[0]}), labels ({n}) and decisions ({d.shape[0]}) must be non-empty and match")
    risk = expected_costs(p, severity)[np.arange(n), d]
    order = np.argsort(risk, kind="stable")
    crit = severity.critical[y, d][order].astype(np.float64)
    kept = np.arange(1, n + 1)
    cer = np.cumsum(crit) / kept
    out: Dict[str, Any] = {"coverage": kept / n, "cer": cer, "cer_at": {}}
    for c in coverages:
        if not 0.0 < c <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {c}")
        k = int(np.ceil(c * n - 1e-9))
        out["cer_at"][float(c)] = float(cer[k - 1])
    return out
