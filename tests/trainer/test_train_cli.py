"""``scripts/train.py`` as a first-time user meets it: short grouped help, transformers' flag names,
first-run defaults per mode, ``--do_train false``, missing splits, and the one-class warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from rcl_hf.commands.train import train_main


@pytest.fixture
def captured(monkeypatch):
    """Replace ``run_training`` by a recorder: these tests check the parsed arguments only."""
    import rcl_hf.train_job

    seen = {}

    def fake_run(model_args, data_args, risk_args, training_args):
        seen.update(model=model_args, data=data_args, risk=risk_args, training=training_args)
        return {"output_dir": training_args.output_dir}

    monkeypatch.setattr(rcl_hf.train_job, "run_training", fake_run)
    return seen


def test_help_is_short_and_grouped_and_help_all_lists_everything(capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["--help"])
    assert exc.value.code == 0
    short = capsys.readouterr().out
    assert short.index("ModelArguments") < short.index("DataArguments") < short.index("RiskArguments")
    assert "--help_all" in short and "--dataset_name" in short and "--learning_rate" in short
    assert '"matrix"' in short and '"labels"' in short  # the severity JSON format is documented
    with pytest.raises(SystemExit):
        train_main(["--help_all"])
    full = capsys.readouterr().out
    assert len(short.splitlines()) < 200 < len(full.splitlines())
    assert "--lr_scheduler_type" in full and "--lr_scheduler_type" not in short


def test_run_image_classification_flags_are_aliases(captured, capsys, tmp_path):
    train_main(["--dataset_name", "synthetic", "--model_name_or_path", "hf-resnet", "--ignore_mismatched_sizes",
                    "--image_column_name", "img", "--label_column_name", "dx", "--train_dir", str(tmp_path),
                    "--output_dir", str(tmp_path / "o")])
    assert captured["model"].backbone == "hf-resnet" and captured["data"].dataset == "synthetic"
    assert (captured["data"].image_column_name, captured["data"].label_column_name) == ("img", "dx")
    assert captured["data"].train_dir == str(tmp_path)
    assert "--ignore_mismatched_sizes always on here" in capsys.readouterr().err
    train_main(["--model_name_or_path=hf-vit", "--ignore_mismatched_sizes", "true", "--output_dir", str(tmp_path)])
    assert captured["model"].backbone == "hf-vit"


def test_first_run_defaults_depend_on_the_mode_and_never_override_a_given_flag(captured, tmp_path):
    train_main(["--dataset", "brain_tumor_mri", "--data_dir", str(tmp_path)])
    m, t = captured["model"], captured["training"]
    assert (m.backbone, m.pretrained, m.freeze_backbone) == ("efficientnet_lite0", "efficientnet-lite0-package", True)
    assert (t.learning_rate, t.num_train_epochs) == (1e-3, 5)
    assert t.output_dir.endswith("brain_tumor_mri_rcl")
    train_main(["--dataset", "brain_tumor_mri", "--data_dir", str(tmp_path), "--learning_rate", "0.01",
                    "--loss", "ce", "--freeze_backbone", "false"])
    m, t = captured["model"], captured["training"]
    assert (m.freeze_backbone, t.learning_rate, t.num_train_epochs) == (False, 0.01, 5)  # fine-tuning pretrained
    assert t.warmup_steps == 0.05 and t.output_dir.endswith("brain_tumor_mri_ce")
    train_main(["--dataset", "synthetic", "--output_dir", str(tmp_path / "s")])  # from scratch
    m, t = captured["model"], captured["training"]
    assert (m.backbone, m.freeze_backbone, t.learning_rate, t.output_dir) == ("resnet18", False, 2e-3, str(tmp_path / "s"))
    config = tmp_path / "c.yaml"
    config.write_text("dataset: isic2018\nbackbone: resnet18\nlearning_rate: 0.0007\nnum_train_epochs: 2\n")
    train_main([str(config), "--data_dir", str(tmp_path)])
    m, t = captured["model"], captured["training"]
    assert (m.backbone, m.freeze_backbone, t.learning_rate, t.num_train_epochs) == ("resnet18", False, 7e-4, 2)


def test_do_train_false_evaluates_the_given_model_only(captured, tmp_path):
    train_main(["--do_train", "false", "--backbone", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    assert captured["model"].eval_only is True
    train_main(["--backbone", "hf-resnet", "--output_dir", str(tmp_path / "o")])
    assert captured["model"].eval_only is False


def test_unknown_config_key_exits_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: synthetic\nno_such_key: 1\n")
    with pytest.raises(SystemExit) as exc:
        train_main([str(config)])
    assert exc.value.code == 2 and "no_such_key" in capsys.readouterr().err


def _train_only(n=60, groups=True):
    import datasets

    rng = np.random.default_rng(0)
    data = {"label": (np.arange(n) % 3).tolist(), "x": rng.normal(size=n).tolist()}
    if groups:
        data["group_id"] = [f"p{i // 2}" for i in range(n)]  # two images per patient
    features = datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c"]), "x": datasets.Value("float32"),
                                  **({"group_id": datasets.Value("string")} if groups else {})})
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)})


def test_a_dataset_without_splits_gets_grouped_validation_and_test(caplog):
    from rcl_hf.train_data import carve_missing_splits

    with caplog.at_level(logging.WARNING, logger="rcl_hf.train_job"):
        dsd = carve_missing_splits(_train_only(), 0.2, None, seed=0, name="folder")
    assert sorted(dsd) == ["test", "train", "validation"]
    assert sum(len(dsd[s]) for s in dsd) == 60 and len(dsd["validation"]) > 0 and len(dsd["test"]) > 0
    groups = {s: set(dsd[s]["group_id"]) for s in dsd}
    assert not groups["train"] & groups["validation"] and not groups["train"] & groups["test"]
    assert "no validation / test split: carved" in caplog.text and "grouped by group_id" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rcl_hf.train_job"):
        dsd = carve_missing_splits(_train_only(groups=False), 0.2, 0.1, name="folder")
    assert "not grouped" in caplog.text and sorted(dsd) == ["test", "train", "validation"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rcl_hf.train_job"):
        dsd = carve_missing_splits(_train_only(), 0.0, 0.0, name="folder")
    assert list(dsd) == ["train"] and "no validation split" in caplog.text and "no test split" in caplog.text


def test_no_validation_split_raises_instead_of_selecting_on_test(tmp_path):
    """Best-checkpoint selection never falls back to the test split."""
    import datasets
    from transformers import TrainingArguments

    from rcl_hf.data.synthetic import load_synthetic
    from rcl_hf.train_job import DataArguments, ModelArguments, RiskArguments, default_training_args, run_training

    full = load_synthetic(seed=1, n_train=40, n_validation=8, n_test=12)
    path = tmp_path / "no_val"
    datasets.DatasetDict({"train": full["train"], "test": full["test"]}).save_to_disk(str(path))
    args = default_training_args(str(tmp_path / "run"), num_train_epochs=1, use_cpu=True, disable_tqdm=True)
    with pytest.raises(ValueError, match="no validation split.*must not read the test split"):
        run_training(ModelArguments(backbone="hf-resnet", image_size=32), DataArguments(dataset=str(path), val_size=0),
                     RiskArguments(loss="ce"), args)
    assert not (tmp_path / "run" / "checkpoint-1").exists()
    # without selection (no evaluation during training) the run is allowed and scores test once at the end
    args = default_training_args(str(tmp_path / "run"), num_train_epochs=1, use_cpu=True, disable_tqdm=True,
                                 eval_strategy="no", load_best_model_at_end=False, save_strategy="no")
    assert isinstance(args, TrainingArguments)
    res = run_training(ModelArguments(backbone="hf-resnet", image_size=32), DataArguments(dataset=str(path), val_size=0),
                       RiskArguments(loss="ce"), args)
    assert "test" in res and "validation" not in res


def test_collapse_warning_names_the_single_class():
    from rcl_hf.train_job import collapse_warning

    message = collapse_warning([2, 2, 2, 2], ["a", "b", "c"])
    assert message and "one class ('c') for all 4 validation images" in message
    assert collapse_warning([2, 1, 2, 2], ["a", "b", "c"]) is None
