"""The clinical operating figures of a model: what a clinician reads before using it.

With calibrated probabilities ``p_n`` (N x K), true classes ``y_n`` and the severity matrix's critical
mask ``C``, a class ``i`` is **critical disease** when its row ``C[i, :]`` holds a critical cell
(:attr:`rcl_hf.SeverityMatrix.positive_rows`, the one definition). Then:

* **critical score** ``s_n = Σ_{i critical} p_ni`` (the probability of critical disease; the decision
  layer's ``critical_mass``) and **positive** ``π_n = [y_n is critical]``;
* **sensitivity at specificity ≥ s₀** (:func:`threshold_at_specificity`): a case is flagged when
  ``s_n ≥ t``; on VALIDATION, ``spec(t) = #{π=0, s<t} / #{π=0}`` rises and ``sens(t) = #{π=1, s≥t} / #{π=1}``
  falls with ``t``, so the largest-sensitivity threshold with ``spec(t) ≥ s₀`` is the smallest such ``t``
  among the observed scores (and ``+∞``). It is then applied unchanged to test (:func:`rates_at_threshold`);
* **NPV of the cleared cases** (:func:`cleared_npv`): a case is cleared when the decision layer neither refers
  it nor decides a critical class, ``cleared_n = ¬refer_n ∧ ¬critical(ŷ_n)``; ``NPV = #{cleared, π=0} / #{cleared}``;
* **referral share** ``(1/N) Σ_n refer_n`` (the specialist's workload);
* **ECE**: :func:`rcl_hf.metrics.reliability.expected_calibration_error`.

Intervals: a percentile bootstrap over groups (:func:`group_resamples`: the lesion / patient is the unit,
images of one group are resampled together) and, for proportions, the exact Clopper–Pearson interval
(:func:`clopper_pearson`), which treats images as independent. The decisions and referrals come from the
caller (the decision layer, :class:`rcl_hf.DecisionLayer`, sits above this module).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from ..severity import SeverityMatrix
from .reliability import check_probabilities, expected_calibration_error

__all__ = ["DEFAULT_MIN_SPECIFICITY", "clopper_pearson", "cleared_npv", "critical_mass", "group_bootstrap_ci",
           "group_resamples", "operating_report", "rates_at_threshold", "threshold_at_specificity"]

DEFAULT_MIN_SPECIFICITY = 0.97


def critical_mass(probs: np.ndarray, severity: SeverityMatrix) -> np.ndarray:
    """``s_n = Σ_{i critical} p_ni``: each case's probability of a critical-disease class."""
    return np.asarray(probs, dtype=np.float64)[:, severity.positive_rows].sum(1)


def rates_at_threshold(scores: Any, positive: Any, threshold: float) -> Dict[str, Any]:
    """Sensitivity ``TP/(TP+FN)`` and specificity ``TN/(TN+FP)`` of the rule ``s_n ≥ threshold`` (``None`` when
    there is no positive, resp. no negative case), with the four counts."""
    s, pos = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    flag = s >= threshold
    tp, fn = int((flag & pos).sum()), int((~flag & pos).sum())
    tn, fp = int((~flag & ~pos).sum()), int((flag & ~pos).sum())
    return {"sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def threshold_at_specificity(scores: Any, positive: Any, min_specificity: float = DEFAULT_MIN_SPECIFICITY
                             ) -> Dict[str, Any]:
    """The largest-sensitivity threshold ``t`` with ``spec(t) ≥ min_specificity`` on these (validation) cases.

    Raises ``ValueError`` when there is no positive or too few negatives: a specificity of ``s₀ < 1`` can only be
    told from 1 when one false positive is allowed, i.e. with at least ``⌈1 / (1 - s₀)⌉`` negatives (34 for 0.97).
    Returns ``{"threshold", "sensitivity", "specificity", tp, fn, tn, fp}`` (``threshold`` may be ``inf``: flag none).
    """
    s, pos = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    if s.ndim != 1 or s.shape != pos.shape or not np.all(np.isfinite(s)):
        raise ValueError(f"scores ({s.shape}) and positive ({pos.shape}) must be matching 1-D arrays of finite numbers")
    if not 0.0 < min_specificity < 1.0:
        raise ValueError(f"min_specificity must be in (0, 1), got {min_specificity}")
    n_neg, n_pos = int((~pos).sum()), int(pos.sum())
    need = int(np.ceil(1.0 / (1.0 - min_specificity) - 1e-9))
    if n_neg == 0:
        raise ValueError("the validation cases hold no negative (non-critical) case: specificity is undefined")
    if n_neg < need:
        raise ValueError(f"the validation cases hold {n_neg} negative case(s), too few to choose a threshold at "
                         f"specificity >= {min_specificity:g} (at least {need} needed)")
    if n_pos == 0:
        raise ValueError("the validation cases hold no positive (critical-disease) case: sensitivity is undefined")
    cand = np.unique(np.r_[s, np.inf])
    neg_sorted = np.sort(s[~pos])
    spec = np.searchsorted(neg_sorted, cand, side="left") / n_neg  # share of negatives with s < t
    t = float(cand[np.flatnonzero(spec >= min_specificity - 1e-12)[0]])
    return {"threshold": t, **rates_at_threshold(s, pos, t)}


