"""Per-class certificates (rcl_hf.calibration.per_class): every critical-capable class within α in at least about
1 − δ of draws where the pooled certificate hides one built to fail; a class too small is named, never pooled."""

import json

import numpy as np
import pytest
from scipy.stats import binom

from rcl_hf import SeverityMatrix
from rcl_hf.calibration import RiskCalibration, calibrate, evaluate_calibration, smallest_certifiable_alpha
from rcl_hf.calibration.per_class import critical_miss_by_class

SEV = SeverityMatrix.preset("isic2018")  # critical-capable: MEL, BCC, AKIEC
PRIOR = np.array([0.15, 0.55, 0.12, 0.06, 0.08, 0.02, 0.02])
FIXED = dict(rule="argmax", temperature=1.0, tune_fraction=0.0)


def draw(rng, n, mel_signal=0.8, signal=3.0, prior=PRIOR):
    """Logits where melanoma is hard (weak signal) and every other class easy: the pool is dominated by the easy
    critical classes, so a pooled certificate can hold while melanoma's misses are far above α."""
    y = rng.choice(len(prior), size=n, p=prior / prior.sum())
    z = rng.normal(size=(n, len(prior)))
    z[np.arange(n), y] += np.where(y == SEV.labels.index("MEL"), mel_signal, signal)
    return z, y


def _by_class(cal, z, y):
    _, d, _, refer = cal.decide(z, SEV)
    return critical_miss_by_class(d, refer, y, SEV)


def test_each_class_holds_in_about_1_minus_delta_of_draws_where_pooling_hides_melanoma():
    rng = np.random.default_rng(0)
    z_test, y_test = draw(rng, 60_000)
    alpha, delta, draws = 0.1, 0.1, 40
    pooled_mel = class_exceed = 0
    coverage = {"pooled": [], "class": []}
    for i in range(draws):
        z, y = draw(rng, 3000)
        pooled = calibrate(z, y, SEV, alpha=alpha, delta=delta, seed=i, **FIXED)
        per = calibrate(z, y, SEV, alpha=alpha, delta=delta, seed=i, conditional="class", **FIXED)
        assert all(f["certified"] for f in per.per_class.values())
        pooled_mel += _by_class(pooled, z_test, y_test)["MEL"] > alpha
        class_exceed += any(v > alpha for v in _by_class(per, z_test, y_test).values())
        assert evaluate_calibration(per, z_test, y_test, SEV)["critical_miss"] <= alpha + 0.02  # the pool still holds
        coverage["pooled"].append(evaluate_calibration(pooled, z_test, y_test, SEV)["coverage"])
        coverage["class"].append(evaluate_calibration(per, z_test, y_test, SEV)["coverage"])
    assert pooled_mel >= 0.8 * draws  # the pooled certificate hides a disease missed far above α
    # simultaneous over the classes: at most δ in expectation (a count this high has probability < 0.2%)
    assert class_exceed <= binom.ppf(0.998, draws, delta), class_exceed
    assert np.mean(coverage["class"]) < np.mean(coverage["pooled"])  # the price: the hardest class sets the threshold


def test_a_class_too_small_is_named_with_its_smallest_alpha_and_not_pooled(tmp_path):
    rng = np.random.default_rng(1)
    prior = PRIOR.copy()
    prior[SEV.labels.index("AKIEC")] = 0.004  # about 8 actinic keratoses in 2,000 images
    z, y = draw(rng, 2000, mel_signal=3.0, prior=prior)
    cal = calibrate(z, y, SEV, alpha=0.1, delta=0.1, conditional="class", **FIXED)
    ak = cal.per_class["AKIEC"]
    assert not ak["certified"] and ak["n_risk"] == int((y == SEV.labels.index("AKIEC")).sum())
    assert ak["smallest_alpha"] == pytest.approx(smallest_certifiable_alpha(ak["n_risk"], 0.1)) and ak["smallest_alpha"] > 0.1
    assert cal.per_class["MEL"]["certified"] and cal.per_class["BCC"]["certified"]
    text = cal.certificate()
    assert "Per disease: MEL: at most 10% missed (certified on" in text
    assert f"AKIEC: too few images ({ak['n_risk']}) to certify 10%" in text and "only the pooled certificate" in text
    cal.save(tmp_path)
    data = json.loads((tmp_path / "risk_calibration.json").read_text())
    assert data["schema_version"] == 2 and data["conditional"] == "class"
    back = RiskCalibration.load(tmp_path)
    assert back.per_class == cal.per_class and back.certificate() == text


