"""The harmful-shift check (rcl_hf.calibration.drift): false warnings on in-domain batches at most the level,
no warning on a benign shift, a warning on a harmful one, the labelled risk test, and old files."""

import json

import numpy as np
import pytest
from scipy.stats import binom, fisher_exact

from rcl_hf import SeverityMatrix
from rcl_hf.calibration import RiskCalibration, calibrate, check_drift
from rcl_hf.calibration.drift import (BAND_SHARE, DEFAULT_DRIFT_LEVEL, band_p_value, band_reference, holm,
                                      score_band)

SEV = SeverityMatrix.preset("isic2018")
PRIOR = [0.11, 0.67, 0.05, 0.03, 0.11, 0.01, 0.02]
DRAWS = 400
#: the most false warnings out of DRAWS that a 5% rate makes plausible (one-sided, 0.1%)
MOST = int(binom.ppf(0.999, DRAWS, DEFAULT_DRIFT_LEVEL))


def draw(rng, n, signal=2.0):
    y = rng.choice(len(PRIOR), size=n, p=PRIOR)
    z = rng.normal(size=(n, len(PRIOR)))
    z[np.arange(n), y] += signal
    return z, y


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    z, y = draw(rng, 2000)
    cal = calibrate(z, y, SEV, alpha=0.15, delta=0.1)
    pool_z, pool_y = draw(rng, 20_000)  # in-domain: the calibration's distribution
    _, d, s, refer = cal.decide(pool_z, SEV)
    return cal, pool_z, pool_y, s


def test_the_band_is_stored_and_the_fisher_p_value_is_scipys(setup):
    cal = setup[0]
    band = cal.score_band
    assert band["n"] == cal.n_certify and band["band_share"] == BAND_SHARE
    assert abs(band["in_band"] / band["n"] - (1 - cal.calibration["coverage"] * (1 - BAND_SHARE))) < 0.02
    for x, n in ((0, 20), (5, 20), (30, 200), (200, 200)):
        expected = fisher_exact([[x, n - x], [band["in_band"], band["n"] - band["in_band"]]], alternative="greater")[1]
        assert band_p_value(x, n, band["in_band"], band["n"]) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert score_band(np.ones(10), -1.0) is None  # refers everything: no score test


def test_holm_steps_down():
    assert holm({"a": 0.01, "b": 0.04}, 0.05) == {"a": True, "b": True}
    assert holm({"a": 0.03, "b": 0.04}, 0.05) == {"a": False, "b": False}
    assert holm({"a": 0.02, "b": 0.5}, 0.05) == {"a": True, "b": False}
    assert holm({}, 0.05) == {}


@pytest.mark.parametrize("n", [20, 50, 200])
def test_in_domain_batches_warn_at_most_the_level(setup, n):
    """Batches from the calibration distribution, with OOD flags at the guard's false-alarm rate: the
    family-wise false-warning rate is at most 5% (plus the noise of DRAWS draws)."""
    cal, _, _, s = setup
    rng = np.random.default_rng(n)
    warned = 0
    for _ in range(DRAWS):
        idx = rng.choice(len(s), n, replace=False)
        warned += check_drift(s[idx], cal, rng.random(n) < 0.05, 0.05).drifted
    assert warned <= MOST, (n, warned)


def test_a_benign_shift_does_not_warn(setup):
    """Scores toward 0 (a more confident model, or tiny scores 1e-9 -> 1e-7) are no threat: never a warning,
    where the old two-sided KS test fires."""
    from scipy.stats import kstest

    cal, _, _, s = setup
    rng = np.random.default_rng(1)
    for _ in range(50):
        idx = rng.choice(len(s), 200, replace=False)
        assert not check_drift(s[idx] * 0.1, cal).drifted
        tiny = np.where(s[idx] < 1e-3, s[idx] * 100, s[idx])  # tiny scores move up a lot, staying tiny
        assert not check_drift(np.minimum(tiny, cal.score_band["band_lower"]), cal).drifted
    confident, _ = draw(rng, 200, signal=4.0)
    report = check_drift(cal.decide(confident, SEV)[2], cal)
    assert not report.drifted and report.band_share < report.band_expected
    q = cal.score_quantiles
    assert kstest(s[:200] * 0.1, lambda x: np.interp(x, q, np.linspace(0, 1, len(q)))).pvalue < 0.01  # KS would warn


