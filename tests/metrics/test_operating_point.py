"""The clinical operating figures on synthetic data: the validation threshold meets the specificity target with the
most sensitivity, the NPV is the hand count, group-bootstrap intervals hold the estimate and resample whole groups,
and too few negatives (or none, or no positive) is a clear ValueError."""

import numpy as np
import pytest
from scipy.stats import binomtest

from rcl_hf import SeverityMatrix
from rcl_hf.metrics.operating_point import (clopper_pearson, cleared_npv, critical_mass, group_resamples,
                                            operating_report, rates_at_threshold, threshold_at_specificity)

SEV = SeverityMatrix.preset("synthetic")  # class 0 "normal"; 1-3 lesions (critical disease)


def _planted_validation():
    neg = np.arange(100) / 100  # 0.00 .. 0.99: at most 3 of them may be flagged for specificity >= 97%
    pos = np.array([0.5, 0.96, 0.975, 0.98, 0.99, 0.995])
    return np.r_[neg, pos], np.r_[np.zeros(100, bool), np.ones(6, bool)]


def test_planted_threshold_meets_97_percent_specificity_with_the_most_sensitivity():
    s, pos = _planted_validation()
    out = threshold_at_specificity(s, pos, 0.97)
    assert out["threshold"] == 0.97 and out["specificity"] == pytest.approx(0.97)
    assert (out["tp"], out["fn"], out["tn"], out["fp"]) == (4, 2, 97, 3)
    # brute force over every threshold: none meeting the target has more sensitivity
    for t in np.r_[np.unique(s), np.inf]:
        r = rates_at_threshold(s, pos, t)
        if r["specificity"] >= 0.97:
            assert r["sensitivity"] <= out["sensitivity"]
    assert rates_at_threshold(s, pos, 0.96)["specificity"] < 0.97  # one step lower misses the target


def test_all_flagged_negatives_tie_above_every_positive_gives_flag_none():
    s = np.r_[np.zeros(90), np.ones(10), [0.5]]  # 10 negatives at the top score: no threshold below inf keeps 97%
    pos = np.r_[np.zeros(100, bool), [True]]
    out = threshold_at_specificity(s, pos, 0.97)
    assert out["threshold"] == np.inf and out["sensitivity"] == 0.0 and out["specificity"] == 1.0


@pytest.mark.parametrize("n_neg, n_pos, message", [
    (0, 10, "no negative"), (33, 10, "too few"), (50, 0, "no positive")])
def test_validation_without_enough_negatives_or_positives_is_a_value_error(n_neg, n_pos, message):
    rng = np.random.default_rng(0)
    s, pos = rng.random(n_neg + n_pos), np.r_[np.zeros(n_neg, bool), np.ones(n_pos, bool)]
    with pytest.raises(ValueError, match=message):
        threshold_at_specificity(s, pos, 0.97)
    if n_neg == 33:
        threshold_at_specificity(np.r_[s, 0.0], np.r_[pos, False], 0.97)  # 34 negatives: one false positive allowed


def test_npv_is_the_hand_count():
    labels = np.array([0, 0, 1, 0, 2, 0, 3, 1])
    decision = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    refer = np.array([0, 0, 0, 0, 1, 0, 0, 0], bool)
    # cleared (decided normal, not referred): cases 0, 1, 2, 5, 6; truly normal among them: 0, 1, 5
    assert cleared_npv(decision, refer, labels, SEV) == {"npv": 3 / 5, "n_cleared": 5, "n_cleared_non_critical": 3}
    assert cleared_npv(decision, np.ones(8, bool), labels, SEV)["npv"] is None  # none cleared


def test_critical_mass_uses_the_critical_rows():
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.0, 0.0, 0.8]])
    np.testing.assert_allclose(critical_mass(p, SEV), [0.3, 0.8])
    assert list(SEV.positive_rows) == [False, True, True, True]


