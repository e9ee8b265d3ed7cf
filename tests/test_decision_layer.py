"""rcl_hf.decision_layer: one object, one refer policy, for every way a model answers.

* the same image gets the same decision, referral, reason and certificate text through ``predict``, the
  ``risk-aware-image-classification`` pipeline and the Space (one image and a batch); an image the OOD guard
  flags is referred with the reason "outside" on every path (``predict`` once returned ``refer=False`` for it);
* the layer's arithmetic against hand computations: calibration applied to logits, unusable > outside > uncertain,
  a guard without embeddings refused, drift only for a batch, the guarantees in their one wording.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rcl_hf.calibration import calibrate
from rcl_hf.decision_layer import (DEFAULT_REFERRAL_THRESHOLD, NO_GUARD_NOTE, UNCERTIFIED_GUARANTEE, DecisionLayer,
                                   check_threshold)
from rcl_hf.ood import OODGuard
from rcl_hf.severity import SeverityMatrix

SEV = SeverityMatrix.preset("synthetic")


def _pattern(k: int, side: int = 48) -> Image.Image:
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = 128 + 90 * np.sin(5 * xx + k) * np.cos(4 * yy - 0.5 * k)
    return Image.fromarray(np.clip(np.dstack([base, base * 0.8, 255 - base]), 0, 255).astype(np.uint8))


def _calibration(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 600)
    return calibrate(3.0 * np.eye(4)[y] + rng.normal(0, 1.5, (600, 4)), y, SEV, alpha=0.1, dataset="synthetic")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny checkpoint with a risk calibration and an OOD guard whose class means are the embeddings of four
    pattern images (score 0 for them) and whose threshold lies halfway to the score of a noise image."""
    from checkpoints import save_tiny_checkpoint

    from rcl_hf.inference import forward_logits, load_model

    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("layer") / "model", severity=SEV)
    _calibration().save(folder)
    model = load_model(str(folder))
    _, z = forward_logits(model, [_pattern(k) for k in range(4)] + [_noise()], embeddings=True)
    guard = OODGuard(means=z[:4], precision=np.eye(z.shape[1]), threshold=0.0, false_alarm_rate=0.05,
                     meta={"n_calibration": 200}, delta=0.1)
    noise_score = float(guard.score(z[4:])[0])
    assert noise_score > 0
    guard.threshold = noise_score / 2
    guard.save(folder)
    return folder


def _noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 48, 3), dtype=np.uint8))


#: (name, image, the reason it must be referred for, or "decided/uncertain" when it is in the domain)
CASES = [("pattern", _pattern(0), None), ("other pattern", _pattern(2), None), ("noise", _noise(), "outside"),
         ("blank", Image.new("RGB", (48, 48), (90, 90, 90)), "unusable")]


def _answers(folder, path: str):
    """Per case ``(decision or None, refer, reason, certificate)`` through one of the ways a model answers."""
    images = [im for _, im, _ in CASES]
    if path == "predict":
        from rcl_hf import load_model, predict

        pred = predict(load_model(str(folder)), images)
        return [(r["decision"], r["refer"], r["reason"], pred.guarantees[0]) for r in pred.as_records()]
    if path == "pipeline":
        from transformers import pipeline

        pipe = pipeline("risk-aware-image-classification", model=str(folder))
        return [(o["label"], o["refer"], o["reason"], o["guarantees"][0]) for o in (pipe(im) for im in images)]
    from rcl_hf.space.answer import analyze, analyze_batch
    from rcl_hf.space.inputs import InputImageError
    from rcl_hf.space.loading import load_space_model

    sm = load_space_model(str(folder))
    if path == "space_batch":
        rows = analyze_batch(images, None, sm)["rows"]
        return [(r.get("decision"), r["refer"], r["reason_kind"], r.get("certificate")) for r in rows]
    out = []
    for im in images:
        try:
            rec = analyze(im, None, sm)["models"][0]
            out.append((rec["decision"], rec["refer"], rec["reason_kind"], rec["certificate"]))
        except InputImageError as err:  # refused before the model runs: the page shows "refer, image unusable"
            assert err.kind == "unusable"
            out.append((None, True, "unusable", None))
    return out


@pytest.fixture(scope="module")
def expected(folder):
    """The answers computed by hand: the model's logits and classifier inputs, then the layer."""
    import torch

    from rcl_hf.frozen import classifier_inputs
    from rcl_hf.inference import load_model

    model = load_model(str(folder))
    x = model.image_processor(images=[im for _, im, _ in CASES], return_tensors="pt")["pixel_values"]
    with torch.no_grad(), classifier_inputs(model) as feats:
        logits = model(pixel_values=x).logits.numpy()
    layer = DecisionLayer(model.severity, model.risk_calibration, model.ood_guard)
    pred = layer.apply(logits, feats[0].flatten(1).numpy(), unusable=[r == "unusable" for _, _, r in CASES])
    return pred


