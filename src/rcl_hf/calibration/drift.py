"""Does a batch show a *harmful* shift from the calibration data, one that may break the certificate?

A certificate ("at most α of critical cases missed, at confidence 1 − δ") holds for data exchangeable with
the calibration data. Data never is exactly; what matters is whether a change can make the certified risk be
exceeded. Following Podkopaev & Ramdas (2022, "Tracking the risk of a deployed model and detecting harmful
distribution shifts", ICLR), the check warns on evidence of **harm**, not on any change of the score
distribution: a batch on which the model is *more* confident (referral scores ``1e-9 → 1e-7``, or smaller) is
no threat to the guarantee and must not warn. The previous check (a Kolmogorov–Smirnov test of the batch's
referral scores against the calibration's 101 stored quantiles) was two-sided, compared against the
calibration sample as if it were the true distribution, and reacted to moves of tiny scores: it was reported
warning on 1,311 in-domain Brain-MRI images (p = 2e-07) and on 20% of random 200-image batches, and on the shipped
Brain-MRI model's test split it warns on every batch of 200 when the model is made *more* confident (logits ×1.5)
or its scores below 1e-6 are multiplied by 100; this check warns on none (``research/results/harmful_shift/``).

Up to three one-sided tests on the ``n`` usable cases of a batch (fewer than ``min_batch`` = 20: not tested):

* **upper score band** (unlabelled). The referral score ``s = Σ_i p_i M[i, ŷ]`` is the decision's expected
  clinical cost; a case is missed only when it is decided (``s ≤ τ``) and wrong, and the decided cases most
  likely to be wrong are those with the highest ``s``. The calibration stores the band's lower edge ``b``,
  the ``(1 − β)``-quantile of the certification part's *decided* scores (``β`` = :data:`BAND_SHARE` = 10%), and
  ``K`` of its ``N`` cases with ``s > b`` (the decided near-misses ``b < s ≤ τ`` and the referred ``s > τ``).
  With ``x`` of the batch's ``n`` cases above ``b``, the null hypothesis "a batch case is no more likely to lie
  above ``b`` than a calibration case" is tested by **Fisher's exact test**, one-sided::

      p_band = P(X ≥ x),   X ~ Hypergeometric(N + n, K + x, n)     (= scipy.stats.fisher_exact, "greater")

  It is a permutation test: exact (conservative) when batch and calibration cases are exchangeable — the
  certificate's own assumption — and it accounts for the uncertainty of ``K`` (a fixed ``K/N`` taken as the
  truth would reject too often on large batches, the KS check's fault). Scores moving down, wherever they
  were, cannot raise ``x``: a benign shift cannot fire it.
* **out-of-distribution share** (unchanged): with the OOD guard's conformal threshold an image like the
  calibration images is flagged with probability at most ``ε`` (:mod:`rcl_hf.ood`), so with ``k`` flags,
  ``p_ood = P(Bin(n, ε) ≥ k)`` (``scipy.stats.binomtest``, "greater").
* **realised risk** (labelled batch only, e.g. a local audit set): with ``m`` losses among the ``c`` units of
  the certified risk (``critical_miss``: the critical-capable cases, a loss = decided with a critical error;
  ``cer_accepted``: the decided cases, a loss = a critical error), the null "the risk on data like this batch
  is at most ``α``" gets the exact binomial p-value ``p_risk = P(Bin(c, α) ≥ m)`` — the Podkopaev–Ramdas
  notion of a harmful shift (the risk exceeds its tolerated level) at one time point, with the
  Clopper–Pearson lower bound of the batch's risk reported beside it.

The tests that apply are combined by **Holm's** step-down correction at ``level`` (default
:data:`DEFAULT_DRIFT_LEVEL` = 5%, family-wise): on in-domain data (exchangeable with the calibration data and
within the certified risk) the chance that a batch warns is at most ``level`` by construction. The unlabelled
band test sees what the model's own probabilities say; a model confidently wrong on new data keeps low scores
and only the labelled test (or the OOD guard) can see that.

What the test needs is stored in the calibration (``score_band``: ``band_lower``, ``band_share``, ``n``,
``in_band``; :func:`score_band`). A file written before that field falls back to the same band computed from
its 101 ``score_quantiles`` and ``n_certify`` (:func:`band_reference`: ``K`` rounded from the quantile grid,
accurate to about one percentile); a calibration that refers every case has no score test (nothing is decided,
so nothing can be missed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["DriftReport", "check_drift", "score_band", "band_reference", "band_p_value", "holm",
           "DEFAULT_DRIFT_LEVEL", "MIN_DRIFT_BATCH", "BAND_SHARE"]

#: Family-wise level of the check: the largest chance that an in-domain batch warns.
DEFAULT_DRIFT_LEVEL = 0.05
MIN_DRIFT_BATCH = 20
#: Share ``β`` of the calibration's decided cases in the upper score band.
BAND_SHARE = 0.1
#: What each test looks for, in the words of the report's sentence.
TEST_WORDS = {
    "band": "more cases near or above the referral threshold than on the calibration images",
    "ood": "more images unlike the training images than the guard's false-alarm rate",
    "risk": "a realised {risk} above the certified {alpha:.0%}",
}


@dataclass
class DriftReport:
    """Outcome of :func:`check_drift`; ``drifted`` is ``None`` when the batch was too small to test.

    ``drifted`` is true when at least one test rejects after Holm's correction at ``level``: evidence that the
    certified risk may be exceeded on data like this batch. :meth:`message` is the one sentence users see."""

    n: int
    drifted: Optional[bool]
    level: float = DEFAULT_DRIFT_LEVEL
    tests: List[str] = field(default_factory=list)  # the tests that ran, in words (TEST_WORDS)
    ood_share: Optional[float] = None
    ood_expected: Optional[float] = None
    ood_p_value: Optional[float] = None
    band_lower: Optional[float] = None
    band_share: Optional[float] = None  # share of the batch with a referral score above band_lower
    band_expected: Optional[float] = None  # the calibration's share K / N
    band_p_value: Optional[float] = None
    risk_losses: Optional[int] = None
    risk_units: Optional[int] = None
    risk_lower: Optional[float] = None  # one-sided (1 - level) Clopper–Pearson lower bound of the batch's risk
    risk_p_value: Optional[float] = None
    reasons: List[str] = field(default_factory=list)

    def message(self) -> str:
        """What was tested and what the outcome means, in one sentence (the CLI, ``predict`` and the Space)."""
        if self.drifted is None:
            return (f"Harmful shift not tested: {self.n} image(s); at least {MIN_DRIFT_BATCH} are needed to tell "
                    "whether the guarantee still holds for the batch.")
        tested = "; ".join(self.tests) if self.tests else "nothing (no calibration or guard to compare with)"
        how = f"one-sided tests, Holm-corrected at {self.level:.0%}"
        if not self.drifted:
            return (f"No sign of a harmful shift in these {self.n} images (tested for {tested}; {how}); "
                    "a warning would mean evidence that the certified guarantee may not hold for such a batch.")
        return (f"Warning: this batch of {self.n} images shows a shift that may break the certified guarantee "
                f"({how}): " + "; ".join(self.reasons) + ". The certified miss rate may be exceeded on images "
                "like these: review them or recalibrate on data like them.")


def score_band(scores: np.ndarray, threshold: float, share: float = BAND_SHARE) -> Optional[Dict[str, float]]:
    """The upper score band of calibration scores (module docstring): ``{"band_lower": b, "band_share": β,
    "n": N, "in_band": K}``, or ``None`` when every case is referred (``threshold < 0``) or there are none."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if threshold < 0 or len(s) == 0:
        return None
    decided = s[s <= threshold]
    b = float(np.quantile(decided, 1.0 - share)) if len(decided) else float(threshold)
    return {"band_lower": b, "band_share": float(share), "n": int(len(s)), "in_band": int((s > b).sum())}


