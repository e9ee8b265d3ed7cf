"""The risk-control report: validity of the certified layer (group certificate and the image-level control) vs a
naive threshold, coverage per family, paired CIs, the budget check; group ids recovered from a run's rebuilt split."""

import json
import os

import numpy as np
import pytest
import pandas as pd

from rcl_hf import SeverityMatrix
from research.comparison import Run
from research.risk_control_report import evaluate_runs, paired_ci, write_report
from research.risk_control_runs import GroupedRun, group_averaged_risk, load_grouped_runs, recover_group_ids
from research.risk_control_tables import budget_check

SEV = SeverityMatrix.preset("isic2018")
PRIOR = [0.11, 0.67, 0.05, 0.03, 0.11, 0.01, 0.02]


def _runs(per_lesion=(1, 2, 3), grid="toy"):
    """ce and rcl heads whose logits differ only in how sharply the critical classes are seen; the images come
    in lesions of 1–3 near-copies (one label and one logit vector per lesion), with their lesion ids."""
    rng = np.random.default_rng(0)
    runs = []
    for split_seed in range(3):
        for seed in range(2):
            data = {}
            for split, n_lesions in (("val", 600), ("test", 1000)):
                size = rng.choice(per_lesion, size=n_lesions)
                y = np.repeat(rng.choice(7, size=n_lesions, p=PRIOR), size)
                noise = np.repeat(rng.normal(size=(n_lesions, 7)), size, axis=0) + 0.1 * rng.normal(size=(len(y), 7))
                data[split] = (y, noise, np.repeat([f"{split}-lesion-{j}" for j in range(n_lesions)], size))
            for method, boost in (("ce", 1.6), ("rcl", 2.6)):
                logits, labels = {}, {}
                for split, (y, noise, _) in data.items():
                    z = noise.copy()
                    gain = np.where(SEV.positive_rows[y], boost, 1.6)
                    z[np.arange(len(y)), y] += gain
                    logits[split], labels[split] = z, y
                run = Run("isic2018", "toy", method, "default", seed, SEV, logits, labels, split_seed=split_seed)
                runs.append(GroupedRun(run, {k: g for k, (_, _, g) in data.items()}, grid))
    return runs


def test_report_checks_validity_and_finds_the_planted_coverage_gain(tmp_path):
    frame = evaluate_runs(_runs(), levels=(("critical_miss", 0.1), ("cer_accepted", 0.02)), progress=False)
    assert set(frame["method"]) == {"ce", "ce_vector_scaling", "rcl"} and (frame["error"] == "").all()
    assert set(frame["unit"]) == {"group", "image"}  # the group certificate, and the image-level control
    group, image = frame[frame["unit"] == "group"], frame[frame["unit"] == "image"]
    assert (group["n_units"].to_numpy() < image["n_units"].to_numpy()).all()  # lesions, not images, are the group certificate's units
    assert (group["held"] == group["held_group"]).all() and (image["held"] == image["held_image"]).all()
    assert frame["held_group"].notna().all()  # both certificates are scored per image and per lesion on test
    summary = write_report(frame, str(tmp_path), "test", "toy", n_boot=300)
    validity = pd.DataFrame(summary["validity"])
    assert len(validity) == 4 and list(validity["unit"][:2]) == ["group", "image"]
    assert (validity["certified_validity"] >= 0.8).all()
    assert {r["unit"] for r in summary["coverage"]} == {"group"}  # the families are compared on the group certificate
    cm = [v for v in summary["comparisons"] if v["risk_kind"] == "critical_miss"][0]
    # rcl's logits separate the critical classes better: it must keep more coverage at the same certified α
    assert cm["rcl"] == "rcl" and cm["comparator"] in ("ce", "ce_vector_scaling") and cm["coverage_diff"] > 0.02
    assert "keeps more coverage" in cm["verdict"]
    pauc = {r["family"]: r["test_pauroc_tpr90"] for r in summary["coverage"] if r["risk_kind"] == "critical_miss"}
    assert pauc["rcl"] > pauc["ce"]  # the planted better ranking shows at high sensitivity
    text = (tmp_path / "README.md").read_text()
    assert "Validity" in text and "naive" in text and (tmp_path / "coverage_vs_alpha_isic2018_toy.png").is_file()
    assert "| isic2018 / toy | critical_miss | 10% | group |" in text and "| isic2018 / toy | critical_miss | 10% | image |" in text