def test_a_harmful_shift_warns_most_of_the_time(setup):
    cal = setup[0]
    rng = np.random.default_rng(2)
    unsure = [check_drift(cal.decide(draw(rng, 200)[0] / 2, SEV)[2], cal).drifted for _ in range(50)]
    assert np.mean(unsure) >= 0.9  # the model less sure (temperature x2): more mass near or above the threshold
    half = [check_drift(cal.decide(draw(rng, 50)[0] / 2, SEV)[2], cal).drifted for _ in range(50)]
    assert np.mean(half) >= 0.5  # 50 images: less power, still most of the time
    z, _ = draw(rng, 200)
    s = cal.decide(z, SEV)[2]
    ood = [check_drift(s, cal, rng.random(200) < 0.3, 0.05).drifted for _ in range(50)]
    assert np.mean(ood) >= 0.9  # many images unlike the training images
    report = check_drift(cal.decide(draw(rng, 200, signal=0.3)[0], SEV)[2], cal, rng.random(200) < 0.3, 0.05)
    assert report.drifted and len(report.reasons) == 2
    text = report.message()
    assert "may break the certified guarantee" in text and "Fisher" in text and "Holm-corrected at 5%" in text


def test_the_labelled_test_fires_when_the_miss_rate_is_well_above_alpha():
    rng = np.random.default_rng(3)
    alpha = 0.1
    high = [check_drift(np.zeros(200), None, losses=rng.random(60) < 0.35, alpha=alpha).drifted for _ in range(100)]
    assert np.mean(high) >= 0.9
    low = [check_drift(np.zeros(200), None, losses=rng.random(60) < 0.05, alpha=alpha).drifted for _ in range(DRAWS)]
    assert np.sum(low) <= MOST
    at = [check_drift(np.zeros(200), None, losses=rng.random(60) < alpha, alpha=alpha).drifted for _ in range(DRAWS)]
    assert np.sum(at) <= MOST  # at the boundary the exact test keeps its level
    report = check_drift(np.zeros(30), None, losses=np.arange(30) < 15, alpha=alpha, risk="critical miss rate")
    assert report.drifted and report.risk_losses == 15 and report.risk_units == 30 and 0.3 < report.risk_lower < 0.5
    assert "critical miss rate on this labelled batch is 15 of 30" in report.message()


def test_the_decision_layer_runs_the_labelled_test_on_labels(setup):
    from rcl_hf import DecisionLayer

    cal, pool_z, pool_y, _ = setup
    layer = DecisionLayer(SEV, cal)
    ok = layer.apply(pool_z[:300], labels=pool_y[:300]).drift
    assert ok.risk_units == int(SEV.positive_rows[pool_y[:300]].sum()) and not ok.drifted
    wrong = (pool_y[:300] + 1) % len(PRIOR)  # labels the model gets wrong: many misses
    bad = layer.apply(pool_z[:300], labels=wrong).drift
    assert bad.drifted and bad.risk_p_value < 0.01
    with pytest.raises(ValueError, match="labels must hold one class index"):
        layer.apply(pool_z[:30], labels=[0.5] * 30)


@pytest.mark.parametrize("version", [1, 2])
def test_a_file_without_the_band_loads_and_falls_back_to_its_quantiles(setup, tmp_path, version):
    cal, _, _, s = setup
    cal.save(tmp_path)
    data = json.loads((tmp_path / "risk_calibration.json").read_text())
    del data["score_band"]
    data["schema_version"] = version
    if version == 1:
        for k in ("conditional", "per_class"):
            del data[k]
    (tmp_path / "risk_calibration.json").write_text(json.dumps(data))
    old = RiskCalibration.load(tmp_path)
    assert old.score_band is None and old.schema_version == version
    fallback = band_reference(old)
    assert fallback["n"] == cal.n_certify
    assert abs(fallback["in_band"] - cal.score_band["in_band"]) <= 0.02 * cal.n_certify
    assert fallback["band_lower"] == pytest.approx(cal.score_band["band_lower"], rel=0.2)
    assert check_drift(s[:200], old).band_p_value is not None
    data["score_band"] = {"band_lower": 0.1, "band_share": 0.1, "n": 10, "in_band": 11}
    (tmp_path / "risk_calibration.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="score_band must be absent"):
        RiskCalibration.load(tmp_path)


def test_small_batches_are_not_tested_and_the_sentences_say_what_was_tested(setup):
    cal, _, _, s = setup
    small = check_drift(s[:5], cal)
    assert small.drifted is None and "not tested" in small.message() and "at least 20" in small.message()
    fine = check_drift(s[:100], cal, np.zeros(100, dtype=bool), 0.05)
    assert fine.drifted is False and "near or above the referral threshold" in fine.message()
    assert "unlike the training images" in fine.message() and "a warning would mean" in fine.message()
