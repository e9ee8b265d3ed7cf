"""rcl_hf.inference and its decision layer: the Bayes-risk decision and referral against hand computations, and
load_model + predict on a tiny saved checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from checkpoints import copy_without_severity, save_tiny_checkpoint
import torch

from rcl_hf.offline import HubUnavailableError
from rcl_hf.decision_layer import DEFAULT_REFERRAL_THRESHOLD, DecisionLayer, Prediction
from rcl_hf.inference import load_model, predict, predict_proba
from rcl_hf.metrics import bayes_risk_decision
from rcl_hf.models import build_image_processor, build_model, ensure_label_maps_in_config_file
from rcl_hf.severity import SeverityMatrix

# labels: normal, lesion_round, lesion_oval, lesion_ring; a lesion called "normal" is critical (cost 1),
# normal called a lesion is an over-call (0.3), lesion confusions are fine-grained (0.1).
SEVERITY = SeverityMatrix.preset("synthetic")


def _decide(p, severity, threshold=None):
    """The decision layer without a calibration on logits whose softmax is ``p`` (zeros kept at 1e-12)."""
    return DecisionLayer(severity).apply(np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-12, None)), threshold=threshold)


def test_bayes_decision_differs_from_argmax_by_hand():
    p = np.array([
        [0.60, 0.30, 0.05, 0.05],  # most likely normal, but 40% lesion mass
        [0.97, 0.01, 0.01, 0.01],  # confidently normal
        [0.00, 0.20, 0.70, 0.10],  # a lesion; fine-grained uncertainty only
    ])
    pred = _decide(p, SEVERITY, threshold=0.1)
    # expected cost of deciding j: sum_i p_i M[i, j]
    #   row 0: normal 0.3+0.05+0.05 = 0.40; round 0.6*0.3+0.05*0.1*2 = 0.19; oval/ring 0.18+0.03+0.005 = 0.215
    #   row 1: normal 0.03; round 0.291+0.002 = 0.293; oval/ring 0.291+0.001+0.001 = 0.293
    #   row 2: normal 1.0; round 0.07+0.01 = 0.08; oval 0.02+0.01 = 0.03; ring 0.02+0.07 = 0.09
    assert pred.labels == SEVERITY.labels
    assert pred.argmax.tolist() == [0, 0, 2]
    assert pred.bayes_decision.tolist() == [1, 0, 2]
    assert pred.expected_cost == pytest.approx([0.19, 0.03, 0.03])
    assert pred.argmax_expected_cost == pytest.approx([0.40, 0.03, 0.03])
    assert pred.critical_mass == pytest.approx([0.40, 0.03, 1.0])
    assert pred.refer.tolist() == [True, False, False]
    assert pred.threshold == 0.1

    decisions, _ = bayes_risk_decision(p, SEVERITY)  # the metric package agrees
    assert np.asarray(decisions).tolist() == pred.bayes_decision.tolist()


def test_referral_flag_flips_with_the_threshold():
    p = np.array([0.60, 0.30, 0.05, 0.05])  # Bayes expected cost 0.19
    assert _decide(p, SEVERITY, threshold=0.18).refer.tolist() == [True]
    assert _decide(p, SEVERITY, threshold=0.195).refer.tolist() == [False]
    assert _decide(p, SEVERITY, threshold=0.5).refer.tolist() == [False]
    assert _decide(p, SEVERITY, threshold=0.0).refer.tolist() == [True]
    certain = 1000.0 * np.eye(4)  # logits whose softmax is exactly one-hot in float64
    assert not DecisionLayer(SEVERITY).apply(certain, threshold=0.0).refer.any()  # strictly above: zero cost never refers


def test_decision_layer_input_checks_and_records():
    pred = _decide([0.25, 0.25, 0.25, 0.25], SEVERITY)  # 1-D: one case
    assert pred.probabilities.shape == (1, 4) and pred.threshold == DEFAULT_REFERRAL_THRESHOLD
    record = pred.as_records()[0]
    json.dumps(record)
    assert record["bayes_decision"] in ("lesion_round", "lesion_oval", "lesion_ring")
    assert record["expected_cost"] == pytest.approx(0.25 * 0.3 + 0.25 * 0.1 * 2)
    assert set(record["probabilities"]) == set(SEVERITY.labels)
    with pytest.raises(ValueError, match="3 classes"):
        _decide(np.ones((2, 3)) / 3, SEVERITY)
    with pytest.raises(ValueError, match="threshold"):
        _decide([0.25] * 4, SEVERITY, threshold=-0.1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", severity=SEVERITY)


def _images():
    from PIL import Image

    rng = np.random.default_rng(1)
    return [
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (57, 41), dtype=np.uint8)),  # grayscale, other size
        Image.fromarray(rng.integers(0, 255, (20, 64, 4), dtype=np.uint8), mode="RGBA"),
    ]


def test_load_model_and_predict(checkpoint):
    model = load_model(str(checkpoint))
    assert not model.training
    assert model.severity == SEVERITY
    assert model.image_processor.size == {"height": 32, "width": 32}
    images = _images()
    pred = predict(model, images, threshold=0.05)
    assert isinstance(pred, Prediction)
    assert pred.probabilities.shape == (3, 4)
    assert pred.probabilities.sum(1) == pytest.approx(np.ones(3), abs=1e-5)

    pixel_values = model.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        manual = torch.softmax(model(pixel_values=pixel_values).logits, -1).numpy()
    assert pred.probabilities == pytest.approx(manual, abs=1e-5)
    assert pred.argmax.tolist() == manual.argmax(1).tolist()
    expected = _decide(manual, SEVERITY, threshold=0.05)
    assert pred.bayes_decision.tolist() == expected.bayes_decision.tolist()
    assert pred.expected_cost == pytest.approx(expected.expected_cost, abs=1e-5)
    # the third image is 20 pixels high: too small to assess, so it is referred whatever its cost
    assert pred.refer.tolist() == [bool(c > 0.05) or i == 2 for i, c in enumerate(expected.expected_cost)]
    assert pred.reasons[2] == "unusable"
    assert pred.reasons[:2] == [None if c <= 0.05 else "uncertain" for c in expected.expected_cost[:2]]

    single = predict(model, images[0])  # one image, not a list
    assert single.probabilities.shape == (1, 4)
    assert single.probabilities[0] == pytest.approx(pred.probabilities[0], abs=1e-5)
    assert predict_proba(model, []).shape == (0, 4)


def test_predict_with_explicit_severity_and_processor(checkpoint):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    with pytest.raises(ValueError, match="image processor"):
        predict(model, _images())
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    zero = SeverityMatrix(SEVERITY.labels, np.zeros((4, 4)), np.zeros((4, 4), dtype=bool))
    pred = predict(model, _images(), severity=zero, image_processor=processor, threshold=0.0)
    assert pred.expected_cost == pytest.approx(np.zeros(3))
    assert pred.refer.tolist() == [False, False, True]  # nothing costs anything; the 20-pixel image is unusable
    default = predict(model, _images(), image_processor=processor)  # severity read from config.json
    assert default.labels == SEVERITY.labels


def test_load_model_errors(checkpoint, tmp_path):
    with pytest.raises(HubUnavailableError, match="not a model folder"):
        load_model(str(tmp_path / "missing_folder"))

    no_processor = tmp_path / "no_processor"
    shutil.copytree(checkpoint, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        load_model(str(no_processor))

    no_severity = copy_without_severity(checkpoint, tmp_path / "no_severity")
    with pytest.raises(ValueError, match="not trained with rcl_hf"):
        load_model(str(no_severity))


def test_import_rcl_hf_is_light_and_the_public_api_resolves_lazily():
    """`import rcl_hf` (the Space, the evaluate metric) must not pull in transformers' Trainer."""
    import subprocess
    import sys

    code = ("import sys, rcl_hf; assert 'transformers' not in sys.modules, 'transformers imported'; "
            "from rcl_hf import RiskCalibratedTrainer, RiskArguments, load_model, predict, SeverityMatrix; "
            "assert RiskCalibratedTrainer.__module__ == 'rcl_hf.trainer'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_predict_accepts_paths_bytes_arrays_and_refuses_bad_inputs_clearly(checkpoint, tmp_path):
    """``predict(model, ["x.jpg"])`` once failed with AttributeError on str."""
    model = load_model(str(checkpoint))
    img = _images()[0]
    img.save(tmp_path / "x.png")
    ref = predict(model, img).probabilities[0]
    arr = np.asarray(img)
    for source in (str(tmp_path / "x.png"), tmp_path / "x.png", (tmp_path / "x.png").read_bytes(), arr,
                   arr.astype(np.float32) / 255.0):
        assert predict(model, [source]).probabilities[0] == pytest.approx(ref, abs=2e-3), type(source)
    rec = predict(model, [str(tmp_path / "x.png")]).as_records()[0]
    assert rec["ood_score"] is None and rec["out_of_distribution"] is None  # no guard in this folder
    with pytest.raises(ValueError, match="Cannot fetch image URL .*offline"):
        predict(model, "http://rcl-hf.invalid/x.png")
    with pytest.raises(ValueError, match="file not found"):
        predict(model, str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="image dict has neither|Cannot read an image"):
        predict(model, [{"not": "an image"}])
    with pytest.raises(ValueError, match="numpy image must be"):
        predict(model, np.zeros((2, 3, 4, 5)))
    for bad in ("abc", float("nan"), -1, True):  # None is the default: the certified threshold
        with pytest.raises(ValueError, match="referral threshold must be"):
            predict(model, img, threshold=bad)


def test_load_model_uses_the_saved_processor_class_without_backend_warnings(tmp_path, capfd):
    """A timm checkpoint: AutoImageProcessor would pick TimmWrapperImageProcessor (other preprocessing, and the
    "Requested torchvision backend is not available" line); load_model uses the class training saved."""
    model, data_config = build_model("resnet18", SEVERITY, image_size=32)
    processor = build_image_processor(model, data_config)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    ensure_label_maps_in_config_file(str(tmp_path))
    capfd.readouterr()
    loaded = load_model(str(tmp_path))
    assert type(loaded.image_processor) is type(processor)
    assert "backend is not available" not in capfd.readouterr().err
    img = _images()[0]
    ours = processor(images=[img], return_tensors="pt")["pixel_values"]
    assert torch.equal(loaded.image_processor(images=[img], return_tensors="pt")["pixel_values"], ours)


def test_concurrent_forward_passes_keep_their_own_embeddings(checkpoint):
    """The embedding hook sits on a shared model (the Space runs several analyses at once): each caller gets
    the embeddings of its own images, never another thread's."""
    import threading

    from rcl_hf.inference import forward_logits

    model = load_model(str(checkpoint))
    rng = np.random.default_rng(7)
    from PIL import Image

    sets = [[Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(6)] for _ in range(4)]
    alone = [forward_logits(model, imgs, embeddings=True, batch_size=1)[1] for imgs in sets]
    got, errors = [None] * len(sets), []

    def work(i):
        try:
            for _ in range(5):
                got[i] = forward_logits(model, sets[i], embeddings=True, batch_size=1)[1]
                assert got[i].shape == alone[i].shape and np.allclose(got[i], alone[i], atol=1e-5)
        except AssertionError as err:  # pragma: no cover - the failure this test exists for
            errors.append((i, err))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
