"""``RiskCalibratedTrainer``: a ``transformers.Trainer`` that trains with a clinical loss.

The Trainer computes the configured loss (:func:`rcl_hf.losses.build_loss`) from
the model's logits in :meth:`RiskCalibratedTrainer.compute_loss`, logs the
risk-calibrated loss's parts (``loss_base``, ``loss_risk``) beside ``loss``, and
guards against non-finite losses.

Gradient accumulation: the loss returned for a micro-batch is its mean over
samples, and the Trainer divides it by the accumulation steps
(``loss_is_scaled_for_ga = False``; ``model_accepts_loss_kwargs`` is turned off
so no model ever normalises by ``num_items_in_batch`` behind our back). With
equal micro-batches, accumulation 1 x batch B and k x batch B/k give the same
gradients (tested); DDP averages those means across processes.

Crash safety (:mod:`rcl_hf.atomic_io`, :mod:`rcl_hf.checkpoints`):

* each checkpoint is written into a hidden staging folder, ``fsync``-ed and renamed
  to ``checkpoint-N`` in one step, so a kill during a save leaves the previous
  checkpoint loadable and no half-written ``checkpoint-N``;
* ``train(resume_from_checkpoint=...)`` also takes ``"last"``/``"true"`` (what a
  command line can pass) or a run folder, and resumes from the newest *complete*
  checkpoint, skipping damaged ones with a warning;
* the final model files are replaced one by one (``os.replace``): never a prefix;
* ``training_args.bin`` is written without Hub tokens.

Numerical faults (``RiskArguments.nonfinite_loss``): a NaN/inf training loss, or a
non-finite gradient norm with a finite loss, either stops the run naming the
global step and micro-batch (``"raise"``), or skips the whole optimizer step
(``"skip"``: gradients set to ``None``, as ``torch.amp.GradScaler`` does on
overflow; every DDP process sees the same all-reduced norm and skips together).
A skipped step's buffer updates (BatchNorm running statistics) are undone. The
gradient check is a ``TrainerCallback`` (:class:`rcl_hf.trainer_callbacks.NonFiniteStepGuard`,
``on_pre_optimizer_step``). No checkpoint and no trained model with non-finite
weights is ever written (``save_model`` refuses) or returned.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from transformers import Trainer

from .losses import LOSS_NAMES, RiskCalibratedLoss, build_loss, loss_epoch_callback
from .atomic_io import STAGING_PREFIX, atomic_replace_files, commit_dir, remove_stale_staging, staging_dir
from .checkpoints import CHECKPOINT_PREFIX, nonfinite_parameters, resolve_resume_checkpoint
from .severity import SeverityMatrix
from .trainer_callbacks import BroadcastBuffersCallback, NonFiniteLossError, NonFiniteStepGuard

logger = logging.getLogger(__name__)

__all__ = ["RiskArguments", "RiskCalibratedTrainer", "NonFiniteLossError"]


@dataclass
class RiskArguments:
    """Arguments of the clinical loss, for ``HfArgumentParser``."""

    loss: str = field(default="rcl", metadata={"help": f"Loss: one of {', '.join(LOSS_NAMES)}."})
    lam: float = field(default=1.0, metadata={"help": "Weight λ >= 0 of the risk term (rcl losses)."})
    risk_form: Optional[str] = field(
        default=None, metadata={"help": "Risk term form: 'expected' or 'log' (default: from the loss name)."}
    )
    gamma: float = field(default=2.0, metadata={"help": "Focal exponent γ (focal, rcl_focal)."})
    label_smoothing: Optional[float] = field(
        default=None, metadata={"help": "Label smoothing of the base term (default 0; 0.1 for 'label_smoothing')."}
    )
    class_weight_beta: float = field(default=0.999, metadata={"help": "β of effective-number class weights."})
    severity: Optional[str] = field(
        default=None,
        metadata={"help": "Severity preset name (brain_tumor_mri, isic2018, breakhis, sicapv2, synthetic) or a JSON "
                          "file (default: the dataset's preset). JSON: {\"labels\": [K class names, in the "
                          "dataset's order], \"matrix\": K x K costs in [0, 1], matrix[i][j] = cost of predicting "
                          "class j for true class i, zero diagonal, \"critical\": K x K booleans, true where the "
                          "error is critical (optional: cells of cost 1.0), \"name\": optional}."},
    )
    nonfinite_loss: str = field(
        default="raise",
        metadata={"help": "On a NaN/inf training loss or gradient norm: 'raise' (stop, naming the step and micro-batch) "
                          "or 'skip' that optimizer step."},
    )
    max_nonfinite_skips: int = field(
        default=10, metadata={"help": "With nonfinite_loss='skip': stop after this many consecutive non-finite batches "
                                    "(or gradient norms)."}
    )

    def __post_init__(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"Unknown loss {self.loss!r}; choose one of {list(LOSS_NAMES)}")
        if self.lam < 0 or not math.isfinite(self.lam):
            raise ValueError(f"lam must be finite and >= 0, got {self.lam}")
        if self.risk_form not in (None, "expected", "log"):
            raise ValueError(f"risk_form must be 'expected' or 'log', got {self.risk_form!r}")
        if self.nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {self.nonfinite_loss!r}")

    def build(self, severity: Optional[SeverityMatrix], class_counts: Optional[Sequence[int]] = None) -> torch.nn.Module:
        """Build the loss module these arguments describe."""
        return build_loss(
            self.loss,
            severity=severity,
            class_counts=class_counts,
            lam=self.lam,
            form=self.risk_form,
            gamma=self.gamma,
            label_smoothing=self.label_smoothing,
            beta=self.class_weight_beta,
        )

    # ------------------------------------------------------------------ hooks for subclasses
    #: Epoch from which the per-sample weights of :meth:`train_sample_weights` apply (0: from the start).
    sample_weight_start_epoch = 0.0  # (not a dataclass field: no flag)

    def requires_frozen_backbone(self) -> bool:
        """Whether these arguments only make sense with ``--freeze_backbone true`` (default: no). A subclass
        whose sample weights need K extra models (cross-fitting) answers yes."""
        return False

    def train_sample_weights(self, embeddings: np.ndarray, labels: Sequence[int], groups: Optional[Sequence[str]],
                             severity: SeverityMatrix, seed: int) -> Optional[np.ndarray]:
        """Per-image weights of the training split in frozen-backbone mode, or ``None`` (the default: unweighted).

        The training job puts them in the dataset's ``sample_weight`` column, which
        :class:`RiskCalibratedTrainer` multiplies into the per-sample loss from
        :attr:`sample_weight_start_epoch` on. Override to re-weight (e.g. cross-fitted risk weights).
        """
        return None


class RiskCalibratedTrainer(Trainer):
    """``transformers.Trainer`` with a clinical loss in ``compute_loss``.

    Args:
        loss_fn: a loss module called as ``loss_fn(logits, labels)``; or
        risk_args: :class:`RiskArguments` to build one, with ``severity`` (and
            ``class_counts`` for class-weighted losses).
        severity: the :class:`SeverityMatrix` (or a preset name / JSON path; default:
            ``risk_args.severity``); checked against the model's labels.
        **kwargs: everything ``transformers.Trainer`` takes.

    Image datasets with on-the-fly transforms need ``remove_unused_columns=False``
    and ``label_names=["labels"]`` in ``TrainingArguments``.

    A ``sample_weight`` column in the training set weights each sample's loss while
    training: ``mean_i(w_i · ℓ_i)`` (weights normalised to mean 1 keep the loss scale;
    gradient accumulation stays exact). Evaluation losses ignore it.
    ``sample_weight_start_epoch > 0`` defers the weights (deferred re-weighting, cf. LDAM-DRW,
    Cao et al. 2019): before that epoch (``state.epoch``) every sample weighs 1.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        loss_fn: Optional[torch.nn.Module] = None,
        risk_args: Optional[RiskArguments] = None,
        severity: Optional[Union[SeverityMatrix, str]] = None,
        class_counts: Optional[Sequence[int]] = None,
        sample_weight_start_epoch: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not sample_weight_start_epoch >= 0 or sample_weight_start_epoch == float("inf"):
            raise ValueError(f"sample_weight_start_epoch must be finite and >= 0, got {sample_weight_start_epoch}")
        self.sample_weight_start_epoch = float(sample_weight_start_epoch)
        self.risk_args = risk_args or RiskArguments()
        if severity is None and risk_args is not None and risk_args.severity:
            severity = risk_args.severity  # --severity PRESET_OR_JSON from the command line / config
        self.severity = SeverityMatrix.resolve(severity) if severity is not None else None
        if loss_fn is None:
            if risk_args is None:
                raise ValueError("RiskCalibratedTrainer needs loss_fn or risk_args")
            loss_fn = risk_args.build(self.severity, class_counts)
        self.loss_fn = loss_fn.to(self.args.device)
        if any(hasattr(m, "epoch") for m in self.loss_fn.modules()):  # epoch-aware losses (deferred risk weighting)
            self.add_callback(loss_epoch_callback(self.loss_fn))
        self._check_labels()
        # Our loss is a per-sample mean; never let a model normalise by num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        self._parts_sum: Dict[str, float] = {}
        self._parts_count = 0
        self._nonfinite_streak = 0  # consecutive micro-batches with a non-finite loss
        self._grad_streak = 0  # consecutive optimizer steps skipped for non-finite gradients
        self._micro_batch = 0  # micro-batches seen in the current optimizer step
        self._loss_skipped_in_step = False
        self._rcl_staging: Optional[str] = None  # the checkpoint folder being written, if any
        self.add_callback(NonFiniteStepGuard(self))  # non-finite gradients: raise or skip the optimizer step
        # under DDP every rank evaluates and saves rank 0's buffers (BatchNorm statistics); a no-op on one process
        if not any(isinstance(cb, BroadcastBuffersCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(BroadcastBuffersCallback())
        self.nonfinite_skipped = 0  # micro-batches whose non-finite loss was skipped
        self.skipped_optimizer_steps = 0  # optimizer steps skipped (loss or gradient not finite)

    def _check_labels(self) -> None:
        config = getattr(self.model, "config", None)
        id2label = getattr(config, "id2label", None)
        if self.severity is None or not id2label:
            return
        model_labels = [id2label[i] for i in sorted(id2label)]
        if len(model_labels) != self.severity.num_labels:
            raise ValueError(
                f"Model has {len(model_labels)} labels {model_labels} but the severity matrix has "
                f"{self.severity.num_labels} {self.severity.labels}"
            )
        if all(not str(label).startswith("LABEL_") for label in model_labels):
            self.severity.check_labels(model_labels, what="Model config")

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Optional[Union[torch.Tensor, int]] = None,
    ):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        weight = inputs.pop("sample_weight", None)
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if weight is not None and model.training and (self.state.epoch or 0.0) >= self.sample_weight_start_epoch:
            weight = torch.as_tensor(weight, device=logits.device, dtype=torch.float32)
        else:
            weight = None  # evaluation losses stay unweighted (they compare across runs); deferred weights too
        parts = None
        if isinstance(self.loss_fn, RiskCalibratedLoss):
            parts = self.loss_fn.per_sample_parts(logits, labels)
            per = parts["loss"]
        elif weight is not None:
            if not hasattr(self.loss_fn, "per_sample"):
                raise ValueError(f"A sample_weight column needs a loss with per_sample(); {type(self.loss_fn).__name__} has none")
            per = self.loss_fn.per_sample(logits, labels)
        else:
            per = None
        if per is None:
            loss = self.loss_fn(logits, labels)
        else:
            loss = (per * weight).mean() if weight is not None else per.mean()
        if model.training:
            self._micro_batch += 1
            if not torch.isfinite(loss):
                loss = self._on_nonfinite(loss, logits, labels)
            else:
                self._nonfinite_streak = 0
                if parts is not None:
                    for key in ("base", "risk"):
                        # kept on the device: no host sync per micro-batch; converted in log()
                        self._parts_sum[key] = self._parts_sum.get(key, 0.0) + parts[key].detach().mean()
                    self._parts_count += 1
        return (loss, outputs) if return_outputs else loss

    def _where(self) -> str:
        return (
            f"at global step {self.state.global_step} (micro-batch {self._micro_batch} of optimizer step "
            f"{self.state.global_step + 1}, epoch {self.state.epoch or 0:.3f})"
        )

    def _on_nonfinite(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        where = f"{self._where()}, batch of {len(labels)} samples"
        logit_state = "non-finite logits" if not torch.isfinite(logits).all() else "finite logits"
        if self.risk_args.nonfinite_loss == "raise":
            raise NonFiniteLossError(
                f"Training loss is {loss.item()} {where} with {logit_state}. Lower the learning rate, "
                "use bf16 instead of fp16, or pass --nonfinite_loss skip to skip such steps."
            )
        self._nonfinite_streak += 1
        self.nonfinite_skipped += 1
        self._loss_skipped_in_step = True
        logger.warning("Skipping the optimizer step: non-finite loss %s (%s)", where, logit_state)
        if self._nonfinite_streak > self.risk_args.max_nonfinite_skips:
            raise NonFiniteLossError(
                f"{self._nonfinite_streak} consecutive non-finite losses up to {where}: the model has diverged."
            )
        # NaN gradients on purpose: the (all-reduced) gradient norm is then NaN on every process, so that
        # NonFiniteStepGuard (on_pre_optimizer_step) drops the whole optimizer step everywhere by setting the
        # gradients to None, as GradScaler does on overflow (under fp16 / DeepSpeed their own overflow check
        # does it). transformers' _get_grad_norm only measures the norm: it skips nothing.
        return logits.float().sum() * float("nan")

    # ------------------------------------------------------------------ training / resuming
    def train(self, resume_from_checkpoint: Union[str, bool, None] = None, trial: Any = None, **kwargs: Any):
        """``Trainer.train`` resuming from the newest *complete* checkpoint, and never returning NaN weights.

        ``resume_from_checkpoint`` may be ``True``, ``"last"``/``"true"``/``"latest"``, a
        run folder or a checkpoint folder (:func:`rcl_hf.checkpoints.resolve_resume_checkpoint`).
        Unfinished saves of a killed run (``.tmp-*`` in ``output_dir``) are removed first.

        Raises:
            NonFiniteLossError: the trained weights hold NaN or inf.
            ValueError: the named checkpoint is incomplete, or there is nothing to resume from.
        """
        resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if self.args.should_save:
            remove_stale_staging(self.args.output_dir)
        output = super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        bad = nonfinite_parameters(self.model)
        if bad:
            raise NonFiniteLossError(f"Training ended with non-finite weights in {bad}; the model must not be used.")
        return output

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``, refusing non-finite weights; outside a checkpoint the files go through a
        staging folder and one ``os.replace`` each (:func:`rcl_hf.atomic_io.atomic_replace_files`)."""
        bad = nonfinite_parameters(self.model)
        if bad:
            raise NonFiniteLossError(f"Refusing to save the model: non-finite values in {bad}")
        output_dir = output_dir or self.args.output_dir
        in_checkpoint = self._rcl_staging is not None and os.path.abspath(output_dir).startswith(self._rcl_staging)
        if in_checkpoint or not self.args.should_save:  # a checkpoint's folder is already a staging folder
            super().save_model(output_dir, _internal_call=_internal_call)
            if self.args.should_save:
                self._finish_model_folder(output_dir)
            return
        os.makedirs(output_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=STAGING_PREFIX + "save-", dir=output_dir)
        try:
            super().save_model(tmp, _internal_call=True)
            self._finish_model_folder(tmp)
            atomic_replace_files(tmp, output_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """``checkpoint-<step>`` appears whole or not at all: ``Trainer._save_checkpoint`` writes it into
        ``<output_dir>/.tmp-checkpoint-<step>/``, then one ``rename`` publishes it (after ``fsync``).

        The one private override left. Checked against transformers 5.24 (the tested minimum in pyproject.toml,
        which also caps <6): the parent writes every
        file under ``self._get_output_dir(trial)`` (``args.output_dir`` outside hyper-parameter search),
        which is pointed at the staging folder for the call; best-checkpoint path, hub push and rotation
        are then redone on the real folder. ``tests/trainer/test_trainer.py::test_private_save_checkpoint_api``
        fails when that source contract changes.
        """
        from transformers.trainer import TRAINER_STATE_NAME
        from transformers.trainer_utils import rotate_checkpoints

        step = self.state.global_step
        bad = nonfinite_parameters(self.model)
        if bad:
            raise NonFiniteLossError(f"Refusing to save {CHECKPOINT_PREFIX}-{step}: non-finite values in {bad}")
        run_dir = self._get_output_dir(trial=trial)
        name = f"{CHECKPOINT_PREFIX}-{step}"
        final = os.path.join(run_dir, name)
        stage_root = os.path.join(os.path.abspath(run_dir), STAGING_PREFIX + name)
        if self.args.should_save:
            os.makedirs(run_dir, exist_ok=True)
            staging_dir(final)  # creates stage_root empty
        self.accelerator.wait_for_everyone()
        real_output_dir, push = self.args.output_dir, self.args.push_to_hub
        self._rcl_staging = stage_root
        try:
            self.args.output_dir, self.args.push_to_hub = stage_root, False
            super()._save_checkpoint(model, None)  # trial=None: the parent's run dir is then args.output_dir
            self.args.output_dir, self.args.push_to_hub = real_output_dir, push
            best = self.state.best_global_step
            if best and os.path.exists(os.path.join(stage_root, name)) and best == step:
                self.state.best_model_checkpoint = final
            elif best and os.path.exists(os.path.join(run_dir, f"{CHECKPOINT_PREFIX}-{best}")):
                self.state.best_model_checkpoint = os.path.join(run_dir, f"{CHECKPOINT_PREFIX}-{best}")
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                self.state.save_to_json(os.path.join(stage_root, name, TRAINER_STATE_NAME))  # the real best path
                commit_dir(os.path.join(stage_root, name), final)
                shutil.rmtree(stage_root, ignore_errors=True)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(stage_root, ignore_errors=True)
            raise
        finally:
            self.args.output_dir, self.args.push_to_hub = real_output_dir, push
            self._rcl_staging = None
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _finish_model_folder(self, folder: str) -> None:
        """Label maps in ``config.json``; ``training_args.bin`` re-written without Hub tokens."""
        from transformers.trainer import TRAINING_ARGS_NAME

        from .models import ensure_label_maps_in_config_file

        ensure_label_maps_in_config_file(folder)
        path = os.path.join(folder, TRAINING_ARGS_NAME)
        if os.path.exists(path):
            args = copy.copy(self.args)
            if self._rcl_staging is not None:  # inside _save_checkpoint: record the real output folder
                args.output_dir = os.path.dirname(self._rcl_staging)
            for name, value in vars(self.args).items():
                if name.endswith("_token") and isinstance(value, str):
                    setattr(args, name, None)
            torch.save(args, path)

    def create_model_card(self, **kwargs: Any) -> None:
        """The rcl_hf model card (results, severity table, recipe, clinical limits) instead of
        transformers' generic one, so ``trainer.push_to_hub()`` uploads the same card as
        ``scripts/push_to_hub.py``."""
        if not self.is_world_process_zero():
            return
        from .hub import write_model_card

        write_model_card(
            self.args.output_dir,
            self.hub_model_id,
            license=kwargs.get("license") or "apache-2.0",
            base_model=kwargs.get("finetuned_from"),
            datasets=[kwargs["dataset"]] if isinstance(kwargs.get("dataset"), str) else kwargs.get("dataset"),
        )

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and isinstance(self.loss_fn, RiskCalibratedLoss):
            values = torch.stack([
                torch.as_tensor(self._parts_sum.get("base", 0.0), dtype=torch.float32, device=self.args.device),
                torch.as_tensor(self._parts_sum.get("risk", 0.0), dtype=torch.float32, device=self.args.device),
                torch.tensor(float(self._parts_count), device=self.args.device),
            ])
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values, reduction="sum")
            if values[2] > 0:
                logs["loss_base"] = round(float(values[0] / values[2]), 6)
                logs["loss_risk"] = round(float(values[1] / values[2]), 6)
            self._parts_sum, self._parts_count = {}, 0
        if self.nonfinite_skipped:
            logs["nonfinite_skipped"] = self.nonfinite_skipped
        if self.skipped_optimizer_steps:
            logs["skipped_optimizer_steps"] = self.skipped_optimizer_steps
        super().log(logs, start_time)