def test_per_class_with_groups_counts_lesions_and_bad_options_are_refused():
    rng = np.random.default_rng(2)
    z, y = draw(rng, 1500, mel_signal=3.0)
    groups = np.arange(len(y)) // 3  # three images per lesion
    y = y[groups * 3]  # one label per lesion
    cal = calibrate(z, y, SEV, alpha=0.2, delta=0.1, conditional="class", groups=groups, **FIXED)
    assert cal.unit == "group"
    assert cal.per_class["MEL"]["n_risk"] == len(np.unique(groups[y == SEV.labels.index("MEL")]))
    assert "certified on" in cal.certificate() and "groups" in cal.certificate()
    with pytest.raises(ValueError, match="conditional must be one of"):
        calibrate(z, y, SEV, conditional="site", **FIXED)
    with pytest.raises(ValueError, match="per-class certificates"):
        calibrate(z, y, SEV, conditional="class", risk_kind="cer_accepted", rule="argmax", temperature=1.0)
    bad = cal.to_dict()
    bad.pop("rule"), bad.pop("certificate")
    bad["per_class"] = {"not a label": {}}
    with pytest.raises(ValueError, match="per_class must map"):
        RiskCalibration.from_dict(bad)


def test_the_planner_s_unit_count_certifies_when_new_data_behave_like_the_split():
    """``units_needed`` against the certificate itself: a split of that size with that miss rate passes LTT at the
    planned threshold, one a fifth smaller does not; a rate >= α is not reachable; the floor is log δ / log(1 − α)."""
    from rcl_hf.calibration.planner import plan_calibration, units_needed
    from rcl_hf.calibration.risk_control import binomial_p_value

    n = units_needed(0.03, 0.05, 0.1)
    assert binomial_p_value(round(0.03 * n), n, 0.05) <= 0.1 < binomial_p_value(round(0.03 * 0.8 * n), int(0.8 * n), 0.05)
    assert units_needed(0.0, 0.05, 0.1) == int(np.ceil(np.log(0.1) / np.log(0.95))) == 45
    assert units_needed(0.05, 0.05, 0.1) is None and units_needed(0.2, 0.05, 0.1) is None
    assert units_needed(0.03, 0.05, 0.1, unit="group") > n  # Hoeffding–Bentkus asks for more than the exact binomial
    rng = np.random.default_rng(4)
    z, y = draw(rng, 4000)
    cal = calibrate(z, y, SEV, alpha=0.1, delta=0.1, **FIXED)
    _, d, _, refer = cal.decide(z, SEV)
    plan = plan_calibration(d, refer, y, SEV, 0.05, 0.1)
    assert set(plan) == {"MEL", "BCC", "AKIEC", "all critical classes"}
    by_class = critical_miss_by_class(d, refer, y, SEV)
    assert plan["MEL"]["miss_rate"] == pytest.approx(by_class["MEL"]) and plan["MEL"]["miss_rate"] > 0.05
    assert plan["MEL"]["needed"] is None  # melanoma is missed above 5% at this threshold: more data cannot certify it
    assert plan["BCC"]["units_now"] == int((y == SEV.labels.index("BCC")).sum())
    assert plan["BCC"]["needed"] == units_needed(plan["BCC"]["miss_rate"], 0.05, 0.1)


def test_rcl_calibrate_plan_writes_nothing_and_prints_the_table(tmp_path, synthetic_dataset_dir, capsys):
    from checkpoints import save_tiny_checkpoint

    from rcl_hf.commands.calibrate import main

    folder = save_tiny_checkpoint(tmp_path / "model")
    data = synthetic_dataset_dir(seed=3, n_train=64, n_validation=400, n_test=20)
    out = main(["--model", str(folder), "--dataset", str(data), "--plan", "true", "--risk_alpha", "0.2"])
    printed = capsys.readouterr().out
    assert "needed to certify critical_miss <= 20% at 90% confidence" in printed and "| all critical classes |" in printed
    assert set(out["plan"]) >= {"all critical classes"} and not (folder / "risk_calibration.json").exists()
