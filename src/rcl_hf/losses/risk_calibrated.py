"""Risk-calibrated loss and the baselines it is compared with.

Risk-Calibrated Learning (docs/loss.md; arXiv:2604.12693) adds the clinical
severity matrix ``M`` to the training objective::

    L(z, y) = B(z, y) + lambda * R(p, y),          p = softmax(z)

    expected form:  R = sum_j M[y, j] * p_j                 (expected clinical cost)
    log form:       R = -sum_j M[y, j] * log(1 - p_j + eps) (barrier on confident critical errors)

``B`` is cross-entropy (optionally with label smoothing and class weights) or
focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017):
``FL = -sum_k q_k * (1 - p_k)^gamma * log p_k`` with ``q`` the (smoothed) target.
The exact formula of the seed paper is not public; these forms are this
project's definition.

Every loss is computed in float32 from log-softmax, so logits of +-1e4 in fp32
or bf16 give finite values and gradients.  ``log(1 - p_j)`` is evaluated as
``logsumexp_{k != j} z_k - logsumexp_k z_k``, never as ``log`` of a rounded
difference.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..severity import SeverityMatrix
from .base import ArrayLike, _BaseLoss, _matrix_of, log1m_softmax
from .cross_entropy import WeightedCrossEntropyLoss
from .focal import FocalLoss
from .soft_label import SoftLabelLoss

__all__ = ["RiskCalibratedLoss", "DeferredRiskLoss", "loss_epoch_callback"]


class RiskCalibratedLoss(_BaseLoss):
    """``L = B(z, y) + lam * R(p, y)``; see the module docstring for the forms.

    Args:
        severity: a :class:`SeverityMatrix` (or a preset name / K x K array).
        lam: weight ``lambda >= 0`` of the risk term; ``lam=0`` gives exactly ``B``.
        form: ``"expected"`` (default) or ``"log"``.
        base: ``"ce"``, ``"focal"`` or ``"soft"`` (CE on the soft labels of :func:`severity_soft_targets`).
        gamma: focal exponent (``base="focal"`` only).
        label_smoothing: smoothing of the base term's target.
        class_weight: optional per-class weights of the base term.
        eps: the ``eps`` of the log form.
        soft_label_beta: ``beta`` of the soft labels (``base="soft"`` only).

    Call as ``loss_fn(logits, labels)`` for the batch mean; ``per_sample_parts(logits, labels)``
    returns the per-sample ``loss``, ``base`` and ``risk`` (the Trainer logs the means of the last two).
    """

    def __init__(
        self,
        severity: Union[SeverityMatrix, str, ArrayLike],
        lam: float = 1.0,
        form: str = "expected",
        base: str = "ce",
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
        class_weight: Optional[ArrayLike] = None,
        eps: float = 1e-6,
        soft_label_beta: float = 1.0,
    ) -> None:
        super().__init__(class_weight, label_smoothing)
        m = _matrix_of(severity)
        if lam < 0 or not math.isfinite(lam):
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        if form not in ("expected", "log"):
            raise ValueError(f"Unknown risk form {form!r}; use 'expected' or 'log'")
        if base not in ("ce", "focal", "soft"):
            raise ValueError(f"Unknown base loss {base!r}; use 'ce', 'focal' or 'soft'")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.register_buffer("severity_matrix", torch.tensor(np.array(m), dtype=torch.float32))
        self.lam, self.form, self.base, self.eps = float(lam), form, base, float(eps)
        if base == "soft":
            self._base: _BaseLoss = SoftLabelLoss(m, soft_label_beta)
        else:
            self._base = (
                FocalLoss(gamma, None, label_smoothing) if base == "focal" else WeightedCrossEntropyLoss(None, label_smoothing)
            )

    def risk_per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = self.severity_matrix.to(logits.device)[labels]  # (B, K): M[y, :]
        if self.form == "expected":
            return (rows * F.softmax(logits.float(), dim=-1)).sum(-1)
        log_eps = torch.full_like(rows, math.log(self.eps))
        log_1m_p_eps = torch.logaddexp(log1m_softmax(logits), log_eps)  # log(1 - p + eps)
        return -(rows * log_1m_p_eps).sum(-1)

    def per_sample_parts(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        self._check(logits, labels, self.severity_matrix.shape[0])
        labels = labels.long()
        log_p = F.log_softmax(logits.float(), dim=-1)
        base = self._weighted(self._base.base_per_sample(log_p, labels), labels)
        if self.lam == 0:
            risk = torch.zeros_like(base)
            total = base
        else:
            risk = self.risk_per_sample(logits, labels)
            total = base + self.lam * risk
        return {"loss": total, "base": base, "risk": risk}

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.per_sample_parts(logits, labels)["loss"]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, form={self.form!r}, base={self.base!r}, label_smoothing={self.label_smoothing}"


class DeferredRiskLoss(RiskCalibratedLoss):
    """Deferred risk weighting (cf. LDAM-DRW, Cao et al., NeurIPS 2019): ``L = B`` before epoch
    ``start_epoch`` and ``B + lam·R`` from then on, so the features are learned under the plain loss
    and the risk term re-shapes the boundary in the last epochs.

    The epoch is the attribute :attr:`epoch`, set by :func:`loss_epoch_callback` (a
    ``TrainerCallback``); without a callback it is counted from the training samples seen under
    gradients (``samples_seen / samples_per_epoch``; single process, no resume).
    """

    def __init__(self, severity: Union[SeverityMatrix, str, ArrayLike], start_epoch: float,
                 samples_per_epoch: Optional[int] = None, **kwargs) -> None:
        super().__init__(severity, **kwargs)
        if start_epoch < 0 or not math.isfinite(start_epoch):
            raise ValueError(f"start_epoch must be finite and >= 0, got {start_epoch}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.start_epoch, self.samples_per_epoch = float(start_epoch), samples_per_epoch
        self.epoch: Optional[float] = None
        self.samples_seen = 0

    def current_epoch(self) -> float:
        if self.epoch is not None:
            return float(self.epoch)
        if self.samples_per_epoch is None:
            raise ValueError("DeferredRiskLoss needs its epoch: add loss_epoch_callback(loss) to the Trainer, "
                             "or give samples_per_epoch")
        return float(self.samples_seen // self.samples_per_epoch)

    def per_sample_parts(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        active = self.current_epoch() >= self.start_epoch
        if torch.is_grad_enabled():
            self.samples_seen += int(labels.shape[0])
        lam, self.lam = self.lam, (self.lam if active else 0.0)
        try:
            return super().per_sample_parts(logits, labels)
        finally:
            self.lam = lam

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, start_epoch={self.start_epoch}"


def loss_epoch_callback(loss: nn.Module):
    """A ``transformers.TrainerCallback`` that sets ``loss.epoch`` (every wrapped module that has
    one) to the Trainer's ``state.epoch`` at the start of each epoch."""
    from transformers import TrainerCallback

    targets = [m for m in loss.modules() if hasattr(m, "epoch")]

    class _LossEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            for m in targets:
                m.epoch = float(state.epoch or 0.0)

    return _LossEpoch()