def band_reference(calibration: Any) -> Optional[Dict[str, float]]:
    """The band a :class:`~rcl_hf.calibration.RiskCalibration` carries (``score_band``) or, for a file written
    before it, the same band computed from its ``score_quantiles`` and ``n_certify``; ``None`` when it refers
    every case."""
    if calibration is None or calibration.refers_everything:
        return None
    stored = getattr(calibration, "score_band", None)
    if stored:
        return dict(stored)
    q = np.asarray(calibration.score_quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, len(q))
    n = int(calibration.n_certify)
    if n <= 0 or len(q) < 2:
        return None
    decided = float(np.interp(calibration.threshold, q, levels, left=0.0, right=1.0))
    at = decided * (1.0 - BAND_SHARE)
    b = float(np.interp(at, levels, q))
    return {"band_lower": b, "band_share": BAND_SHARE, "n": n, "in_band": int(round(n * (1.0 - at)))}


def band_p_value(x: Any, n: Any, in_band: int, n_reference: int) -> np.ndarray:
    """One-sided Fisher exact p-value that ``x`` of ``n`` batch cases above the band is more than the reference's
    ``in_band`` of ``n_reference``: ``P(X ≥ x)``, ``X ~ Hypergeom(n_reference + n, in_band + x, n)``
    (vectorised over ``x``, ``n``)."""
    from scipy.stats import hypergeom

    x, n = np.asarray(x, dtype=np.int64), np.asarray(n, dtype=np.int64)
    return np.clip(hypergeom.sf(x - 1, n_reference + n, in_band + x, n), 0.0, 1.0)


