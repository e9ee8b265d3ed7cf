"""The models shipped in models/: complete Hub-layout folders that load, whose saved figures are their own, and whose
recipe rebuilds a model bit for bit.

The shipped folders are written by ``scripts/train.py configs/cpu/<dataset>.yaml`` then ``scripts/ship_model.py``;
real data is not needed here except by the ``realdata`` test, which recomputes the saved test predictions from the
images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p for p in (ROOT / "models").glob("*") if (p / "config.json").is_file()) if (ROOT / "models").is_dir() else []
REQUIRED = ("README.md", "config.json", "preprocessor_config.json", "model.safetensors", "risk_calibration.json",
            "ood_guard.safetensors", "rcl_run.json", "check.json", "check.md", "test_predictions.npz",
            "validation_predictions.npz", "risk_calibrations/alpha-0.05.json", "risk_calibrations/alpha-0.10.json",
            "risk_calibrations/alpha-0.20.json")
shipped = pytest.mark.parametrize("folder", MODELS, ids=[p.name for p in MODELS])


def test_both_models_are_shipped():
    assert [p.name for p in MODELS] == ["brain-tumor-mri-efficientnet-lite0", "isic2018-efficientnet-lite0"]


@shipped
def test_the_folder_is_complete_small_and_its_card_checks(folder):
    from rcl_hf.hub import collect_results, validate_model_card

    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    assert not missing, missing
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 21 * 2**20, f"{folder.name} is {size / 2**20:.1f} MiB"
    card = (folder / "README.md").read_text(encoding="utf-8")
    validate_model_card(card, expected_results=collect_results(folder))
    assert not list(folder.glob("checkpoint-*")) and not (folder / "training_args.bin").exists()


@shipped
def test_the_card_states_the_check_reports_figures_per_class_and_the_certificate(folder):
    check = json.loads((folder / "check.json").read_text(encoding="utf-8"))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "## Acceptance check on the test split" in card
    assert f"{100 * check['argmax']['accuracy']:.2f}%" in card and f"{100 * check['argmax']['cer']:.2f}%" in card
    for name, row in check["per_class"].items():
        assert f"| {name} | {row['n']} | {100 * row['recall']:.2f}% |" in card
    for sentence in check["guarantees"]:
        assert sentence in card


@shipped
def test_the_saved_test_predictions_give_the_checks_figures(folder):
    """check.json was computed through rcl_hf.predict on the test images; the saved logits are those images' logits:
    their argmax accuracy and per-class recall are the check's, to the last case."""
    check = json.loads((folder / "check.json").read_text(encoding="utf-8"))
    with np.load(folder / "test_predictions.npz") as z:
        logits, labels = z["logits"], z["labels"]
    assert len(labels) == check["test_images"]
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(check["argmax"]["accuracy"], abs=1e-12)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for c, name in enumerate(config["rcl_severity"]["labels"]):
        if name in check["per_class"]:
            assert float((logits[labels == c].argmax(1) == c).mean()) == pytest.approx(check["per_class"][name]["recall"])


@shipped
def test_the_decision_layer_is_the_one_its_saved_validation_predictions_certify(folder):
    """risk_calibration.json is reproduced by calibrating the saved validation logits with its own options."""
    from rcl_hf.calibration import RiskCalibration, calibrate
    from rcl_hf.models import severity_from_config
    from transformers import AutoConfig

    cal = RiskCalibration.load(folder)
    with np.load(folder / "validation_predictions.npz") as z:
        logits, labels, groups = z["logits"], z["labels"], z["groups"] if "groups" in z else None
    recipe = json.loads((folder / "rcl_run.json").read_text(encoding="utf-8"))
    again = calibrate(logits, labels, severity_from_config(AutoConfig.from_pretrained(folder)), risk_kind=cal.risk_kind,
                      alpha=cal.alpha, delta=cal.delta, groups=groups, conditional=cal.conditional, method=cal.method,
                      p_value=cal.p_value, dataset=recipe.get("dataset_name"), split="validation", seed=recipe.get("seed", 0))
    assert again.threshold == pytest.approx(cal.threshold) and again.temperature == pytest.approx(cal.temperature)
    assert again.certificate() == cal.certificate()
    assert RiskCalibration.load(folder / "risk_calibrations" / f"alpha-{cal.alpha:.2f}.json").threshold == pytest.approx(cal.threshold)


