"""Cross-fitted risk weights and the trainer's ``sample_weight`` column."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from research.crossfit import crossfit_risk_weights, grouped_folds, out_of_fold_probabilities
from research.grid import load_grid, run_grid
from research.risk_variants import ExperimentRiskArguments
from rcl_hf.losses import RiskCalibratedLoss, build_loss
from rcl_hf.severity import SeverityMatrix
from rcl_hf.trainer import RiskArguments, RiskCalibratedTrainer

SEV = SeverityMatrix.preset("synthetic")


def _blobs(n=240, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(0, 1.5, (k, d))
    x = centers[y] + rng.normal(0, 1.0, (n, d))
    groups = [f"g{i // 3}" for i in range(n)]  # 3 images per "lesion"
    return x.astype(np.float32), y, groups


def test_grouped_folds_keep_groups_whole_balance_labels_and_are_seeded():
    _, y, groups = _blobs()
    folds = grouped_folds(y, groups, 5, seed=0)
    by_group = {}
    for g, f in zip(groups, folds):
        by_group.setdefault(g, set()).add(int(f))
    assert all(len(v) == 1 for v in by_group.values())
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 9
    for c in range(4):  # each class spread over the folds
        per = np.bincount(folds[y == c], minlength=5)
        assert per.max() - per.min() <= 4, per
    np.testing.assert_array_equal(folds, grouped_folds(y, groups, 5, seed=0))
    assert not np.array_equal(folds, grouped_folds(y, groups, 5, seed=1))
    with pytest.raises(ValueError, match=">= 2"):
        grouped_folds(y, groups, 1, seed=0)
    with pytest.raises(ValueError, match="groups cannot fill"):
        grouped_folds(y[:6], groups[:6], 5, seed=0)


def test_out_of_fold_probabilities_never_see_their_own_fold():
    """Row i's probabilities depend on x_i and on the other folds only: perturbing one image
    changes no other probability of its own fold, but does change the other folds' rows."""
    x, y, groups = _blobs()
    p = out_of_fold_probabilities(x, y, groups, n_folds=4, seed=0)
    assert p.shape == (len(y), 4)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    folds = grouped_folds(y, groups, 4, seed=0)
    j = int(np.flatnonzero(folds == 0)[0])
    x2 = x.copy()
    x2[j] += 25.0
    p2 = out_of_fold_probabilities(x2, y, groups, n_folds=4, seed=0)
    same_fold = (folds == 0) & (np.arange(len(y)) != j)
    np.testing.assert_array_equal(p2[same_fold], p[same_fold])
    assert np.abs(p2[folds != 0] - p[folds != 0]).max() > 1e-4
    assert np.abs(p2[j] - p[j]).max() > 1e-4


def test_out_of_fold_probabilities_match_sklearn_logistic_regression():
    """Independent reference: sklearn's L2 multinomial logistic regression per fold
    (C = 1 / (l2 · n_fit) is the same objective; neither penalises the intercept)."""
    from sklearn.linear_model import LogisticRegression

    x, y, groups = _blobs(n=180, seed=3)
    l2 = 1e-2
    p = out_of_fold_probabilities(x, y, groups, n_folds=3, seed=2, l2=l2, max_iter=500)
    folds = grouped_folds(y, groups, 3, seed=2)
    for k in range(3):
        fit, held = folds != k, folds == k
        mu, sd = x[fit].astype(np.float64).mean(0), x[fit].astype(np.float64).std(0) + 1e-6
        ref = LogisticRegression(C=1.0 / (l2 * fit.sum()), max_iter=5000, tol=1e-10)
        ref.fit((x[fit] - mu) / sd, y[fit])
        np.testing.assert_allclose(p[held], ref.predict_proba((x[held] - mu) / sd), atol=2e-4)


def test_crossfit_risk_weights_by_hand():
    m = np.asarray(SEV.matrix, dtype=np.float64)
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    y = np.array([1, 1, 3])
    cost = np.array([(m[1] * p[0]).sum(), (m[1] * p[1]).sum(), (m[3] * p[2]).sum()])
    w = crossfit_risk_weights(p, y, SEV, beta=2.0)
    raw = 1 + 2.0 * cost / cost.mean()
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
    assert w.mean() == pytest.approx(1.0) and w[0] > w[1]  # the sample a held-out model misses weighs more
    np.testing.assert_array_equal(crossfit_risk_weights(p, y, SEV, beta=0.0), np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="crossfit_weight"):
        crossfit_risk_weights(p, y, SEV, beta=-1.0)
    with pytest.raises(ValueError, match="probabilities must be"):
        crossfit_risk_weights(p[:, :3], y, SEV, beta=1.0)


