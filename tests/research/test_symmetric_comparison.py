"""The symmetric comparison: symmetric selection, clustered statistics, equal-accuracy check,
generated verdicts, ranking, new post-hoc rules and the grid's split-seed axis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from research.clustered import images_clopper_pearson, paired_clustered_bootstrap
from research.grid import load_grid
from research.ranking import critical_score, ranking_metrics
from research.comparison import Run
from research.symmetric_comparison import analyse, headline_checks, verdict_text
from rcl_hf.metrics.functional import softmax
from research.post_hoc_families import all_operating_points, cer_at_accuracy, pick_best, select_families, side_of
from rcl_hf.severity import SeverityMatrix

SEV = SeverityMatrix.preset("brain_tumor_mri")
WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _runs(test_noise=None, splits=(0, 1), seeds=(0, 1), n=240):
    """ce / focal / rcl (2 λ) / soft_label over split seeds × seeds; each split has its own labels."""
    runs = []
    for sp in splits:
        rng = np.random.default_rng(100 + sp)
        y = {"val": rng.integers(0, 4, n), "test": rng.integers(0, 4, n)}
        for method, loss, points, extra in (("ce", "ce", ["default"], {}), ("focal", "focal", ["gamma2"], {}),
                                            ("rcl", "rcl", ["lam1", "lam4"], {}),
                                            ("soft_label", "soft_label", ["default"], {})):
            for point in points:
                shift = {"lam1": 0.6, "lam4": 2.5}.get(point, 0.3 if method == "soft_label" else 0.0)
                for seed in seeds:
                    logits = {}
                    for split in ("val", "test"):
                        z = 2.0 * np.eye(4)[y[split]] + rng.normal(0, 1.2, (n, 4))
                        z[:, 2] -= shift
                        if test_noise is not None and split == "test":
                            z = test_noise(z)
                        logits[split] = z
                    runs.append(Run("d", "b", method, point, seed, SEV, logits, {k: v.copy() for k, v in y.items()},
                                    loss=loss, params={"loss": loss, **extra}, split_seed=sp))
    return runs


def test_a_test_logit_change_never_changes_any_choice():
    """Selection of every family and the best-of-side picks read validation only."""
    a = analyse(_runs(), WEIGHTS, n_boot=50)
    flipped = analyse(_runs(test_noise=lambda z: -z[:, ::-1] * 3.0), WEIGHTS, n_boot=50)
    cols = ["dataset", "backbone", "family", "point", "matched", "val_accuracy", "val_cer"]
    pd.testing.assert_frame_equal(a.selection[cols], flipped.selection[cols])
    for h1, h2 in zip(a.headlines, flipped.headlines):
        assert (h1["a_family"], h1["a_point"], h1["b_family"], h1["b_point"]) == \
               (h2["a_family"], h2["a_point"], h2["b_family"], h2["b_point"])
    # but the test numbers did change: the test split is read (once) to score the choice
    assert not np.allclose(a.families["test_cer"], flipped.families["test_cer"])


def test_symmetric_sides_and_best_pick():
    assert side_of({"loss": "rcl"}) == "rcl" and side_of({"loss": "rcl_soft"}) == "rcl"
    assert side_of({"loss": "focal", "gamma": 2}) == "baseline"
    assert side_of({"loss": "ce", "logit_mixup_alpha": 0.4}) == "baseline"
    assert side_of({"loss": "ce", "severity_margin": 1.0}) == "cost_training"
    assert side_of({"loss": "soft_label"}) == "cost_training" and side_of({"loss": "ce", "aucm_weight": 1}) == "cost_training"
    points = all_operating_points(_runs(), WEIGHTS)
    assert {"ce + LA", "ce + CRM", "ce + blend", "ce + Bayes", "rcl"} <= set(points["family"])
    sel = select_families(points)
    best = pick_best(sel, ["baseline"])
    pool = sel[(sel["side"] == "baseline") & sel["matched"]]
    assert best["val_cer"] == pool["val_cer"].min() and best["side"] == "baseline"
    # post-hoc LA at τ = 0 would be the argmax; CRM fits T on validation and applies the Bayes rule
    crm = points[points["family"] == "ce + CRM"]
    assert crm["temperature"].nunique() == len(crm)  # one T per run


def _sample(rate, n=300, seeds=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"critical": rng.random((seeds, n)) < rate, "correct": rng.random((seeds, n)) < 0.8}


def test_clustered_bootstrap_point_estimates_and_pairing():
    a = {0: _sample(0.05, seed=1), 1: _sample(0.05, seed=2)}
    b = {0: _sample(0.15, seed=3), 1: _sample(0.15, seed=4)}
    out = paired_clustered_bootstrap(a, b, n_boot=400, seed=0)
    cer_a = np.mean([a[k]["critical"].mean() for k in a])
    cer_b = np.mean([b[k]["critical"].mean() for k in b])
    assert out["cer_a"] == pytest.approx(cer_a) and out["cer_b"] == pytest.approx(cer_b)
    assert out["cer_diff_ci"][1] < 0 and out["p_value"] < 0.01
    assert out["relative_reduction"] == pytest.approx(1 - cer_a / cer_b)
    same = paired_clustered_bootstrap(a, a, n_boot=200)
    assert same["cer_diff_ci"] == (0.0, 0.0)  # paired draws: identical pipelines never differ
    with pytest.raises(ValueError, match="split"):
        paired_clustered_bootstrap(a, {0: b[0]})


def test_clustered_bootstrap_counts_images_not_seed_image_pairs():
    """Repeating one seed three times adds no information: the CI must not narrow (pooled McNemar would)."""
    one = {0: {k: v[:1] for k, v in _sample(0.1, seed=5).items()}}
    rep = {0: {k: np.repeat(v[:1], 3, 0) for k, v in _sample(0.1, seed=5).items()}}
    ref = {0: {k: v[:1] for k, v in _sample(0.2, seed=6).items()}}
    ref3 = {0: {k: np.repeat(v, 3, 0) for k, v in ref[0].items()}}
    w1 = np.diff(paired_clustered_bootstrap(one, ref, n_boot=500, seed=1)["cer_diff_ci"])[0]
    w3 = np.diff(paired_clustered_bootstrap(rep, ref3, n_boot=500, seed=1)["cer_diff_ci"])[0]
    assert w3 == pytest.approx(w1, rel=0.1)


def test_images_clopper_pearson_counts_images():
    from scipy.stats import beta

    s = {0: {"critical": np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]], bool)}}
    k, n, (lo, hi) = images_clopper_pearson(s)
    assert (k, n) == (2, 5)  # seed-mean 2 errors out of 5 images, not 6 out of 15 decisions
    assert lo == pytest.approx(beta.ppf(0.025, 2, 4)) and hi == pytest.approx(beta.ppf(0.975, 3, 3))


def test_equal_accuracy_interpolation_and_generated_verdict():
    front = pd.DataFrame({"test_accuracy": [0.70, 0.72, 0.74], "test_cer": [0.05, 0.07, 0.10]})
    assert cer_at_accuracy(front, 0.71) == pytest.approx(0.06)
    assert np.isnan(cer_at_accuracy(front, 0.80))
    cmp = {"cer_a": 0.055, "cer_b": 0.07, "cer_diff_ci": (-0.02, -0.005), "relative_reduction": 0.214,
           "relative_reduction_ci": (0.05, 0.3)}
    h = {"a_family": "rcl + blend", "a_point": "lam1|w=0.3", "b_family": "ce + blend", "b_point": "w=0.4",
         "acc_a": 0.71, "acc_b": 0.715, "eq_cer_b": 0.06, "cmp": cmp}
    h["checks"] = headline_checks(cmp, 0.71, 0.715, 0.06, 0.055, 0.01, 0.30)
    assert h["checks"]["ci_excludes_0"] and h["checks"]["lower_at_equal_accuracy"] and not h["checks"]["goal_met"]
    assert verdict_text(h, 0.01, 0.30).startswith("**`rcl + blend` (lam1|w=0.3) beats `ce + blend`")
    h["eq_cer_b"] = 0.05  # the rule's front is lower at the same accuracy: no win
    h["checks"] = headline_checks(cmp, 0.71, 0.715, 0.05, 0.055, 0.01, 0.30)
    text = verdict_text(h, 0.01, 0.30)
    assert text.startswith("**no win shown**") and "equal test accuracy" in text
    cmp2 = {**cmp, "cer_diff_ci": (-0.01, 0.004)}
    h["checks"] = headline_checks(cmp2, 0.71, 0.715, 0.06, 0.055, 0.01, 0.30)
    h["cmp"] = cmp2
    assert "includes 0" in verdict_text(h, 0.01, 0.30)


def test_ranking_metrics_against_an_independent_computation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    z = 1.5 * np.eye(4)[y] + rng.normal(0, 1.0, (200, 4))
    h = critical_score(z, SEV)
    crit = SEV.positive_rows
    np.testing.assert_allclose(h, softmax(z)[:, crit].sum(1))
    pos = crit[y]
    # AUROC = P(h_pos > h_neg) + 0.5 P(tie) (Mann–Whitney)
    diff = h[pos][:, None] - h[~pos][None, :]
    ref = (diff > 0).mean() + 0.5 * (diff == 0).mean()
    m = ranking_metrics(z, y, SEV)
    assert m["auroc"] == pytest.approx(ref)
    # integer sample weights = repeated rows
    w = rng.integers(0, 3, 200)
    rep = ranking_metrics(np.repeat(z, w, 0), np.repeat(y, w), SEV)
    assert ranking_metrics(z, y, SEV, w)["auroc"] == pytest.approx(rep["auroc"])


def test_grid_split_seed_axis_and_validation_refusal():
    base = {"name": "g", "seeds": [0, 1], "split_seeds": [3, 4],
            "datasets": [{"name": "synthetic", "dataset": "synthetic"}],
            "backbones": [{"name": "r18", "backbone": "resnet18"}],
            "methods": [{"name": "ce", "loss": "ce"}, {"name": "rcl", "loss": "rcl", "lam": [1.0, 2.0]}]}
    g = load_grid(base, output_dir="/tmp/unused")
    assert len(g.cells) == 2 * 2 * 3
    c = [c for c in g.cells if c.split_seed == 4 and c.method == "ce"][0]
    assert c.data["split_seed"] == 4 and "/split4/" in c.cell_id
    assert len({c.cell_id for c in g.cells}) == len(g.cells)
    with pytest.raises(ValueError, match="no validation split"):
        load_grid({**base, "data": {"val_size": 0.0}}, output_dir="/tmp/unused")
    with pytest.raises(ValueError, match="no validation split"):
        load_grid({**base, "datasets": [{"name": "s", "dataset": "synthetic", "max_eval_samples": 0}]},
                  output_dir="/tmp/unused")
    with pytest.raises(ValueError, match="split_seeds"):
        load_grid({**base, "split_seeds": [1, 1]}, output_dir="/tmp/unused")


def test_checkpoint_selection_never_reads_test(tmp_path, monkeypatch):
    """Two tiny frozen runs whose test splits differ (labels shifted) pick the same checkpoint and
    produce identical validation predictions: the best checkpoint is chosen on validation."""
    import json

    import numpy as np

    from rcl_hf import train_job
    from research.grid import run_cell

    grid = {"name": "ckpt", "seeds": [0], "data": {"max_train_samples": 64, "max_eval_samples": 32, "cache_dir": None},
            "training": {"num_train_epochs": 3, "per_device_train_batch_size": 16, "learning_rate": 0.05},
            "datasets": [{"name": "synthetic", "dataset": "synthetic"}],
            "backbones": [{"name": "r18", "backbone": "resnet18", "image_size": 32, "freeze_backbone": True}],
            "methods": [{"name": "ce", "loss": "ce"}]}
    original = train_job.load_data
    outs = []
    for permute in (False, True):
        def load(data_args, *a, _permute=permute, **k):
            dsd, sev = original(data_args, *a, **k)
            if _permute:
                k = dsd["test"].features["label"].num_classes
                dsd["test"] = dsd["test"].map(lambda row: {"label": (int(row["label"]) + 1) % k})
            return dsd, sev
        monkeypatch.setattr(train_job, "load_data", load)
        cell = load_grid(grid, output_dir=str(tmp_path / f"p{int(permute)}")).cells[0]
        run_cell(cell)
        recipe = json.loads((tmp_path / f"p{int(permute)}" / cell.cell_id / "rcl_run.json").read_text())
        with np.load(tmp_path / f"p{int(permute)}" / cell.cell_id / "validation_predictions.npz") as z:
            val = np.asarray(z["logits"])
        with np.load(tmp_path / f"p{int(permute)}" / cell.cell_id / "test_predictions.npz") as z:
            test_labels = np.asarray(z["labels"])
        outs.append((recipe["best_checkpoint"], val, test_labels))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][2], outs[1][2])  # the test split did differ


def test_write_symmetric_report_report_files_and_side_by_side_table(tmp_path):
    """The report writer: every table file, the generated verdicts, and the side-by-side table of two groups."""
    from dataclasses import replace

    from research.symmetric_comparison_report import write_symmetric_report

    runs = _runs(seeds=(0,), n=120)
    runs = runs + [replace(r, dataset="d2") for r in runs]
    result = analyse(runs, WEIGHTS, n_boot=50)
    write_symmetric_report(result, runs, str(tmp_path), "the command", "Title", n_boot_ranking=20, notes="notes", plots=False)
    for name in ("operating_points.csv", "selection.csv", "families.csv", "rule_vs_rule.csv", "coverage.csv",
                 "ranking.csv", "summary.json", "README.md"):
        assert (tmp_path / name).exists(), name
    text = (tmp_path / "README.md").read_text()
    assert "## Side by side" in text and "| family | d / b | d2 / b |" in text
    assert "| dataset | family | side |" in text  # the family table says which group each row is
    assert text.count("best RCL pipeline vs best non-RCL pipeline:") == 2  # one generated verdict per group
    cov = pd.read_csv(tmp_path / "coverage.csv")
    assert {"soft_label", "rcl", "ce"} <= set(cov["family"])  # every trained method, not a fixed list