@pytest.mark.parametrize("path", ["predict", "pipeline", "space", "space_batch"])
def test_every_path_gives_the_same_decision_referral_reason_and_certificate(folder, expected, path):
    got = _answers(folder, path)
    certificate = expected.guarantees[0]
    assert certificate == _calibration().certificate()
    for (name, _, must), (decision, refer, reason, cert), n in zip(CASES, got, range(len(CASES))):
        assert refer == bool(expected.refer[n]) and reason == expected.reasons[n], (path, name)
        if must is not None:  # the noise image is outside on every path, the blank one unusable
            assert refer is True and reason == must, (path, name)
        else:
            assert reason in (None, "uncertain"), (path, name)
        if reason != "unusable":
            assert decision == SEV.labels[int(expected.decision[n])] and cert == certificate, (path, name)


def test_the_layer_applies_the_calibration_to_logits_and_refers_by_precedence():
    cal = _calibration()
    z = np.array([[4.0, 0.0, 0.0, 0.0], [0.2, 0.1, 0.0, 0.1], [0.0, 5.0, 0.0, 0.0]])
    guard = OODGuard(means=np.zeros((1, 2)), precision=np.eye(2), threshold=1.0, false_alarm_rate=0.05, meta={})
    e = np.array([[0.1, 0.0], [0.0, 0.2], [3.0, 0.0]])  # scores 0.01, 0.04, 9: the third is outside
    pred = DecisionLayer(SEV, cal, guard).apply(z, e, unusable=[True, False, False])
    p = np.exp(z / cal.temperature)
    assert pred.probabilities == pytest.approx(p / p.sum(1, keepdims=True))
    assert pred.reasons[0] == "unusable" and pred.reasons[2] == "outside"  # unusable before the rest
    assert pred.reasons[1] == ("uncertain" if pred.expected_cost[1] > cal.threshold else None)
    assert pred.refer.tolist() == [True, pred.expected_cost[1] > cal.threshold, True]
    assert pred.ood_score == pytest.approx([0.01, 0.04, 9.0]) and pred.out_of_distribution.tolist() == [False, False, True]
    assert pred.certified and pred.drift.drifted is None  # three cases: too few to test drift
    with pytest.raises(ValueError, match="pass the classifier's input embeddings"):
        DecisionLayer(SEV, cal, guard).apply(z)
    with pytest.raises(ValueError, match="one flag per case"):
        DecisionLayer(SEV, cal, guard).apply(z, e, unusable=[True])
    with pytest.raises(ValueError, match="finite"):
        DecisionLayer(SEV).apply(np.array([[np.inf, 0, 0, 0]]))


def test_without_a_calibration_the_bayes_rule_and_the_hand_set_threshold_decide_uncertified():
    p = np.array([[0.60, 0.30, 0.05, 0.05]])  # Bayes decision lesion_round at expected cost 0.19 (by hand)
    pred = DecisionLayer(SEV).apply(np.log(p))
    assert pred.decision.tolist() == [1] and pred.expected_cost == pytest.approx([0.19])
    assert pred.threshold == DEFAULT_REFERRAL_THRESHOLD and pred.refer.tolist() == [True] and not pred.certified
    assert pred.reasons == ["uncertain"] and pred.guarantees == [UNCERTIFIED_GUARANTEE, NO_GUARD_NOTE]
    assert DecisionLayer(SEV).apply(np.log(p), threshold=0.5).refer.tolist() == [False]
    over = DecisionLayer(SEV, _calibration()).apply(np.log(p), threshold=0.5)
    assert not over.certified and "no longer holds" in over.note  # an override is never certified
    for bad in ("abc", float("nan"), -1, True):
        with pytest.raises(ValueError, match="referral threshold must be"):
            check_threshold(bad)


def test_drift_is_tested_on_a_batch_of_usable_cases():
    cal = _calibration()
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    like = 3.0 * np.eye(4)[y] + rng.normal(0, 1.5, (200, 4))
    assert DecisionLayer(SEV, cal).apply(like).drift.drifted is False
    unsure = rng.normal(0, 0.3, (200, 4))  # a source where the model is unsure: referral scores move up
    assert DecisionLayer(SEV, cal).apply(unsure).drift.drifted is True
    assert DecisionLayer(SEV, cal).apply(unsure, drift=False).drift is None
    assert DecisionLayer(SEV, cal).apply(like, unusable=np.arange(200) >= 10).drift.n == 10  # unusable not counted


def test_guarantees_are_the_certificate_and_the_guard_sentence(folder):
    layer = DecisionLayer.from_pretrained(str(folder))
    assert layer.calibration is not None and layer.ood_guard is not None and layer.needs_embeddings
    risk, ood = layer.guarantees()
    assert risk == layer.calibration.certificate() and "at most 10% critical cases missed" in risk
    assert ood == layer.ood_guard.guarantee()
    assert "At most 5% of images like the training images are flagged" in ood and "90% confidence" in ood
    assert "over the draw of 200 validation images" in ood and "referred" in ood
    assert "on average" in OODGuard(np.zeros((1, 2)), np.eye(2), 1.0, 0.05, {}).guarantee()  # split-conformal
    bare = layer.with_calibration(None)
    assert bare.guarantees()[0] == UNCERTIFIED_GUARANTEE and layer.calibration is not None  # a copy
    with pytest.raises(ValueError, match="recalibrate"):
        DecisionLayer(SEV.reorder(list(reversed(SEV.labels))), layer.calibration)
