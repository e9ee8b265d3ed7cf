"""The decision layer's rules: how probabilities become a decision (one definition in rcl_hf).

With ``p = softmax(z / T)`` (temperature ``T``, Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017) and the severity matrix ``M`` (``M[i, j]`` = cost of deciding ``j`` when
the truth is ``i``):

* **argmax**: ``ŷ = argmax_j p_j``;
* **Bayes-risk rule**: ``ŷ = argmin_j Σ_i p_i M[i, j]``
  (:func:`rcl_hf.metrics.functional.bayes_risk_decision`);
* **blend** with weight ``w ∈ [0, 1]``::

      ŷ_w = argmin_j [ (1 - w) · (1 - p_j) + w · Σ_i p_i M[i, j] ]

  i.e. the Bayes decision for the cost matrix ``(1 - w)·(1 - I) + w·M``, a mixture of the
  0/1 loss (whose Bayes decision is the argmax) and the clinical costs. ``w = 0`` is exactly
  the argmax, ``w = 1`` exactly the Bayes-risk rule; in between, ``w`` moves the operating
  point along a CER–accuracy front with one free parameter, tuned on validation logits.

Ties are broken towards the lower class index (``numpy.argmin``), so the blend at ``w = 0``
reproduces ``argmax`` bit for bit.  The referral score of a decision is its expected
clinical cost ``r = Σ_i p_i M[i, ŷ]`` (:func:`decision_scores`); the referral threshold on
it is certified by :mod:`rcl_hf.calibration`.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .metrics.functional import bayes_risk_decision
from .severity import SeverityMatrix

__all__ = ["fit_temperature", "fit_vector_scaling", "blend_cost_matrix", "blend_decision", "decision_scores",
           "DEFAULT_BLEND_WEIGHTS"]

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


def fit_vector_scaling(logits: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Vector scaling (Guo et al., ICML 2017, §4.2: a per-class scale ``a`` and bias ``b``) on the
    log-probabilities ``ℓ = log softmax(z)``: ``p' = softmax(a ⊙ ℓ + b)``, ``(a, b) = argmin NLL`` on the given
    (calibration) cases by L-BFGS (``scipy.optimize.minimize``, analytic gradient). On log-probabilities
    rather than logits so that it can be applied wherever only probabilities are kept (``rcl_hf.predict``)."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"fit_vector_scaling needs (N, K) logits and (N,) labels, got {z.shape} and {y.shape}")
    ell = log_softmax(z, axis=1)
    n, k = ell.shape
    onehot = np.eye(k)[y]

    def nll(theta: np.ndarray):
        a, b = theta[:k], theta[k:]
        lp = log_softmax(ell * a + b, axis=1)
        g = (np.exp(lp) - onehot) / n  # d NLL / d (a ⊙ ℓ + b)
        return float(-lp[np.arange(n), y].mean()), np.concatenate([(g * ell).sum(0), g.sum(0)])

    res = minimize(nll, np.concatenate([np.ones(k), np.zeros(k)]), jac=True, method="L-BFGS-B")
    return res.x[:k].copy(), res.x[k:].copy()


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


def decision_scores(probs: Any, decisions: Any, severity: SeverityMatrix | np.ndarray) -> np.ndarray:
    """``r_n = Σ_i p[n, i] · M[i, ŷ_n]``: the expected clinical cost of each decision taken (the referral score)."""
    p = np.asarray(probs, dtype=np.float64)
    d = np.asarray(decisions).astype(np.int64)
    m = _matrix(severity)
    if p.ndim != 2 or p.shape[1] != m.shape[0] or d.shape != (p.shape[0],):
        raise ValueError(f"decision_scores needs (N, {m.shape[0]}) probabilities and (N,) decisions, got {p.shape} and {d.shape}")
    return (p @ m)[np.arange(len(d)), d]
