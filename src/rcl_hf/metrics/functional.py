"""Functional core of the clinical metrics (SPEC.md section 1).

With true classes ``y_n``, predictions ``ŷ_n``, severity ``M`` and critical mask ``C``:

* ``CER = (1/N) Σ_n C[y_n, ŷ_n]`` — Critical Error Rate (a fraction in [0, 1]);
* ``CMR = Σ_n C[y_n, ŷ_n] / #{n : C[y_n, :] has a true cell}`` — critical miss rate
  (0 when there are no positive cases; ``n_positive`` tells);
* ``EC = (1/N) Σ_n M[y_n, ŷ_n]`` — expected clinical cost;
* accuracy, balanced accuracy (mean recall over classes present in the
  references), macro-F1 (over the same classes).

Every figure comes from the K x K confusion matrix, so 1M predictions take a
single ``np.bincount``; bootstrap intervals resample the N cases through a
multinomial draw over the confusion cells, which is exactly a case resample.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..severity import SeverityMatrix

__all__ = [
    "confusion_matrix",
    "critical_error_rate",
    "metrics_from_confusion",
    "bayes_risk_decision",
    "relative_safety_improvement",
]

SeverityLike = Union[SeverityMatrix, str, Tuple[Any, Any]]


def _as_severity(severity: SeverityLike, critical_mask: Any = None) -> Tuple[np.ndarray, np.ndarray, Optional[list]]:
    if isinstance(severity, (SeverityMatrix, str, dict)):
        sev = SeverityMatrix.resolve(severity)
        return sev.matrix, sev.critical, sev.labels
    if isinstance(severity, tuple) and critical_mask is None:
        severity, critical_mask = severity
    m = np.asarray(severity, dtype=np.float64)
    k = m.shape[0] if m.ndim == 2 else -1
    labels = [str(i) for i in range(max(k, 2))]
    sev = SeverityMatrix(labels, m, critical_mask)  # validates shape and rules
    return sev.matrix, sev.critical, None


def _as_labels(values: Any, k: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of class indices, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.floating):
        if not (np.all(np.isfinite(arr)) and np.all(np.mod(arr, 1) == 0)):
            raise ValueError(f"{what} must hold integer class indices")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{what} must hold integer class indices, got dtype {arr.dtype} "
            "(class names? map them to indices with the severity's labels)"
        )
    if arr.min() < 0 or arr.max() >= k:  # checked before the cast: 1e30 must not wrap around
        bad = arr[(arr < 0) | (arr >= k)][0]
        raise ValueError(f"{what} hold class index {bad}, outside [0, {k - 1}] for {k} classes")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(predictions: Any, references: Any, num_labels: int) -> np.ndarray:
    """``cm[i, j]`` = number of cases with truth ``i`` predicted ``j``."""
    p = _as_labels(predictions, num_labels, "predictions")
    r = _as_labels(references, num_labels, "references")
    if p.shape != r.shape:
        raise ValueError(f"predictions ({p.shape[0]}) and references ({r.shape[0]}) differ in length")
    return np.bincount(r * num_labels + p, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def metrics_from_confusion(cm: np.ndarray, matrix: np.ndarray, critical: np.ndarray) -> Dict[str, np.ndarray]:
    """Metrics of one (K, K) or a stack of (B, K, K) confusion matrices."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum(axis=(-2, -1))
    safe_n = np.where(n > 0, n, 1.0)
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    row = cm.sum(-1)
    col = cm.sum(-2)
    present = row > 0
    recall = np.where(present, diag / np.where(present, row, 1.0), 0.0)
    n_present = present.sum(-1)
    precision = np.where(col > 0, diag / np.where(col > 0, col, 1.0), 0.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.where(precision + recall > 0, precision + recall, 1.0), 0.0)
    n_crit = (cm * critical).sum(axis=(-2, -1))
    n_pos = (row * critical.any(axis=1)).sum(-1)
    return {
        "accuracy": diag.sum(-1) / safe_n,
        "balanced_accuracy": np.where(n_present > 0, recall.sum(-1) / np.maximum(n_present, 1), 0.0),
        "macro_f1": np.where(n_present > 0, (f1 * present).sum(-1) / np.maximum(n_present, 1), 0.0),
        "cer": n_crit / safe_n,
        "critical_miss_rate": np.where(n_pos > 0, n_crit / np.where(n_pos > 0, n_pos, 1.0), 0.0),
        "expected_cost": (cm * matrix).sum(axis=(-2, -1)) / safe_n,
        "n_critical": n_crit,
        "n_positive": n_pos,
        "n_samples": n,
        "_recall": recall,
    }


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
    """Clinical metrics of hard predictions.

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
    k = matrix.shape[0]
    cm = confusion_matrix(predictions, references, k)
    if cm.sum() == 0:
        raise ValueError("critical_error_rate needs at least one prediction")
    m = metrics_from_confusion(cm, matrix, critical)
    out: Dict[str, Any] = {}
    for key, value in m.items():
        if key.startswith("_"):
            continue
        out[key] = int(value) if key.startswith("n_") else float(value)
    names = list(labels) if labels is not None else (sev_labels or [str(i) for i in range(k)])
    if len(names) != k:
        raise ValueError(f"{len(names)} labels given for {k} classes")
    if per_class:
        row = cm.sum(1)
        out["per_class_recall"] = {
            name: (float(m["_recall"][i]) if row[i] > 0 else None) for i, name in enumerate(names)
        }
    if return_confusion:
        out["confusion_matrix"] = cm.tolist()
        out["labels"] = names
    if n_bootstrap:
        if n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        rng = np.random.default_rng(seed)
        n = int(cm.sum())
        draws = rng.multinomial(n, cm.ravel() / n, size=n_bootstrap).reshape(n_bootstrap, k, k)
        boot = metrics_from_confusion(draws, matrix, critical)
        alpha = (1 - confidence) / 2
        for key in ("cer", "accuracy", "balanced_accuracy", "critical_miss_rate", "expected_cost"):
            lo, hi = np.quantile(boot[key], [alpha, 1 - alpha])
            out[f"{key}_ci"] = (float(lo), float(hi))
    return out


def bayes_risk_decision(probs: Any, severity: SeverityLike, critical_mask: Any = None) -> Tuple[np.ndarray, np.ndarray]:
    """Bayes-risk decision ``ŷ = argmin_j Σ_i p_i M[i, j]``.

    Returns ``(decisions, risks)`` where ``risks[n]`` is the expected cost of the
    chosen decision (the quantity compared with a referral threshold τ).
    """
    matrix, _, _ = _as_severity(severity, critical_mask)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != matrix.shape[0]:
        raise ValueError(f"probs must be (N, {matrix.shape[0]}), got shape {p.shape}")
    expected = p @ matrix  # (N, K): expected cost of deciding j
    decisions = expected.argmin(1)
    return decisions, expected[np.arange(len(p)), decisions]


def relative_safety_improvement(cer_method: float, cer_reference: float) -> float:
    """``(CER_ref - CER_method) / CER_ref``; NaN when the reference CER is 0."""
    if cer_reference == 0:
        return float("nan")
    return (cer_reference - cer_method) / cer_reference