def holm(p_values: Dict[str, float], level: float) -> Dict[str, bool]:
    """Holm's step-down rejections at family-wise ``level``: sorted ascending, reject while
    ``p_(i) ≤ level / (m − i)`` (``i`` from 0)."""
    order = sorted(p_values, key=lambda k: p_values[k])
    out, m = {k: False for k in p_values}, len(p_values)
    for i, k in enumerate(order):
        if p_values[k] > level / (m - i):
            break
        out[k] = True
    return out


def check_drift(scores: Optional[np.ndarray], reference: Any = None, ood_flags: Optional[np.ndarray] = None,
                false_alarm_rate: Optional[float] = None, *, losses: Optional[np.ndarray] = None,
                alpha: Optional[float] = None, risk: str = "critical miss rate",
                level: float = DEFAULT_DRIFT_LEVEL, min_batch: int = MIN_DRIFT_BATCH) -> DriftReport:
    """Test a batch for a harmful shift (module docstring).

    Args:
        scores: the batch's referral scores (usable cases).
        reference: the calibration's score band (:func:`score_band`'s dict) or a ``RiskCalibration`` (its band,
            :func:`band_reference`); ``None``: no score test.
        ood_flags, false_alarm_rate: the OOD guard's flags on the batch and its false-alarm rate ``ε``.
        losses, alpha: a labelled batch: one 0/1 loss per unit of the certified risk (see the module
            docstring) and the certified ``α``; the realised-risk test runs when both are given.
        risk: the risk's name in the sentence.
        level: family-wise level of the Holm-corrected tests.
    """
    from scipy.stats import beta, binomtest

    n = int(len(scores)) if scores is not None else int(len(ood_flags)) if ood_flags is not None else 0
    if n < min_batch:
        return DriftReport(n=n, drifted=None, level=level)
    report = DriftReport(n=n, drifted=False, level=level)
    band = band_reference(reference) if reference is not None and not isinstance(reference, dict) else reference
    p: Dict[str, float] = {}
    why: Dict[str, str] = {}
    if scores is not None and band is not None:
        s = np.asarray(scores, dtype=np.float64)
        x = int((s > band["band_lower"]).sum())
        report.band_lower = float(band["band_lower"])
        report.band_share, report.band_expected = x / n, band["in_band"] / band["n"]
        report.band_p_value = p["band"] = float(band_p_value(x, n, int(band["in_band"]), int(band["n"])))
        report.tests.append(TEST_WORDS["band"])
        why["band"] = (f"{x} of {n} images ({x / n:.0%}) have a referral score above {report.band_lower:.2g}, near or "
                       f"above the referral threshold, against {report.band_expected:.0%} of the calibration images "
                       f"(Fisher p = {report.band_p_value:.1g})")
    if ood_flags is not None and false_alarm_rate is not None:
        k = int(np.asarray(ood_flags, dtype=bool).sum())
        report.ood_share, report.ood_expected = k / n, float(false_alarm_rate)
        report.ood_p_value = p["ood"] = float(binomtest(k, n, false_alarm_rate, alternative="greater").pvalue)
        report.tests.append(TEST_WORDS["ood"])
        why["ood"] = (f"{k} of {n} images ({k / n:.0%}) look unlike the training images, where at most "
                      f"{false_alarm_rate:.0%} would be expected (binomial p = {report.ood_p_value:.1g})")
    if losses is not None and alpha is not None:
        loss = np.asarray(losses, dtype=bool).reshape(-1)
        m, c = int(loss.sum()), int(len(loss))
        if c > 0:
            report.risk_losses, report.risk_units = m, c
            report.risk_p_value = p["risk"] = float(binomtest(m, c, alpha, alternative="greater").pvalue)
            report.risk_lower = float(beta.ppf(level, m, c - m + 1)) if m > 0 else 0.0
            report.tests.append(TEST_WORDS["risk"].format(risk=risk, alpha=alpha))
            why["risk"] = (f"the {risk} on this labelled batch is {m} of {c} ({m / c:.0%}), above the certified "
                           f"{alpha:.0%} (binomial p = {report.risk_p_value:.1g}; at least {report.risk_lower:.0%} "
                           f"with {1 - level:.0%} confidence)")
    rejected = holm(p, level)
    report.reasons = [why[k] for k in p if rejected[k]]
    report.drifted = bool(report.reasons)
    return report
