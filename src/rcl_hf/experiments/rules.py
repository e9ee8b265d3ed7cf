"""Decision rules applied after training, and per-image quantities derived from saved logits.

With ``p = softmax(z)`` and the severity matrix ``M`` (``M[i, j]`` = cost of
deciding ``j`` when the truth is ``i``):

* **argmax**: ``ŷ = argmax_j p_j``;
* **Bayes-risk rule**: ``ŷ = argmin_j Σ_i p_i M[i, j]`` (SPEC section 1);
* **blend** with weight ``w ∈ [0, 1]``::

      ŷ_w = argmin_j [ (1 - w) · (1 - p_j) + w · Σ_i p_i M[i, j] ]

  i.e. the Bayes decision for the cost matrix ``(1 - w)·(1 - I) + w·M``, a
  mixture of the 0/1 loss (whose Bayes decision is the argmax) and the clinical
  costs. ``w = 0`` is exactly the argmax, ``w = 1`` exactly the Bayes-risk
  rule; in between, ``w`` moves the operating point along a CER–accuracy front
  with one free parameter that is tuned on validation logits (no retraining).

Ties are broken towards the lower class index (``numpy.argmin``), so the blend
at ``w = 0`` reproduces ``argmax`` bit for bit.

Also here: the top-label expected calibration error (ECE, Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017) and risk–coverage curves
(Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks",
NeurIPS 2017) where the riskiest cases, ranked by the expected clinical cost of
the decision taken, are referred to a specialist.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

from ..metrics.functional import expected_costs, softmax  # the one softmax / expected cost (re-exported)
from ..severity import SeverityMatrix

__all__ = [
    "softmax",
    "fit_temperature",
    "blend_cost_matrix",
    "blend_decision",
    "expected_costs",
    "DEFAULT_BLEND_WEIGHTS",
    "calibration_bins",
    "expected_calibration_error",
    "risk_coverage",
]

#: The blend weights tried for every trained model (0 = argmax, 1 = Bayes-risk rule).
DEFAULT_BLEND_WEIGHTS: Tuple[float, ...] = tuple(float(w) for w in np.round(np.linspace(0.0, 1.0, 21), 4))


def fit_temperature(logits: Any, labels: Any, bounds: Tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature scaling (Guo et al., ICML 2017): ``T = argmin_T NLL(softmax(z / T), y)`` on the given
    (validation) logits, by bounded scalar minimisation in ``log T`` (``scipy.optimize.minimize_scalar``)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"fit_temperature needs (N, K) logits and (N,) labels, got {z.shape} and {y.shape}")

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _matrix(severity: SeverityMatrix | np.ndarray) -> np.ndarray:
    m = severity.matrix if isinstance(severity, SeverityMatrix) else np.asarray(severity, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"severity must be a K x K matrix, got shape {m.shape}")
    return m


def blend_cost_matrix(severity: SeverityMatrix | np.ndarray, w: float) -> np.ndarray:
    """``(1 - w)·(1 - I) + w·M``: the cost matrix whose Bayes decision is the blend rule."""
    if not 0.0 <= float(w) <= 1.0:
        raise ValueError(f"blend weight w must be in [0, 1], got {w}")
    m = _matrix(severity)
    k = m.shape[0]
    return (1.0 - w) * (1.0 - np.eye(k)) + w * m


def blend_decision(probs: np.ndarray, severity: SeverityMatrix | np.ndarray, w: float) -> np.ndarray:
    """Decisions of the blend rule ``argmin_j (1-w)(1-p_j) + w Σ_i p_i M[i,j]`` (see module docstring)."""
    from ..metrics.functional import bayes_risk_decision

    p = np.asarray(probs, dtype=np.float64)
    if w == 0.0:  # exactly the argmax, whatever the rounding of 1 - p
        _matrix(severity)
        return p.argmax(1)
    m = _matrix(severity)
    if w == 1.0:
        crit = severity.critical if isinstance(severity, SeverityMatrix) else None
        return bayes_risk_decision(p, m, crit)[0]
    # the blend is the Bayes rule of the blended cost matrix; its critical cells are those of M
    crit = severity.critical if isinstance(severity, SeverityMatrix) else np.isclose(m, m.max(1, keepdims=True)) & (m > 0)
    return bayes_risk_decision(p, blend_cost_matrix(m, w), _blend_critical(blend_cost_matrix(m, w), crit))[0]


def _blend_critical(cost: np.ndarray, critical: np.ndarray) -> np.ndarray:
    """A critical mask valid for the blended matrix (its row maxima), so that SeverityMatrix accepts it;
    the mask does not enter the decision."""
    return np.isclose(cost, cost.max(1, keepdims=True)) & ~np.eye(cost.shape[0], dtype=bool)


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
