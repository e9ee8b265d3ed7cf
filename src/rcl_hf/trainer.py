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
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Union

import torch
from transformers import Trainer

from .losses import LOSS_NAMES, RiskCalibratedLoss, build_loss
from .severity import SeverityMatrix

logger = logging.getLogger(__name__)

__all__ = ["RiskArguments", "RiskCalibratedTrainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or inf (see ``RiskArguments.nonfinite_loss``)."""


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
        metadata={"help": "Severity preset name or JSON path (default: the dataset's preset)."},
    )
    nonfinite_loss: str = field(
        default="raise",
        metadata={"help": "On a NaN/inf training loss: 'raise' (stop naming the step) or 'skip' the batch."},
    )
    max_nonfinite_skips: int = field(
        default=10, metadata={"help": "With nonfinite_loss='skip': stop after this many consecutive skipped batches."}
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
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        loss_fn: Optional[torch.nn.Module] = None,
        risk_args: Optional[RiskArguments] = None,
        severity: Optional[Union[SeverityMatrix, str]] = None,
        class_counts: Optional[Sequence[int]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.risk_args = risk_args or RiskArguments()
        if severity is None and risk_args is not None and risk_args.severity:
            severity = risk_args.severity  # --severity PRESET_OR_JSON from the command line / config
        self.severity = SeverityMatrix.resolve(severity) if severity is not None else None
        if loss_fn is None:
            if risk_args is None:
                raise ValueError("RiskCalibratedTrainer needs loss_fn or risk_args")
            loss_fn = risk_args.build(self.severity, class_counts)
        self.loss_fn = loss_fn.to(self.args.device)
        self._check_labels()
        # Our loss is a per-sample mean; never let a model normalise by num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        self._parts_sum: Dict[str, float] = {}
        self._parts_count = 0
        self._nonfinite_streak = 0
        self.nonfinite_skipped = 0

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
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if isinstance(self.loss_fn, RiskCalibratedLoss):
            parts = self.loss_fn.per_sample_parts(logits, labels)
            loss = parts["loss"].mean()
        else:
            parts = None
            loss = self.loss_fn(logits, labels)
        if model.training:
            if not torch.isfinite(loss):
                loss = self._on_nonfinite(loss, logits)
            else:
                self._nonfinite_streak = 0
                if parts is not None:
                    for key in ("base", "risk"):
                        self._parts_sum[key] = self._parts_sum.get(key, 0.0) + float(parts[key].mean().detach())
                    self._parts_count += 1
        return (loss, outputs) if return_outputs else loss

    def _on_nonfinite(self, loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        where = f"at global step {self.state.global_step} (epoch {self.state.epoch or 0:.3f})"
        logit_state = "non-finite logits" if not torch.isfinite(logits).all() else "finite logits"
        if self.risk_args.nonfinite_loss == "raise":
            raise NonFiniteLossError(
                f"Training loss is {loss.item()} {where} with {logit_state}. Lower the learning rate, "
                "use bf16 instead of fp16, or pass --nonfinite_loss skip to skip such batches."
            )
        self._nonfinite_streak += 1
        self.nonfinite_skipped += 1
        logger.warning("Skipping batch with non-finite loss %s (%s)", where, logit_state)
        if self._nonfinite_streak > self.risk_args.max_nonfinite_skips:
            raise NonFiniteLossError(
                f"{self._nonfinite_streak} consecutive non-finite losses up to {where}: the model has diverged."
            )
        # A zero loss connected to no parameter: backward gives no gradient, the batch is skipped.
        return torch.zeros((), device=loss.device, requires_grad=True)

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        super()._save(output_dir, state_dict)
        from .models import ensure_label_maps_in_config_file

        ensure_label_maps_in_config_file(output_dir or self.args.output_dir)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and isinstance(self.loss_fn, RiskCalibratedLoss):
            values = torch.tensor(
                [self._parts_sum.get("base", 0.0), self._parts_sum.get("risk", 0.0), float(self._parts_count)],
                device=self.args.device,
            )
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values, reduction="sum")
            if values[2] > 0:
                logs["loss_base"] = round(float(values[0] / values[2]), 6)
                logs["loss_risk"] = round(float(values[1] / values[2]), 6)
            self._parts_sum, self._parts_count = {}, 0
        if self.nonfinite_skipped:
            logs["nonfinite_skipped"] = self.nonfinite_skipped
        super().log(logs, start_time)
