"""rcl-calibrate on a checkpoint trained by a plain transformers.Trainer (no rcl_hf config fields), the
pipeline task on it, and the calibration that a training run writes (independent of the test split). The task's
registration itself: tests/inference/test_pipeline_registration.py."""

import json
import shutil

import numpy as np
import pytest


@pytest.fixture(scope="module")
def plain_trainer_checkpoint(tmp_path_factory, synthetic_dataset_dir):
    """A tiny ResNet trained for one epoch by transformers.Trainer alone, saved with its image processor."""
    import datasets
    import torch
    from transformers import (ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments,
                              ViTImageProcessor)

    data = datasets.load_from_disk(str(synthetic_dataset_dir(seed=3, n_train=256, n_validation=600, n_test=200)))
    names = data["train"].features["label"].names
    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=len(names),
                          id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    model = ResNetForImageClassification(config)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})

    def transform(batch):
        out = processor(images=[im.convert("RGB") for im in batch["image"]], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "labels": batch["label"]}

    folder = tmp_path_factory.mktemp("plain") / "model"
    args = TrainingArguments(str(folder), num_train_epochs=1, per_device_train_batch_size=32, report_to=[],
                             remove_unused_columns=False, use_cpu=True, save_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data["train"].with_transform(transform)).train()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, synthetic_dataset_dir(seed=3, n_train=256, n_validation=600, n_test=200)


def test_rcl_calibrate_gives_a_plain_trainer_model_a_certified_decision_layer(plain_trainer_checkpoint, tmp_path, capsys):
    import rcl_hf
    from rcl_hf.commands.calibrate import main

    folder, data = plain_trainer_checkpoint
    assert "rcl_severity" not in json.loads((folder / "config.json").read_text())
    out = tmp_path / "calibrated"
    result = main(["--model", str(folder), "--dataset", str(data), "--severity", "synthetic", "--risk_alpha", "0.2",
                   "--output_dir", str(out), "--eval_split", "test"])
    printed = capsys.readouterr().out
    assert "certified on" in printed and "test (certified layer)" in printed
    assert (out / "risk_calibration.json").is_file() and not (folder / "risk_calibration.json").exists()
    assert result["eval"]["n"] == 200 and 0 <= result["eval"]["coverage"] <= 1
    model = rcl_hf.load_model(str(out), severity="synthetic")
    assert model.risk_calibration is not None and model.risk_calibration.n_calibration == 600
    pred = rcl_hf.predict(model, [np.full((32, 32, 3), 90, np.uint8)] * 3)
    assert pred.certified and pred.note is None and pred.threshold == model.risk_calibration.threshold
    over = rcl_hf.predict(model, np.full((32, 32, 3), 90, np.uint8), threshold=0.05)
    assert not over.certified and "guarantee no longer holds" in over.note


def test_rcl_calibrate_refuses_what_does_not_fit(plain_trainer_checkpoint, tmp_path, capsys):
    from rcl_hf.commands.calibrate import main

    folder, data = plain_trainer_checkpoint
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(folder), "--dataset", str(data), "--severity", "brain_tumor_mri"])
    assert exit_.value.code == 2 and "do not match the model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(folder), "--dataset", str(data), "--severity", "synthetic", "--risk_alpha", "0.001"])
    assert "smallest α" in capsys.readouterr().err
    assert not (folder / "risk_calibration.json").exists()  # nothing half-written


def test_pipeline_task_applies_the_calibration(plain_trainer_checkpoint, tmp_path):
    import rcl_hf  # noqa: F401 - registers the task
    from transformers import pipeline

    from rcl_hf.commands.calibrate import main
    from rcl_hf.models import SEVERITY_KEY
    from rcl_hf.severity import SeverityMatrix

    folder, data = plain_trainer_checkpoint
    out = tmp_path / "with_severity"
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config[SEVERITY_KEY] = SeverityMatrix.preset("synthetic").to_dict()  # a self-describing checkpoint
    (out / "config.json").write_text(json.dumps(config))
    main(["--model", str(out), "--dataset", str(data), "--risk_alpha", "0.2"])
    pipe = pipeline("risk-aware-image-classification", model=str(out))
    answer = pipe(np.full((32, 32, 3), 120, np.uint8))
    assert set(answer) >= {"label", "refer", "expected_cost", "out_of_distribution", "certified"}
    assert answer["certified"] is True and answer["label"] in config["id2label"].values()
    assert pipe(np.full((32, 32, 3), 120, np.uint8), threshold=0.0)["certified"] is False


def test_training_run_calibration_ignores_the_test_split(tmp_path):
    """The calibration a run writes comes from its validation logits only: changing the test logits
    changes the test figures and nothing of risk_calibration.json."""
    from rcl_hf.calibration.model_folder import calibrate_run
    from rcl_hf.severity import SeverityMatrix

    sev = SeverityMatrix.preset("synthetic")
    rng = np.random.default_rng(0)

    def save(name, n, shift):
        y = rng.integers(0, 4, n)
        z = rng.normal(size=(n, 4))
        z[np.arange(n), y] += shift
        np.savez_compressed(tmp_path / name, logits=z, labels=y)

    save("validation_predictions.npz", 800, 2.0)
    save("test_predictions.npz", 400, 2.0)
    first = calibrate_run(str(tmp_path), sev, risk_kind="critical_miss", alpha=0.1, delta=0.1)
    saved = (tmp_path / "risk_calibration.json").read_text()
    save("test_predictions.npz", 400, 0.1)  # a very different test split
    second = calibrate_run(str(tmp_path), sev, risk_kind="critical_miss", alpha=0.1, delta=0.1)
    assert (tmp_path / "risk_calibration.json").read_text() == saved
    assert first["test"] != second["test"]


def test_train_py_calibrates_on_validation_and_the_card_says_so(tmp_path, synthetic_dataset_dir, capsys):
    """scripts/train.py ends with a certified decision layer: risk_calibration.json beside the weights, the
    certified layer on test printed beside the argmax, load_model/predict apply it, the card describes it."""
    import rcl_hf
    from rcl_hf.commands.train import train_main
    from rcl_hf.hub.cards import build_model_card

    data = synthetic_dataset_dir(seed=5, n_train=128, n_validation=500, n_test=100)
    out = tmp_path / "run"
    result = train_main(["--dataset", str(data), "--backbone", "hf-resnet", "--num_train_epochs", "1",
                             "--output_dir", str(out), "--risk_alpha", "0.2", "--save_strategy", "no",
                             "--eval_strategy", "no", "--load_best_model_at_end", "false"])
    printed = capsys.readouterr().out
    assert "certified decision layer" in printed and "argmax, no referral" in printed and "on test:" in printed
    cal = json.loads((out / "risk_calibration.json").read_text())
    assert cal["alpha"] == 0.2 and cal["split"] == "validation" and cal["n_calibration"] == 500
    assert result["risk_control"]["test"]["n"] == 100
    assert json.loads((out / "rcl_results.json").read_text())["risk_control"]["calibration"]["threshold"] == cal["threshold"]
    model = rcl_hf.load_model(str(out))
    assert model.risk_calibration.threshold == cal["threshold"]
    assert rcl_hf.predict(model, np.zeros((32, 32, 3), np.uint8)).certified != model.risk_calibration.refers_everything
    card = str(build_model_card(out))
    assert "## Risk control" in card and cal["certificate"] in card and "On the test split" in card
