"""Why a training-time method can (not) beat a threshold rule: a post-hoc rule on one model cannot
re-rank images, so a training-time method can only win by *ranking* critical cases better. This
module scores the ranking of the critical-class score ``h = Σ_{j∈S} softmax(z)_j`` (``S``: classes whose
miss is critical, :meth:`SeverityMatrix.positive_rows`; MEL ∪ BCC ∪ AKIEC on ISIC, the tumours on
Brain MRI) with ``sklearn.metrics.roc_auc_score`` (AUROC) and ``average_precision_score`` (AUPRC)
on each test split, and its uncertainty with the split × seed × image bootstrap of :mod:`.clustered`.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from rcl_hf.severity import SeverityMatrix
from rcl_hf.metrics.functional import softmax

__all__ = ["critical_score", "ranking_metrics", "partial_auroc_high_sensitivity", "paired_ranking_bootstrap"]


def critical_score(logits: np.ndarray, severity: SeverityMatrix) -> np.ndarray:
    """``(N,)`` probability mass on the critical classes."""
    crit = np.asarray(severity.positive_rows, dtype=bool)
    return softmax(logits)[:, crit].sum(1)


def ranking_metrics(logits: np.ndarray, labels: np.ndarray, severity: SeverityMatrix,
                    weights: Any = None) -> Dict[str, float]:
    """AUROC and AUPRC of the critical-class score (``weights``: optional per-image bootstrap counts)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(severity.positive_rows, dtype=bool)[np.asarray(labels).astype(np.int64)]
    h = critical_score(logits, severity)
    return {"auroc": float(roc_auc_score(y, h, sample_weight=weights)),
            "auprc": float(average_precision_score(y, h, sample_weight=weights)),
            "pauroc_tpr90": partial_auroc_high_sensitivity(logits, labels, severity, 0.9)}


def partial_auroc_high_sensitivity(logits: np.ndarray, labels: np.ndarray, severity: SeverityMatrix,
                                   min_tpr: float = 0.9) -> float:
    """Normalised partial AUROC of the critical-class score over sensitivities ``[min_tpr, 1]``
    (McClish 1989; the high-sensitivity region where a screening rule operates):
    ``∫_{min_tpr}^{1} (1 − FPR(TPR)) dTPR / (1 − min_tpr)``, from ``sklearn.metrics.roc_curve`` with the
    ROC interpolated linearly; 1 is a perfect ranking, and a random score gives ``(1 − min_tpr) / 2``."""
    from sklearn.metrics import roc_curve

    y = np.asarray(severity.positive_rows, dtype=bool)[np.asarray(labels).astype(np.int64)]
    fpr, tpr, _ = roc_curve(y, critical_score(logits, severity))
    grid = np.linspace(min_tpr, 1.0, 201)
    spec = 1.0 - np.interp(grid, tpr, fpr)
    return float(np.trapezoid(spec, grid) / (1.0 - min_tpr))


def paired_ranking_bootstrap(pipelines: Dict[str, Dict[int, Sequence[np.ndarray]]], labels: Dict[int, np.ndarray],
                             severity: SeverityMatrix, n_boot: int = 300, seed: int = 0,
                             confidence: float = 0.95) -> Dict[str, Dict[str, Any]]:
    """AUROC / AUPRC per pipeline (mean over splits of the seed mean) with clustered bootstrap CIs.

    ``pipelines[name][split]`` is the list of test logits of its training seeds; ``labels[split]`` the
    test labels. Draws (splits, seeds by index, image counts) are shared by all pipelines, so the
    returned ``*_diff_vs_<name>_ci`` of the first pipeline against each other one is paired.
    """
    names = list(pipelines)
    splits = sorted(labels)
    rng = np.random.default_rng(seed)
    w = {sp: rng.multinomial(len(labels[sp]), np.full(len(labels[sp]), 1.0 / len(labels[sp])), size=n_boot)
         for sp in splits}
    split_idx = rng.integers(0, len(splits), size=(n_boot, len(splits)))
    seed_raw = rng.integers(0, 1 << 30, size=(n_boot, 16))
    reps: Dict[str, Dict[str, np.ndarray]] = {}
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        point = {"auroc": [], "auprc": []}
        per = {m: np.zeros((n_boot, len(splits))) for m in ("auroc", "auprc")}
        for j, sp in enumerate(splits):
            runs = list(pipelines[name][sp])
            vals = [ranking_metrics(z, labels[sp], severity) for z in runs]
            for m in point:
                point[m].append(np.mean([v[m] for v in vals]))
            boot = np.array([[list(ranking_metrics(z, labels[sp], severity, w[sp][b]).values()) for z in runs]
                             for b in range(n_boot)])  # (B, S, 2)
            idx = seed_raw[:, : len(runs)] % len(runs)
            picked = boot[np.arange(n_boot)[:, None], idx]  # (B, S, 2)
            per["auroc"][:, j], per["auprc"][:, j] = picked[..., 0].mean(1), picked[..., 1].mean(1)
        reps[name] = {m: per[m][np.arange(n_boot)[:, None], split_idx].mean(1) for m in per}
        a = (1 - confidence) / 2
        out[name] = {m: float(np.mean(point[m])) for m in point}
        out[name].update({f"{m}_ci": tuple(float(q) for q in np.quantile(reps[name][m], [a, 1 - a])) for m in point})
    first = names[0]
    for other in names[1:]:
        for m in ("auroc", "auprc"):
            d = reps[first][m] - reps[other][m]
            a = (1 - confidence) / 2
            out[first][f"{m}_diff_vs_{other}"] = out[first][m] - out[other][m]
            out[first][f"{m}_diff_vs_{other}_ci"] = tuple(float(q) for q in np.quantile(d, [a, 1 - a]))
    return out
