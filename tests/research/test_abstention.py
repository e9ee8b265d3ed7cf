"""Trained cost-aware abstention (research.abstention): selective outcomes against a plain
reference implementation, SelectiveNet's selector learning what to refer, and selection that reads
validation only."""

from __future__ import annotations

import types

import numpy as np
import pytest

from research import abstention_report
from research.abstention import (
    AbstentionConfig,
    choose,
    options,
    selective_outcomes,
    train_head,
)
from rcl_hf.severity import SeverityMatrix

SEV = SeverityMatrix.preset("isic2018")


def _reference_selective(logits, selector, labels, coverage, ranking, decision):
    """Loop-by-loop reference: rank, take the first ceil(c·N), count critical errors among them."""
    n, k = logits.shape
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    decisions, unsafe = [], []
    for i in range(n):
        costs = [sum(p[i, a] * SEV.matrix[a, j] for a in range(k)) for j in range(k)]
        d = int(np.argmax(p[i])) if decision == "argmax" else int(np.argmin(costs))
        decisions.append(d)
        unsafe.append(-selector[i] if ranking == "selector" else costs[d])
    order = sorted(range(n), key=lambda i: (unsafe[i], i))[: int(np.ceil(coverage * n - 1e-9))]
    crit = sum(bool(SEV.critical[labels[i], decisions[i]]) for i in order) / len(order)
    acc = sum(decisions[i] == labels[i] for i in order) / len(order)
    return crit, acc, len(order)


@pytest.mark.parametrize("ranking,decision", [("expected_cost", "argmax"), ("expected_cost", "bayes"),
                                              ("selector", "argmax"), ("selector", "bayes")])
@pytest.mark.parametrize("coverage", [1.0, 0.9, 0.55])
def test_selective_outcomes_match_a_reference_implementation(ranking, decision, coverage):
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (203, 7))
    y = rng.integers(0, 7, 203)
    g = rng.random(203)
    out = selective_outcomes(z, g, y, SEV, coverage, ranking, decision)
    crit, acc, n_decided = _reference_selective(z, g, y, coverage, ranking, decision)
    assert out["critical"].mean() == pytest.approx(crit)
    assert out["correct"].mean() == pytest.approx(acc)
    assert int((out["critical"] > 0).sum() + ((out["critical"] == 0) & (out["correct"] > 0)).sum()) <= n_decided


def test_selective_outcomes_refuse_bad_arguments():
    z, y = np.zeros((4, 7)), np.zeros(4, dtype=int)
    with pytest.raises(ValueError, match="ranking must be one of"):
        selective_outcomes(z, None, y, SEV, 0.9, "entropy", "argmax")
    with pytest.raises(ValueError, match="coverage must be in"):
        selective_outcomes(z, None, y, SEV, 0.0, "expected_cost", "argmax")
    with pytest.raises(ValueError, match="needs a model with a selector head"):
        selective_outcomes(z, None, y, SEV, 0.9, "selector", "argmax")
    with pytest.raises(ValueError, match="alpha must be in"):
        AbstentionConfig(alpha=1.5)
    with pytest.raises(ValueError, match="selective must be"):
        train_head(np.zeros((4, 3)), y, SEV, selective="gamblers")