@shipped
def test_the_model_loads_and_answers_with_its_certificate(folder):
    import rcl_hf
    from PIL import Image

    model = rcl_hf.load_model(str(folder))
    assert model.risk_calibration is not None and model.ood_guard is not None
    ramp = (np.add.outer(np.arange(200), np.arange(200)) % 256).astype(np.uint8)
    pred = rcl_hf.predict(model, Image.fromarray(ramp).convert("RGB"))
    assert pred.as_records()[0]["certified"] and pred.guarantees == model.decision_layer.guarantees()


def test_the_isic_model_certifies_each_critical_disease_or_names_its_smallest_alpha():
    folder = ROOT / "models" / "isic2018-efficientnet-lite0"
    if not folder.is_dir():
        pytest.skip("no shipped ISIC model")
    from rcl_hf.calibration import RiskCalibration

    cal = RiskCalibration.load(folder)
    assert cal.conditional == "class" and set(cal.per_class) == {"MEL", "BCC", "AKIEC"}
    text = cal.certificate()
    assert "Per disease:" in text
    for label, row in cal.per_class.items():
        assert label in text
        assert row["certified"] or row.get("smallest_alpha") is not None


def test_the_recipe_rebuilds_a_model_bit_for_bit(tmp_path, tiny_dataset):
    """The shipped models' recipe (configs/cpu/*.yaml through scripts/train.py) is deterministic on one CPU process:
    the same command twice, made tiny, writes identical weights and predictions."""
    from rcl_hf.commands.train import train_main

    def build(out):
        train_main([str(ROOT / "configs" / "cpu" / "brain_tumor_mri.yaml"), "--dataset", tiny_dataset,
                    "--data_dir", "", "--image_size", "64",
                    "--cache_resized", "false", "--num_train_epochs", "1", "--per_device_train_batch_size", "50",
                    "--ood_guard", "false", "--output_dir", str(out), "--disable_tqdm", "true",
                    "--cache_dir", str(tmp_path / "cache")])
        return out

    a, b = build(tmp_path / "a"), build(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    with np.load(a / "test_predictions.npz") as za, np.load(b / "test_predictions.npz") as zb:
        assert np.array_equal(za["logits"], zb["logits"])


@pytest.mark.realdata
@shipped
def test_the_saved_test_predictions_are_the_models_on_the_test_images(folder):
    """Rebuild the grouped test split from the shared data and recompute the logits through the user's path."""
    from rcl_hf.inference import forward_logits, load_model
    from rcl_hf.train_args import DataArguments
    from rcl_hf.train_data import load_data, run_splits

    recipe = json.loads((folder / "rcl_run.json").read_text(encoding="utf-8"))
    data_dir = ROOT / recipe["data_dir"]
    if not data_dir.is_dir():
        pytest.skip(f"{data_dir} is not here")
    args = DataArguments(dataset=recipe["dataset"], data_dir=str(data_dir), split_seed=recipe["split_seed"])
    test = run_splits(load_data(args)[0], args)["test"]
    logits, _ = forward_logits(load_model(str(folder)), test["image"][:64])
    with np.load(folder / "test_predictions.npz") as z:
        np.testing.assert_allclose(logits, z["logits"][:64], rtol=1e-4, atol=1e-4)


def test_the_docs_figures_of_the_shipped_models_are_their_check_reports():
    """docs/inference.md's "The shipped models": every percentage and interval there is in a shipped check report."""
    import re

    text = (ROOT / "docs" / "inference.md").read_text(encoding="utf-8")
    start = text.index("## The shipped models")
    end = text.find("\n## ", start + 5)
    section = text[start:end if end != -1 else len(text)]
    reports = "\n".join((p / "check.md").read_text(encoding="utf-8") for p in MODELS)
    figures = re.findall(r"\d+\.\d+%(?: \[\d+\.\d+, \d+\.\d+\])?", section)
    assert figures, "the section quotes no figure"
    missing = [f for f in figures if f not in reports]
    assert not missing, f"figures in docs/inference.md not in models/*/check.md: {missing}"
