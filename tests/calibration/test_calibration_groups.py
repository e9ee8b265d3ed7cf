"""The group-level (lesion-level) certificate of rcl_hf.calibration: valid when images of a group are correlated,
identical to the image-level Hoeffding–Bentkus certificate with one image per group, clear errors, storage."""

import json

import numpy as np
import pytest

from rcl_hf import SeverityMatrix
from rcl_hf.calibration import RiskCalibration, calibrate, evaluate_calibration
from rcl_hf.calibration.risk_control import group_risk_curve, hoeffding_bentkus_p_value, risk_curve

SEV = SeverityMatrix.preset("isic2018")
PRIOR = [0.11, 0.67, 0.05, 0.03, 0.11, 0.01, 0.02]
FIXED = dict(rule="argmax", temperature=1.0, tune_fraction=0.0)  # nothing tuned: the whole split certifies


def draw_groups(rng, n_groups, per_group, signal=1.5, noise=0.1):
    """Lesions with ``per_group`` near-identical images: one label and one logit vector per lesion (the
    group-level latent that makes a lesion's images err together) plus a little per-image noise."""
    y = rng.choice(len(PRIOR), size=n_groups, p=PRIOR)
    z = rng.normal(size=(n_groups, len(PRIOR)))
    z[np.arange(n_groups), y] += signal
    images = np.repeat(z, per_group, axis=0) + noise * rng.normal(size=(n_groups * per_group, len(PRIOR)))
    return images, np.repeat(y, per_group), np.repeat(np.arange(n_groups), per_group)


def test_group_certificate_holds_where_the_image_one_breaks_with_correlated_images():
    """200 calibration draws of 400 lesions x 6 near-identical images against a large test draw of independent
    lesions: the image-level LTT (2,400 'independent' images) exceeds α far more often than δ; the lesion-level
    one (400 units) holds in >= 1 - δ of the draws."""
    rng = np.random.default_rng(0)
    z_test, y_test, _ = draw_groups(rng, 20_000, 1)
    alpha, delta, draws = 0.1, 0.1, 200
    exceed = {"image": 0, "group": 0}
    coverage = {"image": [], "group": []}
    for i in range(draws):
        z, y, g = draw_groups(rng, 400, 6)
        for unit in exceed:
            cal = calibrate(z, y, SEV, alpha=alpha, delta=delta, groups=g, unit=unit, seed=i, **FIXED)
            m = evaluate_calibration(cal, z_test, y_test, SEV)
            exceed[unit] += m["critical_miss"] > alpha
            coverage[unit].append(m["coverage"])
    assert exceed["image"] >= 2 * delta * draws, exceed  # ~31% of draws: the image-level promise is broken
    assert exceed["group"] <= delta * draws, exceed  # ~2.5%: held in >= 90% of draws
    assert np.mean(coverage["group"]) > 0.3  # still a useful decision layer, not refer-all


def test_one_image_per_group_is_the_image_level_hoeffding_bentkus_certificate():
    rng = np.random.default_rng(1)
    z, y, g = draw_groups(rng, 1500, 1, signal=2.0, noise=0.0)
    cap = SEV.positive_rows[y]
    d = z.argmax(1)
    s = 1 - np.exp(z.max(1)) / np.exp(z).sum(1)  # any score works for the curve identity
    for kind in ("critical_miss", "cer_accepted"):
        image = risk_curve(s, SEV.critical[y, d], cap, kind)
        group = group_risk_curve(s, SEV.critical[y, d], cap, [f"lesion-{j}" for j in g], kind)
        assert np.array_equal(image.n, group.n) and np.allclose(image.losses, group.losses)
        assert np.array_equal(image.accepted, group.accepted) and group.unit == "group"
    for kind, alpha in (("critical_miss", 0.08), ("critical_miss", 0.15), ("cer_accepted", 0.03)):
        by_group = calibrate(z, y, SEV, risk_kind=kind, alpha=alpha, groups=g, seed=3)
        by_image = calibrate(z, y, SEV, risk_kind=kind, alpha=alpha, p_value="hoeffding_bentkus", seed=3)
        assert by_group.unit == "group" and by_group.p_value == "hoeffding_bentkus" and by_image.unit == "image"
        assert by_group.threshold == by_image.threshold and by_group.threshold > 0, (kind, alpha)
        assert by_group.n_risk == by_image.n_risk and by_group.n_groups == by_group.n_certify


