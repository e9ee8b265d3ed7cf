"""Out-of-distribution guard (rcl_hf.ood): Mahalanobis on penultimate embeddings, threshold on validation.

* the estimator on Gaussian data: shifted points flagged, about the stated share of fresh in-distribution
  points flagged;
* a small model trained on the synthetic dataset: noise and another image domain are flagged, its own
  held-out images mostly are not; ``predict`` returns the score and flag; the file is safetensors;
* ``realdata``: a Brain MRI model (frozen EfficientNet-Lite0) flags ISIC and synthetic images (>= 95%)
  and <= 5% of its own validation images (set RCL_OOD_REPORT=path.json to keep the measured rates).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcl_hf.ood import OOD_GUARD_FILE, OODGuard, fit_guard_from_embeddings
from rcl_hf.ood_fit import fit_ood_guard

DATA = Path(os.environ.get("RCL_DATA_ROOT", "/work/shared/data"))


def test_guard_on_gaussian_embeddings_flags_shifted_points_and_keeps_its_false_alarm_rate(tmp_path):
    rng = np.random.default_rng(0)
    d, k = 16, 3
    centres = rng.normal(0, 3, size=(k, d))
    cov = np.diag(rng.uniform(0.5, 2.0, d))

    def sample(n):
        y = rng.integers(0, k, n)
        return centres[y] + rng.multivariate_normal(np.zeros(d), cov, n), y

    z_train, y_train = sample(3000)
    z_val, _ = sample(1000)
    guard = fit_guard_from_embeddings(z_train, y_train, z_val, false_alarm_rate=0.05, labels=["a", "b", "c"])
    z_fresh, _ = sample(4000)
    rate = guard.flag(z_fresh).mean()
    assert 0.03 <= rate <= 0.07, rate
    far = centres[0] + 8.0 * np.sqrt(np.diag(cov)) * rng.choice([-1, 1], size=(500, d))
    assert guard.flag(far).mean() == 1.0
    # a point at a fitted class mean scores 0, the true centre well inside the threshold
    assert guard.score(guard.means[:1])[0] == pytest.approx(0.0, abs=1e-6)
    assert guard.score(centres[:1])[0] < 0.1 * guard.threshold
    # round trip through safetensors (no pickle) keeps every figure
    path = guard.save(tmp_path)
    assert path.name == OOD_GUARD_FILE and path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    back = OODGuard.load(tmp_path)
    assert back.threshold == pytest.approx(guard.threshold) and back.meta["classes"] == ["a", "b", "c"]
    assert guard.delta == 0.1 and back.delta == 0.1  # the default rule: at most 5% with 90% confidence
    assert np.allclose(back.score(z_fresh[:50]), guard.score(z_fresh[:50]), rtol=1e-4)
    assert OODGuard.load(tmp_path / "absent") is None


def test_conformal_threshold_keeps_false_alarms_at_most_the_target_on_average():
    """Split conformal: over many calibration draws of 200 images, the mean held-out false-alarm rate is
    at most ε (the old validation quantile was at ε only asymptotically)."""
    from rcl_hf.ood import conformal_threshold

    rng = np.random.default_rng(1)
    rates = [float((rng.chisquare(8, 20_000) > conformal_threshold(rng.chisquare(8, 200), 0.05)).mean())
             for _ in range(300)]
    assert np.mean(rates) <= 0.05 + 3 * np.std(rates) / np.sqrt(len(rates))
    assert np.mean(rates) > 0.04  # and not needlessly conservative
    s = np.arange(1.0, 20.0)
    assert conformal_threshold(s, 0.05) == 19.0  # k = ceil(20 * 0.95) = 19
    with pytest.raises(ValueError, match="cannot certify a false-alarm rate of 0.05"):
        conformal_threshold(s[:10], 0.05)


def test_confidence_threshold_keeps_each_guards_false_alarms_under_the_target_in_all_but_delta_of_draws():
    """Training-conditional rule: a calibration draw gives a threshold whose own false-alarm rate exceeds ε in at
    most δ of draws; split-conformal exceeds it in about half of them. Scores are uniform, so a threshold t has a
    false-alarm rate of exactly 1 - t."""
    from scipy.stats import binom

    from rcl_hf.ood import conformal_threshold, min_calibration_size

    rng = np.random.default_rng(2)
    draws, n, eps, delta = 2000, 400, 0.05, 0.1
    over_pac = sum(1 - conformal_threshold(rng.uniform(size=n), eps, delta) > eps for _ in range(draws))
    over_split = sum(1 - conformal_threshold(rng.uniform(size=n), eps) > eps for _ in range(draws))
    assert over_pac <= binom.ppf(0.999, draws, delta)  # at most δ, up to sampling noise
    assert over_pac >= binom.ppf(0.001, draws, 0.06)  # and not needlessly conservative (the exact tail is ~0.09)
    assert over_split >= 0.35 * draws  # the average-only rule leaves a given guard above ε far more often
    assert min_calibration_size(0.05, 0.1) == 45 and min_calibration_size(0.05) == 19  # (1 - ε)^45 <= δ < (1 - ε)^44
    assert conformal_threshold(np.arange(1.0, 46.0), 0.05, 0.1) == 45.0  # n = 45: only the largest score will do
    with pytest.raises(ValueError, match="with 90% confidence .need at least 45"):
        conformal_threshold(np.arange(1.0, 45.0), 0.05, 0.1)
    with pytest.raises(ValueError, match="delta must be in"):
        conformal_threshold(np.arange(1.0, 100.0), 0.05, 1.5)


def test_guard_rejects_bad_inputs():
    z = np.zeros((30, 4))
    with pytest.raises(ValueError, match="false_alarm_rate"):
        fit_guard_from_embeddings(z, np.zeros(30, int), z, false_alarm_rate=0.9)
    with pytest.raises(ValueError, match="validation embeddings"):
        fit_guard_from_embeddings(z, np.zeros(30, int), z[:5])
    with pytest.raises(ValueError, match="with 90% confidence .the conformal rule needs at least 45"):
        fit_guard_from_embeddings(z, np.zeros(30, int), np.ones((44, 4)))
    guard = fit_guard_from_embeddings(np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 2, np.ones((20, 4)),
                                      delta=None)
    with pytest.raises(ValueError, match=r"embeddings must be \(N, 4\)"):
        guard.score(np.zeros((2, 5)))


# ------------------------------------------------------------------------------ a trained synthetic model
@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    """A resnet18 head trained on frozen 32-px synthetic embeddings (seconds), with its guard."""
    from rcl_hf.data.synthetic import load_synthetic
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training
    from rcl_hf.trainer import RiskArguments

    out = tmp_path_factory.mktemp("ood_model")
    data_args = DataArguments(dataset="synthetic", max_train_samples=400, max_eval_samples=200, cache_dir="none")
    run_training(ModelArguments(backbone="resnet18", image_size=32, freeze_backbone=True, ood_guard=True,
                                ood_guard_samples=300), data_args,
                 RiskArguments(loss="ce"),
                 default_training_args(str(out), num_train_epochs=3, learning_rate=1e-2, save_strategy="no",
                                       eval_strategy="no", load_best_model_at_end=False, disable_tqdm=True,
                                       per_device_train_batch_size=64))
    os.replace(out / OOD_GUARD_FILE, out / "guard_fitted_by_the_run.safetensors")  # kept for the test below
    dsd = load_synthetic(seed=0, n_train=400, n_validation=200, n_test=200)
    path = fit_ood_guard(out, dsd["train"], dsd["validation"])
    return out, dsd


def test_a_frozen_run_fits_its_guard_from_its_own_embeddings_as_from_the_images(synthetic_model, tmp_path):
    """run_training on a frozen backbone fits the guard from the embeddings it trained on (no second forward
    pass): the same guard as fit_ood_guard embedding the run's images again, with the same seeded sample."""
    import shutil

    from rcl_hf.train_data import load_data, run_splits
    from rcl_hf.train_job import DataArguments

    folder, _ = synthetic_model
    data_args = DataArguments(dataset="synthetic", max_train_samples=400, max_eval_samples=200, cache_dir="none")
    splits = run_splits(load_data(data_args)[0], data_args)
    again = tmp_path / "again"
    shutil.copytree(folder, again, ignore=shutil.ignore_patterns(OOD_GUARD_FILE, "guard_*"))
    seed = json.loads((folder / "rcl_run.json").read_text())["seed"]  # the run samples its guard rows with its seed
    fit_ood_guard(again, splits["train"], splits["validation"], max_samples=300, seed=seed)
    from_run = OODGuard.load(folder / "guard_fitted_by_the_run.safetensors")
    from_images = OODGuard.load(again / OOD_GUARD_FILE)
    assert from_run.meta["n_calibration"] == from_images.meta["n_calibration"] == 200

    def gap(a: OODGuard, b: OODGuard) -> float:  # largest mean difference, relative to the means' scale
        return float(np.abs(a.means - b.means).max() / np.abs(b.means).max())

    # the two preprocessing paths (the training's transform, the processor at inference) agree to float noise
    assert gap(from_run, from_images) < 1e-4, gap(from_run, from_images)
    np.testing.assert_allclose(from_run.precision, from_images.precision, rtol=1e-3,
                               atol=1e-4 * np.abs(from_images.precision).max())
    assert from_run.threshold == pytest.approx(from_images.threshold, rel=1e-3)
    # another training sample gives another guard: the comparison can fail
    fit_ood_guard(again, splits["train"], splits["validation"], max_samples=300, seed=seed + 1)
    assert gap(from_run, OODGuard.load(again / OOD_GUARD_FILE)) > 10 * gap(from_run, from_images)