def test_crossfit_risk_weights_within_class_keep_each_class_total():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), 40)
    y = rng.integers(0, 4, 40)
    w = crossfit_risk_weights(p, y, SEV, beta=2.0, within_class=True)
    g = crossfit_risk_weights(p, y, SEV, beta=2.0)
    for c in np.unique(y):
        assert w[y == c].mean() == pytest.approx(1.0, rel=1e-5)  # the class keeps its total weight
        np.testing.assert_allclose(w[y == c] / w[y == c].sum(), g[y == c] / g[y == c].sum(), rtol=1e-5)  # same order
    assert not np.allclose(w, g)


def test_trainer_defers_sample_weights_until_their_epoch(tmp_path):
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = _Linear()
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    trainer = RiskCalibratedTrainer(model=model, args=args, risk_args=RiskArguments(loss="rcl", lam=1.0), severity=SEV,
                                    sample_weight_start_epoch=2.0)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 1, 2])
    w = torch.tensor([0.0, 2.0, 1.0, 1.0, 0.5, 1.5])
    fn = build_loss("rcl", SEV, lam=1.0)
    model.train()
    for epoch, weighted in ((0.0, False), (1.99, False), (2.0, True), (3.5, True)):
        trainer.state.epoch = epoch
        got = trainer.compute_loss(model, {"x": x, "labels": y, "sample_weight": w})
        per = fn.per_sample(model(x)["logits"], y)
        torch.testing.assert_close(got, (per * w).mean() if weighted else per.mean())
    with pytest.raises(ValueError, match="sample_weight_start_epoch"):
        RiskCalibratedTrainer(model=model, args=args, risk_args=RiskArguments(loss="rcl"), severity=SEV,
                              sample_weight_start_epoch=-1.0)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, x, **_):
        return {"logits": self.linear(x)}


@pytest.mark.parametrize("loss", ["rcl", "focal"])
def test_trainer_sample_weight_is_a_weighted_mean_and_only_while_training(tmp_path, loss):
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = _Linear()
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    trainer = RiskCalibratedTrainer(model=model, args=args, risk_args=RiskArguments(loss=loss, lam=1.0), severity=SEV)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 1, 2])
    w = torch.tensor([0.0, 2.0, 1.0, 1.0, 0.5, 1.5])
    fn = build_loss(loss, SEV, lam=1.0)
    model.train()
    got = trainer.compute_loss(model, {"x": x, "labels": y, "sample_weight": w})
    ref = (fn.per_sample(model(x)["logits"], y) * w).mean()
    torch.testing.assert_close(got, ref)
    # a zero weight removes the sample from the gradient
    got.backward()
    g_weighted = model.linear.weight.grad.clone()
    model.zero_grad()
    keep = w > 0
    (fn.per_sample(model(x[keep])["logits"], y[keep]) * w[keep]).sum().div(6).backward()
    torch.testing.assert_close(g_weighted, model.linear.weight.grad)
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, {"x": x, "labels": y, "sample_weight": w}),
                               fn(model(x)["logits"], y))


def test_experiment_arguments_validate_crossfit_options():
    args = ExperimentRiskArguments(loss="rcl", crossfit_weight=1.0, crossfit_folds=3)
    assert isinstance(args.build(SEV), RiskCalibratedLoss)
    assert ExperimentRiskArguments(loss="rcl").train_sample_weights(np.zeros((4, 2)), [0, 1, 2, 3], None, SEV, 0) is None
    for kw, msg in (({"crossfit_weight": -1.0}, "crossfit_weight"), ({"crossfit_folds": 1}, "crossfit_folds"),
                    ({"crossfit_weight": 1.0, "severity_margin": 1.0}, "combine"),
                    ({"crossfit_start_epoch": 5.0}, "set crossfit_weight"),
                    ({"crossfit_within_class": True}, "set crossfit_weight"),
                    ({"crossfit_weight": 1.0, "crossfit_start_epoch": -1.0}, "crossfit_start_epoch"),
                    ({"crossfit_weight": 1.0, "crossfit_max_iter": 0}, "crossfit_max_iter")):
        with pytest.raises(ValueError, match=msg):
            ExperimentRiskArguments(loss="rcl", **kw)


