"""Cross-fitted risk weights: point the loss at images the model errs on *out of sample*.

With frozen features the head fits its training split almost perfectly, so the
risk term ``R_i = Σ_j M[y_i, j] p_j(x_i)`` evaluated on the training images is
about zero and has nothing to act on. Cross-fitting (as in
double machine learning, Chernozhukov et al., Econometrics Journal 2018) gets
the risk each image *would* carry if the model had not seen it:

1. split the training images into ``K`` folds, grouped (all images of one
   lesion / patient in one fold) and stratified by label;
2. for each fold ``k`` fit a multinomial logistic regression on the other
   ``K - 1`` folds and predict fold ``k``: out-of-fold probabilities ``p̂_i``;
3. the out-of-fold expected cost of image ``i`` is ``c_i = Σ_j M[y_i, j] p̂_ij``;
4. each training image's loss is weighted by ``w_i ∝ 1 + β · c_i / mean(c)``,
   normalised to mean 1, so the total weight (and the learning rate's meaning)
   is unchanged::

       L = (1/N) Σ_i w_i · ℓ(z_i, y_i)      (ℓ: any per-sample loss, RCL included)

A melanoma that a held-out model would call a nevus keeps a large weight even
after the final head has memorised it. ``β = 0`` gives ``w_i = 1`` (the plain
loss). The nuisance models are cheap here because the embeddings are cached;
under full fine-tuning the same idea would need ``K`` extra fine-tunes, so the
option is offered for the frozen-backbone mode only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from rcl_hf.severity import SeverityMatrix

__all__ = ["grouped_folds", "out_of_fold_probabilities", "crossfit_risk_weights"]


def grouped_folds(labels: Sequence[int], groups: Optional[Sequence[str]], n_folds: int, seed: int) -> np.ndarray:
    """Fold index per sample: whole groups per fold, folds stratified by label
    (``sklearn.model_selection.StratifiedGroupKFold`` with a seeded shuffle)."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    if n_folds < 2:
        raise ValueError(f"crossfit_folds must be >= 2, got {n_folds}")
    g = np.asarray([str(x) for x in groups]) if groups is not None else np.arange(n).astype(str)
    if len(g) != n:
        raise ValueError(f"{len(g)} group ids for {n} labels")
    if len(np.unique(g)) < n_folds:
        raise ValueError(f"{len(np.unique(g))} groups cannot fill {n_folds} cross-fitting folds")
    folds = np.empty(n, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(n), y, g)):
        folds[held] = k
    return folds


def out_of_fold_probabilities(
    embeddings: np.ndarray,
    labels: Sequence[int],
    groups: Optional[Sequence[str]] = None,
    n_folds: int = 5,
    seed: int = 0,
    l2: float = 1e-3,
    max_iter: int = 1000,
) -> np.ndarray:
    """``(N, C)`` probabilities, each row from an L2 multinomial ``sklearn.linear_model.LogisticRegression``
    that never saw that sample's fold.

    Features are standardised with the fitting folds' mean and standard deviation.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings must be (N, D) with N = {len(y)} labels, got shape {x.shape}")
    from sklearn.linear_model import LogisticRegression

    n_classes = int(y.max()) + 1
    folds = grouped_folds(y, groups, n_folds, seed)
    out = np.zeros((len(y), n_classes), dtype=np.float64)
    for k in range(n_folds):
        fit, held = folds != k, folds == k
        mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
        # mean CE + (l2 / 2)·||W||² is sklearn's C·Σ CE + ||W||² / 2 with C = 1 / (l2 · n_fit)
        head = LogisticRegression(C=1.0 / (l2 * fit.sum()), max_iter=max_iter, tol=1e-8)
        head.fit((x[fit] - mu) / sd, y[fit])
        out[np.ix_(held, head.classes_)] = head.predict_proba((x[held] - mu) / sd)
    return out


def crossfit_risk_weights(
    probabilities: np.ndarray, labels: Sequence[int], severity: SeverityMatrix, beta: float,
    within_class: bool = False,
) -> np.ndarray:
    """``w_i ∝ 1 + β · c_i / mean(c)`` with ``c_i = Σ_j M[y_i, j] p̂_ij``, normalised to mean 1 (over all
    samples, or with ``within_class`` within each class, so that every class keeps its total weight and only
    the risky images of a class gain at the expense of its easy ones: the renormalisation of LDAM-DRW)."""
    if beta < 0 or not np.isfinite(beta):
        raise ValueError(f"crossfit_weight must be finite and >= 0, got {beta}")
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    m = np.asarray(severity.matrix, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(y), m.shape[0]):
        raise ValueError(f"probabilities must be (N, {m.shape[0]}) for {len(y)} labels, got shape {p.shape}")
    cost = (m[y] * p).sum(1)
    mean = cost.mean()
    w = 1.0 + beta * (cost / mean if mean > 0 else np.zeros_like(cost))
    if within_class:
        for c in np.unique(y):
            w[y == c] /= w[y == c].mean()
        return w.astype(np.float32)
    return (w / w.mean()).astype(np.float32)
