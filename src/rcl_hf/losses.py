"""Risk-calibrated loss and the baselines it is compared with.

Risk-Calibrated Learning (SPEC.md section 1; arXiv:2604.12693) adds the clinical
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
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .severity import SeverityMatrix

__all__ = [
    "RiskCalibratedLoss",
    "FocalLoss",
    "CrossEntropyLoss",
    "class_weights",
    "build_loss",
    "LOSS_NAMES",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


def class_weights(counts: ArrayLike, method: str = "inverse", beta: float = 0.999) -> torch.Tensor:
    """Per-class weights from class counts, normalised to mean 1.

    * ``inverse``: ``w_k ∝ 1 / n_k``;
    * ``effective``: ``w_k ∝ (1 - beta) / (1 - beta^{n_k})`` (Cui et al.,
      "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019).
    """
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    if n.ndim != 1 or len(n) < 2:
        raise ValueError(f"class counts must be a 1-D sequence of >= 2 counts, got shape {tuple(n.shape)}")
    if (n <= 0).any():
        raise ValueError(f"every class needs at least one sample to weight it, got counts {n.tolist()}")
    if method == "inverse":
        w = 1.0 / n
    elif method == "effective":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    else:
        raise ValueError(f"Unknown class weighting {method!r}; use 'inverse' or 'effective'")
    return (w / w.mean()).float()


def _soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    q = F.one_hot(labels, num_classes).float()
    if smoothing > 0:
        q = q * (1.0 - smoothing) + smoothing / num_classes
    return q


class _BaseLoss(nn.Module):
    """Shared checks: ``forward(logits, labels)`` -> scalar mean over the batch;
    ``per_sample(logits, labels)`` -> one value per sample."""

    def __init__(self, class_weight: Optional[ArrayLike] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if class_weight is not None:
            w = torch.as_tensor(np.asarray(class_weight, dtype=np.float32))
            if w.ndim != 1 or not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"class_weight must be a 1-D vector of finite non-negative values, got {w.tolist()}")
            self.register_buffer("class_weight", w)
        else:
            self.class_weight = None

    def _check(self, logits: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None) -> None:
        if logits.ndim != 2:
            raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
        if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels must be (batch,) matching logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        k = logits.shape[1]
        if num_classes is not None and k != num_classes:
            raise ValueError(f"logits have {k} classes but the severity matrix has {num_classes}")
        if self.class_weight is not None and self.class_weight.numel() != k:
            raise ValueError(f"class_weight has {self.class_weight.numel()} entries for {k} classes")

    def base_per_sample(self, log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _weighted(self, per: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_weight is not None:
            per = per * self.class_weight.to(per.device)[labels]
        return per

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(logits, labels)
        labels = labels.long()  # int32 / uint8 labels (numpy, custom collators): one_hot needs int64
        log_p = F.log_softmax(logits.float(), dim=-1)
        return self._weighted(self.base_per_sample(log_p, labels), labels)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, labels).mean()


class CrossEntropyLoss(_BaseLoss):
    """Cross-entropy ``-sum_k q_k log p_k`` with optional label smoothing and class
    weights ``w_y`` (the per-sample loss is multiplied by ``w_y`` and the batch
    mean taken over samples, so gradient accumulation stays exact)."""

    def base_per_sample(self, log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        q = _soft_targets(labels, log_p.shape[1], self.label_smoothing)
        return -(q * log_p).sum(-1)


class FocalLoss(_BaseLoss):
    """Focal loss ``-sum_k q_k (1 - p_k)^gamma log p_k`` (Lin et al., ICCV 2017).

    ``gamma = 0`` is cross-entropy. Class weights play the role of ``alpha``.
    """

    def __init__(self, gamma: float = 2.0, class_weight: Optional[ArrayLike] = None, label_smoothing: float = 0.0) -> None:
        super().__init__(class_weight, label_smoothing)
        if gamma < 0 or not math.isfinite(gamma):
            raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
        self.gamma = float(gamma)

    def base_per_sample(self, log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        q = _soft_targets(labels, log_p.shape[1], self.label_smoothing)
        # (1 - p)^gamma computed from -expm1(log p): exact near p -> 1, never negative.
        one_minus_p = (-torch.expm1(log_p)).clamp_min(0.0)
        return -(q * one_minus_p.pow(self.gamma) * log_p).sum(-1)


def log1m_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(z)_j)`` for every j, stably: ``logsumexp_{k!=j} z_k - logsumexp z``."""
    z = logits.float()
    k = z.shape[-1]
    eye = torch.eye(k, dtype=torch.bool, device=z.device)
    masked = z.unsqueeze(-2).expand(*z.shape[:-1], k, k).masked_fill(eye, float("-inf"))
    return torch.logsumexp(masked, dim=-1) - torch.logsumexp(z, dim=-1, keepdim=True)


class RiskCalibratedLoss(_BaseLoss):
    """``L = B(z, y) + lam * R(p, y)``; see the module docstring for the forms.

    Args:
        severity: a :class:`SeverityMatrix` (or a preset name / K x K array).
        lam: weight ``lambda >= 0`` of the risk term; ``lam=0`` gives exactly ``B``.
        form: ``"expected"`` (default) or ``"log"``.
        base: ``"ce"`` or ``"focal"``.
        gamma: focal exponent (``base="focal"`` only).
        label_smoothing: smoothing of the base term's target.
        class_weight: optional per-class weights of the base term.
        eps: the ``eps`` of the log form.

    Call as ``loss_fn(logits, labels)`` for the batch mean; ``parts(logits, labels)``
    returns the base and risk means separately (for logging).
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
    ) -> None:
        super().__init__(class_weight, label_smoothing)
        if isinstance(severity, (SeverityMatrix, str)):
            m = SeverityMatrix.resolve(severity).matrix
        else:
            m = np.asarray(severity, dtype=np.float64)
            if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.isfinite(m).all() or (m < 0).any():
                raise ValueError(f"severity must be a square matrix of finite non-negative costs, got shape {m.shape}")
        if lam < 0 or not math.isfinite(lam):
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        if form not in ("expected", "log"):
            raise ValueError(f"Unknown risk form {form!r}; use 'expected' or 'log'")
        if base not in ("ce", "focal"):
            raise ValueError(f"Unknown base loss {base!r}; use 'ce' or 'focal'")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.register_buffer("severity_matrix", torch.tensor(np.array(m), dtype=torch.float32))
        self.lam, self.form, self.base, self.eps = float(lam), form, base, float(eps)
        self._base = (
            FocalLoss(gamma, None, label_smoothing) if base == "focal" else CrossEntropyLoss(None, label_smoothing)
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


LOSS_NAMES = ("ce", "weighted_ce", "effective_ce", "label_smoothing", "focal", "rcl", "rcl_log", "rcl_focal")


def build_loss(
    name: str,
    severity: Optional[Union[SeverityMatrix, str]] = None,
    class_counts: Optional[ArrayLike] = None,
    lam: float = 1.0,
    form: Optional[str] = None,
    gamma: float = 2.0,
    label_smoothing: Optional[float] = None,
    beta: float = 0.999,
) -> _BaseLoss:
    """One factory so a config string picks any loss.

    ============== ==========================================================
    name           loss
    ============== ==========================================================
    ce             cross-entropy
    weighted_ce    cross-entropy, inverse-frequency class weights (needs counts)
    effective_ce   cross-entropy, effective-number class weights (needs counts)
    label_smoothing cross-entropy with label smoothing (default 0.1)
    focal          focal loss (``gamma``)
    rcl            risk-calibrated, expected form, CE base (needs severity)
    rcl_log        risk-calibrated, log form, CE base
    rcl_focal      risk-calibrated, ``form`` (default expected), focal base
    ============== ==========================================================
    """
    ls = 0.0 if label_smoothing is None else label_smoothing
    if name == "ce":
        return CrossEntropyLoss(label_smoothing=ls)
    if name in ("weighted_ce", "effective_ce"):
        if class_counts is None:
            raise ValueError(f"loss {name!r} needs class_counts (the training split's label counts)")
        method = "inverse" if name == "weighted_ce" else "effective"
        return CrossEntropyLoss(class_weight=class_weights(class_counts, method, beta), label_smoothing=ls)
    if name == "label_smoothing":
        return CrossEntropyLoss(label_smoothing=0.1 if label_smoothing is None else label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=gamma, label_smoothing=ls)
    if name in ("rcl", "rcl_log", "rcl_focal"):
        if severity is None:
            raise ValueError(f"loss {name!r} needs a severity matrix")
        default_form = "log" if name == "rcl_log" else "expected"
        return RiskCalibratedLoss(
            severity,
            lam=lam,
            form=form or default_form,
            base="focal" if name == "rcl_focal" else "ce",
            gamma=gamma,
            label_smoothing=ls,
        )
    raise ValueError(f"Unknown loss {name!r}; choose one of {list(LOSS_NAMES)}")
