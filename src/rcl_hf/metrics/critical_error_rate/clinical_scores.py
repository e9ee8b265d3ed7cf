"""Numpy core of the Critical Error Rate and its companions (rcl_hf's docs/metrics.md).

With true classes ``y_n``, predictions ``ŷ_n``, severity ``M`` and critical mask ``C``:

* ``CER = (1/N) Σ_n C[y_n, ŷ_n]`` — Critical Error Rate (a fraction in [0, 1]);
* ``CMR = Σ_n C[y_n, ŷ_n] / #{n : C[y_n, :] has a true cell}`` — critical miss rate
  (0 when there are no positive cases; ``n_positive`` tells);
* ``EC = (1/N) Σ_n M[y_n, ŷ_n]`` — expected clinical cost;
* accuracy, balanced accuracy (mean recall over classes present in the references),
  macro-F1 (over the same classes).

Every figure comes from the K x K confusion matrix (one ``np.bincount``); bootstrap intervals
resample the N cases through a multinomial draw over the confusion cells, which is exactly a
case resample. This file needs numpy only: it travels with the `evaluate` module folder and is
also what :mod:`rcl_hf.metrics.functional` computes with (one implementation).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: The severity presets as (labels, positive group, ordinal): costs correct 0, fine-grained 0.1,
#: over-call 0.3, critical 1.0 (positive called negative); ordinal positives cost 0.1*|i-j|.
#: A copy of rcl_hf.severity.PRESETS so this folder needs no rcl_hf; a test keeps them equal.
PRESET_GROUPS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], bool]] = {
    "brain_tumor_mri": (("glioma", "meningioma", "notumor", "pituitary"), ("glioma", "meningioma", "pituitary"), False),
    "isic2018": (("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"), ("MEL", "BCC", "AKIEC"), False),
    "breakhis": (("adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma", "ductal_carcinoma",
                  "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"),
                 ("ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"), False),
    "sicapv2": (("NC", "G3", "G4", "G5"), ("G3", "G4", "G5"), True),
    "synthetic": (("normal", "lesion_round", "lesion_oval", "lesion_ring"), ("lesion_round", "lesion_oval", "lesion_ring"), False),
}
BOOTSTRAP_METRICS = ("cer", "accuracy", "balanced_accuracy", "critical_miss_rate", "expected_cost")


def preset_severity(name: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(matrix, critical, labels)`` of a preset, built from its groups as docs/severity.md says."""
    if name not in PRESET_GROUPS:
        raise ValueError(f"Unknown severity preset {name!r}; choose one of {sorted(PRESET_GROUPS)}")
    labels, positive, ordinal = PRESET_GROUPS[name]
    is_pos = np.array([label in positive for label in labels])
    rank = np.cumsum(is_pos) - 1  # grade order among the positive classes
    k = len(labels)
    matrix, critical = np.zeros((k, k)), np.zeros((k, k), dtype=bool)
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            if is_pos[i] and not is_pos[j]:
                matrix[i, j], critical[i, j] = 1.0, True
            elif not is_pos[i] and is_pos[j]:
                matrix[i, j] = 0.3
            else:
                matrix[i, j] = min(0.1 * abs(int(rank[i]) - int(rank[j])), 1.0) if ordinal and is_pos[i] else 0.1
    return matrix, critical, list(labels)


