"""Does a batch still look like the calibration data? A certificate holds only for data like it.

Two checks on a batch of ``n`` images, each a one-sided test at level ``level`` (default 1%):

* **out-of-distribution share**: with the OOD guard's conformal threshold, an image like the
  calibration images is flagged with probability at most ``ε`` (its false-alarm rate; with confidence
  ``1 − δ`` over the guard's validation draw under the default rule, :mod:`rcl_hf.ood`), so the count
  of flags is at most ``Bin(n, ε)``; ``scipy.stats.binomtest(k, n, ε, alternative="greater")``;
* **referral-score shift**: the batch's referral scores (expected cost of the decision) against
  the calibration scores' distribution (101 stored quantiles, interpolated), by the
  Kolmogorov–Smirnov test (``scipy.stats.kstest``).

A batch smaller than ``min_batch`` is not tested (too few images to tell).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

__all__ = ["DriftReport", "check_drift", "DEFAULT_DRIFT_LEVEL", "MIN_DRIFT_BATCH"]

DEFAULT_DRIFT_LEVEL = 0.01
MIN_DRIFT_BATCH = 20


@dataclass
class DriftReport:
    """Outcome of :func:`check_drift`; ``drifted`` is ``None`` when the batch was too small to test."""

    n: int
    drifted: Optional[bool]
    ood_share: Optional[float] = None
    ood_expected: Optional[float] = None
    ood_p_value: Optional[float] = None
    score_p_value: Optional[float] = None
    reasons: List[str] = field(default_factory=list)

    def message(self) -> str:
        if self.drifted is None:
            return f"drift not tested: {self.n} image(s), at least {MIN_DRIFT_BATCH} are needed"
        if not self.drifted:
            return f"no drift detected in {self.n} images"
        return ("this batch does not look like the calibration data, so the certified guarantee may not hold: "
                + "; ".join(self.reasons))


def _quantile_cdf(quantiles: np.ndarray):
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, len(q))

    def cdf(x):
        return np.interp(x, q, levels, left=0.0, right=1.0)

    return cdf


def check_drift(scores: Optional[np.ndarray], score_quantiles: Optional[List[float]], ood_flags: Optional[np.ndarray] = None,
                false_alarm_rate: Optional[float] = None, *, level: float = DEFAULT_DRIFT_LEVEL,
                min_batch: int = MIN_DRIFT_BATCH) -> DriftReport:
    """Test a batch for drift from the calibration data (see the module docstring)."""
    from scipy.stats import binomtest, kstest

    n = int(len(scores)) if scores is not None else int(len(ood_flags)) if ood_flags is not None else 0
    if n < min_batch:
        return DriftReport(n=n, drifted=None)
    report = DriftReport(n=n, drifted=False)
    if ood_flags is not None and false_alarm_rate is not None:
        k = int(np.asarray(ood_flags, dtype=bool).sum())
        report.ood_share, report.ood_expected = k / n, float(false_alarm_rate)
        report.ood_p_value = float(binomtest(k, n, false_alarm_rate, alternative="greater").pvalue)
        if report.ood_p_value < level:
            report.reasons.append(f"{k} of {n} images ({k / n:.0%}) look unlike the training images, where at most "
                                  f"{false_alarm_rate:.0%} would be expected")
    if scores is not None and score_quantiles is not None and len(score_quantiles) >= 2:
        report.score_p_value = float(kstest(np.asarray(scores, dtype=np.float64), _quantile_cdf(score_quantiles)).pvalue)
        if report.score_p_value < level:
            report.reasons.append(f"the model's uncertainty on this batch differs from the calibration images "
                                  f"(Kolmogorov–Smirnov p = {report.score_p_value:.1g})")
    report.drifted = bool(report.reasons)
    return report
