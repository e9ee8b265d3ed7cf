"""rcl_hf.decision: the argmax / Bayes-risk / blend rules, the referral score, temperature and vector scaling,
checked by hand and against numpy references written out here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from rcl_hf.decision import (
    DEFAULT_BLEND_WEIGHTS,
    blend_cost_matrix,
    blend_decision,
    decision_scores,
    fit_temperature,
    fit_vector_scaling,
)
from rcl_hf.metrics import bayes_risk_decision
from rcl_hf.metrics.functional import softmax
from rcl_hf.severity import SeverityMatrix

SEV = SeverityMatrix.preset("synthetic")  # normal, lesion_round, lesion_oval, lesion_ring; lesion -> normal critical


def _sample_labels(rng, probs):
    """One label per row drawn from its categorical distribution."""
    return (rng.random((len(probs), 1)) < np.cumsum(probs, axis=1)).argmax(1)


# ----------------------------------------------------------------------------- rules
def test_blend_rule_endpoints_are_argmax_and_bayes():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(0, 2, size=(500, 4)))
    assert np.array_equal(blend_decision(p, SEV, 0.0), p.argmax(1))
    bayes, _ = bayes_risk_decision(p, SEV)
    assert np.array_equal(blend_decision(p, SEV, 1.0), bayes)
    # the blend is the Bayes decision of the blended cost matrix, by hand for one case
    q = np.array([[0.55, 0.45, 0.0, 0.0]])
    # deciding normal: (1-w)*0.45 + w*0.45*1.0 ; deciding round: (1-w)*0.55 + w*0.55*0.3
    assert blend_decision(q, SEV, 0.0).tolist() == [0]
    assert blend_decision(q, SEV, 0.2).tolist() == [0]   # 0.45 vs 0.473
    assert blend_decision(q, SEV, 0.3).tolist() == [1]   # 0.45 vs 0.4345
    np.testing.assert_allclose(blend_cost_matrix(SEV, 0.5), 0.5 * (1 - np.eye(4)) + 0.5 * SEV.matrix)
    with pytest.raises(ValueError, match="blend weight"):
        blend_cost_matrix(SEV, 1.5)


def test_blend_decision_equals_a_numpy_reference_at_every_weight():
    """w = 0: argmax_j p_j; w = 1: argmin_j Σ_i p_i M[i, j]; between: argmin_j (1-w)(1-p_j) + w Σ_i p_i M[i, j]."""
    rng = np.random.default_rng(2)
    p = softmax(rng.normal(0, 2, size=(2000, 4)))
    m = SEV.matrix
    np.testing.assert_array_equal(blend_decision(p, SEV, 0.0), np.argmax(p, axis=1))
    np.testing.assert_array_equal(blend_decision(p, SEV, 1.0), np.argmin(p @ m, axis=1))
    for w in (0.1, 0.35, 0.5, 0.8, 1.0):
        want = np.argmin((1 - w) * (1 - p) + w * (p @ m), axis=1)
        np.testing.assert_array_equal(blend_decision(p, SEV, w), want)
        np.testing.assert_array_equal(blend_decision(p, m, w), want)  # a plain cost matrix decides the same
    # the two ends really differ on these cases, so the checks above can tell the rules apart
    assert (np.argmax(p, axis=1) != np.argmin(p @ m, axis=1)).mean() > 0.05


def test_blend_rule_moves_along_the_front_monotonically_in_critical_errors():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 2000)
    p = softmax(3 * np.eye(4)[y] + rng.normal(0, 1.5, size=(2000, 4)))
    crit = [SEV.critical[y, blend_decision(p, SEV, w)].sum() for w in np.linspace(0, 1, 11)]
    assert crit[0] > crit[-1]
    assert all(a >= b for a, b in zip(crit, crit[1:]))  # more weight on M never adds critical errors here


def test_blend_rule_rejects_a_cost_matrix_that_is_not_square():
    p = np.full((2, 3), 1 / 3)
    for w in (0.0, 0.5, 1.0):
        with pytest.raises(ValueError, match="K x K"):
            blend_decision(p, np.ones((3, 2)), w)


def test_default_blend_weights_run_from_argmax_to_bayes_in_steps_of_0_05():
    assert DEFAULT_BLEND_WEIGHTS[0] == 0.0 and DEFAULT_BLEND_WEIGHTS[-1] == 1.0
    np.testing.assert_allclose(np.diff(DEFAULT_BLEND_WEIGHTS), 0.05)


def test_decision_scores_are_the_expected_cost_of_the_decision_taken():
    p = np.array([[0.55, 0.45, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    d = np.array([0, 3])
    # case 0 called normal: 0.45 · M[round, normal] = 0.45; case 1 called ring: 0.1·0.3 + 0.2·0.1 + 0.3·0.1 + 0 = 0.08
    np.testing.assert_allclose(decision_scores(p, d, SEV), [0.45, 0.08])
    rng = np.random.default_rng(3)
    q = softmax(rng.normal(size=(50, 4)))
    dq = rng.integers(0, 4, 50)
    want = [sum(q[n, i] * SEV.matrix[i, dq[n]] for i in range(4)) for n in range(50)]
    np.testing.assert_allclose(decision_scores(q, dq, SEV), want)
    with pytest.raises(ValueError, match="decision_scores needs"):
        decision_scores(p, [0], SEV)


# ----------------------------------------------------------------------------- scaling
def test_fit_temperature_matches_a_grid_search():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    z = 4.0 * np.eye(4)[y] + rng.normal(0, 2.0, (500, 4))  # over-confident logits
    t = fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 4001))
    nll = [-np.log(softmax(z / g)[np.arange(500), y]).mean() for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3)


@pytest.mark.parametrize("planted", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_planted_temperature(planted):
    """Labels drawn from softmax(z); a model whose logits are ``planted · z`` is recalibrated by T = planted."""
    rng = np.random.default_rng(4)
    z = rng.normal(0, 1.5, (20_000, 4))
    y = _sample_labels(rng, softmax(z))
    assert fit_temperature(planted * z, y) == pytest.approx(planted, rel=0.05)


def test_fit_temperature_rejects_bad_shapes():
    with pytest.raises(ValueError, match="fit_temperature needs"):
        fit_temperature(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="fit_temperature needs"):
        fit_temperature(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="fit_temperature needs"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))


def test_fit_vector_scaling_recovers_a_per_class_bias():
    """A model that under-calls class 0 by a constant: vector scaling pushes class 0 back up and the NLL drops."""
    rng = np.random.default_rng(10)
    k, n = 5, 3000
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 2.0
    z[:, 0] -= 1.5
    a, b = fit_vector_scaling(z, y)
    assert a.shape == b.shape == (k,)
    ell = log_softmax(z, axis=1)
    nll = lambda lp: -lp[np.arange(n), y].mean()  # noqa: E731
    assert nll(log_softmax(ell * a + b, axis=1)) < nll(ell) - 0.01
    assert b[0] - np.mean(b[1:]) > 0.5  # it learned to push class 0 back up
    with pytest.raises(ValueError, match="fit_vector_scaling needs"):
        fit_vector_scaling(z, y[:-1])
