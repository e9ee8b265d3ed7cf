"""The certified decision layer (rcl_hf.calibration): guarantees, monotonicity, clear errors, storage, drift."""

import json

import numpy as np
import pytest
from scipy.stats import binom

from rcl_hf import SeverityMatrix
from rcl_hf.calibration import (
    RiskCalibration,
    calibrate,
    check_drift,
    evaluate_calibration,
    smallest_certifiable_alpha,
)
from rcl_hf.calibration.risk_control import (
    REFER_ALL,
    binomial_p_value,
    fixed_sequence_test,
    hoeffding_bentkus_p_value,
    risk_curve,
)

SEV = SeverityMatrix.preset("isic2018")
PRIOR = [0.11, 0.67, 0.05, 0.03, 0.11, 0.01, 0.02]


def draw(rng, n, signal=2.0):
    """Synthetic logits: the true class gets ``signal`` on top of standard normal noise."""
    y = rng.choice(len(PRIOR), size=n, p=PRIOR)
    z = rng.normal(size=(n, len(PRIOR)))
    z[np.arange(n), y] += signal
    return z, y


def test_realised_risk_exceeds_alpha_in_at_most_about_delta_of_draws():
    """LTT's promise P(risk > α) ≤ δ, checked over 60 independent calibration draws against a large test draw."""
    rng = np.random.default_rng(0)
    z_test, y_test = draw(rng, 60_000)
    alpha, delta, draws = 0.05, 0.1, 60
    exceed, coverage = 0, []
    for i in range(draws):
        z, y = draw(rng, 1000)
        cal = calibrate(z, y, SEV, alpha=alpha, delta=delta, rule="argmax", temperature=1.0, tune_fraction=0.0, seed=i)
        m = evaluate_calibration(cal, z_test, y_test, SEV)
        exceed += m["critical_miss"] > alpha
        coverage.append(m["coverage"])
    # at most δ in expectation: a count this high has probability < 0.2% under Bin(60, 0.1)
    assert exceed <= binom.ppf(0.998, draws, delta), exceed
    assert 0.2 < np.mean(coverage) < 0.95  # it decides a real share of cases, not a trivial refer-all


def test_naive_threshold_without_the_correction_breaks_the_promise():
    """The control: the largest threshold whose *empirical* validation risk is ≤ α exceeds α about half the time."""
    rng = np.random.default_rng(1)
    z_test, y_test = draw(rng, 60_000)
    exceed = 0
    for i in range(30):
        z, y = draw(rng, 1000)
        cal = calibrate(z, y, SEV, alpha=0.05, delta=0.1, rule="argmax", temperature=1.0, tune_fraction=0.0)
        _, d, s, _ = cal.decide(z, SEV)
        curve = risk_curve(s, SEV.critical[y, d], SEV.positive_rows[y], "critical_miss")
        ok = np.flatnonzero(curve.risk <= 0.05)
        naive = RiskCalibration(**{**cal.__dict__, "threshold": float(curve.thresholds[ok].max())})
        exceed += evaluate_calibration(naive, z_test, y_test, SEV)["critical_miss"] > 0.05
    assert exceed >= 6  # far more than δ = 10% of 30


def test_certified_threshold_is_monotone_in_alpha_and_delta():
    rng = np.random.default_rng(2)
    z, y = draw(rng, 1500)
    for kind, alphas in (("critical_miss", [0.05, 0.08, 0.1, 0.15, 0.2]), ("cer_accepted", [0.01, 0.02, 0.03, 0.05])):
        by_alpha = [calibrate(z, y, SEV, risk_kind=kind, alpha=a, delta=0.1).threshold for a in alphas]
        assert by_alpha == sorted(by_alpha), (kind, by_alpha)
        by_delta = [calibrate(z, y, SEV, risk_kind=kind, alpha=alphas[1], delta=d).threshold for d in (0.01, 0.05, 0.1, 0.2)]
        assert by_delta == sorted(by_delta), (kind, by_delta)
    assert by_alpha[0] < by_alpha[-1]  # and it does move


def test_too_small_calibration_split_says_the_smallest_certifiable_alpha():
    rng = np.random.default_rng(3)
    z, y = draw(rng, 120)
    with pytest.raises(ValueError, match=r"too small to certify α = 0.01 .* smallest α that \d+ can certify is 0\.\d+"):
        calibrate(z, y, SEV, alpha=0.01, delta=0.1)
    n = 40
    assert smallest_certifiable_alpha(n, 0.1) == pytest.approx(1 - 0.1 ** (1 / n))
    assert binomial_p_value(np.array([0]), np.array([n]), smallest_certifiable_alpha(n, 0.1))[0] == pytest.approx(0.1)