def cleared_npv(decision: Any, refer: Any, labels: Any, severity: SeverityMatrix) -> Dict[str, Any]:
    """NPV of the cases the model clears itself (decided non-critical, not referred): ``#{cleared, y non-critical} /
    #{cleared}`` (``None`` when none is cleared), with the counts."""
    d, r, y = np.asarray(decision, dtype=np.int64), np.asarray(refer, dtype=bool), np.asarray(labels, dtype=np.int64)
    if not d.shape == r.shape == y.shape or d.ndim != 1:
        raise ValueError(f"decision ({d.shape}), refer ({r.shape}) and labels ({y.shape}) must be matching 1-D arrays")
    crit = severity.positive_rows
    cleared = ~r & ~crit[d]
    n, k = int(cleared.sum()), int((cleared & ~crit[y]).sum())
    return {"npv": k / n if n else None, "n_cleared": n, "n_cleared_non_critical": k}


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Exact (Clopper–Pearson) interval for ``k`` successes in ``n`` trials (images taken as independent;
    ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``)."""
    from scipy.stats import binomtest

    if n <= 0:
        raise ValueError(f"clopper_pearson needs n >= 1 trials, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"successes k must be in [0, n={n}], got {k}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def _exact(k: int, n: int, confidence: float) -> Optional[Tuple[float, float]]:
    return clopper_pearson(k, n, confidence) if n else None


def group_resamples(groups: Optional[Any], n_cases: int, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` case-index arrays, each drawing the groups (lesions, patients, near-copy clusters) with replacement
    and taking all their cases; over single cases when ``groups`` is ``None``."""
    units = np.arange(n_cases) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if len(units) != n_cases:
        raise ValueError(f"groups hold {len(units)} entries for {n_cases} cases")
    members = [np.flatnonzero(units == u) for u in range(units.max() + 1)]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[u] for u in rng.integers(0, len(members), len(members))])


def group_bootstrap_ci(statistic: Callable[[np.ndarray], Dict[str, Optional[float]]], groups: Optional[Any],
                       n_cases: int, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
                       ) -> Dict[str, Any]:
    """Percentile intervals ``{key: (low, high)}`` of the figures ``statistic(idx)`` returns on group resamples;
    a replicate where a figure is undefined (``None``) is left out of that figure, and ``undefined[key]`` counts them."""
    alpha = (1.0 - confidence) / 2.0
    reps: Dict[str, list] = {}
    for idx in group_resamples(groups, n_cases, n_boot, seed):
        for key, v in statistic(idx).items():
            reps.setdefault(key, []).append(np.nan if v is None else float(v))
    out: Dict[str, Any] = {"undefined": {}}
    for key, v in reps.items():
        a = np.asarray(v)
        out["undefined"][key] = int(np.isnan(a).sum())
        ok = a[~np.isnan(a)]
        out[key] = (float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha))) if len(ok) else None
    return out


def operating_report(val_probs: Any, val_labels: Any, test_probs: Any, test_labels: Any, test_decision: Any,
                     test_refer: Any, severity: SeverityMatrix, test_groups: Optional[Any] = None,
                     min_specificity: float = DEFAULT_MIN_SPECIFICITY, n_bins: int = 15, n_boot: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> Dict[str, Any]:
    """All operating figures of one model on its test split, the threshold chosen on validation (module docstring).

    Bootstrap intervals resample the test groups with the validation threshold held fixed (they cover test
    sampling, not the choice of the threshold). Returns a JSON-ready dict.
    """
    pv, yv = check_probabilities(val_probs, val_labels)
    pt, yt = check_probabilities(test_probs, test_labels)
    if pv.shape[1] != severity.num_labels or pt.shape[1] != severity.num_labels:
        raise ValueError(f"probabilities have {pv.shape[1]} / {pt.shape[1]} classes, the severity {severity.num_labels}")
    crit = severity.positive_rows
    d, r = np.asarray(test_decision, dtype=np.int64), np.asarray(test_refer, dtype=bool)
    st, pos_t = critical_mass(pt, severity), crit[yt]
    chosen = threshold_at_specificity(critical_mass(pv, severity), crit[yv], min_specificity)
    t = chosen["threshold"]
    test = rates_at_threshold(st, pos_t, t)
    npv = cleared_npv(d, r, yt, severity)
    n = len(yt)

    def figures(idx: np.ndarray) -> Dict[str, Optional[float]]:
        at = rates_at_threshold(st[idx], pos_t[idx], t)
        return {"sensitivity": at["sensitivity"], "specificity": at["specificity"],
                "npv": cleared_npv(d[idx], r[idx], yt[idx], severity)["npv"], "referral_share": float(r[idx].mean()),
                "ece": expected_calibration_error(pt[idx], yt[idx], n_bins)}

    boot = group_bootstrap_ci(figures, test_groups, n, n_boot, seed, confidence)
    n_groups = None if test_groups is None else int(len(np.unique(np.asarray(test_groups))))
    return {
        "critical_classes": [severity.labels[i] for i in np.flatnonzero(crit)],
        "min_specificity": min_specificity, "confidence": confidence, "n_boot": n_boot, "seed": seed,
        "n_bins": n_bins, "n_test": n, "n_test_groups": n_groups,
        "validation": {"n": int(len(yv)), "n_positive": int(crit[yv].sum()), **chosen},
        "test": {
            "n_positive": int(pos_t.sum()), "n_negative": int((~pos_t).sum()),
            **test,
            "sensitivity_ci": boot["sensitivity"], "specificity_ci": boot["specificity"],
            "sensitivity_exact_ci": _exact(test["tp"], test["tp"] + test["fn"], confidence),
            "specificity_exact_ci": _exact(test["tn"], test["tn"] + test["fp"], confidence),
            **npv, "npv_ci": boot["npv"],
            "npv_exact_ci": _exact(npv["n_cleared_non_critical"], npv["n_cleared"], confidence),
            "n_referred": int(r.sum()), "referral_share": float(r.mean()), "referral_share_ci": boot["referral_share"],
            "referral_share_exact_ci": _exact(int(r.sum()), n, confidence),
            "ece": expected_calibration_error(pt, yt, n_bins), "ece_ci": boot["ece"],
        },
        "bootstrap_undefined": boot["undefined"],
    }