def test_copies_of_an_image_do_not_buy_a_larger_sample():
    """Three byte-identical copies of every image: the group certificate is that of the originals, while the
    image-level one takes the copies for evidence and certifies a more lenient threshold."""
    rng = np.random.default_rng(2)
    z, y, _ = draw_groups(rng, 500, 1, signal=2.0, noise=0.0)
    z3, y3, g3 = np.repeat(z, 3, axis=0), np.repeat(y, 3), np.repeat(np.arange(500), 3)
    once = calibrate(z, y, SEV, alpha=0.1, p_value="hoeffding_bentkus", **FIXED)
    grouped = calibrate(z3, y3, SEV, alpha=0.1, groups=g3, **FIXED)
    naive = calibrate(z3, y3, SEV, alpha=0.1, p_value="hoeffding_bentkus", **FIXED)
    assert grouped.threshold == once.threshold
    assert naive.threshold > grouped.threshold
    assert grouped.n_risk == once.n_risk and naive.n_risk == 3 * once.n_risk


def test_group_loss_is_the_share_of_a_groups_critical_images_missed():
    # group a: 2 critical-capable images, 1 missed at τ >= 0.2; group b: 1, missed at τ >= 0.5; group c: none
    s = np.array([0.2, 0.1, 0.5, 0.3])
    err = np.array([True, False, True, True])
    cap = np.array([True, True, True, False])
    curve = group_risk_curve(s, err, cap, ["a", "a", "b", "c"], "critical_miss", thresholds=np.array([0.15, 0.2, 0.6]))
    assert list(curve.n) == [2, 2, 2]  # group c has no critical image: it does not enter
    assert np.allclose(curve.losses, [0.0, 0.5, 1.5]) and list(curve.accepted) == [1, 2, 4]
    cer = group_risk_curve(s, err, cap, ["a", "a", "b", "c"], "cer_accepted", thresholds=np.array([0.15, 0.2, 0.6]))
    assert list(cer.n) == [1, 1, 3] and np.allclose(cer.losses, [0.0, 0.5, 2.5])  # a: 1/2, b: 1, c: 1
    # the p-value is Hoeffding–Bentkus on the mean of the group losses (1.5 of 2 groups: r̂ = 0.75)
    assert hoeffding_bentkus_p_value(curve.losses[2:], curve.n[2:], 0.5)[0] == pytest.approx(1.0)


def test_too_few_groups_says_the_sample_size_is_the_number_of_groups():
    """600 images but 15 lesions with a critical image: the image-level certificate is possible, the lesion-level
    one is refused with the number of groups in the message."""
    rng = np.random.default_rng(4)
    z, y, _ = draw_groups(rng, 600, 1, signal=2.0, noise=0.0)
    cap = SEV.positive_rows[y]
    groups = np.where(cap, np.cumsum(cap) % 15, 1000 + np.arange(600))  # the critical images in 15 groups
    calibrate(z, y, SEV, alpha=0.1, unit="image", **FIXED)  # fine with images as the unit
    with pytest.raises(ValueError, match=r"too small to certify α = 0.1 .*has 15 groups with a critical-capable image "
                                         r"\(of \d+ groups in it\).*smallest α that 15 can certify is 0\.142; the "
                                         r"certificate is group-level .*number of groups, not of images"):
        calibrate(z, y, SEV, alpha=0.1, groups=groups, **FIXED)


def test_unit_and_p_value_choices_get_clear_errors():
    rng = np.random.default_rng(5)
    z, y, g = draw_groups(rng, 300, 2)
    with pytest.raises(ValueError, match="exact only for 0/1 losses.*hoeffding_bentkus"):
        calibrate(z, y, SEV, groups=g, p_value="binomial")
    with pytest.raises(ValueError, match="unit='group' needs the group ids"):
        calibrate(z, y, SEV, unit="group")
    with pytest.raises(ValueError, match="unit must be one of"):
        calibrate(z, y, SEV, groups=g, unit="patient")
    cal = calibrate(z, y, SEV, groups=g, unit="image")  # the old behaviour, on request
    assert cal.unit == "image" and cal.p_value == "binomial" and cal.n_groups is not None


