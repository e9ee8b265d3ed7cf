"""Options that keep the risk term acting where the model still errs.

With frozen features or a long fine-tuning, the training split is fit almost
perfectly: ``p_y -> 1`` on every training image, so the risk term
``R = Σ_j M[y, j] p_j`` (and its gradient) vanishes, and the risk-calibrated loss
can do little more than shift a decision threshold. Two wrappers keep training
errors alive; both act on any loss of :func:`rcl_hf.losses.build_loss` and only
while gradients are enabled (training), so evaluation losses stay comparable.

* **Severity margin** (cost-scaled additive margin; cf. LDAM, Cao et al.,
  NeurIPS 2019, and logit adjustment, Menon et al., ICLR 2021)::

      z'_j = z_j + m · M[y, j],          L = loss(z', y)

  Class ``j`` competes with the true class ``y`` as if its logit were ``m·M[y,j]``
  higher, so a training image counts as (softly) wrong until the true logit
  clears every critical class by ``m`` (fine-grained classes by ``0.1·m``). The
  risk term of the RCL loss then still sees mass on critical classes after the
  argmax is right. ``m = 0`` is the wrapped loss exactly.

* **Cross-fitted risk weights** (:mod:`research.crossfit`): each
  training image's loss is weighted by its *out-of-fold* expected cost, so images
  a held-out model would get critically wrong keep their pull after the head has
  memorised them (frozen-backbone mode).

* **Logit mixup** (mixup, Zhang et al., ICLR 2018, applied to the logits)::

      a ~ Beta(α, α),  π a random permutation of the batch,
      z̃ = a·z + (1 - a)·z[π],   L = a·loss(z̃, y) + (1 - a)·loss(z̃, y[π])

  For the frozen-backbone head (``logits = W e + b``) this is *exactly* mixup of
  the embeddings, since ``W(a e + (1-a) e') + b = a z + (1-a) z'``; for a
  fine-tuned network it is mixup at the last layer (manifold mixup). Mixed
  images lie between classes, where the model keeps erring, so the risk term
  keeps a gradient. ``α = 0`` disables it.

:class:`ExperimentRiskArguments` adds ``severity_margin``, ``logit_mixup_alpha``
and ``crossfit_weight`` / ``crossfit_folds`` to :class:`rcl_hf.trainer.RiskArguments`; its ``build``
returns the wrapped loss, so a grid cell still trains through
:func:`rcl_hf.train_job.run_training` unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from rcl_hf.severity import SeverityMatrix
from rcl_hf.trainer import RiskArguments

__all__ = ["SeverityMarginLoss", "LogitMixupLoss", "ExperimentRiskArguments"]


class SeverityMarginLoss(nn.Module):
    """``loss(z + m·M[y, :], y)`` while training; ``loss(z, y)`` without gradients (see module docstring)."""

    def __init__(self, loss: nn.Module, severity: SeverityMatrix, margin: float) -> None:
        super().__init__()
        if margin < 0 or not math.isfinite(margin):
            raise ValueError(f"severity_margin must be finite and >= 0, got {margin}")
        self.loss = loss
        self.margin = float(margin)
        self.register_buffer("severity_matrix", torch.tensor(np.array(severity.matrix), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.margin > 0 and torch.is_grad_enabled():
            if logits.ndim != 2 or logits.shape[1] != self.severity_matrix.shape[0]:
                raise ValueError(f"logits must be (batch, {self.severity_matrix.shape[0]}), got {tuple(logits.shape)}")
            logits = logits.float() + self.margin * self.severity_matrix.to(logits.device)[labels]
        return self.loss(logits, labels)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class LogitMixupLoss(nn.Module):
    """Mixup of logits within the batch while training (see module docstring)."""

    def __init__(self, loss: nn.Module, alpha: float) -> None:
        super().__init__()
        if alpha < 0 or not math.isfinite(alpha):
            raise ValueError(f"logit_mixup_alpha must be finite and >= 0, got {alpha}")
        self.loss = loss
        self.alpha = float(alpha)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0 or not torch.is_grad_enabled() or logits.shape[0] < 2:
            return self.loss(logits, labels)
        a = float(torch.distributions.Beta(self.alpha, self.alpha).sample())  # torch's seeded generator
        perm = torch.randperm(logits.shape[0], device=logits.device)
        mixed = a * logits + (1.0 - a) * logits[perm]
        return a * self.loss(mixed, labels) + (1.0 - a) * self.loss(mixed, labels[perm])

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


@dataclass
class ExperimentRiskArguments(RiskArguments):
    """:class:`~rcl_hf.trainer.RiskArguments` plus the point-5 options of the experiment grid."""

    severity_margin: float = field(
        default=0.0, metadata={"help": "m >= 0: train on z + m·M[y, :] (cost-scaled margin; 0 = off)."}
    )
    logit_mixup_alpha: float = field(
        default=0.0, metadata={"help": "α >= 0 of Beta(α, α) logit mixup while training (0 = off)."}
    )
    crossfit_weight: float = field(
        default=0.0,
        metadata={"help": "β >= 0: weight each training image by 1 + β·(its out-of-fold expected cost / mean), "
                          "frozen-backbone mode only (research.crossfit; 0 = off)."},
    )
    crossfit_folds: int = field(default=5, metadata={"help": "Grouped folds of the cross-fitted risk weights."})
    crossfit_max_iter: int = field(
        default=1000, metadata={"help": "L-BFGS iterations of each out-of-fold logistic regression (fewer: faster "
                                        "weights from a less converged nuisance model)."})
    crossfit_within_class: bool = field(
        default=False, metadata={"help": "Normalise the cross-fitted weights to mean 1 within each class (DRW-style)."})
    crossfit_start_epoch: float = field(
        default=0.0, metadata={"help": "Apply the cross-fitted weights only from this epoch on (deferred "
                                       "re-weighting, cf. LDAM-DRW; 0 = from the start)."})
    la_tau: float = field(default=1.0, metadata={"help": "τ of the logit-adjusted loss (loss 'logit_adjusted')."})
    soft_label_beta: float = field(
        default=1.0, metadata={"help": "β > 0 of the soft labels q_j ∝ exp(-β·M[y, j]) (losses 'soft_label', 'rcl_soft')."}
    )
    risk_start_epoch: float = field(
        default=0.0, metadata={"help": "Deferred risk weighting: the rcl risk term acts from this epoch on (0 = always)."}
    )
    aucm_weight: float = field(
        default=0.0, metadata={"help": "μ >= 0 of the AUC-margin penalty on the critical-class score (0 = off)."}
    )
    aucm_margin: float = field(default=1.0, metadata={"help": "Margin m of the AUC-margin penalty."})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("severity_margin", "logit_mixup_alpha", "crossfit_weight", "risk_start_epoch", "aucm_weight"):
            value = getattr(self, name)
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.crossfit_start_epoch < 0 or not np.isfinite(self.crossfit_start_epoch):
            raise ValueError(f"crossfit_start_epoch must be finite and >= 0, got {self.crossfit_start_epoch}")
        if (self.crossfit_start_epoch > 0 or self.crossfit_within_class) and self.crossfit_weight == 0:
            raise ValueError("crossfit_start_epoch / crossfit_within_class shape the cross-fitted weights: set "
                             "crossfit_weight > 0")
        if self.crossfit_max_iter < 1:
            raise ValueError(f"crossfit_max_iter must be >= 1, got {self.crossfit_max_iter}")
        if self.crossfit_folds < 2:
            raise ValueError(f"crossfit_folds must be >= 2, got {self.crossfit_folds}")
        if self.risk_start_epoch > 0 and self.logit_mixup_alpha > 0:
            raise ValueError("risk_start_epoch counts the samples the loss sees; logit mixup calls it twice per batch")
        if self.crossfit_weight > 0 and (self.severity_margin > 0 or self.logit_mixup_alpha > 0):
            raise ValueError("crossfit_weight weights per-sample losses: combine it with neither severity_margin "
                             "nor logit_mixup_alpha")

    @property
    def sample_weight_start_epoch(self) -> float:  # the library's hook: weights apply from this epoch
        return self.crossfit_start_epoch

    def requires_frozen_backbone(self) -> bool:
        return self.crossfit_weight > 0

    def train_sample_weights(self, embeddings: np.ndarray, labels: Sequence[int], groups: Optional[Sequence[str]],
                             severity: SeverityMatrix, seed: int) -> Optional[np.ndarray]:
        """Cross-fitted risk weights for the frozen-backbone head (``None`` when off)."""
        if self.crossfit_weight == 0:
            return None
        from .crossfit import crossfit_risk_weights, out_of_fold_probabilities

        p = out_of_fold_probabilities(embeddings, labels, groups, n_folds=self.crossfit_folds, seed=seed,
                                      max_iter=self.crossfit_max_iter)
        return crossfit_risk_weights(p, labels, severity, self.crossfit_weight, within_class=self.crossfit_within_class)

    def build(self, severity: Optional[SeverityMatrix], class_counts: Optional[Sequence[int]] = None) -> nn.Module:
        from rcl_hf.losses import build_loss

        loss = build_loss(self.loss, severity=severity, class_counts=class_counts, lam=self.lam, form=self.risk_form,
                          gamma=self.gamma, label_smoothing=self.label_smoothing, beta=self.class_weight_beta,
                          tau=self.la_tau, soft_label_beta=self.soft_label_beta,
                          risk_start_epoch=self.risk_start_epoch, aucm_weight=self.aucm_weight,
                          aucm_margin=self.aucm_margin)
        if self.severity_margin > 0:
            if severity is None:
                raise ValueError("severity_margin needs a severity matrix")
            loss = SeverityMarginLoss(loss, severity, self.severity_margin)
        if self.logit_mixup_alpha > 0:
            loss = LogitMixupLoss(loss, self.logit_mixup_alpha)
        return loss
