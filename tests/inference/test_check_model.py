"""scripts/check_model.py: a trained folder checked on its own rebuilt test split through ``predict``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rcl_hf import load_model

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("check_model", ROOT / "scripts" / "check_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A frozen resnet18 head on 32-px synthetic images, with its OOD guard and default calibration (seconds)."""
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training
    from rcl_hf.trainer import RiskArguments

    out = tmp_path_factory.mktemp("check_model_run")
    run_training(ModelArguments(backbone="resnet18", image_size=32, freeze_backbone=True, ood_guard=True),
                 DataArguments(dataset="synthetic", max_train_samples=300, cache_dir="none"), RiskArguments(loss="ce"),
                 default_training_args(str(out), num_train_epochs=3, learning_rate=1e-2, save_strategy="no",
                                       eval_strategy="no", load_best_model_at_end=False, disable_tqdm=True))
    return out


def test_check_rebuilds_the_run_test_split_and_reports_against_the_goals(synthetic_run, tmp_path):
    result = _script().main([str(synthetic_run), "--out", str(tmp_path), "--goal_accuracy", "0.2"])
    saved = json.loads((synthetic_run / "rcl_results.json").read_text())["test"]
    # the rebuilt split and predict() give the run's own test figures (same images, same model, same preprocessing)
    assert result["argmax"]["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-6)
    assert result["argmax"]["cer"] == pytest.approx(saved["cer"], abs=1e-6)
    ood = result["ood"]
    assert ood["test_false_alarms"] == pytest.approx(ood["test_flagged"] / result["test_images"])
    assert ood["delta"] == 0.1 and ood["n_calibration"] >= 45  # the default rule: 90% confidence
    assert set(result["ood"]["flagged"]) >= {"uniform black", "uniform grey", "uniform white", "random noise"}
    assert all(0.0 <= v <= 1.0 for v in result["ood"]["flagged"].values())
    dl = result["decision_layer"]
    assert dl["risk_kind"] == "critical_miss" and 0.0 <= dl["coverage"] <= 1.0
    md = (tmp_path / "check.md").read_text()
    assert "| test accuracy (argmax) |" in md and "≥ 20.00% | met |" in md
    assert ood["guarantee"] == load_model(str(synthetic_run)).ood_guard.guarantee()  # the guarantee in its one wording
    assert "with 90% confidence over the draw of" in ood["guarantee"]
    assert f"OOD guard: {ood['guarantee']} On test it flagged {ood['test_flagged']} of {result['test_images']} images." in md
    assert result["guarantees"][1] == ood["guarantee"]
    assert json.loads((tmp_path / "check.json").read_text())["goals"]["accuracy"] == 0.2


def test_check_refuses_a_rebuilt_split_of_another_size(synthetic_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(synthetic_run, other)
    recipe = json.loads((other / "rcl_run.json").read_text())
    recipe["split_sizes"]["test"] += 1
    (other / "rcl_run.json").write_text(json.dumps(recipe))
    with pytest.raises(SystemExit, match="the rebuilt test split has"):
        _script().main([str(other), "--out", str(tmp_path)])


def test_goals_are_the_datasets_own_and_a_dataset_without_goals_is_reported_not_judged(synthetic_run, tmp_path):
    script = _script()
    assert script.DATASET_GOALS["brain_tumor_mri"] == {"accuracy": 0.97, "cer": 0.005, "false_alarms": 0.05}
    assert "isic2018" not in script.DATASET_GOALS  # another dataset is never judged against Brain MRI's bar
    result = script.main([str(synthetic_run), "--out", str(tmp_path)])  # "synthetic" has no goals
    assert result["goals"] == {}
    md = (tmp_path / "check.md").read_text()
    assert "No acceptance goals are set for this dataset" in md
    assert "| met |" not in md and "not met" not in md
    result = script.main([str(synthetic_run), "--out", str(tmp_path), "--goal_cer", "0"])  # one goal given: only it
    assert result["goals"] == {"cer": 0.0}
    md = (tmp_path / "check.md").read_text()
    assert md.count("| ≤ 0.00% |") == 1 and "≥" not in md.split("| test accuracy (argmax) |")[1].splitlines()[0]