def check_severity(matrix: Any, critical: Any = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(matrix, critical)`` as float / bool arrays after the basic rules: square, finite, in
    [0, 1], zero diagonal; without ``critical``, the off-diagonal cells of cost 1.0 are critical."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"The severity matrix must be K x K with K >= 2, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
        raise ValueError("Severity matrix entries must be finite and in [0, 1]")
    if np.any(np.diag(m) != 0):
        raise ValueError("The severity matrix diagonal (correct predictions) must be 0")
    k = m.shape[0]
    if critical is None:
        c = np.isclose(m, 1.0) & ~np.eye(k, dtype=bool)
    else:
        c = np.asarray(critical)
        if c.shape != (k, k):
            raise ValueError(f"Critical mask has shape {c.shape}, expected ({k}, {k})")
        if c.dtype != bool and not np.all(np.isin(c, (0, 1))):
            raise ValueError("Critical mask must hold booleans (or 0/1)")
        c = c.astype(bool)
        if np.any(np.diag(c)):
            raise ValueError("Critical mask diagonal (correct predictions) must be False")
    return m, c


def as_class_indices(values: Any, k: int, what: str, label_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """1-D integer class indices in [0, k); class names are mapped through ``label_names``.

    Raises:
        ValueError: not 1-D, a non-integer number (0.5, NaN), an unknown name, or names without
            ``label_names``, or an index outside [0, k).
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of class indices, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind in "US" and label_names is not None:
        index = {str(name): i for i, name in enumerate(label_names)}
        unknown = sorted({str(v) for v in arr.tolist() if str(v) not in index})
        if unknown:
            raise ValueError(f"{what} hold unknown class name(s) {unknown[:5]}; the classes are {list(label_names)}")
        return np.array([index[str(v)] for v in arr.tolist()], dtype=np.int64)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.floating):
        if not (np.all(np.isfinite(arr)) and np.all(np.mod(arr, 1) == 0)):
            bad = arr[~np.isfinite(arr) | (np.mod(np.nan_to_num(arr), 1) != 0)][0]
            raise ValueError(f"{what} must hold integer class indices, got {bad} (a score or probability? "
                             "pass the predicted class, e.g. argmax)")
    elif not np.issubdtype(arr.dtype, np.integer):
        hint = ("class names? pass a severity with labels (a preset) or labels=[...]" if arr.dtype.kind in "US"
                else "class names? map them to indices with the severity's labels")
        raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype} ({hint})")
    if arr.min() < 0 or arr.max() >= k:  # checked before the cast: 1e30 must not wrap around
        bad = arr[(arr < 0) | (arr >= k)][0]
        raise ValueError(f"{what} hold class index {bad}, outside [0, {k - 1}] for {k} classes")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(predictions: Any, references: Any, num_labels: int,
                     label_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """``cm[i, j]`` = number of cases with truth ``i`` predicted ``j``."""
    p = as_class_indices(predictions, num_labels, "predictions", label_names)
    r = as_class_indices(references, num_labels, "references", label_names)
    if p.shape != r.shape:
        raise ValueError(f"predictions ({p.shape[0]}) and references ({r.shape[0]}) differ in length")
    return np.bincount(r * num_labels + p, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def metrics_from_confusion(cm: np.ndarray, matrix: np.ndarray, critical: np.ndarray) -> Dict[str, np.ndarray]:
    """Metrics of one (K, K) or a stack of (B, K, K) confusion matrices."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum(axis=(-2, -1))
    safe_n = np.where(n > 0, n, 1.0)
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    row, col = cm.sum(-1), cm.sum(-2)
    present = row > 0
    recall = np.where(present, diag / np.where(present, row, 1.0), 0.0)
    n_present = present.sum(-1)
    precision = np.where(col > 0, diag / np.where(col > 0, col, 1.0), 0.0)
    pr = precision + recall
    f1 = np.where(pr > 0, 2 * precision * recall / np.where(pr > 0, pr, 1.0), 0.0)
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


def clinical_scores(
    predictions: Any,
    references: Any,
    matrix: np.ndarray,
    critical: np.ndarray,
    labels: Optional[Sequence[str]] = None,
    *,
    accept_names: bool = False,
    return_confusion: bool = False,
    per_class: bool = False,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> Dict[str, Any]:
    """The metrics dict of hard predictions under a checked ``(matrix, critical)`` pair.

    ``labels`` (K class names) name the ``per_class_recall`` keys; with ``accept_names``,
    predictions and references may also be those names. Returns ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``cer``,
    ``critical_miss_rate``, ``expected_cost`` (floats) and ``n_critical``, ``n_positive``,
    ``n_samples`` (ints); with ``n_bootstrap`` > 0 also ``{metric}_ci`` percentile intervals.
    """
    k = matrix.shape[0]
    if labels is not None and len(labels) != k:
        raise ValueError(f"{len(labels)} labels given for {k} classes")
    cm = confusion_matrix(predictions, references, k, labels if accept_names else None)
    if cm.sum() == 0:
        raise ValueError("critical_error_rate needs at least one prediction")
    m = metrics_from_confusion(cm, matrix, critical)
    out: Dict[str, Any] = {key: (int(v) if key.startswith("n_") else float(v)) for key, v in m.items() if not key.startswith("_")}
    names = list(labels) if labels is not None else [str(i) for i in range(k)]
    if per_class:
        row = cm.sum(1)
        out["per_class_recall"] = {name: (float(m["_recall"][i]) if row[i] > 0 else None) for i, name in enumerate(names)}
    if return_confusion:
        out["confusion_matrix"] = cm.tolist()
        out["labels"] = names
    if n_bootstrap:
        if n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        n = int(cm.sum())
        draws = np.random.default_rng(seed).multinomial(n, cm.ravel() / n, size=n_bootstrap).reshape(n_bootstrap, k, k)
        boot = metrics_from_confusion(draws, matrix, critical)
        alpha = (1 - confidence) / 2
        for key in BOOTSTRAP_METRICS:
            lo, hi = np.quantile(boot[key], [alpha, 1 - alpha])
            out[f"{key}_ci"] = (float(lo), float(hi))
    return out
