"""Certified referral thresholds: Learn-then-Test and conformal risk control.

A model answers a case itself when the expected clinical cost of its decision,
``s = Σ_i p_i M[i, ŷ]`` (:func:`rcl_hf.decision.decision_scores`), is at most a referral
threshold ``τ``, and refers it to a specialist otherwise. Two risks can be controlled:

* ``critical_miss``: among the cases whose true class can be critically missed (the
  positive rows of the severity matrix), the share that are *neither* given a decision
  outside the critical cells *nor* referred::

      R(τ) = P( C[y, ŷ] = 1 and s ≤ τ  |  y critical-capable )

  It grows with ``τ`` (more cases answered, more misses possible).
* ``cer_accepted``: the critical error rate among the cases the model answers::

      R(τ) = P( C[y, ŷ] = 1  |  s ≤ τ )

  (not monotone in ``τ`` in general).

**Learn then Test** (Angelopoulos, Bates, Candès, Jordan, Lei 2021, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052). For each ``τ``
of a grid fixed before seeing data, the null hypothesis ``H_τ: R(τ) > α`` gets a p-value from
the ``n`` calibration cases that enter the risk: the exact binomial tail
``p = P(Bin(n, α) ≤ k)`` for ``k`` observed losses (the losses are 0/1, so the binomial is exact),
or the Hoeffding–Bentkus p-value (Bates et al. 2021, "Distribution-free, risk-controlling
prediction sets", JACM), ``p_HB = min(exp(−n·h(r̂ ∧ α, α)), e·P(Bin(n, α) ≤ ⌈n·r̂⌉))`` with
``h(a, b) = a·log(a/b) + (1−a)·log((1−a)/(1−b))``. **Fixed-sequence testing** walks the grid in
a fixed order and rejects ``H_τ`` while ``p ≤ δ``, stopping at the first failure; the rejected
set controls the family-wise error, so

    P( R(τ̂) > α ) ≤ δ       for any τ̂ chosen among the rejected thresholds

(we choose the most lenient, i.e. the largest coverage). For ``critical_miss`` the order is
strict → lenient (the risk is monotone); for ``cer_accepted`` the order comes from a separate
*ordering* part of the calibration data (ascending 90% Clopper–Pearson upper bound of the
risk there), as LTT prescribes for non-monotone risks — otherwise the strictest thresholds,
which accept almost no case, would fail first and stop the sequence.

**Conformal risk control** (Angelopoulos, Bates, Fisch, Lei, Schuster 2022, "Conformal Risk
Control", arXiv:2208.02814), for the monotone ``critical_miss`` only: the largest ``τ`` with
``n/(n+1)·R̂_n(τ) + 1/(n+1) ≤ α`` gives ``E[R(τ̂)] ≤ α`` (a guarantee in expectation, not with
probability ``1 − δ``).

Why not MAPIE: its risk-control tools calibrate thresholds of a fitted scikit-learn
estimator's prediction sets for precision/recall-type risks; here the risk is a function of a
(decision, referral) pair built from logits and a severity matrix, tested in fixed sequence,
so the p-values and the walk (a few lines on ``scipy.stats.binom``) are written here.

All guarantees assume the calibration units and the future units are exchangeable (drawn
from the same distribution, independently); images of one patient or lesion are not
independent, so calibrate on a split that is grouped like the test data
(:mod:`rcl_hf.calibration.drift` warns when a batch shows a shift that may break the certificate).

**Group-level (lesion-level) certificate** (:func:`group_risk_curve`). Several images of one lesion
share its errors, so the image-level p-values above treat ``n`` correlated images as ``n``
independent draws and are too optimistic (on ISIC 2018 the image-level bound held in only
81.5–93.8% of runs for a goal of 90%). When the group ids ``g`` of the calibration cases are
known, the unit of the test becomes the group: whole groups are drawn independently, so a
per-group loss bounded in [0, 1] is an i.i.d. sample and LTT applies to it unchanged
(Angelopoulos, Bates et al. 2021, Theorem 1: any valid p-value per ``H_τ`` plus fixed-sequence
testing). For group ``g`` at threshold ``τ``:

* ``critical_miss``: with ``c_g`` its critical-capable images and ``m_g(τ)`` those among them
  that are missed (critical error and ``s ≤ τ``), ``L_g(τ) = m_g(τ) / c_g``, over the ``n_G``
  groups with ``c_g > 0``; certified: ``R_G(τ) = E[L_g(τ) | c_g > 0]``, the expected share of a
  new lesion's critical images that are missed (each lesion weighs the same; it is the image
  risk when lesions have one critical image each, and differs from it only when the miss rate
  depends on how many images a lesion has). ``L_g`` is non-decreasing in ``τ``: the
  strict → lenient order and conformal risk control apply as before, with ``n = n_G``.
* ``cer_accepted``: with ``a_g(τ)`` the images of ``g`` the model answers and ``e_g(τ)`` the
  critical errors among them, ``L_g(τ) = e_g(τ) / a_g(τ)`` over the groups with ``a_g(τ) > 0``;
  certified: ``R_G(τ) = E[e_g / a_g | a_g > 0]`` (whether a group has an answered image is a
  function of that group alone, so the selected groups are still i.i.d.).

The p-value is Hoeffding–Bentkus on the mean of the ``n_G`` group losses
(``r̂ = Σ_g L_g / n_G``; Bates et al. 2021, which holds for any loss in [0, 1]). The exact
binomial p-value needs 0/1 losses and a group share such as 1/2 is not one, so it is refused for
groups. With one image per group, ``L_g`` is the image's 0/1 loss and the group certificate *is*
the image-level Hoeffding–Bentkus one. With no loss at all both p-values equal ``(1 − α)^n``,
so the smallest certifiable ``α`` is ``1 − δ^(1/n_G)``: the effective sample size is the
number of groups (with a critical image), not of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy.stats import beta, binom

__all__ = [
    "RISK_KINDS",
    "METHODS",
    "P_VALUES",
    "THRESHOLD_GRID",
    "REFER_ALL",
    "UNITS",
    "RiskCurve",
    "risk_curve",
    "group_risk_curve",
    "binomial_p_value",
    "hoeffding_bentkus_p_value",
    "fixed_sequence_test",
    "ltt_threshold",
    "crc_threshold",
    "smallest_certifiable_alpha",
]

RISK_KINDS = ("critical_miss", "cer_accepted")
METHODS = ("ltt", "crc")
P_VALUES = ("binomial", "hoeffding_bentkus")
#: The unit of the certificate: single images (assumed independent), or groups (lesions, patients).
UNITS = ("image", "group")
#: The referral thresholds tried, fixed before any data is seen: 0, then 400 log-spaced values in
#: [1e-4, 1] (expected costs lie in [0, max M] ⊆ [0, 1]; τ = 1 refers nothing).
THRESHOLD_GRID: np.ndarray = np.concatenate([[0.0], np.logspace(-4, 0, 400)])
#: The threshold that refers every case (every score is >= 0 > REFER_ALL): the trivial certificate.
REFER_ALL = -1.0
#: Confidence of the upper bound that orders the thresholds of a non-monotone risk (fixed, so that the
#: order does not depend on the user's α or δ and the certified threshold stays monotone in both).
ORDERING_CONFIDENCE = 0.9


@dataclass(frozen=True)
class RiskCurve:
    """Loss counts over a threshold grid: ``losses[t]`` of ``n[t]`` units at ``thresholds[t]``
    (units: images, or groups whose losses are shares in [0, 1], see :func:`group_risk_curve`)."""

    thresholds: np.ndarray  # (T,)
    losses: np.ndarray  # (T,) int for images: cases counted as a loss; float for groups: sum of group losses
    n: np.ndarray  # (T,) int: units the risk is averaged over
    accepted: np.ndarray  # (T,) int: images the model answers itself (s <= τ)
    total: int  # images in all
    unit: str = "image"

    @property
    def risk(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, self.losses / np.maximum(self.n, 1), np.nan)

    @property
    def coverage(self) -> np.ndarray:
        return self.accepted / max(self.total, 1)


def _check_kind(kind: str) -> None:
    if kind not in RISK_KINDS:
        raise ValueError(f"risk kind must be one of {RISK_KINDS}, got {kind!r}")


def risk_curve(scores: np.ndarray, critical_error: np.ndarray, critical_capable: np.ndarray, kind: str,
               thresholds: np.ndarray = THRESHOLD_GRID) -> RiskCurve:
    """Counts of the risk ``kind`` at each threshold, from per-case referral scores ``s``, critical-error
    flags ``C[y, ŷ]`` and critical-capable flags (the true class is a positive row of ``M``)."""
    _check_kind(kind)
    s = np.asarray(scores, dtype=np.float64)
    err = np.asarray(critical_error, dtype=bool)
    cap = np.asarray(critical_capable, dtype=bool)
    if not (s.shape == err.shape == cap.shape) or s.ndim != 1:
        raise ValueError(f"scores, critical_error and critical_capable must be 1-D of one length, got "
                         f"{s.shape}, {err.shape}, {cap.shape}")
    t = np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    accepted = np.searchsorted(s_sorted, t, side="right")  # cases with s <= τ
    cum_err = np.concatenate([[0], np.cumsum(err[order])])
    if kind == "critical_miss":
        cum_miss = np.concatenate([[0], np.cumsum((err & cap)[order])])
        losses = cum_miss[accepted]
        n = np.full(len(t), int(cap.sum()))
    else:
        losses = cum_err[accepted]
        n = accepted
    return RiskCurve(t, losses.astype(np.int64), n.astype(np.int64), accepted.astype(np.int64), len(s))


def group_risk_curve(scores: np.ndarray, critical_error: np.ndarray, critical_capable: np.ndarray,
                     groups: Sequence[Any], kind: str, thresholds: np.ndarray = THRESHOLD_GRID) -> RiskCurve:
    """The risk ``kind`` with groups as the unit (module docstring): ``losses[t] = Σ_g L_g(τ_t)`` over the
    ``n[t]`` groups that enter the risk, each group's loss a share in [0, 1]."""
    _check_kind(kind)
    s = np.asarray(scores, dtype=np.float64)
    err = np.asarray(critical_error, dtype=bool)
    cap = np.asarray(critical_capable, dtype=bool)
    if not (s.shape == err.shape == cap.shape) or s.ndim != 1 or len(groups) != len(s):
        raise ValueError(f"scores, critical_error, critical_capable and groups must be 1-D of one length, got "
                         f"{s.shape}, {err.shape}, {cap.shape}, {len(groups)}")
    g, n_groups = group_codes(groups)
    t = np.asarray(thresholds, dtype=np.float64)
    first = np.searchsorted(t, s, side="left")  # image i is accepted at τ_t for t >= first[i] (s <= τ_t)

    def per_group(weights: np.ndarray) -> np.ndarray:  # (T, G): weighted count of accepted images per group
        grid = np.zeros((len(t) + 1, n_groups))
        np.add.at(grid, (first, g), weights.astype(np.float64))
        return np.cumsum(grid, axis=0)[:len(t)]

    accepted = per_group(np.ones(len(s)))
    if kind == "critical_miss":
        c = np.bincount(g, weights=cap.astype(np.float64), minlength=n_groups)
        has = c > 0
        losses = (per_group(err & cap)[:, has] / c[has]).sum(axis=1)
        n = np.full(len(t), int(has.sum()))
    else:
        has = accepted > 0
        losses = np.where(has, per_group(err) / np.maximum(accepted, 1), 0.0).sum(axis=1)
        n = has.sum(axis=1)
    return RiskCurve(t, losses, n.astype(np.int64), np.rint(accepted.sum(axis=1)).astype(np.int64), len(s), "group")


