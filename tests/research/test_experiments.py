"""research: ECE and risk–coverage by hand, the report of a comparison, the point-5 loss options and the grid
runner (expansion, resumability, one real cell, the command) — on tiny fake logits and tiny runs."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from research import grid as grid_mod
from research.grid import Cell, is_done, load_grid, run_grid
from research.risk_variants import ExperimentRiskArguments, LogitMixupLoss, SeverityMarginLoss
from research.comparison import compare_pipelines
from research.report import write_results
from rcl_hf.metrics.reliability import expected_calibration_error, risk_coverage
from rcl_hf.losses import WeightedCrossEntropyLoss, RiskCalibratedLoss
from rcl_hf.severity import SeverityMatrix

SEV = SeverityMatrix.preset("synthetic")  # normal, lesion_round, lesion_oval, lesion_ring; lesion -> normal critical


def test_ece_and_risk_coverage_by_hand():
    p = np.array([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.2, 0.8, 0, 0], [0.3, 0.7, 0, 0]])
    y = np.array([0, 1, 1, 0])
    # 2 bins: (0, .5] empty, (.5, 1]: conf mean (0.9+0.6+0.8+0.7)/4 = 0.75, acc 2/4 -> ECE 0.25
    assert expected_calibration_error(p, y, n_bins=2) == pytest.approx(0.25)
    # 10 bins: |0.9-1| + |0.6-0| + |0.8-1| + |0.7-0| over 4 = 0.4
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.4)
    d = p.argmax(1)  # [0, 0, 1, 1]; case 1 (lesion called normal) is critical
    rc = risk_coverage(p, y, d, SEV, coverages=(0.5, 0.75, 1.0))
    # risk of decision: case0 0.1*1.0=0.1, case1 0.4, case2 0.2*0.3=0.06, case3 0.3*0.3=0.09
    # order: 2, 3, 0, 1 -> critical only at the last
    assert rc["cer"].tolist() == [0, 0, 0, 0.25]
    assert rc["cer_at"] == {0.5: 0.0, 0.75: 0.0, 1.0: 0.25}


# ----------------------------------------------------------------------------- the report of a comparison
def test_write_results_files(tmp_path, fake_runs):
    comp = compare_pipelines(fake_runs(), [0.0, 0.5, 1.0], n_boot=30)
    paths = write_results(comp, str(tmp_path), title="fake", plots=True)
    table = pd.read_csv(paths["results.csv"])
    assert len(table) == 8  # one row per training run
    assert {"test_cer", "bayes_test_cer", "selected_for", "seed"} <= set(table.columns)
    md = open(paths["results.md"], encoding="utf-8").read()
    for text in ("| ce + blend |", "Clopper–Pearson", "RSI vs focal", "**Targets**", "fronts_d_b.png"):
        assert text in md
    for name in ("fronts_d_b.png", "lambda_sweep_d_b.png", "reliability_d_b.png", "risk_coverage_d_b.png",
                 "confusion_d_b_ce.png"):
        assert os.path.getsize(tmp_path / name) > 5000


def test_floor_flag_follows_the_critical_error_counts(tmp_path, fake_runs):
    from research.report import at_the_floor

    g = pd.DataFrame({"rule": ["argmax", "argmax", "bayes"], "n_critical_seeds": [[5, 4, 4], [25, 1, 11], [90, 80, 70]]})
    assert at_the_floor(g, 20.0)  # argmax means 4.3 and 12.3; the Bayes row does not count
    assert not at_the_floor(g, 10.0)
    comp = compare_pipelines(fake_runs(), [0.0, 1.0], n_boot=10)
    floor = "Critical errors are at the floor here"
    assert floor in open(write_results(comp, str(tmp_path / "a"), plots=False, floor_count=1e9)["results.md"]).read()
    assert floor not in open(write_results(comp, str(tmp_path / "b"), plots=False, floor_count=-1)["results.md"]).read()


# ----------------------------------------------------------------------------- point-5 loss options
def test_severity_margin_loss():
    torch.manual_seed(0)
    z = torch.randn(8, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1, 1, 2, 0])
    ce = WeightedCrossEntropyLoss()
    m = torch.tensor(SEV.matrix, dtype=torch.float32)
    loss = SeverityMarginLoss(ce, SEV, 2.0)
    assert torch.allclose(loss(z, y), ce(z + 2.0 * m[y], y))
    assert torch.allclose(SeverityMarginLoss(ce, SEV, 0.0)(z, y), ce(z, y))
    with torch.no_grad():  # evaluation: no margin
        assert torch.allclose(loss(z, y), ce(z, y))
    # a correctly classified lesion whose 'normal' logit is close: the margin makes it count as an error
    zc = torch.tensor([[3.0, 3.5, -2.0, -2.0]], requires_grad=True)
    yc = torch.tensor([1])
    assert ce(zc, yc) < 0.5 < 1.5 < loss(zc, yc)
    with pytest.raises(ValueError, match="severity_margin"):
        SeverityMarginLoss(ce, SEV, -1.0)


def test_logit_mixup_equals_embedding_mixup_for_a_linear_head():
    torch.manual_seed(1)
    head = torch.nn.Linear(6, 4)
    e = torch.randn(10, 6)
    y = torch.randint(0, 4, (10,))
    rcl = RiskCalibratedLoss(SEV, lam=1.0)
    loss = LogitMixupLoss(rcl, alpha=0.4)
    torch.manual_seed(5)
    got = loss(head(e), y)
    torch.manual_seed(5)  # same draws: the mixing weight, then the permutation
    a = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(10)
    e_mix = a * e + (1 - a) * e[perm]
    want = a * rcl(head(e_mix), y) + (1 - a) * rcl(head(e_mix), y[perm])
    assert torch.allclose(got, want, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(loss(head(e), y), rcl(head(e), y))
    assert torch.allclose(LogitMixupLoss(rcl, 0.0)(head(e), y), rcl(head(e), y))


def test_experiment_risk_arguments_build_and_validate():
    args = ExperimentRiskArguments(loss="rcl", lam=2.0, severity_margin=1.0, logit_mixup_alpha=0.2)
    built = args.build(SEV)
    assert isinstance(built, LogitMixupLoss) and isinstance(built.loss, SeverityMarginLoss)
    assert isinstance(built.loss.loss, RiskCalibratedLoss) and built.loss.loss.lam == 2.0
    assert isinstance(ExperimentRiskArguments(loss="ce").build(SEV), WeightedCrossEntropyLoss)
    with pytest.raises(ValueError, match="logit_mixup_alpha"):
        ExperimentRiskArguments(loss="ce", logit_mixup_alpha=-1)
    with pytest.raises(ValueError, match="Unknown loss"):
        ExperimentRiskArguments(loss="nope")


# ----------------------------------------------------------------------------- grid
GRID = {
    "name": "tiny",
    "seeds": [0, 1],
    "data": {"max_train_samples": 64, "max_eval_samples": 32, "cache_dir": None},
    "training": {"num_train_epochs": 1, "per_device_train_batch_size": 32},
    "datasets": [{"name": "synthetic", "dataset": "synthetic"}],
    "backbones": [{"name": "r18", "backbone": "resnet18", "image_size": 32, "freeze_backbone": True}],
    "methods": [{"name": "ce", "loss": "ce"}, {"name": "rcl", "loss": "rcl", "lam": [0.5, 2.0]}],
}


def test_load_grid_expands_and_validates(tmp_path):
    g = load_grid(GRID, output_dir=str(tmp_path))
    assert len(g.cells) == 2 * (1 + 2)
    ids = [c.cell_id for c in g.cells]
    assert "synthetic/r18/rcl/lam0.5/seed1" in ids and "synthetic/r18/ce/default/seed0" in ids
    c = next(c for c in g.cells if c.point == "lam=2")
    assert c.risk == {"loss": "rcl", "lam": 2.0} and c.training["num_train_epochs"] == 1
    assert c.data["max_train_samples"] == 64 and c.model["freeze_backbone"] is True
    for bad, msg in (({**GRID, "methods": [{"name": "ce", "lr": 1}]}, "unknown key"),
                     ({**GRID, "methods": [{"name": "x", "loss": "nope"}]}, "Unknown loss"),
                     ({**GRID, "methods": [{"name": "rcl", "loss": "rcl", "lam": []}]}, "empty sweep"),
                     ({**GRID, "selection": {"reference": "focal"}}, "reference"),
                     ({**GRID, "training": {"seed": 3}}, "unknown key"),
                     ({**GRID, "rules": {"blend_weights": [0.5, 1.0]}}, "include 0")):
        with pytest.raises(ValueError, match=msg):
            load_grid(bad, output_dir=str(tmp_path))
    y = tmp_path / "g.yaml"
    import yaml

    y.write_text(yaml.safe_dump(GRID))
    assert len(load_grid(str(y), output_dir=str(tmp_path)).cells) == 6


def test_run_grid_resumes_and_reruns_changed_cells(tmp_path):
    g = load_grid({**GRID, "methods": [{"name": "ce"}, {"name": "rcl", "loss": "rcl", "lam": 2.0}], "seeds": [0]},
                  output_dir=str(tmp_path))
    calls = []

    def fake(cell, keep):
        calls.append(cell.cell_id)
        os.makedirs(cell.output_dir, exist_ok=True)
        for f in grid_mod.PREDICTION_FILES:
            np.savez(os.path.join(cell.output_dir, f), logits=np.zeros((2, 4)), labels=np.zeros(2))
        grid_mod._write_marker(cell, {"status": "done"})
        return cell.cell_id, {}, None

    first = run_grid(g, cell_runner=fake, progress=False)
    assert len(first["ran"]) == 2 and not first["skipped"] and len(calls) == 2
    second = run_grid(g, cell_runner=fake, progress=False)
    assert second["ran"] == [] and len(second["skipped"]) == 2 and len(calls) == 2
    # a changed argument makes the cell not done; a failed marker too
    g2 = load_grid({**GRID, "methods": [{"name": "ce"}, {"name": "rcl", "loss": "rcl", "lam": 2.0}], "seeds": [0],
                    "training": {"num_train_epochs": 2}}, output_dir=str(tmp_path))
    assert not any(is_done(c) for c in g2.cells)
    grid_mod._write_marker(g.cells[0], {"status": "failed"})
    third = run_grid(g, cell_runner=fake, progress=False)
    assert third["ran"] == [g.cells[0].cell_id]


def test_one_tiny_frozen_cell_end_to_end(tmp_path):
    """One real cell through rcl_hf.train_job.run_training, then the grid skips it."""
    g = load_grid({**GRID, "seeds": [0], "methods": [{"name": "rcl", "loss": "rcl", "lam": 1.0,
                                                       "severity_margin": 1.0}],
                      "selection": {"reference": "rcl"}},
                  output_dir=str(tmp_path))
    res = run_grid(g, progress=False)
    assert res["failed"] == {} and len(res["ran"]) == 1
    cell = g.cells[0]
    assert is_done(cell)
    info = json.loads((tmp_path / cell.cell_id / "cell.json").read_text())
    assert info["status"] == "done" and info["spec"]["risk"]["severity_margin"] == 1.0
    assert not any(f.endswith(".safetensors") for f in os.listdir(cell.output_dir))  # keep_models false
    recipe = json.loads((tmp_path / cell.cell_id / "rcl_run.json").read_text())
    assert recipe["risk"]["severity_margin"] == 1.0  # the wrapped loss trained
    again = run_grid(g, progress=False)
    assert again["ran"] == [] and again["skipped"] == [cell.cell_id]


def test_cli_dry_run_and_errors(tmp_path, capsys):
    import yaml

    from research.run_grid import main

    y = tmp_path / "g.yaml"
    y.write_text(yaml.safe_dump(GRID))
    out = main([str(y), "--dry_run", "--output_dir", str(tmp_path / "runs")])
    assert out["cells"] == 6
    assert capsys.readouterr().out.count("todo synthetic/r18/") == 6
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing.yaml")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--workers", "2"])
    assert e.value.code == 2


def test_grid_cells_fit_no_ood_guard_unless_asked(tmp_path, monkeypatch):
    """Grid cells are scored from logits: the OOD guard (on by default for the medical datasets, and costly in a
    fine-tuned cell: it re-embeds images) is off in a cell unless the grid's model entry asks for it; the spec is unchanged."""
    import rcl_hf.ood_fit as ood_fit
    from rcl_hf.train_args import ModelArguments

    monkeypatch.setattr(ModelArguments, "wants_ood_guard",
                        lambda self, dataset: True if self.ood_guard is None else self.ood_guard)  # default on
    fitted = []
    monkeypatch.setattr(ood_fit, "fit_ood_guard", lambda *a, **k: fitted.append(1))
    monkeypatch.setattr(ood_fit, "fit_ood_guard_on_embeddings", lambda *a, **k: fitted.append(1))  # frozen cells
    g = load_grid({**GRID, "seeds": [0], "methods": [{"name": "ce"}]}, output_dir=str(tmp_path))
    res = run_grid(g, progress=False)
    assert res["failed"] == {} and fitted == []
    assert "ood_guard" not in g.cells[0].spec()["model"]
    g2 = load_grid({**GRID, "seeds": [0], "methods": [{"name": "ce"}],
                    "backbones": [{**GRID["backbones"][0], "ood_guard": True}]}, output_dir=str(tmp_path / "b"))
    res2 = run_grid(g2, progress=False)
    assert res2["failed"] == {} and fitted == [1]
