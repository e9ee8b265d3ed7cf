"""Per-class certificates: ``critical_miss`` certified for each disease, not only for the pool.

The pooled ``critical_miss`` (:mod:`.risk_control`) averages over every critical-capable class: on ISIC 2018 it
pools melanoma, basal cell carcinoma and actinic keratosis, and a certificate met on average can hide one disease
whose misses are far above ``α``. A dermatologist asks about melanoma. For each critical-capable class ``c``
(a positive row of the severity matrix) the class risk is

    R_c(τ) = P( C[y, ŷ] = 1 and s ≤ τ  |  y = c )

estimated on the certification part with the same unit as the pooled certificate (images, or groups — lesions,
patients — whose loss is the share of their class-``c`` images missed, :func:`.risk_control.group_risk_curve`).

**Choice: one shared threshold, tested per class by an intersection–union test.** The referral threshold acts
on the decision's expected cost ``s``, which is known at test time; the true class is not, so a threshold per
*true* class cannot be applied, and a threshold per *decided* class would not control a class's misses (a
melanoma missed is decided "nevus": its miss is governed by the nevus threshold). So ``τ`` stays one number, and
for each ``τ`` of the fixed grid the null hypothesis is the union ``H_τ = {R_pool(τ) > α} ∪ ⋃_c {R_c(τ) > α}``
over the pooled risk and every certified class. Its p-value is ``max(p_pool(τ), max_c p_c(τ))`` (Berger 1982,
"Multiparameter hypothesis testing and acceptance sampling": an intersection–union test is valid at level ``δ``
with **no multiplicity correction**, since under ``H_τ`` some component null is true and its own p-value is
valid). Fixed-sequence testing over ``τ`` (strict → lenient, the risks are monotone) then gives

    P( R_c(τ̂) > α for some certified class c, or R_pool(τ̂) > α ) ≤ δ,

a simultaneous guarantee, stronger than one per class (a Bonferroni split of ``δ`` over the classes would be
needed only to make separate, per-class thresholds). With conformal risk control the threshold is the smallest of
the pooled and per-class CRC thresholds: each loss is monotone in ``τ``, so each ``E[R_c(τ̂)] ≤ α`` still holds.
The price is coverage: the threshold is set by the hardest class.

A class whose certification part has too few units to certify ``α`` at all (``α < 1 − δ^(1/n_c)``,
:func:`.risk_control.smallest_certifiable_alpha`) is **never silently pooled**: it is left out of the test,
reported as not certified with the smallest ``α`` its size could certify, and covered by the pooled certificate
only. This is Mondrian (class-conditional) risk control (Vovk et al. 2005, ch. 4; Angelopoulos & Bates 2021, §4.4
for class-conditional conformal prediction) applied to Learn then Test (Angelopoulos et al. 2021).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..severity import SeverityMatrix
from .risk_control import (REFER_ALL, RiskCurve, _p_values, crc_threshold, fixed_sequence_test, group_risk_curve,
                           risk_curve, smallest_certifiable_alpha)

__all__ = ["CONDITIONAL", "class_risk_curves", "certify_per_class", "per_class_figures", "per_class_sentences",
           "critical_miss_by_class"]

#: What a certificate can be conditional on (``None``: the pooled certificate only).
CONDITIONAL = (None, "class")


def class_risk_curves(scores: np.ndarray, critical_error: np.ndarray, labels: np.ndarray, severity: SeverityMatrix,
                      groups: Optional[np.ndarray] = None) -> Dict[int, RiskCurve]:
    """``{class index: its critical_miss curve}`` for every critical-capable class present, with the group as the unit
    when group codes are given."""
    y = np.asarray(labels)
    out = {}
    for c in np.flatnonzero(severity.positive_rows):
        mine = y == c
        if not mine.any():
            continue
        if groups is None:
            out[int(c)] = risk_curve(scores, critical_error, mine, "critical_miss")
        else:
            out[int(c)] = group_risk_curve(scores, critical_error, mine, groups, "critical_miss")
    return out


def certify_per_class(pooled: RiskCurve, curves: Dict[int, RiskCurve], alpha: float, delta: float, *,
                      method: str = "ltt", p_value: str = "binomial") -> Tuple[float, List[int]]:
    """``(τ̂, the classes certified)``: the most lenient threshold whose pooled risk and every certifiable class's
    risk pass the intersection–union test (module docstring); classes too small for ``α`` are left out."""
    certifiable = [c for c, cv in curves.items() if smallest_certifiable_alpha(int(cv.n[0]), delta, method) <= alpha]
    family = [pooled] + [curves[c] for c in certifiable]
    if method == "crc":
        taus = [crc_threshold(cv, alpha) for cv in family]
        return float(min(taus)), certifiable
    p = np.max(np.stack([_p_values(cv, alpha, p_value) for cv in family]), axis=0)
    rejected = fixed_sequence_test(p, np.arange(len(pooled.thresholds)), delta)
    tau = REFER_ALL if len(rejected) == 0 else float(pooled.thresholds[rejected].max())
    return tau, certifiable


def per_class_figures(curves: Dict[int, RiskCurve], certified: Sequence[int], tau: float, severity: SeverityMatrix,
                      alpha: float, delta: float, method: str) -> Dict[str, Dict[str, Any]]:
    """What each critical-capable class got: ``{label: {"certified", "n_risk", "smallest_alpha", "risk"}}``, with
    ``risk`` its realised ``critical_miss`` on the certification part at ``τ̂`` (all misses when every case is
    referred: 0)."""
    out = {}
    for c, cv in sorted(curves.items()):
        at = np.searchsorted(cv.thresholds, tau, side="right") - 1  # the grid point τ̂ is (REFER_ALL: before it)
        risk = 0.0 if at < 0 else float(cv.risk[at])
        out[severity.labels[c]] = {"certified": c in certified, "n_risk": int(cv.n[0]),
                                   "smallest_alpha": float(smallest_certifiable_alpha(int(cv.n[0]), delta, method)),
                                   "risk": risk}
    return out


def per_class_sentences(per_class: Dict[str, Dict[str, Any]], alpha: float, unit: str, refers_everything: bool) -> List[str]:
    """One phrase per class, for the certificate: ``"melanoma: at most 10% missed (certified on 120 lesions)"`` or
    why it is not certified."""
    units = "groups" if unit == "group" else "images"
    out = []
    for label, f in per_class.items():
        name = label.replace("_", " ")
        if f["certified"] and not refers_everything:
            out.append(f"{name}: at most {alpha:.0%} missed (certified on {f['n_risk']:,} {units})")
        elif f["certified"]:
            out.append(f"{name}: not certified at {alpha:.0%} (every case is referred)")
        else:
            out.append(f"{name}: too few {units} ({f['n_risk']:,}) to certify {alpha:.0%}: the smallest certifiable is "
                       f"{f['smallest_alpha']:.0%}, so only the pooled certificate covers it")
    return out


def critical_miss_by_class(decisions: Any, refer: Any, labels: Any, severity: SeverityMatrix) -> Dict[str, float]:
    """Realised ``critical_miss`` of each critical-capable class present in ``labels``: the share of its cases given a
    critical decision and not referred (per image; e.g. on a test split)."""
    d, r, y = np.asarray(decisions), np.asarray(refer, dtype=bool), np.asarray(labels)
    miss = severity.critical[y, d] & ~r
    return {severity.labels[c]: float(miss[y == c].mean()) for c in np.flatnonzero(severity.positive_rows) if (y == c).any()}