def test_synthetic_model_flags_noise_and_another_domain_not_its_own_images(synthetic_model):
    from rcl_hf.inference import load_model, predict

    folder, dsd = synthetic_model
    assert (folder / OOD_GUARD_FILE).is_file()
    model = load_model(str(folder))
    assert model.ood_guard is not None and model.ood_guard.meta["n_calibration"] == 200
    rng = np.random.default_rng(1)
    noise = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(60)]
    yy, xx = np.mgrid[0:32, 0:32]
    stripes = [Image.fromarray(np.dstack([((xx // (2 + i % 5) + yy * (i % 3)) % 2 * 255).astype(np.uint8)] * 3))
               for i in range(60)]  # another synthetic domain: stripes and checkerboards
    own_test = list(dsd["test"]["image"])
    p_noise, p_stripes, p_test = (predict(model, ims) for ims in (noise, stripes, own_test))
    assert p_noise.out_of_distribution.mean() >= 0.95, p_noise.ood_score
    assert p_stripes.out_of_distribution.mean() >= 0.95, p_stripes.ood_score
    assert p_test.out_of_distribution.mean() <= 0.10, p_test.out_of_distribution.mean()
    rec = p_noise.as_records()[0]
    assert rec["out_of_distribution"] is True and rec["ood_score"] > p_noise.ood_threshold


def test_predict_without_a_guard_reports_none_and_space_refers_ood_images(synthetic_model, tmp_path):
    import shutil

    from rcl_hf.inference import load_model, predict
    from rcl_hf.space.answer import OOD_MESSAGE, analyze
    from rcl_hf.space.render import decision_card_html

    folder, dsd = synthetic_model
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns(OOD_GUARD_FILE))
    rec = predict(load_model(str(bare)), dsd["test"][0]["image"]).as_records()[0]
    assert rec["ood_score"] is None and rec["out_of_distribution"] is None
    model = load_model(str(folder))
    noise = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    res = analyze(noise, 0.1, model)["models"][0]
    assert res["out_of_distribution"] is True and res["refer"] is True and res["diagnosis"] is None
    card = decision_card_html(res)
    assert OOD_MESSAGE in card and "Refer to a specialist" in card and "Most probable class" not in card
    own = analyze(dsd["test"][0]["image"], 0.1, model)["models"][0]
    if not own["out_of_distribution"]:
        assert own["diagnosis"] in (None, own["decision"]) and own["headline"] in decision_card_html(own)


# ------------------------------------------------------------------------------ real data
@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "brain_tumor_mri").is_dir() or not (DATA / "isic2018_task3").is_dir(),
                    reason=f"Brain Tumor MRI and ISIC 2018 not found under {DATA}")
def test_brain_mri_model_flags_isic_and_synthetic_images(tmp_path):
    """Frozen EfficientNet-Lite0 pair on a Brain MRI subset: ISIC and synthetic >= 95% flagged, own images <= 5%."""
    from rcl_hf.data import load_dataset
    from rcl_hf.data.splits import subsample
    from rcl_hf.data.synthetic import load_synthetic
    from rcl_hf.inference import load_model, predict
    from rcl_hf.space.train import train_space_pair

    out = Path(os.environ.get("RCL_OOD_RUN_DIR") or tmp_path / "space")
    pair = train_space_pair("brain_tumor_mri", str(DATA / "brain_tumor_mri"), str(out))
    model = load_model(pair["rcl"])
    from rcl_hf.train_job import DataArguments, load_data

    dsd, _ = load_data(DataArguments(dataset="brain_tumor_mri", data_dir=str(DATA / "brain_tumor_mri")))
    val = subsample(dsd["validation"], 200, seed=0)
    test = subsample(dsd["test"], 200, seed=0) if "test" in dsd else None
    isic = load_dataset("isic2018", str(DATA / "isic2018_task3"))
    isic_rows = subsample(isic["train"], 200, seed=1)
    synthetic = load_synthetic(seed=3, n_train=0, n_validation=0, n_test=100, image_size=224)["test"]
    rates = {name: float(predict(model, list(ds["image"])).out_of_distribution.mean())
             for name, ds in [("brain_mri_validation", val), ("isic2018", isic_rows), ("synthetic", synthetic)]
             + ([("brain_mri_test", test)] if test is not None else [])}
    report = os.environ.get("RCL_OOD_REPORT")
    if report:
        Path(report).write_text(json.dumps({"rates": rates, "threshold": model.ood_guard.threshold,
                                            "meta": model.ood_guard.meta}, indent=2))
    assert rates["isic2018"] >= 0.95 and rates["synthetic"] >= 0.95, rates
    assert rates["brain_mri_validation"] <= 0.05, rates


def test_a_training_run_with_too_few_validation_images_for_the_confidence_rule_falls_back_and_says_so(caplog):
    from rcl_hf.train_job import _guard_delta

    with caplog.at_level("WARNING", logger="rcl_hf.train_job"):
        assert _guard_delta(0.1, 45) == 0.1 and not caplog.records
        assert _guard_delta(None, 30) is None and not caplog.records  # asked for the average-only rule
        assert _guard_delta(0.1, 44) is None
    assert "44 validation images are too few for 90% confidence (at least 45 are needed)" in caplog.text


def test_the_guard_command_fits_the_guard_the_run_fitted(synthetic_model, tmp_path, capsys):
    """``rcl-ood-guard`` with the run's data arguments and seed gives the run's own guard."""
    import shutil

    from rcl_hf.commands.ood_guard import main

    folder, _ = synthetic_model
    again = tmp_path / "again"
    shutil.copytree(folder, again, ignore=shutil.ignore_patterns(OOD_GUARD_FILE, "guard_*"))
    seed = json.loads((folder / "rcl_run.json").read_text())["seed"]
    main(["--model", str(again), "--dataset", "synthetic", "--max_train_samples", "400", "--max_eval_samples", "200",
          "--cache_dir", "none", "--max_samples", "300", "--seed", str(seed)])
    from_run, from_cli = OODGuard.load(folder / "guard_fitted_by_the_run.safetensors"), OODGuard.load(again)
    assert from_cli.delta == from_run.delta == 0.1 and from_cli.meta["n_fit"] == 300
    assert from_cli.threshold == pytest.approx(from_run.threshold, rel=1e-3)
    assert f": {from_cli.guarantee()}" in capsys.readouterr().out  # the guarantee in its one wording
    assert "At most 5% of images like the training images are flagged" in from_cli.guarantee()
    with pytest.raises(SystemExit):  # a model folder that is not there: one line, exit 2
        main(["--model", str(tmp_path / "absent"), "--dataset", "synthetic", "--max_train_samples", "60",
              "--max_eval_samples", "60", "--cache_dir", "none"])


def test_a_run_on_the_resized_image_cache_fits_its_guard_and_decision_layer_on_the_original_images(tmp_path, monkeypatch):
    """--cache_resized trains on re-encoded downscaled copies; the guard and the decision layer act at inference on
    the originals (predict), so the run fits them on the originals: the same guard as fit_ood_guard and the same
    calibration as calibrate_folder on the raw splits."""
    from rcl_hf.train_data import load_data, run_splits
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training
    from rcl_hf.trainer import RiskArguments

    data_args = DataArguments(dataset="synthetic", max_train_samples=120, max_eval_samples=60,
                              cache_dir=str(tmp_path / "cache"), cache_resized=True)
    import rcl_hf.calibration.model_folder as model_folder

    captured = {}
    real = model_folder.calibrate_run

    def spy(*args, **kwargs):
        captured.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_folder, "calibrate_run", spy)
    run = tmp_path / "run"
    run_training(ModelArguments(backbone="resnet18", image_size=32, ood_guard=True, ood_guard_samples=100), data_args,
                 RiskArguments(loss="ce"),
                 default_training_args(str(run), num_train_epochs=1, max_steps=1, save_strategy="no", eval_strategy="no",
                                       load_best_model_at_end=False, disable_tqdm=True, per_device_train_batch_size=32))
    splits = run_splits(load_data(data_args)[0], data_args)
    again = tmp_path / "again"
    again.mkdir()
    for f in run.iterdir():
        if f.is_file() and f.name != OOD_GUARD_FILE:
            (again / f.name).write_bytes(f.read_bytes())
    seed = json.loads((run / "rcl_run.json").read_text())["seed"]
    fit_ood_guard(again, splits["train"], splits["validation"], max_samples=100, seed=seed)
    from_run, from_raw = OODGuard.load(run), OODGuard.load(again)
    assert from_run.threshold == pytest.approx(from_raw.threshold, rel=1e-6)
    np.testing.assert_allclose(from_run.means, from_raw.means, rtol=1e-5, atol=1e-6)
    # the decision layer too: calibrated on the model's answers for the original validation images, which differ
    # from the Trainer's answers on the cache (validation_predictions.npz)
    from rcl_hf.inference import forward_logits, load_model

    raw_logits, _ = forward_logits(load_model(again), splits["validation"]["image"])
    raw_probs = np.exp(raw_logits - raw_logits.max(1, keepdims=True))
    raw_probs /= raw_probs.sum(1, keepdims=True)
    np.testing.assert_allclose(captured["predictions"]["validation"][0], raw_logits, atol=1e-5)  # logits, as they are
    with np.load(run / "validation_predictions.npz") as z:
        cached = np.exp(z["logits"] - z["logits"].max(1, keepdims=True))
    assert np.abs(cached / cached.sum(1, keepdims=True) - raw_probs).max() > 5e-6  # the cache is not the originals
    assert (run / "risk_calibration.json").is_file()
