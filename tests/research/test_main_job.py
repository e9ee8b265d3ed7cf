"""The main job (research/main_job.py, run by scripts/main_job.py = make main): CE vs RCL, each with the post-hoc
rule, at matched accuracy, one verdict (its wording: tests/research/test_comparison_verdict.py)."""

import json
import logging

from research.main_job import CompareArguments, _quiet, main, matched_table, run_folder


def test_defaults_compare_cross_entropy_with_the_risk_calibrated_loss_over_seeds():
    args = CompareArguments()
    assert args.dataset == "synthetic" and args.rcl_loss.startswith("rcl") and len(args.seeds) >= 3
    assert args.threads == 1 and args.n_test >= 2000 and args.n_validation >= 1000
    # README's load_model / push_to_hub / Space commands use these folders
    assert run_folder("runs/main", "rcl", 0, 0) == "runs/main/rcl"
    assert run_folder("runs/main", "ce", 0, 0) == "runs/main/ce"
    assert run_folder("runs/main", "ce", 2, 0) == "runs/main/ce_seed2"


def test_quiet_mode_sends_prints_and_library_logs_to_the_file(tmp_path, capsys):
    import transformers

    log = tmp_path / "train.log"
    with _quiet(str(log), verbose=False):
        print("{'loss': 1.0}")
        transformers.logging.get_logger("transformers.trainer").info("***** Running training *****")
        logging.getLogger("rcl_hf.train_job").warning("a warning of ours")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    text = log.read_text()
    assert "{'loss': 1.0}" in text and "Running training" in text and "a warning of ours" in text
    with _quiet(str(tmp_path / "other.log"), verbose=True):
        print("shown")
    assert "shown" in capsys.readouterr().out and not (tmp_path / "other.log").exists()


def test_tiny_job_selects_with_the_grid_code_writes_everything_and_prints_only_table_and_verdict(tmp_path, capsys):
    from research.comparison import operating_points
    from rcl_hf.decision import DEFAULT_BLEND_WEIGHTS
    from rcl_hf.selection import select_operating_points

    out = tmp_path / "runs" / "main"
    summary = main([
        "--output_dir", str(out), "--epochs", "1", "--seeds", "0", "1", "--n_train", "160", "--n_validation", "200",
        "--n_test", "200", "--batch_size", "32", "--n_boot", "50",
    ])
    printed = capsys.readouterr()
    # a clean terminal: the table and verdict on stdout, one progress bar on stderr, no Trainer logs
    assert "| pipeline | chosen on validation |" in printed.out and summary["verdict_text"] in printed.out
    for noise in ("train_runtime", "{'loss'", "Running training", "Saving the dataset", "Writing model shards"):
        assert noise not in printed.out and noise not in printed.err
    assert "main job" in printed.err
    comparison = summary["comparison"]
    # one code path: the chosen points are exactly the grid's selection on these runs
    again = select_operating_points(operating_points(comparison.runs, DEFAULT_BLEND_WEIGHTS), reference_family="ce")
    chosen = dict(zip(comparison.summary["family"], comparison.summary["point"]))
    assert chosen == dict(zip(again["family"], again["point"]))
    for family in ("ce", "ce + Bayes", "ce + blend", "rcl", "rcl + Bayes", "rcl + blend"):
        assert f"| {family} |" in summary["table"] or f"| **{family}** |" in summary["table"]
    assert matched_table(comparison.summary, ["ce", "not a family"]).count("\n") == 2
    assert summary["verdict"] in ("rcl_better", "ce_better", "no_difference")
    md = (out / "comparison.md").read_text()
    assert summary["verdict_text"] in md and "| pipeline | chosen on validation |" in md
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["verdict"] == summary["verdict"] and saved["headline"]["n_seeds"] == 2
    assert saved["headline"]["n_test"] == 200
    assert (out / "cer_accuracy.png").stat().st_size > 10_000
    for name in ("ce", "rcl", "ce_seed1", "rcl_seed1"):
        run = json.loads((out / name / "rcl_run.json").read_text())
        assert run["split_sizes"] == {"train": 160, "validation": 200, "test": 200}
        assert (out / name / "config.json").exists() and (out / name / "model.safetensors").exists()
        log = (out / name / "train.log").read_text()
        assert "train_runtime" in log and "Running training" in log  # the Trainer's logs went to the file
    assert json.loads((out / "rcl" / "rcl_run.json").read_text())["risk"]["loss"] == "rcl_log"
