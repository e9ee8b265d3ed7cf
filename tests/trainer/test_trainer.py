"""RiskCalibratedTrainer: lower CER than cross-entropy at the same seed and budget,
gradient-accumulation equivalence (plain module and a **kwargs transformers model),
logged loss parts, label-order checks and non-finite loss handling."""

import copy
import math

import datasets
import numpy as np
import pytest
import torch
import torch.nn as nn
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification

from rcl_hf import RiskArguments, RiskCalibratedTrainer, SeverityMatrix
from rcl_hf.losses import WeightedCrossEntropyLoss, RiskCalibratedLoss
from rcl_hf.metrics import make_compute_metrics
from rcl_hf.trainer import NonFiniteLossError

SYNTH = SeverityMatrix.preset("synthetic")  # normal, lesion_round, lesion_oval, lesion_ring
BRAIN = SeverityMatrix.preset("brain_tumor_mri")
N_FEATURES = 6


def subtle_lesions(n, seed, separation=1.5, prior=(0.55, 0.15, 0.15, 0.15)):
    """Tabular stand-in for a screening set: 55 % normal cases at the origin, three
    lesion classes shifted by ``separation`` along their own axis, unit Gaussian
    noise. The lesions overlap the frequent normal class, so a cross-entropy model
    calls many of them "normal" (the critical error of the synthetic preset)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=n, p=prior)
    means = np.zeros((4, N_FEATURES))
    means[1:, :3] = separation * np.eye(3)
    x = means[y] + rng.normal(size=(n, N_FEATURES))
    return datasets.Dataset.from_dict({"pixel_values": x.astype(np.float32), "labels": y}).with_format("torch")


class TabularNet(nn.Module):
    """A plain ``nn.Module`` taking ``pixel_values`` (B, F); returns ``{"logits": ...}``.

    ``nan_on``: 1-based forward calls whose logits are turned into NaN (``"all"``: every call).
    """

    def __init__(self, n_features=N_FEATURES, n_classes=4, hidden=0, nan_on=()):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, n_classes))
        else:
            self.net = nn.Linear(n_features, n_classes)
        self.nan_on = nan_on
        self.calls = 0

    def forward(self, pixel_values, labels=None):
        self.calls += 1
        logits = self.net(pixel_values)
        if self.nan_on == "all" or self.calls in self.nan_on:
            logits = logits * float("nan")
        return {"logits": logits}


def tiny_vit(labels=BRAIN.labels, seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return ViTForImageClassification(config)


def training_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


# ------------------------------------------------------------- (a) RCL beats CE on CER
def _train_and_score(loss, seed, tmp_path, lam=1.0):
    train = subtle_lesions(1200, seed=1000 + seed)
    test = subtle_lesions(4000, seed=99)
    torch.manual_seed(seed)
    model = TabularNet()
    args = training_args(
        tmp_path / f"{loss}-{seed}",
        num_train_epochs=4,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=1000,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        logging_strategy="no",
        seed=seed,
    )
    trainer = RiskCalibratedTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        risk_args=RiskArguments(loss=loss, lam=lam),
        severity=SYNTH,
        compute_metrics=make_compute_metrics(SYNTH, bayes_rule=False),
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert trainer.state.global_step == 4 * math.ceil(1200 / 32)
    return metrics["eval_cer"], metrics["eval_accuracy"]


@pytest.mark.parametrize("seed", [0, 1])
def test_risk_calibrated_loss_lowers_cer_against_cross_entropy(seed, tmp_path):
    cer_ce, acc_ce = _train_and_score("ce", seed, tmp_path)
    cer_rcl, acc_rcl = _train_and_score("rcl", seed, tmp_path)
    print(f"\nseed {seed}: CER ce {cer_ce:.4f} (acc {acc_ce:.4f}) | CER rcl {cer_rcl:.4f} (acc {acc_rcl:.4f})")
    # Cross-entropy misses about half of the subtle lesions; the default risk-calibrated
    # loss (expected form, lam 1) must cut critical errors clearly...
    assert cer_ce > 0.15
    assert cer_rcl < cer_ce - 0.02
    # ...without buying it with a collapse of accuracy (same model, seed and budget).
    assert acc_rcl > acc_ce - 0.03


# ------------------------------------------------- (b) gradient-accumulation equivalence
def _one_step(model, dataset, tmp_path, batch, accumulation, trainer_cls=RiskCalibratedTrainer, severity=BRAIN):
    model = copy.deepcopy(model)
    args = training_args(
        tmp_path / f"ga{accumulation}-{trainer_cls.__name__}",
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # no clipping: a wrongly scaled gradient must show in the update
        logging_strategy="no",
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, risk_args=RiskArguments(loss="rcl", lam=1.0), severity=severity)
    trainer.train()
    assert trainer.state.global_step == 1
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_same_params(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def _max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("accumulation", [2, 4])
def test_gradient_accumulation_plain_module(accumulation, tmp_path):
    data = subtle_lesions(8, seed=5)
    torch.manual_seed(0)
    model = TabularNet(hidden=8)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    full = _one_step(model, data, tmp_path, batch=8, accumulation=1, severity=SYNTH)
    accumulated = _one_step(model, data, tmp_path, batch=8 // accumulation, accumulation=accumulation, severity=SYNTH)
    assert _max_diff(full, start) > 1e-3  # the step did move the parameters
    _assert_same_params(full, accumulated)


class _DefaultScalingTrainer(RiskCalibratedTrainer):
    """What a ``compute_loss`` override gets from ``transformers.Trainer`` by default
    for a model whose forward takes ``**kwargs`` (docs/training.md): no division of the
    loss by the accumulation steps."""

    loss_is_scaled_for_ga = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # the Trainer's own inference for ViT


def test_gradient_accumulation_transformers_model_with_kwargs(tmp_path):
    rng = np.random.default_rng(0)
    data = datasets.Dataset.from_dict(
        {"pixel_values": rng.normal(size=(8, 3, 8, 8)).astype(np.float32), "labels": [0, 1, 2, 3, 2, 2, 0, 1]}
    ).with_format("torch")
    model = tiny_vit()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    full = _one_step(model, data, tmp_path, batch=8, accumulation=1)
    accumulated = _one_step(model, data, tmp_path, batch=2, accumulation=4)
    assert _max_diff(full, start) > 1e-3
    _assert_same_params(full, accumulated)
    # Control: the pitfall is real in this transformers version, so the check above can fail.
    naive = _one_step(model, data, tmp_path, batch=2, accumulation=4, trainer_cls=_DefaultScalingTrainer)
    assert _max_diff(full, naive) > 1e-3


# ---------------------------------------------------------------- (c) logged loss parts
def test_loss_parts_are_logged(tmp_path):
    data = subtle_lesions(64, seed=2)
    torch.manual_seed(0)
    args = training_args(tmp_path, max_steps=4, per_device_train_batch_size=16, logging_steps=1, learning_rate=0.01)
    trainer = RiskCalibratedTrainer(
        model=TabularNet(), args=args, train_dataset=data, risk_args=RiskArguments(loss="rcl_log", lam=2.0), severity=SYNTH
    )
    assert isinstance(trainer.loss_fn, RiskCalibratedLoss) and trainer.loss_fn.form == "log"
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        assert entry["loss_base"] > 0 and entry["loss_risk"] > 0
        assert entry["loss"] == pytest.approx(entry["loss_base"] + 2.0 * entry["loss_risk"], abs=1e-4)
    assert "nonfinite_skipped" not in logs[0]


def test_epoch_aware_loss_follows_the_trainer_epoch(tmp_path):
    from transformers import TrainerCallback

    from rcl_hf.losses import build_loss

    data = subtle_lesions(64, seed=2)
    args = training_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=32, logging_steps=1)
    loss = build_loss("rcl", severity=SYNTH, lam=1.0, risk_start_epoch=2)
    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(loss.epoch)

    trainer = RiskCalibratedTrainer(model=TabularNet(), args=args, train_dataset=data, loss_fn=loss, severity=SYNTH)
    trainer.add_callback(Record())
    trainer.train()
    assert sorted(set(seen)) == [0.0, 1.0, 2.0]  # set by the callback from state.epoch at each epoch's start


def test_plain_loss_logs_no_parts(tmp_path):
    data = subtle_lesions(32, seed=2)
    args = training_args(tmp_path, max_steps=2, per_device_train_batch_size=16, logging_steps=1)
    trainer = RiskCalibratedTrainer(model=TabularNet(), args=args, train_dataset=data, loss_fn=WeightedCrossEntropyLoss())
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all("loss_base" not in entry for entry in logs)


# ---------------------------------------------------------------- (d) label order check
def test_label_order_mismatch_raises(tmp_path):
    args = training_args(tmp_path, max_steps=1)
    shuffled = ["notumor", "glioma", "meningioma", "pituitary"]
    with pytest.raises(ValueError, match=r"Model config labels .*notumor.* do not match severity labels.*reorder"):
        RiskCalibratedTrainer(model=tiny_vit(shuffled), args=args, risk_args=RiskArguments(), severity=BRAIN)
    with pytest.raises(ValueError, match=r"Model has 3 labels .* severity matrix has 4"):
        RiskCalibratedTrainer(model=tiny_vit(["glioma", "notumor", "pituitary"]), args=args, risk_args=RiskArguments(), severity=BRAIN)
    # Matching labels pass; so do generic LABEL_i names of the right count; so does the reordered matrix.
    RiskCalibratedTrainer(model=tiny_vit(), args=args, risk_args=RiskArguments(), severity=BRAIN)
    RiskCalibratedTrainer(model=tiny_vit([f"LABEL_{i}" for i in range(4)]), args=args, risk_args=RiskArguments(), severity=BRAIN)
    RiskCalibratedTrainer(model=tiny_vit(shuffled), args=args, risk_args=RiskArguments(), severity=BRAIN.reorder(shuffled))


def test_trainer_argument_errors(tmp_path):
    args = training_args(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="needs loss_fn or risk_args"):
        RiskCalibratedTrainer(model=TabularNet(), args=args)
    with pytest.raises(ValueError, match="needs a severity matrix"):
        RiskCalibratedTrainer(model=TabularNet(), args=args, risk_args=RiskArguments(loss="rcl"))
    with pytest.raises(ValueError, match="needs class_counts"):
        RiskCalibratedTrainer(model=TabularNet(), args=args, risk_args=RiskArguments(loss="weighted_ce"))
    trainer = RiskCalibratedTrainer(
        model=TabularNet(), args=args, risk_args=RiskArguments(loss="weighted_ce"), class_counts=[30, 10, 10, 10]
    )
    # 1/n = [1/30, 1/10, 1/10, 1/10], mean 1/12 -> [0.4, 1.2, 1.2, 1.2].
    torch.testing.assert_close(trainer.loss_fn.class_weight, torch.tensor([0.4, 1.2, 1.2, 1.2]))


def test_severity_from_risk_arguments(tmp_path):
    args = training_args(tmp_path, max_steps=1)
    trainer = RiskCalibratedTrainer(model=tiny_vit(), args=args, risk_args=RiskArguments(severity="brain_tumor_mri"))
    assert trainer.severity == BRAIN
    torch.testing.assert_close(trainer.loss_fn.severity_matrix, torch.tensor(BRAIN.matrix, dtype=torch.float32))
    path = tmp_path / "sev.json"
    SeverityMatrix.preset("sicapv2").to_json(path)
    with pytest.raises(ValueError, match="do not match severity labels"):  # a JSON matrix is checked too
        RiskCalibratedTrainer(model=tiny_vit(), args=args, risk_args=RiskArguments(severity=str(path)))
    # An explicit severity wins over the arguments.
    explicit = RiskCalibratedTrainer(model=tiny_vit(), args=args, risk_args=RiskArguments(severity=str(path)), severity=BRAIN)
    assert explicit.severity == BRAIN


def test_risk_arguments_with_hf_argument_parser():
    parser = HfArgumentParser(RiskArguments)
    (ra,) = parser.parse_args_into_dataclasses(
        ["--loss", "rcl_focal", "--lam", "0.5", "--risk_form", "log", "--gamma", "1.0", "--severity", "sicapv2", "--nonfinite_loss", "skip"]
    )
    assert (ra.loss, ra.lam, ra.risk_form, ra.gamma, ra.severity, ra.nonfinite_loss) == ("rcl_focal", 0.5, "log", 1.0, "sicapv2", "skip")
    loss_fn = ra.build(SeverityMatrix.resolve(ra.severity))
    assert isinstance(loss_fn, RiskCalibratedLoss) and loss_fn.base == "focal" and loss_fn.form == "log"
    for bad, match in [
        ({"loss": "dice"}, "Unknown loss 'dice'"),
        ({"lam": -1.0}, "lam must be finite"),
        ({"risk_form": "hinge"}, "risk_form"),
        ({"nonfinite_loss": "ignore"}, "nonfinite_loss"),
    ]:
        with pytest.raises(ValueError, match=match):
            RiskArguments(**bad)


# --------------------------------------------------------------- (e) non-finite losses
class _ParamsPerStep(TrainerCallback):
    def __init__(self, model):
        self.model, self.history = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.history.append({n: p.detach().clone() for n, p in self.model.named_parameters()})


def test_nonfinite_loss_raise_names_the_step(tmp_path):
    data = subtle_lesions(64, seed=3)
    args = training_args(tmp_path, max_steps=6, per_device_train_batch_size=8, logging_strategy="no")
    trainer = RiskCalibratedTrainer(
        model=TabularNet(nan_on={3}), args=args, train_dataset=data, risk_args=RiskArguments(), severity=SYNTH
    )
    with pytest.raises(NonFiniteLossError, match=r"Training loss is nan at global step 2 .*non-finite logits"):
        trainer.train()


def test_nonfinite_loss_skip_skips_the_batch_and_continues(tmp_path):
    data = subtle_lesions(64, seed=3)
    torch.manual_seed(0)
    model = TabularNet(nan_on={3})
    args = training_args(tmp_path, max_steps=6, per_device_train_batch_size=8, logging_steps=1, learning_rate=0.05)
    recorder = _ParamsPerStep(model)
    trainer = RiskCalibratedTrainer(
        model=model,
        args=args,
        train_dataset=data,
        risk_args=RiskArguments(nonfinite_loss="skip"),
        severity=SYNTH,
        callbacks=[recorder],
    )
    trainer.train()
    assert trainer.state.global_step == 6
    assert trainer.nonfinite_skipped == 1
    steps = recorder.history
    assert len(steps) == 6
    # Step 3 (the NaN batch) left the parameters as step 2 did; the others moved them.
    assert _max_diff(steps[1], steps[2]) == 0.0
    assert _max_diff(steps[2], steps[3]) > 0 and _max_diff(steps[0], steps[1]) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry.get("nonfinite_skipped", 0) for entry in logs] == [0, 0, 1, 1, 1, 1]
    assert all(np.isfinite(entry["loss"]) for entry in logs)


def test_nonfinite_loss_skip_gives_up_on_divergence(tmp_path):
    data = subtle_lesions(64, seed=3)
    args = training_args(tmp_path, max_steps=6, per_device_train_batch_size=8, logging_strategy="no")
    trainer = RiskCalibratedTrainer(
        model=TabularNet(nan_on="all"),
        args=args,
        train_dataset=data,
        risk_args=RiskArguments(nonfinite_loss="skip", max_nonfinite_skips=2),
        severity=SYNTH,
    )
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite losses up to .*global step 2"):
        trainer.train()


def test_private_save_checkpoint_api():
    """``RiskCalibratedTrainer._save_checkpoint`` (the one private override) relies on this contract of
    ``Trainer._save_checkpoint`` (checked on transformers 5.0 - 5.24): it fails loudly when an upgrade changes it."""
    import inspect

    from transformers import Trainer

    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    source = inspect.getsource(Trainer._save_checkpoint)
    for needle in ("run_dir = self._get_output_dir(trial=trial)", "self.save_model(output_dir, _internal_call=True)",
                   "self.state.save_to_json(", "self._push_from_checkpoint(output_dir)", "rotate_checkpoints("):
        assert needle in source, f"Trainer._save_checkpoint changed: {needle!r} is gone; re-check the override"
    assert "run_dir = self.args.output_dir" in inspect.getsource(Trainer._get_output_dir)
    overridden = {name for name, value in vars(RiskCalibratedTrainer).items() if callable(value)}
    assert {n for n in overridden if n.startswith("_") and not n.startswith("__") and hasattr(Trainer, n)} == {"_save_checkpoint"}


def test_the_trainer_adds_the_callbacks_it_needs_itself(tmp_path):
    """A user of RiskCalibratedTrainer under DDP gets the buffer sync without the training job; once only."""
    from rcl_hf.trainer_callbacks import BroadcastBuffersCallback, NonFiniteStepGuard

    args = training_args(tmp_path, max_steps=1)
    trainer = RiskCalibratedTrainer(model=TabularNet(), args=args, loss_fn=WeightedCrossEntropyLoss())
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert kinds.count(BroadcastBuffersCallback) == 1 and kinds.count(NonFiniteStepGuard) == 1
    again = RiskCalibratedTrainer(model=TabularNet(), args=args, loss_fn=WeightedCrossEntropyLoss(),
                                  callbacks=[BroadcastBuffersCallback()])
    assert [type(cb) for cb in again.callback_handler.callbacks].count(BroadcastBuffersCallback) == 1