def test_runs_without_group_ids_get_the_image_certificate_only():
    plain = [r.run for r in _runs()[:2]]
    frame = evaluate_runs(plain, levels=(("critical_miss", 0.1),), progress=False)
    assert set(frame["unit"]) == {"image"} and frame["held_group"].isna().all()


def test_group_averaged_risk_weighs_each_group_the_same():
    # MEL (0) is critical-capable; NV (1) is not. Lesion a: 3 MEL images, 1 missed (called NV, accepted);
    # lesion b: 1 MEL image, missed; lesion c: one NV image, correct. Per image 2/4 missed; per lesion (1/3 + 1)/2.
    labels = np.array([0, 0, 0, 0, 1])
    decisions = np.array([1, 0, 0, 1, 1])
    refer = np.zeros(5, dtype=bool)
    groups = ["a", "a", "a", "b", "c"]
    assert group_averaged_risk(decisions, refer, labels, SEV, groups, "critical_miss") == pytest.approx(2 / 3)
    refer[3] = True  # b's miss referred to a specialist: no longer a miss
    assert group_averaged_risk(decisions, refer, labels, SEV, groups, "critical_miss") == pytest.approx(1 / 6)
    # cer_accepted: among accepted images, per lesion: a 1/3 critical, c 0 -> mean 1/6 (b has none accepted)
    assert group_averaged_risk(decisions, refer, labels, SEV, groups, "cer_accepted") == pytest.approx(1 / 6)
    assert group_averaged_risk(decisions, np.ones(5, dtype=bool), labels, SEV, groups, "cer_accepted") == 0.0


def _fake_loader(monkeypatch, splits):
    """The training's loader replaced by fixed splits (labels, group_id): no data on disk is needed."""
    import datasets
    import rcl_hf.train_data

    calls = []

    def load_data(args, seed=None):
        calls.append(args.split_seed)
        return datasets.DatasetDict({k: datasets.Dataset.from_dict({"label": list(y), "group_id": list(g)})
                                     for k, (y, g) in splits.items()}), None

    monkeypatch.setattr(rcl_hf.train_data, "load_data", load_data)
    return calls


def _write_cell(folder, spec, labels):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "cell.json"), "w") as fh:
        json.dump({"status": "done", "spec": spec}, fh)
    with open(os.path.join(folder, "rcl_run.json"), "w") as fh:
        json.dump({"severity": SEV.to_dict()}, fh)
    for split, y in labels.items():
        np.savez(os.path.join(folder, f"{split}_predictions.npz"), logits=np.zeros((len(y), 7)), labels=np.asarray(y))


def test_group_ids_come_from_the_rebuilt_split_and_a_mismatch_is_refused(tmp_path, monkeypatch):
    splits = {"train": ([1, 1], ["t0", "t1"]), "validation": ([0, 1, 1], ["v0", "v0", "v1"]),
              "test": ([1, 0], ["s0", "s1"])}
    calls = _fake_loader(monkeypatch, splits)
    spec = {"data": {"dataset": "isic2018", "data_dir": "/nowhere", "split_seed": 3, "cache_dir": "/a"}}
    _write_cell(tmp_path / "run", spec, {"validation": [0, 1, 1], "test": [1, 0]})
    cache = {}
    ids = recover_group_ids(str(tmp_path / "run"), {"val": np.array([0, 1, 1]), "test": np.array([1, 0])}, cache)
    assert list(ids["val"]) == ["v0", "v0", "v1"] and list(ids["test"]) == ["s0", "s1"]
    # another run of the same split (another cache, another training budget) reuses the rebuilt split
    spec2 = {"data": {**spec["data"], "cache_dir": "/b", "max_train_samples": 10}}
    _write_cell(tmp_path / "run2", spec2, {"validation": [0, 1, 1], "test": [1, 0]})
    recover_group_ids(str(tmp_path / "run2"), {"validation": [0, 1, 1]}, cache)
    assert calls == [3]
    with pytest.raises(ValueError, match="does not match the saved labels row for row"):
        recover_group_ids(str(tmp_path / "run"), {"test": np.array([0, 1])}, cache)
    with pytest.raises(ValueError, match="does not match"):
        recover_group_ids(str(tmp_path / "run"), {"test": np.array([1, 0, 0])}, cache)