def test_group_resamples_draw_whole_groups():
    groups = np.repeat(np.array(["a", "b", "c", "d"]), [1, 2, 3, 4])
    sizes = {g: int((groups == g).sum()) for g in "abcd"}
    for idx in group_resamples(groups, len(groups), n_boot=50, seed=1):
        drawn = groups[idx]
        assert all((drawn == g).sum() % sizes[g] == 0 for g in "abcd")
    with pytest.raises(ValueError, match="groups hold"):
        next(group_resamples(groups[:-1], len(groups)))


def _synthetic(n_groups, seed):
    """Cases in groups of 1-3, half normal; the critical score is over-confident (ECE well above its bootstrap
    bias)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes).astype(str)
    y = np.repeat(np.where(rng.random(n_groups) < 0.5, 0, rng.integers(1, 4, n_groups)), sizes)
    s = np.clip(np.where(y > 0, rng.beta(5, 2, len(y)), rng.beta(2, 5, len(y))), 0.01, 0.99)
    s = np.where(s > 0.5, np.minimum(s + 0.1, 0.99), np.maximum(s - 0.1, 0.01))  # over-confident
    p = np.c_[1 - s, s[:, None] * np.array([[0.8, 0.1, 0.1]])]
    p[y > 0, 1:] = s[y > 0, None] * np.eye(3)[y[y > 0] - 1] * 0.8 + s[y > 0, None] * 0.2 / 3
    return p / p.sum(1, keepdims=True), y, groups


def test_operating_report_on_synthetic_data_is_the_hand_count_and_its_intervals_hold_the_estimates():
    pv, yv, _ = _synthetic(300, 0)
    pt, yt, gt = _synthetic(300, 1)
    decision = np.where(critical_mass(pt, SEV) >= 0.5, 1, 0)
    refer = np.abs(critical_mass(pt, SEV) - 0.5) < 0.15
    rep = operating_report(pv, yv, pt, yt, decision, refer, SEV, test_groups=gt, n_boot=300, seed=0)
    t = rep["test"]
    chosen = threshold_at_specificity(critical_mass(pv, SEV), yv > 0)
    assert rep["validation"]["threshold"] == chosen["threshold"] and chosen["specificity"] >= 0.97
    flag, pos = critical_mass(pt, SEV) >= chosen["threshold"], yt > 0
    assert t["sensitivity"] == (flag & pos).sum() / pos.sum() and t["specificity"] == (~flag & ~pos).sum() / (~pos).sum()
    cleared = ~refer & (decision == 0)
    assert t["npv"] == (cleared & (yt == 0)).sum() / cleared.sum() and t["referral_share"] == refer.mean()
    assert rep["n_test_groups"] == 300 and t["ece"] > 0.05
    for key in ("sensitivity", "specificity", "npv", "referral_share", "ece"):
        lo, hi = t[f"{key}_ci"]
        assert lo <= t[key] <= hi, key
    for key in ("sensitivity", "specificity", "npv", "referral_share"):
        lo, hi = t[f"{key}_exact_ci"]
        assert lo <= t[key] <= hi, key
    assert t["npv_exact_ci"] == clopper_pearson(t["n_cleared_non_critical"], t["n_cleared"])


def test_operating_report_refuses_bad_probabilities():
    pv, yv, _ = _synthetic(100, 0)
    with pytest.raises(ValueError, match="sum to 1"):
        operating_report(pv * 2 / 3, yv, pv, yv, np.zeros(len(yv), int), np.zeros(len(yv), bool), SEV)
    with pytest.raises(ValueError, match="classes"):
        operating_report(pv[:, :3] / pv[:, :3].sum(1, keepdims=True), yv % 3, pv, yv, np.zeros(len(yv), int),
                         np.zeros(len(yv), bool), SEV)


def test_clopper_pearson_is_scipys_exact_interval():
    ci = binomtest(3, 20).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(3, 20) == (ci.low, ci.high)
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** 0.1)
    with pytest.raises(ValueError, match="n >= 1"):
        clopper_pearson(0, 0)
