"""Clinical metrics on rcl_hf's types (definitions: docs/metrics.md): CER and companions, softmax, the
Bayes-risk decision.

The formulas (CER, critical miss rate, expected cost, accuracy, balanced accuracy, macro-F1,
bootstrap intervals) are computed by the numpy core ``critical_error_rate/clinical_scores.py``,
which the `evaluate` module in the same folder uses too, so both give the same numbers from one
implementation; this module adds :class:`~rcl_hf.severity.SeverityMatrix` validation.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.special

from ..severity import SeverityMatrix
from .critical_error_rate.clinical_scores import clinical_scores, confusion_matrix, metrics_from_confusion

__all__ = [
    "bayes_risk_decision",
    "confusion_matrix",
    "critical_error_rate",
    "expected_costs",
    "metrics_from_confusion",
    "metrics_of_decisions",
    "relative_safety_improvement",
    "softmax",
]

SeverityLike = Union[SeverityMatrix, str, Tuple[Any, Any]]


def _as_severity(severity: SeverityLike, critical_mask: Any = None) -> Tuple[np.ndarray, np.ndarray, Optional[list]]:
    """``(matrix, critical, labels)`` after :class:`SeverityMatrix`'s full validation (labels ``None`` for raw arrays)."""
    if isinstance(severity, (SeverityMatrix, str, dict)):
        sev = SeverityMatrix.resolve(severity)
        return sev.matrix, sev.critical, sev.labels
    if isinstance(severity, tuple) and critical_mask is None:
        severity, critical_mask = severity
    m = np.asarray(severity, dtype=np.float64)
    k = m.shape[0] if m.ndim == 2 else -1
    sev = SeverityMatrix([str(i) for i in range(max(k, 2))], m, critical_mask)  # validates shape and rules
    return sev.matrix, sev.critical, None


def critical_error_rate(
    predictions: Any,
    references: Any,
    severity: SeverityLike,
    critical_mask: Any = None,
    *,
    labels: Optional[Sequence[str]] = None,
    return_confusion: bool = False,
    per_class: bool = False,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> Dict[str, Any]:
    """Clinical metrics of hard predictions (computed by ``clinical_scores.clinical_scores``, the
    numpy core shared with the `evaluate` module).

    Args:
        predictions, references: 1-D integer class indices.
        severity: a :class:`SeverityMatrix`, a preset name, or a K x K cost array
            (then pass ``critical_mask``, or cells of cost 1.0 count as critical).
        labels: class names for ``per_class`` keys (default: the severity's labels).
        return_confusion: add ``confusion_matrix`` (list of lists, rows = truth).
        per_class: add ``per_class_recall`` ({label: recall}, classes absent
            from the references get ``None``).
        n_bootstrap: when > 0, add ``{metric}_ci`` = (low, high) percentile
            intervals for ``cer``, ``accuracy``, ``balanced_accuracy``,
            ``critical_miss_rate`` and ``expected_cost`` from ``n_bootstrap``
            case resamples drawn with ``seed``.

    Returns:
        dict with ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``cer``,
        ``critical_miss_rate``, ``expected_cost`` (fractions in [0, 1]) and the
        counts ``n_critical``, ``n_positive``, ``n_samples``.
    """
    matrix, critical, sev_labels = _as_severity(severity, critical_mask)
    return clinical_scores(predictions, references, matrix, critical, labels if labels is not None else sev_labels,
                           return_confusion=return_confusion, per_class=per_class, n_bootstrap=n_bootstrap,
                           confidence=confidence, seed=seed)


def metrics_of_decisions(decisions: Any, labels: Any, severity: SeverityMatrix) -> Dict[str, np.ndarray]:
    """Metrics of a stack of decision vectors ``(W, N)`` against ``labels`` ``(N,)`` in one pass
    (one confusion matrix per row by ``bincount``, then :func:`metrics_from_confusion`)."""
    d = np.atleast_2d(np.asarray(decisions, dtype=np.int64))
    y = np.asarray(labels, dtype=np.int64)
    k = severity.num_labels
    cells = y[None, :] * k + d + (np.arange(d.shape[0]) * k * k)[:, None]
    cms = np.bincount(cells.ravel(), minlength=d.shape[0] * k * k).reshape(-1, k, k)
    return metrics_from_confusion(cms, severity.matrix, severity.critical)


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """``p = softmax(z)`` in float64 along ``axis`` (``scipy.special.softmax``: max-subtracted, so
    logits of any magnitude are safe). The one softmax of rcl_hf's numpy code."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64), axis=axis)


def expected_costs(probs: Any, severity: SeverityLike, critical_mask: Any = None) -> np.ndarray:
    """``R[n, j] = Σ_i p[n, i] · M[i, j]``: the expected clinical cost of deciding class ``j`` (N, K)."""
    matrix, _, _ = _as_severity(severity, critical_mask)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != matrix.shape[0]:
        raise ValueError(f"probs must be (N, {matrix.shape[0]}), got shape {p.shape}")
    return p @ matrix


def bayes_risk_decision(probs: Any, severity: SeverityLike, critical_mask: Any = None) -> Tuple[np.ndarray, np.ndarray]:
    """Bayes-risk decision ``ŷ = argmin_j Σ_i p_i M[i, j]`` (docs/decision.md): the one
    definition in rcl_hf (inference, the comparison and the Trainer's metrics call it).

    Returns ``(decisions, risks)`` where ``risks[n]`` is the expected cost of the
    chosen decision (the quantity compared with a referral threshold τ).
    """
    expected = expected_costs(probs, severity, critical_mask)
    decisions = expected.argmin(1)  # ties go to the lower class index
    return decisions, expected[np.arange(len(expected)), decisions]


def relative_safety_improvement(cer_method, cer_reference):
    """``(CER_ref - CER_method) / CER_ref``, the relative CER reduction; NaN where the reference CER is 0.

    Scalars give a float; arrays (e.g. bootstrap replicates) are taken elementwise and give an array.
    """
    ref = np.asarray(cer_reference, dtype=np.float64)
    meth = np.asarray(cer_method, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ref > 0, (ref - meth) / np.where(ref > 0, ref, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out