def test_a_grid_run_finished_in_another_checkout_loads_with_its_groups(tmp_path, monkeypatch):
    """A done-marker whose only difference is data.cache_dir (another checkout's cache) still counts as finished."""
    from research.grid import load_grid

    grid = load_grid({"name": "toy", "seeds": [0], "split_seeds": [0], "data": {"cache_dir": str(tmp_path / "here")},
                      "datasets": [{"name": "isic2018", "dataset": "isic2018", "data_dir": "/nowhere"}],
                      "backbones": [{"name": "r18", "backbone": "resnet18", "image_size": 32}],
                      "methods": [{"name": "ce", "loss": "ce"}, {"name": "rcl", "loss": "rcl"}]},
                     output_dir=str(tmp_path / "runs"))
    _fake_loader(monkeypatch, {"train": ([1], ["t"]), "validation": ([0, 1], ["v0", "v1"]), "test": ([1, 1], ["s", "s"])})
    ce, rcl = grid.cells
    _write_cell(ce.output_dir, {**ce.spec(), "data": {**ce.data, "cache_dir": "/elsewhere/.cache"}},
                {"validation": [0, 1], "test": [1, 1]})
    _write_cell(rcl.output_dir, {**rcl.spec(), "data": {**rcl.data, "max_train_samples": 5}},  # another training
                {"validation": [0, 1], "test": [1, 1]})
    runs = load_grouped_runs(grid)
    assert [r.run.method for r in runs] == ["ce"] and runs[0].grid == "toy"
    assert list(runs[0].groups["val"]) == ["v0", "v1"] and list(runs[0].groups["test"]) == ["s", "s"]


def test_budget_check_pairs_runs_by_split_seed_and_seed():
    rows = []
    for grid, bump in (("main", 0.0), ("budget", 0.05)):
        for split_seed in range(5):
            for method in ("ce", "rcl"):
                rows.append({"dataset": "d", "grid": grid, "method": method, "point": "default",
                             "split_seed": split_seed, "seed": 0, "unit": "group", "risk_kind": "critical_miss",
                             "alpha": 0.1, "error": "", "test_coverage": 0.5 + bump + 0.01 * split_seed,
                             "held": 1.0, "held_image": float(grid == "main"), "test_accuracy": 0.7})
    frame = pd.DataFrame(rows)
    main = pd.concat([frame[frame["grid"] == "main"],
                      frame[frame["grid"] == "main"].assign(seed=1)])  # a main-grid seed with no budget run
    checks = budget_check(main, frame[frame["grid"] == "budget"], n_boot=200)
    assert [c["method"] for c in checks] == ["ce", "rcl", "all methods"]
    for c in checks:
        assert c["split_seeds"] == 5 and c["coverage_diff"] == pytest.approx(0.05)
        assert c["ci_split_seeds"] == pytest.approx((0.05, 0.05)) and "more coverage" in c["verdict"]
    assert checks[0]["pairs"] == 5 and checks[2]["pairs"] == 10
    assert checks[0]["held_image_base"] == 5 and checks[0]["held_image_budget"] == 0
    few = budget_check(main, frame[(frame["grid"] == "budget") & (frame["split_seed"] < 2)], n_boot=200)
    assert all(c["split_seeds"] == 2 and "no verdict" in c["verdict"] for c in few)


def test_paired_ci_designs():
    d = pd.DataFrame({"split_seed": np.repeat(np.arange(5), 3), "d": np.repeat([0.1, 0.2, 0.1, 0.3, 0.2], 3)})
    lo, hi = paired_ci(d, 500, nested=False)
    assert lo < 0.18 < hi and lo >= 0.1 and hi <= 0.3
    same = pd.DataFrame({"split_seed": np.repeat(np.arange(5), 3), "d": 0.05})
    assert paired_ci(same, 100) == pytest.approx((0.05, 0.05))


def test_partial_auroc_at_high_sensitivity_spans_chance_to_perfect():
    from research.ranking import partial_auroc_high_sensitivity

    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, 5000)
    z = rng.normal(size=(5000, 7))
    assert partial_auroc_high_sensitivity(z, y, SEV, 0.9) == pytest.approx(0.05, abs=0.01)  # chance: (1 - 0.9) / 2
    z[np.arange(5000), y] += 10
    assert partial_auroc_high_sensitivity(z, y, SEV, 0.9) > 0.99