def test_crossfit_max_iter_reaches_the_out_of_fold_models(monkeypatch):
    from research import crossfit

    seen = {}
    real = crossfit.out_of_fold_probabilities

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(crossfit, "out_of_fold_probabilities", spy)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 6)
    x = rng.normal(size=(24, 3)) + y[:, None]
    w = ExperimentRiskArguments(loss="rcl", crossfit_weight=1.0, crossfit_folds=3, crossfit_max_iter=7) \
        .train_sample_weights(x, y, None, SEV, 0)
    assert seen["max_iter"] == 7 and w.shape == (24,) and np.isclose(w.mean(), 1.0)
    # fewer iterations leave the nuisance model less converged: the probabilities differ
    few = crossfit.out_of_fold_probabilities(x, y, None, n_folds=3, seed=0, max_iter=1)
    many = crossfit.out_of_fold_probabilities(x, y, None, n_folds=3, seed=0, max_iter=1000)
    assert not np.allclose(few, many)


GRID = {
    "name": "tiny_crossfit",
    "seeds": [0],
    "data": {"max_train_samples": 96, "max_eval_samples": 32, "cache_dir": None},
    "training": {"num_train_epochs": 2, "per_device_train_batch_size": 32, "learning_rate": 1e-2},
    "datasets": [{"name": "synthetic", "dataset": "synthetic"}],
    "backbones": [{"name": "r18", "backbone": "resnet18", "image_size": 32, "freeze_backbone": True}],
    "selection": {"reference": "rcl"},
}


def test_crossfit_cell_trains_the_head_with_the_weights(tmp_path, monkeypatch):
    seen = []
    real = RiskCalibratedTrainer.compute_loss

    def spy(self, model, inputs, *a, **k):
        if model.training:
            seen.append(inputs.get("sample_weight"))
        return real(self, model, inputs, *a, **k)

    monkeypatch.setattr(RiskCalibratedTrainer, "compute_loss", spy)
    g = load_grid({**GRID, "methods": [{"name": "rcl", "loss": "rcl", "lam": 1.0},
                                       {"name": "rcl_cf", "loss": "rcl", "lam": 1.0, "crossfit_weight": 4.0,
                                        "crossfit_folds": 3}]},
                  output_dir=str(tmp_path))
    res = run_grid(g, progress=False)
    assert res["failed"] == {} and len(res["ran"]) == 2
    weighted = [w for w in seen if w is not None]
    assert weighted and len(weighted) == len(seen) // 2  # only the cross-fitted cell's batches carry weights
    allw = torch.cat(weighted)
    assert allw.numel() == 2 * 96 and allw.mean().item() == pytest.approx(1.0, abs=1e-5) and allw.std() > 0.05
    logits = {c.method: np.load(f"{c.output_dir}/test_predictions.npz")["logits"] for c in g.cells}
    assert not np.allclose(logits["rcl"], logits["rcl_cf"])
    recipe = json.loads((tmp_path / g.cells[1].cell_id / "rcl_run.json").read_text())
    assert recipe["risk"]["crossfit_weight"] == 4.0


def test_crossfit_refused_under_full_fine_tuning(tmp_path):
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training

    with pytest.raises(ValueError, match="frozen-backbone mode"):
        run_training(ModelArguments(backbone="resnet18", image_size=32), DataArguments(dataset="synthetic"),
                     ExperimentRiskArguments(loss="rcl", crossfit_weight=1.0), default_training_args(str(tmp_path)))


def test_deferred_within_class_crossfit_cell_passes_its_start_epoch_to_the_trainer(tmp_path, monkeypatch):
    starts = []
    real = RiskCalibratedTrainer.compute_loss

    def spy(self, model, inputs, *a, **k):
        if model.training:
            starts.append((self.sample_weight_start_epoch, inputs.get("sample_weight") is not None))
        return real(self, model, inputs, *a, **k)

    monkeypatch.setattr(RiskCalibratedTrainer, "compute_loss", spy)
    g = load_grid({**GRID, "methods": [{"name": "rcl_cf_drw", "loss": "rcl", "lam": 1.0, "crossfit_weight": 4.0,
                                        "crossfit_folds": 3, "crossfit_within_class": True,
                                        "crossfit_start_epoch": 1.0}], "selection": {"reference": "rcl_cf_drw"}},
                  output_dir=str(tmp_path))
    res = run_grid(g, progress=False)
    assert res["failed"] == {} and len(res["ran"]) == 1
    assert starts and set(starts) == {(1.0, True)}