def test_group_certificate_round_trips_with_its_unit(tmp_path):
    rng = np.random.default_rng(6)
    z, y, g = draw_groups(rng, 400, 3)
    cal = calibrate(z, y, SEV, alpha=0.15, groups=[f"L{j}" for j in g], dataset="isic2018")
    assert cal.unit == "group" and 0 < cal.n_risk <= cal.n_groups < cal.n_certify
    path = cal.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["unit"] == "group" and data["n_groups"] == cal.n_groups
    assert f"in {cal.n_groups:,} independent groups" in data["certificate"]
    back = RiskCalibration.load(tmp_path)
    assert back.to_dict() == cal.to_dict() and back.unit == "group"
    for field, value, message in (("unit", "lesion", "unit must be one of"),
                                  ("n_groups", None, "group-level certificate needs n_groups"),
                                  ("n_groups", cal.n_certify + 1, "n_groups must be absent or an integer"),
                                  ("p_value", "binomial", "needs p_value 'hoeffding_bentkus'")):
        path.write_text(json.dumps({**data, field: value}))
        with pytest.raises(ValueError, match=message):
            RiskCalibration.load(tmp_path)


V1_FILE = {  # a risk_calibration.json written before the unit and n_groups fields existed
    "risk_kind": "critical_miss", "alpha": 0.1, "delta": 0.1, "method": "ltt", "p_value": "binomial",
    "temperature": 1.2, "blend_weight": 0.0, "threshold": 0.05, "labels": ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
    "n_calibration": 1000, "n_tune": 300, "n_certify": 700, "n_risk": 130,
    "calibration": {"coverage": 0.6, "critical_miss": 0.05, "cer_accepted": 0.01, "accuracy_accepted": 0.9,
                    "accuracy": 0.8, "cer": 0.1},
    "score_quantiles": [0.0, 0.01, 0.2, 0.5], "dataset": "isic2018", "split": "validation", "tolerance": 0.01,
    "class_scale": None, "class_bias": None, "schema_version": 1, "notes": [], "rule": "argmax",
    "certificate": "Decides 60% of cases itself; at most 10% critical cases missed (neither diagnosed safely nor "
                   "referred), certified on 700 validation images of isic2018 at 90% confidence.",
}


def test_a_v1_file_without_unit_still_loads_as_image_level(tmp_path):
    (tmp_path / "risk_calibration.json").write_text(json.dumps(V1_FILE))
    cal = RiskCalibration.load(tmp_path)
    assert cal.unit == "image" and cal.n_groups is None and cal.threshold == 0.05
    assert cal.certificate() == V1_FILE["certificate"]  # the image-level sentence is unchanged


def test_run_calibration_reads_groups_from_the_npz_and_old_files_stay_image_level(tmp_path):
    from rcl_hf.calibration.model_folder import calibrate_run

    rng = np.random.default_rng(7)
    z, y, g = draw_groups(rng, 500, 2)
    zt, yt, _ = draw_groups(rng, 200, 1)
    np.savez_compressed(tmp_path / "test_predictions.npz", logits=zt, labels=yt)
    np.savez_compressed(tmp_path / "validation_predictions.npz", logits=z, labels=y)  # an old run: no groups
    old = calibrate_run(str(tmp_path), SEV, risk_kind="critical_miss", alpha=0.15, delta=0.1)
    assert old["calibration"]["unit"] == "image" and old["calibration"]["n_groups"] is None
    np.savez_compressed(tmp_path / "validation_predictions.npz", logits=z, labels=y,
                        groups=np.asarray([f"L{j}" for j in g], dtype=str))
    new = calibrate_run(str(tmp_path), SEV, risk_kind="critical_miss", alpha=0.15, delta=0.1)
    assert new["calibration"]["unit"] == "group" and new["calibration"]["n_groups"] <= 500
    assert RiskCalibration.load(tmp_path).unit == "group" and "test" in new


def test_training_saves_the_group_ids_beside_the_logits_in_row_order():
    import datasets

    from rcl_hf.train_job import _group_array

    split = datasets.Dataset.from_dict({"label": [0, 1, 1], "group_id": ["a", "b", "b"]})
    assert list(_group_array(split, np.array([0, 1, 1]))["groups"]) == ["a", "b", "b"]
    assert _group_array(split, np.array([1, 0, 1])) == {}  # rows not in the split's order: nothing claimed
    assert _group_array(split.remove_columns("group_id"), np.array([0, 1, 1])) == {}
