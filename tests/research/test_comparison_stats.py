"""research.comparison.stats: exact Clopper–Pearson intervals, exact McNemar (per seed and combined), the summary
of a pipeline and its seed × image bootstrap, on tiny synthetic decisions."""

from __future__ import annotations

import numpy as np
import pytest

from rcl_hf.metrics.functional import softmax
from rcl_hf.severity import SeverityMatrix
from research.comparison.stats import (
    PipelineSample,
    bootstrap_replicates,
    clopper_pearson,
    combined_mcnemar,
    exact_mcnemar,
    summarize,
)

SEV = SeverityMatrix.preset("synthetic")  # normal, lesion_round, lesion_oval, lesion_ring; lesion -> normal critical


def test_clopper_pearson_exact_values():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))  # closed form at k = 0
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))
    from scipy.stats import binomtest

    ref = binomtest(3, 858).proportion_ci(0.95, method="exact")
    assert clopper_pearson(3, 858) == pytest.approx((ref.low, ref.high))
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(11, 10)


def test_exact_mcnemar_by_hand_and_combined_over_seeds():
    a = np.array([1, 1, 1, 1, 1, 0, 0, 1], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1], bool)
    r = exact_mcnemar(a, b)
    assert (r.b, r.c) == (5, 0) and r.p_value == pytest.approx(2 * 0.5 ** 5)
    assert exact_mcnemar(b, b).p_value == 1.0
    comb = combined_mcnemar([r, exact_mcnemar(np.array([1, 0], bool), np.array([0, 1], bool))])
    assert (comb.b, comb.c) == (6, 1)
    assert comb.p_value == pytest.approx(2 * (1 + 7) / 2 ** 7)  # P(X<=1) doubled, X ~ Bin(7, 1/2)


def _sample(n=400, seeds=3, acc=0.8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    dec, probs = [], []
    for s in range(seeds):
        d = np.where(rng.random(n) < acc, y, rng.integers(0, 4, n))
        dec.append(d)
        probs.append(softmax(2.5 * np.eye(4)[d] + rng.normal(0, 0.5, (n, 4))))
    return PipelineSample(np.stack(dec), np.stack(probs), y)


def test_summary_means_counts_and_bootstrap_ci():
    s = _sample()
    out = summarize(s, SEV, n_boot=300)
    crit = SEV.critical[s.labels[None, :], s.decisions]
    assert out["n_critical_seeds"] == crit.sum(1).tolist()
    assert out["cer"] == pytest.approx(crit.mean())
    acc = (s.decisions == s.labels).mean(1)
    assert out["accuracy"] == pytest.approx(acc.mean())
    assert out["accuracy_seeds"] == pytest.approx(acc.tolist())
    for key in ("accuracy", "cer", "ece", "macro_f1"):
        lo, hi = out[f"{key}_ci"]
        assert lo <= out[key] <= hi and hi > lo
    # Clopper–Pearson counts images (seed-mean count out of N), not the S·N (seed, image) decisions
    assert out["cer_pooled_cp"] == clopper_pearson(int(round(crit.sum() / crit.shape[0])), crit.shape[1])
    # more test images -> narrower interval
    big = summarize(_sample(n=4000), SEV, n_boot=300)
    assert big["accuracy_ci"][1] - big["accuracy_ci"][0] < out["accuracy_ci"][1] - out["accuracy_ci"][0]


def test_bootstrap_combines_seed_variability_and_is_paired():
    s = _sample(seeds=3)
    # a pipeline whose seeds differ wildly gets a wider interval than one seed repeated
    same = PipelineSample(np.repeat(s.decisions[:1], 3, 0), np.repeat(s.probs[:1], 3, 0), s.labels)
    spread = PipelineSample(np.stack([s.labels, s.decisions[0], (s.labels + 1) % 4]), s.probs, s.labels)
    w_same = np.ptp(summarize(same, SEV, n_boot=400)["accuracy_ci"])
    w_spread = np.ptp(summarize(spread, SEV, n_boot=400)["accuracy_ci"])
    assert w_spread > 2 * w_same
    # same bootstrap seed -> same draws -> identical replicates for identical pipelines
    r1 = bootstrap_replicates(s, SEV, 50, bootstrap_seed=7)
    r2 = bootstrap_replicates(s, SEV, 50, bootstrap_seed=7)
    np.testing.assert_array_equal(r1["cer"], r2["cer"])
