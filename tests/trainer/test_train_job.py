"""End-to-end fine-tuning (timm and native backbones), frozen-backbone mode, config round trips, resume."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rcl_hf.commands.args import parse_args
from rcl_hf.commands.train import TRAIN_DEFAULTS, greater_is_better_for
from rcl_hf.models import severity_from_config
from rcl_hf.severity import SeverityMatrix
from rcl_hf.trainer import RiskArguments
from rcl_hf.formatting import format_table
from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training

REPO = Path(__file__).resolve().parents[2]
RUN_FILES = ("model.safetensors", "config.json", "preprocessor_config.json", "test_results.json", "rcl_run.json",
             "confusion_matrix_test.png", "all_results.json", "test_predictions.npz")


def _run(out_dir, dataset, backbone="resnet18", loss="rcl", cache_dir=None, model_kw=None, **train_kw):
    kw = dict(num_train_epochs=1, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=2e-3,
              seed=0, disable_tqdm=True, save_total_limit=1, dataloader_num_workers=0)
    kw.update(train_kw)
    return run_training(
        ModelArguments(backbone=backbone, image_size=32, **(model_kw or {})),
        DataArguments(dataset=dataset, cache_dir=cache_dir or os.path.join(str(out_dir), "cache")),
        RiskArguments(loss=loss, lam=1.0),
        default_training_args(str(out_dir), **kw),
    )


def _check_run_folder(out: Path, backbone: str) -> dict:
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    labels = SeverityMatrix.preset("synthetic").labels
    assert [config["id2label"][str(i)] for i in range(4)] == labels
    assert config["label2id"] == {n: i for i, n in enumerate(labels)}
    assert config["rcl_severity"]["labels"] == labels
    test = json.loads((out / "test_results.json").read_text())
    for key in ("test_accuracy", "test_cer", "test_critical_miss_rate", "test_expected_cost", "test_bayes_cer"):
        assert 0.0 <= test[key] <= 1.0, key
    recipe = json.loads((out / "rcl_run.json").read_text())
    assert recipe["backbone"] == backbone and recipe["world_size"] == 1
    assert recipe["dataset_name"] == "synthetic"  # a save_to_disk folder of the synthetic loader, by its name
    assert recipe["split_sizes"] == {"train": 200, "validation": 40, "test": 61}
    preds = np.load(out / "test_predictions.npz")
    assert preds["logits"].shape == (61, 4)
    # The saved numbers are those of the saved predictions.
    assert test["test_accuracy"] == pytest.approx(float((preds["logits"].argmax(-1) == preds["labels"]).mean()))
    return test


def _reload_logits(folder: Path, dataset: str, split: str = "test") -> np.ndarray:
    """Logits of the checkpoint loaded with plain transformers, preprocessed as at training time."""
    import datasets
    from transformers import AutoModelForImageClassification

    from rcl_hf.data.transforms import apply_transforms

    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    ds = apply_transforms(datasets.load_from_disk(dataset)[split], image_size=32, mean=proc["image_mean"],
                          std=proc["image_std"])
    with torch.inference_mode():
        return model(pixel_values=ds[:]["pixel_values"]).logits.numpy()


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("timm_run")
    return out, _run(out, tiny_dataset, backbone="resnet18")


def test_timm_backbone_end_to_end(timm_run, tiny_dataset):
    out, result = timm_run
    test = _check_run_folder(out, "resnet18")
    assert result["test"]["cer"] == test["test_cer"]
    assert set(result) >= {"validation", "test", "output_dir", "split_sizes"}
    assert np.asarray(result["test"]["confusion_matrix"]).sum() == 61
    # The folder reloads with plain transformers and predicts what training reported.
    np.testing.assert_allclose(_reload_logits(out, tiny_dataset), np.load(out / "test_predictions.npz")["logits"],
                               rtol=1e-4, atol=1e-4)


def test_native_backbone_end_to_end(tmp_path, tiny_dataset):
    result = _run(tmp_path, tiny_dataset, backbone="hf-resnet", loss="ce")
    _check_run_folder(tmp_path, "hf-resnet")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "resnet"
    np.testing.assert_allclose(_reload_logits(tmp_path, tiny_dataset), np.load(tmp_path / "test_predictions.npz")["logits"],
                               rtol=1e-4, atol=1e-4)
    assert result["validation"]["accuracy"] >= 0.0


def test_ood_guard_is_fitted_and_loaded_when_asked(tmp_path, tiny_dataset):
    import rcl_hf
    from rcl_hf.data.synthetic import load_synthetic

    _run(tmp_path, tiny_dataset, loss="ce", model_kw={"ood_guard": True, "ood_guard_samples": 60})
    assert (tmp_path / "ood_guard.safetensors").is_file()
    model = rcl_hf.load_model(str(tmp_path))
    assert model.ood_guard is not None
    images = [row["image"] for row in load_synthetic(seed=9, n_train=4, n_validation=0, n_test=0)["train"]]
    out = rcl_hf.predict(model, images)
    assert out.ood_score is not None and len(out.out_of_distribution) == 4
    assert not ModelArguments().wants_ood_guard("synthetic") and ModelArguments().wants_ood_guard("isic2018")
    assert not ModelArguments(ood_guard=False).wants_ood_guard("isic2018")


def test_config_json_round_trip(timm_run):
    from transformers import AutoConfig, AutoModelForImageClassification, pipeline

    out, _ = timm_run
    severity = SeverityMatrix.preset("synthetic")
    for source in (out, out / "config.json", AutoConfig.from_pretrained(str(out)),
                   json.loads((out / "config.json").read_text())):
        back = severity_from_config(source if not isinstance(source, Path) else str(source))
        assert back.labels == severity.labels
        assert np.array_equal(back.matrix, severity.matrix)
        assert np.array_equal(back.critical, severity.critical)
    model = AutoModelForImageClassification.from_pretrained(str(out))
    assert model.config.id2label == dict(enumerate(severity.labels))
    assert model.config.rcl_severity["critical"] == severity.critical.tolist()
    clf = pipeline("image-classification", model=str(out), device="cpu")
    from PIL import Image

    preds = clf(Image.new("RGB", (40, 40), (120, 120, 120)), top_k=4)
    assert sorted(p["label"] for p in preds) == sorted(severity.labels)


def test_config_file_round_trip(tmp_path):
    """A YAML and a JSON config parse into the same dataclasses as the equivalent flags; later flags win."""
    import yaml
    from transformers import TrainingArguments

    types = (ModelArguments, DataArguments, RiskArguments, TrainingArguments)
    values = {"backbone": "hf-vit", "image_size": 48, "dataset": "synthetic", "loss": "rcl_log", "lam": 0.5,
              "output_dir": str(tmp_path / "o"), "num_train_epochs": 3, "learning_rate": 5e-4,
              "metric_for_best_model": "cer", "greater_is_better": False, "freeze_backbone": True,
              "report_to": "none"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "c.json").write_text(json.dumps(values))
    flags = [f"--{k}={v}" for k, v in values.items()]
    ref = parse_args(types, flags, defaults=TRAIN_DEFAULTS)
    for name in ("c.yaml", "c.json"):
        parsed = parse_args(types, [str(tmp_path / name)], defaults=TRAIN_DEFAULTS)
        for a, b in zip(parsed[:3], ref[:3]):
            assert a == b
        assert parsed[3].to_dict() == ref[3].to_dict()
        m, d, r, t = parsed
        assert (m.backbone, m.image_size, m.freeze_backbone, r.loss, r.lam) == ("hf-vit", 48, True, "rcl_log", 0.5)
        assert (t.num_train_epochs, t.learning_rate, t.greater_is_better) == (3, 5e-4, False)
        assert t.eval_strategy == "epoch" and t.load_best_model_at_end  # train.py defaults
    m, _, r, t = parse_args(types, [str(tmp_path / "c.yaml"), "--lam", "2", "--backbone", "resnet18"])
    assert (m.backbone, r.lam) == ("resnet18", 2.0)
    with pytest.raises(SystemExit):
        parse_args(types, [str(tmp_path / "missing.yaml")])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"no_such_option": 1, "output_dir": "x"}))
    with pytest.raises(SystemExit):
        parse_args(types, [str(tmp_path / "bad.yaml")])


def test_shipped_configs_parse():
    """One config per dataset; the loss is a flag, and every flag after the config overrides it."""
    from transformers import TrainingArguments

    from rcl_hf.data import available_datasets

    types = (ModelArguments, DataArguments, RiskArguments, TrainingArguments)
    seen = set()
    for path in sorted(glob.glob(str(REPO / "configs" / "*.yaml"))):
        m, d, r, t = parse_args(types, [path], defaults=TRAIN_DEFAULTS)
        assert os.path.basename(path) == f"{d.dataset}.yaml"
        assert r.loss == "rcl" and r.lam == 2.0
        assert t.metric_for_best_model == "expected_cost" and t.greater_is_better is False
        m2, d2, r2, t2 = parse_args(types, [path, "--loss", "focal", "--learning_rate", "0.01", "--lam", "0.5"],
                                    defaults=TRAIN_DEFAULTS)
        assert (r2.loss, r2.lam, t2.learning_rate, d2.dataset) == ("focal", 0.5, 0.01, d.dataset)
        seen.add(d.dataset)
    assert seen == set(available_datasets())


def test_cpu_budget_configs_parse():
    """configs/cpu/<dataset>.yaml: the recipes sized for a 2-core CPU (the shipped Brain-MRI model) parse, name their
    dataset, select on validation expected cost and certify the decision layer."""
    from transformers import TrainingArguments

    types = (ModelArguments, DataArguments, RiskArguments, TrainingArguments)
    paths = sorted(glob.glob(str(REPO / "configs" / "cpu" / "*.yaml")))
    assert paths, "no CPU-budget config"
    for path in paths:
        m, d, r, t = parse_args(types, [path], defaults=TRAIN_DEFAULTS)
        assert os.path.basename(path) == f"{d.dataset}.yaml"
        assert t.metric_for_best_model == "expected_cost" and t.load_best_model_at_end
        assert m.calibrate and m.risk_kind == "critical_miss"


def test_greater_is_better_inferred_from_metric():
    from rcl_hf.commands.train import train_main

    assert not greater_is_better_for("expected_cost") and not greater_is_better_for("eval_cer")
    assert not greater_is_better_for("bayes_critical_miss_rate") and not greater_is_better_for("loss")
    assert greater_is_better_for("balanced_accuracy") and greater_is_better_for("eval_macro_f1")
    captured = {}

    def fake_run(model_args, data_args, risk_args, training_args):
        captured["args"] = training_args
        return {"output_dir": training_args.output_dir}

    import rcl_hf.train_job

    orig = rcl_hf.train_job.run_training
    rcl_hf.train_job.run_training = fake_run
    try:
        train_main(["--output_dir", "/tmp/unused", "--metric_for_best_model", "cer"])
        assert captured["args"].greater_is_better is False
        train_main(["--output_dir", "/tmp/unused", "--metric_for_best_model", "accuracy"])
        assert captured["args"].greater_is_better is True
        train_main(["--output_dir", "/tmp/unused", "--metric_for_best_model", "cer", "--greater_is_better", "true"])
        assert captured["args"].greater_is_better is True
    finally:
        rcl_hf.train_job.run_training = orig


def test_frozen_backbone_caches_embeddings_and_matches_full_model(tmp_path, tiny_dataset, monkeypatch):
    import rcl_hf.frozen as frozen

    cache = tmp_path / "cache"
    calls = []
    real_extract = frozen.extract_embeddings

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(frozen, "extract_embeddings", counting)
    first = _run(tmp_path / "a", tiny_dataset, model_kw={"freeze_backbone": True}, cache_dir=str(cache),
                 num_train_epochs=3, learning_rate=1e-2)
    assert sorted(calls) == [40, 61, 200]
    assert len(os.listdir(cache / "embeddings")) == 3
    _check_run_folder(tmp_path / "a", "resnet18")
    assert json.loads((tmp_path / "a" / "rcl_run.json").read_text())["freeze_backbone"] is True

    def no_embedding(*args, **kwargs):
        raise AssertionError("embeddings were recomputed instead of read from the cache")

    monkeypatch.setattr(frozen, "extract_embeddings", no_embedding)
    second = _run(tmp_path / "b", tiny_dataset, model_kw={"freeze_backbone": True}, cache_dir=str(cache),
                  num_train_epochs=3, learning_rate=1e-2)
    assert second["test"]["cer"] == first["test"]["cer"]
    assert second["test"]["expected_cost"] == first["test"]["expected_cost"]

    # The saved full model (frozen backbone + trained head) predicts what the head predicted on embeddings.
    head_logits = np.load(tmp_path / "a" / "test_predictions.npz")["logits"]
    np.testing.assert_allclose(_reload_logits(tmp_path / "a", tiny_dataset), head_logits, rtol=1e-4, atol=1e-4)

    # A different setting (here the seed of nothing but the key) is a different cache entry.
    from rcl_hf.frozen import cached_embeddings

    with pytest.raises(AssertionError, match="recomputed"):
        import datasets

        raw = datasets.load_from_disk(tiny_dataset)["validation"]
        cached_embeddings(None, None, raw, str(cache), {"backbone": "another"})


def test_embedding_cache_key_is_the_recipe_existing_caches_were_written_under():
    """rcl_hf.frozen.embedding_cache_key is the one recipe of the frozen-backbone cache key (the Trainer and
    the study's embedding pool both use it); it must keep naming the entries earlier runs wrote."""
    import hashlib

    import datasets

    from rcl_hf.frozen import embedding_cache_key

    ds = datasets.Dataset.from_dict({"label": [0, 1, 1]})
    parts = {"backbone": "resnet18", "pretrained": None, "image_size": 32, "mean": (0.5,), "std": (0.5,),
             "dataset": "synthetic", "model_args": None, "split": "train"}
    recipe = {**parts, "fingerprint": ds._fingerprint, "n": 3}
    expected = hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert embedding_cache_key(parts, ds) == expected


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, tiny_dataset):
    """Interrupt after 6 of 8 steps (mid-epoch 2, random flips on), resume: same final weights and metrics."""
    import shutil

    from safetensors.torch import load_file

    kw = dict(num_train_epochs=2, per_device_train_batch_size=50, save_strategy="steps", save_steps=3,
              eval_strategy="no", load_best_model_at_end=False, save_total_limit=None)
    full = _run(tmp_path / "full", tiny_dataset, backbone="test_resnet", **kw)
    ckpts = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "full").glob("checkpoint-*"))
    assert ckpts == [3, 6, 8]
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-6", tmp_path / "resumed" / "checkpoint-6")
    resumed = _run(tmp_path / "resumed", tiny_dataset, backbone="test_resnet",
                   resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-6"), **kw)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    mid = load_file(str(tmp_path / "full" / "checkpoint-6" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    # The resumed run did train (its end differs from where it started).
    assert any(not torch.allclose(b[k], mid[k]) for k in b if b[k].is_floating_point())
    for split in ("validation", "test"):
        for metric in ("accuracy", "cer", "critical_miss_rate", "expected_cost", "bayes_cer"):
            assert resumed[split][metric] == pytest.approx(full[split][metric], abs=1e-9), (split, metric)
    state = json.loads((tmp_path / "resumed" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and not (tmp_path / "resumed" / "checkpoint-3").exists()


def test_seeded_augmentation_depends_only_on_seed_epoch_and_row(tiny_dataset):
    """Augmentation draws: fixed per (seed, epoch, row), different across epochs, batch-order independent."""
    import datasets

    from rcl_hf.data.transforms import apply_transforms
    from rcl_hf.train_job import _seeded_train_split

    raw = datasets.load_from_disk(tiny_dataset)["train"].select(range(8))
    train = apply_transforms(datasets.DatasetDict({"train": raw}), image_size=32, hflip=0.5, vflip=0.5)["train"]
    ds, aug = _seeded_train_split(train, seed=0)
    torch.manual_seed(123)
    global_before = torch.get_rng_state()
    first = ds[:]["pixel_values"]
    assert torch.equal(torch.get_rng_state(), global_before)  # the global stream is untouched
    assert torch.equal(first, ds[:]["pixel_values"])  # deterministic
    assert torch.equal(first[5], ds[5]["pixel_values"]) and torch.equal(first[2:4], ds[[2, 3]]["pixel_values"])
    aug.epoch = 1
    second = ds[:]["pixel_values"]
    assert not torch.equal(first, second)  # a new epoch draws new flips
    assert any(not torch.equal(second[i], first[i]) for i in range(8))
    assert ds[:]["labels"] == list(raw["label"])


def test_format_table_and_errors(tmp_path, tiny_dataset):
    table = format_table({"ce": {"accuracy": 0.5, "balanced_accuracy": 0.25, "cer": 0.125, "critical_miss_rate": 0.2,
                                 "expected_cost": 0.3, "n_critical": 7}})
    assert "| ce | 50.00 | 25.00 | 12.50 | 20.00 | 30.00 | 7 |" in table
    with pytest.raises(ValueError, match="eval_only needs a checkpoint folder"):
        run_training(ModelArguments(backbone="resnet18", eval_only=True), DataArguments(dataset=tiny_dataset),
                     RiskArguments(), default_training_args(str(tmp_path)))
    with pytest.raises(ValueError, match="Cannot load dataset"):
        run_training(ModelArguments(), DataArguments(dataset=str(tmp_path / "nope")), RiskArguments(),
                     default_training_args(str(tmp_path)))


def test_max_train_samples_takes_every_class_from_a_class_ordered_split(tmp_path):
    """A folder-per-class split is ordered by class: its first rows hold one class. ``subset='stratified'`` (the
    default) trains on every class; ``subset='first'`` is refused with the classes it would leave out."""
    from data_fixtures import make_brain

    data_dir = make_brain(tmp_path / "brain", n_train=8, n_test=2)

    def args(subset):
        return DataArguments(dataset="brain_tumor_mri", data_dir=str(data_dir), cache_dir="none", subset=subset,
                             max_train_samples=4, augmentation="none")

    with pytest.raises(ValueError, match=r"Classes \['meningioma', 'notumor', 'pituitary'\] have no training sample"):
        run_training(ModelArguments(backbone="resnet18", image_size=32), args("first"), RiskArguments(),
                     default_training_args(str(tmp_path / "first"), num_train_epochs=1, disable_tqdm=True))
    out = tmp_path / "stratified"
    run_training(ModelArguments(backbone="resnet18", image_size=32), args("stratified"), RiskArguments(),
                 default_training_args(str(out), num_train_epochs=1, per_device_train_batch_size=4, disable_tqdm=True))
    recipe = json.loads((out / "rcl_run.json").read_text())
    assert recipe["split_sizes"]["train"] == 4 and recipe["subset"] == "stratified"
    with pytest.raises(ValueError, match="--subset must be one of"):
        DataArguments(subset="random")


def test_loader_workers_see_every_epoch_of_the_seeded_augmentation(tmp_path, tiny_dataset):
    """A persistent DataLoader worker would keep epoch 0's augmentation copy: the weights after two epochs
    must not depend on the worker setting."""
    from safetensors.numpy import load_file

    kw = dict(num_train_epochs=2, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    _run(tmp_path / "w0", tiny_dataset, loss="ce", **kw)
    _run(tmp_path / "w1", tiny_dataset, loss="ce", dataloader_num_workers=1, dataloader_persistent_workers=True, **kw)
    a, b = load_file(str(tmp_path / "w0" / "model.safetensors")), load_file(str(tmp_path / "w1" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
