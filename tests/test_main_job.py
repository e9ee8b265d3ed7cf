"""The main job (scripts/main_job.py): same budget for every loss, one table, files written."""

import json

from rcl_hf.cli import compare_main
from rcl_hf.main_job import CompareArguments


def test_defaults_compare_cross_entropy_with_the_risk_calibrated_loss():
    args = CompareArguments()
    assert args.losses[0] == "ce" and any(name.startswith("rcl") for name in args.losses)
    assert args.dataset == "synthetic"


def test_compare_main_trains_each_loss_with_the_same_budget(tmp_path, capsys):
    out = tmp_path / "main"
    summary = compare_main([
        "--output_dir", str(out), "--backbone", "hf-resnet", "--epochs", "1", "--max_train_samples", "160",
        "--max_eval_samples", "64", "--batch_size", "32", "--disable_tqdm", "true", "--losses", "ce", "rcl_log",
    ])
    printed = capsys.readouterr().out
    for row in ("ce (argmax)", "ce + Bayes-risk rule", "rcl_log (argmax)", "rcl_log + Bayes-risk rule"):
        assert row in printed and row in summary["rows"]
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["rows"].keys() == summary["rows"].keys()
    for loss in ("ce", "rcl_log"):
        run = json.loads((out / loss / "rcl_run.json").read_text())
        assert run["epochs"] == 1 and run["seed"] == 0 and run["split_sizes"]["train"] == 160
        assert run["risk"]["loss"] == loss
        assert (out / loss / "confusion_matrix_test.png").stat().st_size > 1000
    for metrics in saved["rows"].values():
        assert 0 <= metrics["cer"] <= 1 and 0 <= metrics["accuracy"] <= 1
    assert (out / "comparison.md").read_text().count("|") > 20
    assert (out / "cer_accuracy.png").exists()