def _noisy_blobs(seed: int, n: int = 600):
    """Two halves: one with clean, separable labels, one whose labels are random (nothing to learn there)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0, 2, (8, 16))  # the same classes in every draw
    y = rng.integers(0, 7, n)
    x = centers[y] + rng.normal(0, 0.5, (n, 16))
    noisy = np.arange(n) % 2 == 1
    x[noisy] = centers[7] + rng.normal(0, 0.5, (noisy.sum(), 16))  # an eighth region, no class of its own
    y[noisy] = rng.integers(0, 7, noisy.sum())
    return x.astype(np.float32), y, noisy


@pytest.mark.parametrize("selective", ["ce", "cost"])
def test_selectivenet_selector_refers_the_region_it_cannot_predict(selective):
    x, y, noisy = _noisy_blobs(0)
    predict = train_head(x, y, SEV, selective, coverage=0.5, seed=0, config=AbstentionConfig(epochs=40, batch_size=64))
    xt, yt, noisy_t = _noisy_blobs(1)
    z, g = predict(xt)
    assert g is not None and g.shape == (len(yt),)
    assert g[~noisy_t].mean() > g[noisy_t].mean() + 0.2  # the selector keeps the learnable half
    clean_acc = (z.argmax(1) == yt)[~noisy_t].mean()
    assert clean_acc > 0.75
    sel = selective_outcomes(z, g, yt, SEV, 0.5, "selector", "argmax")
    assert sel["correct"].mean() > clean_acc - 0.05  # it decides (almost only) the half it can predict


def test_ce_head_is_seeded_and_has_no_selector():
    x, y, _ = _noisy_blobs(0, 200)
    cfg = AbstentionConfig(epochs=3)
    z1, g1 = train_head(x, y, SEV, None, seed=5, config=cfg)(x)
    z2, _ = train_head(x, y, SEV, None, seed=5, config=cfg)(x)
    assert g1 is None
    np.testing.assert_array_equal(z1, z2)


def test_choose_takes_the_lowest_mean_validation_cer_and_options_are_symmetric():
    assert choose({("expected_cost", "argmax"): [0.2, 0.2], ("expected_cost", "bayes"): [0.1, 0.15]}) == \
        ("expected_cost", "bayes")
    assert options("ce") == [("expected_cost", "argmax"), ("expected_cost", "bayes")]
    assert set(options("selectivenet")) >= set(options("ce"))  # SelectiveNet keeps every option ce has


def _fake_grid(splits=(0, 1), seeds=(0, 1)):
    cells = [types.SimpleNamespace(method="ce", model={"freeze_backbone": True}, data={"split_seed": s},
                                   split_seed=s, seed=t)
             for s in splits for t in seeds]
    return types.SimpleNamespace(cells=cells)


def test_run_abstention_chooses_on_validation_only(monkeypatch):
    """A change of the test embeddings changes test scores but never a choice or a validation figure."""
    data = {}
    for split in (0, 1):
        parts = {}
        for part in ("train", "validation", "test"):
            x, y, _ = _noisy_blobs(hash((split, part)) % 1000, 160)
            parts[part] = (x, y)
        data[split] = parts
    perturb = {"on": False}

    def load(model_args, data_args):
        parts = dict(data[data_args["split_seed"]])
        if perturb["on"]:
            x, y = parts["test"]
            parts["test"] = (x + np.random.default_rng(9).normal(0, 3, x.shape).astype(np.float32), y)
        return parts, SEV

    monkeypatch.setattr("research.embed_pool.load_split_embeddings", load)
    monkeypatch.setattr("rcl_hf.train_job.ModelArguments", lambda **kw: kw)
    monkeypatch.setattr("rcl_hf.train_job.DataArguments", lambda **kw: kw)
    cfg = AbstentionConfig(epochs=2)
    a, _ = abstention_report.run_abstention(_fake_grid(), (0.9,), cfg, n_boot=50, progress=False)
    perturb["on"] = True
    b, summary = abstention_report.run_abstention(_fake_grid(), (0.9,), cfg, n_boot=50, progress=False)
    cols = ["family", "coverage", "ranking", "decision", "val_selective_cer"]
    assert a[cols].equals(b[cols])
    assert not np.allclose(a["test_selective_cer"], b["test_selective_cer"])
    assert set(a["family"]) == {"ce", "selectivenet", "selectivenet_cost"}
    assert all("coverage" in c["verdict"] for c in summary["comparisons"])


def test_run_abstention_trains_with_the_thread_count_it_records(monkeypatch):
    """The heads train under ``threads`` torch threads (their float sums depend on it), the caller's count is
    restored afterwards, even on an error, and the summary names it."""
    import torch

    x, y, _ = _noisy_blobs(3, 64)
    seen = []

    def load(model_args, data_args):
        return {part: (x, y) for part in ("train", "validation", "test")}, SEV

    def head(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train_head(*args, **kwargs)

    monkeypatch.setattr("research.embed_pool.load_split_embeddings", load)
    monkeypatch.setattr("rcl_hf.train_job.ModelArguments", lambda **kw: kw)
    monkeypatch.setattr("rcl_hf.train_job.DataArguments", lambda **kw: kw)
    monkeypatch.setattr(abstention_report, "train_head", head)
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    _, summary = abstention_report.run_abstention(_fake_grid((0,), (0,)), (0.9,), AbstentionConfig(epochs=1),
                                                  n_boot=20, progress=False, threads=target)
    assert seen and set(seen) == {target}
    assert summary["torch_threads"] == target and torch.get_num_threads() == before
    monkeypatch.setattr(abstention_report, "train_head", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        abstention_report.run_abstention(_fake_grid((0,), (0,)), (0.9,), threads=target, progress=False)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        abstention_report.run_abstention(_fake_grid(), threads=0)


def test_verdict_follows_the_ci():
    row = {"family": "selectivenet_cost", "coverage": 0.9, "test_selective_cer": 0.02, "cer_diff_vs_ce": -0.01}
    assert "beats" in abstention_report.verdict({**row, "cer_diff_vs_ce_ci": (-0.02, -0.001)})
    assert "no difference shown" in abstention_report.verdict({**row, "cer_diff_vs_ce_ci": (-0.02, 0.001)})
    assert "worse" in abstention_report.verdict({**row, "cer_diff_vs_ce_ci": (0.001, 0.02)})


def test_abstention_report_end_to_end_on_a_tiny_frozen_grid(tmp_path):
    """Two split seeds of a real frozen-backbone grid (the second reuses the first's embeddings), then the
    report reads both caches, trains every family and writes its files."""
    import json

    from research.embed_pool import load_split_embeddings
    from research.grid import load_grid, run_grid
    from rcl_hf.train_job import DataArguments, ModelArguments

    grid_file = tmp_path / "grid.yaml"
    import yaml

    grid_file.write_text(yaml.safe_dump({
        "name": "tiny_abstention", "output_dir": str(tmp_path / "runs"), "seeds": [0], "split_seeds": [0, 1],
        "data": {"max_train_samples": 96, "cache_dir": str(tmp_path / "cache"), "val_size": 0.2},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 32},
        "datasets": [{"name": "synthetic", "dataset": "synthetic"}],
        "backbones": [{"name": "r18", "backbone": "resnet18", "image_size": 32, "freeze_backbone": True}],
        "methods": [{"name": "ce", "loss": "ce"}]}))
    grid = load_grid(str(grid_file))
    res = run_grid(grid, progress=False)
    assert res["failed"] == {} and len(res["ran"]) == 2
    emb = {}
    for cell in grid.cells:
        parts, sev = load_split_embeddings(ModelArguments(**cell.model), DataArguments(**cell.data))
        assert set(parts) == {"train", "validation", "test"}
        x, y = parts["train"]
        assert x.ndim == 2 and len(x) == len(y) and y.max() < sev.num_labels
        emb[cell.split_seed] = parts
    assert not np.array_equal(emb[0]["test"][1], emb[1]["test"][1])  # two different splits
    out = tmp_path / "report"
    assert abstention_report.main([str(grid_file), "--out", str(out), "--epochs", "2", "--n_boot", "20"]) == 0
    summary = json.loads((out / "abstention.json").read_text())
    assert summary["splits"] == [0, 1] and len(summary["rows"]) == 3 * 2
    assert "| selectivenet_cost | 90% |" in (out / "README.md").read_text()


def test_a_split_seed_grid_runs_the_backbone_once_per_group_of_images(tmp_path, monkeypatch):
    """The first frozen cell embeds; every other split seed, and a second entry of the same images under
    another split setting, reuse its embeddings (research.embed_pool.embedding_seed_cells /
    share_embeddings, images matched by content id when the dataset has no id column)."""
    import datasets

    import rcl_hf.frozen as frozen
    from rcl_hf.data.synthetic import load_synthetic
    from research.grid import load_grid, run_grid

    folder = tmp_path / "train_only"  # one pool of images; the grid carves validation / test per split seed
    datasets.DatasetDict({"train": load_synthetic(seed=0, n_train=160, n_validation=8, n_test=8)["train"]}).save_to_disk(
        str(folder))
    calls = []
    real = frozen.extract_embeddings

    def counting(model, dataset, *a, **k):
        calls.append(len(dataset))
        return real(model, dataset, *a, **k)

    monkeypatch.setattr(frozen, "extract_embeddings", counting)
    grid = load_grid({
        "name": "tiny_share", "output_dir": str(tmp_path / "runs"), "seeds": [0], "split_seeds": [0, 1, 2],
        "data": {"cache_dir": str(tmp_path / "cache")},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 64},
        "datasets": [{"name": "a", "dataset": str(folder), "val_size": 0.2, "test_size": 0.2},
                     {"name": "b", "dataset": str(folder), "val_size": 0.25, "test_size": 0.2}],
        "backbones": [{"name": "r18", "backbone": "resnet18", "image_size": 32, "freeze_backbone": True}],
        "methods": [{"name": "ce", "loss": "ce"}]})
    res = run_grid(grid, progress=False)
    assert res["failed"] == {} and len(res["ran"]) == 6
    assert sum(calls) == 160, f"the backbone embedded {sum(calls)} images in {len(calls)} passes; 160 images once expected"