def test_bad_inputs_get_one_clear_error():
    rng = np.random.default_rng(4)
    z, y = draw(rng, 600)
    with pytest.raises(ValueError, match="logits have 4 classes but the severity matrix has 7"):
        calibrate(z[:, :4], y, SEV)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\]"):
        calibrate(z, y + 7, SEV)
    with pytest.raises(ValueError, match="shares 1 group"):
        calibrate(z, y, SEV, groups=[f"p{i}" for i in range(600)], train_groups=["p5", "other"])
    with pytest.raises(ValueError, match="conformal risk control needs a risk monotone"):
        calibrate(z, y, SEV, risk_kind="cer_accepted", method="crc")
    with pytest.raises(ValueError, match="alpha must be a number in"):
        calibrate(z, y, SEV, alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        calibrate(np.where(z > 3, np.nan, z), y, SEV)


def test_groups_keep_tuning_and_certification_apart():
    rng = np.random.default_rng(5)
    z, y = draw(rng, 900)
    groups = np.repeat(np.arange(300), 3)
    from rcl_hf.calibration.fit import _split

    tune, cert = _split(y, groups, 0.3, 0)
    assert not set(groups[tune]) & set(groups[cert])
    assert len(tune) + len(cert) == 900 and 0.2 < len(tune) / 900 < 0.45


def test_p_values_agree_with_their_definitions():
    k, n, a = np.array([3]), np.array([100]), 0.08
    assert binomial_p_value(k, n, a)[0] == pytest.approx(binom.cdf(3, 100, 0.08))
    r = 0.03
    h = r * np.log(r / a) + (1 - r) * np.log((1 - r) / (1 - a))
    ref = min(np.exp(-100 * h), np.e * binom.cdf(3, 100, a))
    assert hoeffding_bentkus_p_value(k, n, a)[0] == pytest.approx(ref)
    assert list(fixed_sequence_test(np.array([0.01, 0.05, 0.2, 0.01]), [0, 1, 2, 3], 0.1)) == [0, 1]


def test_conformal_risk_control_bounds_the_mean_risk():
    rng = np.random.default_rng(6)
    z_test, y_test = draw(rng, 40_000)
    risks = []
    for i in range(40):
        z, y = draw(rng, 600)
        cal = calibrate(z, y, SEV, method="crc", alpha=0.1, rule="argmax", temperature=1.0, tune_fraction=0.0)
        risks.append(evaluate_calibration(cal, z_test, y_test, SEV)["critical_miss"])
    assert np.mean(risks) <= 0.1 + 2 * np.std(risks) / np.sqrt(len(risks))


def test_saved_calibration_round_trips_and_damage_is_named(tmp_path):
    rng = np.random.default_rng(7)
    z, y = draw(rng, 800)
    cal = calibrate(z, y, SEV, alpha=0.1, dataset="isic2018")
    path = cal.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["risk_kind"] == "critical_miss" and "certified on" in data["certificate"]
    back = RiskCalibration.load(tmp_path)
    assert back.to_dict() == cal.to_dict()
    assert RiskCalibration.load(tmp_path / "missing") is None
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema_version 99 is not supported"):
        RiskCalibration.load(tmp_path)
    data["schema_version"] = 1
    data["alpha"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="alpha must be a number in"):
        RiskCalibration.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable risk calibration"):
        RiskCalibration.load(tmp_path)
    with pytest.raises(ValueError, match="made for labels"):
        cal.check_severity(SeverityMatrix.preset("brain_tumor_mri"))


def test_refer_all_when_nothing_can_be_certified():
    rng = np.random.default_rng(8)
    z, y = draw(rng, 800, signal=0.0)  # a model that knows nothing
    cal = calibrate(z, y, SEV, risk_kind="cer_accepted", alpha=0.005, delta=0.1)
    assert cal.threshold == REFER_ALL and cal.refers_everything and "every case is referred" in cal.certificate()


def test_drift_flags_a_shifted_batch_and_not_a_like_one():
    rng = np.random.default_rng(9)
    z, y = draw(rng, 1500)
    cal = calibrate(z, y, SEV, alpha=0.1)
    like, _ = draw(rng, 200)
    shifted, _ = draw(rng, 200, signal=0.3)  # a source where the model is unsure
    s_like = cal.decide(like, SEV)[2]
    s_shift = cal.decide(shifted, SEV)[2]
    assert check_drift(s_like, cal, rng.random(200) < 0.05, 0.05).drifted is False
    report = check_drift(s_shift, cal, rng.random(200) < 0.3, 0.05)
    assert report.drifted and len(report.reasons) == 2 and "may break the certified guarantee" in report.message()
    assert check_drift(s_shift[:5], cal).drifted is None  # the rest: tests/calibration/test_drift.py


def test_vector_scaling_travels_in_the_file(tmp_path):
    """calibrate(scaling="vector") keeps the fitted per-class scale and bias (the fit itself: tests/test_decision.py);
    they are saved, reloaded and applied to logits."""
    rng = np.random.default_rng(10)
    z, y = draw(rng, 3000)
    z[:, 0] -= 1.5
    cal = calibrate(z, y, SEV, scaling="vector", alpha=0.2)
    assert cal.class_scale is not None and len(cal.class_bias) == 7
    cal.save(tmp_path)
    back = RiskCalibration.load(tmp_path)
    assert np.allclose(back.probabilities(z[:5]), cal.probabilities(z[:5]))
    # the vector scaling acts on log-probabilities: logits shifted by a constant per row give the same answer
    assert np.allclose(cal.probabilities(z[:5] + 3.0), cal.probabilities(z[:5]))
    assert np.allclose(cal.probabilities(z[:5]).sum(1), 1.0)
    with pytest.raises(ValueError, match="scaling must be"):
        calibrate(z, y, SEV, scaling="matrix")