def group_codes(groups: Sequence[Any]) -> Tuple[np.ndarray, int]:
    """``(code of each case's group, number of groups)``; ids are compared as strings."""
    codes, uniques = pd.factorize(pd.Series([str(x) for x in groups], dtype="string"))
    return codes.astype(np.int64), len(uniques)


def binomial_p_value(losses: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """``P(Bin(n, α) ≤ k)``: valid (exact) p-value of ``H: risk > α`` for 0/1 losses; 1 where ``n = 0``."""
    k = np.asarray(losses)
    n = np.asarray(n)
    return np.where(n > 0, binom.cdf(k, np.maximum(n, 1), alpha), 1.0)


def hoeffding_bentkus_p_value(losses: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """Hoeffding–Bentkus p-value of ``H: risk > α`` for losses in [0, 1] (Bates et al. 2021, eq. 8)."""
    k = np.asarray(losses, dtype=np.float64)
    n_ = np.asarray(n, dtype=np.float64)
    r = np.where(n_ > 0, k / np.maximum(n_, 1), 1.0)
    a = np.minimum(r, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(a > 0, a * np.log(a / alpha), 0.0) + (1 - a) * np.log((1 - a) / (1 - alpha))
    hoeffding = np.exp(-n_ * h)
    bentkus = np.e * binom.cdf(np.ceil(n_ * r), np.maximum(n_, 1), alpha)
    return np.where(n_ > 0, np.minimum(np.minimum(hoeffding, bentkus), 1.0), 1.0)


def _p_values(curve: RiskCurve, alpha: float, p_value: str) -> np.ndarray:
    if p_value == "binomial" and curve.unit == "group":
        raise ValueError("the exact binomial p-value needs 0/1 losses, but a group's loss is a share in [0, 1]: "
                         "use p_value='hoeffding_bentkus' for the group-level certificate")
    if p_value == "binomial":
        return binomial_p_value(curve.losses, curve.n, alpha)
    if p_value == "hoeffding_bentkus":
        return hoeffding_bentkus_p_value(curve.losses, curve.n, alpha)
    raise ValueError(f"p_value must be one of {P_VALUES}, got {p_value!r}")


def fixed_sequence_test(p_values: np.ndarray, order: Sequence[int], delta: float) -> np.ndarray:
    """Indices rejected by fixed-sequence testing at level ``δ``: walk ``order``, reject while ``p ≤ δ``."""
    rejected = []
    for i in order:
        if p_values[i] > delta:
            break
        rejected.append(int(i))
    return np.asarray(rejected, dtype=np.int64)


def _ordering(curve: Optional[RiskCurve], kind: str, size: int) -> np.ndarray:
    """Strict → lenient for the monotone ``critical_miss``; by the ordering part's upper bound otherwise."""
    if kind == "critical_miss":
        return np.arange(size)
    if curve is None:
        raise ValueError("cer_accepted needs an ordering part of the calibration data (LTT for a non-monotone risk)")
    k, n = curve.losses, curve.n
    upper = np.full(size, np.inf)  # a threshold that accepts no case goes last
    some, full = (n > 0) & (k < n), (n > 0) & (k >= n)
    upper[some] = beta.ppf(ORDERING_CONFIDENCE, k[some] + 1, n[some] - k[some])  # Clopper–Pearson upper bound
    upper[full] = 1.0
    # ascending upper bound; ties: stricter threshold first
    return np.lexsort((np.arange(size), upper))


def smallest_certifiable_alpha(n: int, delta: float, method: str = "ltt") -> float:
    """The smallest ``α`` that ``n`` cases can certify even with no loss at all:
    ``1 − δ^(1/n)`` for LTT (``(1 − α)^n ≤ δ``), ``1/(n + 1)`` for conformal risk control."""
    if n <= 0:
        return 1.0
    return float(1.0 / (n + 1)) if method == "crc" else float(1.0 - delta ** (1.0 / n))


def ltt_threshold(curve: RiskCurve, alpha: float, delta: float, *, p_value: str = "binomial",
                  ordering_curve: Optional[RiskCurve] = None, kind: str = "critical_miss") -> Tuple[float, np.ndarray]:
    """``(τ̂, p-values)``: the most lenient threshold certified by fixed-sequence LTT, or
    :data:`REFER_ALL` when not even the first threshold of the sequence is certified."""
    p = _p_values(curve, alpha, p_value)
    rejected = fixed_sequence_test(p, _ordering(ordering_curve, kind, len(curve.thresholds)), delta)
    if len(rejected) == 0:
        return REFER_ALL, p
    return float(curve.thresholds[rejected].max()), p


def crc_threshold(curve: RiskCurve, alpha: float) -> float:
    """Conformal risk control for a monotone risk averaged over ``n`` cases (losses in [0, 1]):
    the largest ``τ`` with ``n/(n+1)·R̂(τ) + 1/(n+1) ≤ α`` (:data:`REFER_ALL` when there is none)."""
    n = curve.n.astype(np.float64)
    bound = np.where(n > 0, (curve.losses + 1.0) / (n + 1.0), np.inf)  # = n/(n+1)·R̂ + 1/(n+1)
    bad = bound > alpha  # non-decreasing in τ for a monotone risk: the admissible set is a prefix
    if bad[0]:
        return REFER_ALL
    last = int(np.argmax(bad)) - 1 if bad.any() else len(bad) - 1
    return float(curve.thresholds[last])
