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
    "WeightedCrossEntropyLoss",
    "class_weights",
    "build_loss",
    "LOSS_NAMES",
    "LogitAdjustedLoss", "SoftLabelLoss", "severity_soft_targets", "AUCMarginLoss", "auc_margin_penalty",
    "DeferredRiskLoss", "loss_epoch_callback",
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


class WeightedCrossEntropyLoss(_BaseLoss):
    """Cross-entropy ``-sum_k q_k log p_k`` with optional label smoothing and class
    weights ``w_y`` (the per-sample loss is multiplied by ``w_y`` and the batch
    mean taken over samples, so gradient accumulation stays exact; torch's own
    ``weight=`` would instead divide by the summed weights of the batch).  The
    per-sample term is :func:`torch.nn.functional.cross_entropy` with ``label_smoothing``."""

    def base_per_sample(self, log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # log_softmax(log p) = log p, so cross_entropy on log-probabilities is the CE of p
        return F.cross_entropy(log_p, labels, reduction="none", label_smoothing=self.label_smoothing)


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


def _matrix_of(severity: Union[SeverityMatrix, str, ArrayLike]) -> np.ndarray:
    if isinstance(severity, (SeverityMatrix, str)):
        return np.asarray(SeverityMatrix.resolve(severity).matrix, dtype=np.float64)
    m = np.asarray(severity, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.isfinite(m).all() or (m < 0).any():
        raise ValueError(f"severity must be a square matrix of finite non-negative costs, got shape {m.shape}")
    return m


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


LOSS_NAMES = ("ce", "weighted_ce", "effective_ce", "label_smoothing", "focal", "rcl", "rcl_log", "rcl_focal",
              "logit_adjusted", "soft_label", "rcl_soft")


def build_loss(
    name: str,
    severity: Optional[Union[SeverityMatrix, str]] = None,
    class_counts: Optional[ArrayLike] = None,
    lam: float = 1.0,
    form: Optional[str] = None,
    gamma: float = 2.0,
    label_smoothing: Optional[float] = None,
    beta: float = 0.999,
    tau: float = 1.0,
    soft_label_beta: float = 1.0,
    risk_start_epoch: float = 0.0,
    aucm_weight: float = 0.0,
    aucm_margin: float = 1.0,
) -> nn.Module:
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
    logit_adjusted CE on ``z + tau·log π`` (Menon et al. 2021; needs counts)
    soft_label     CE on soft labels ``q_j ∝ exp(-soft_label_beta·M[y, j])``
    rcl_soft       risk-calibrated, expected form, soft-label base
    ============== ==========================================================

    Options for any loss (defaults: off): ``risk_start_epoch > 0`` defers the risk
    term of an rcl loss to that epoch (:class:`DeferredRiskLoss`); ``aucm_weight > 0``
    adds the AUC-margin penalty on the critical-class score (:class:`AUCMarginLoss`).
    """
    loss = _build_base(name, severity, class_counts, lam, form, gamma, label_smoothing, beta, tau, soft_label_beta,
                       risk_start_epoch)
    if aucm_weight < 0 or not math.isfinite(aucm_weight):
        raise ValueError(f"aucm_weight must be finite and >= 0, got {aucm_weight}")
    if aucm_weight > 0:
        if severity is None:
            raise ValueError("aucm_weight needs a severity matrix (its critical classes define the AUC score)")
        loss = AUCMarginLoss(loss, severity, aucm_weight, aucm_margin)
    return loss


def _build_base(name: str, severity: Optional[Union[SeverityMatrix, str]], class_counts: Optional[ArrayLike],
                lam: float, form: Optional[str], gamma: float, label_smoothing: Optional[float], beta: float,
                tau: float, soft_label_beta: float, risk_start_epoch: float) -> _BaseLoss:
    if risk_start_epoch > 0 and not name.startswith("rcl"):
        raise ValueError(f"risk_start_epoch defers the risk term of an rcl loss; loss {name!r} has none")
    ls = 0.0 if label_smoothing is None else label_smoothing
    if name == "ce":
        return WeightedCrossEntropyLoss(label_smoothing=ls)
    if name in ("weighted_ce", "effective_ce"):
        if class_counts is None:
            raise ValueError(f"loss {name!r} needs class_counts (the training split's label counts)")
        method = "inverse" if name == "weighted_ce" else "effective"
        return WeightedCrossEntropyLoss(class_weight=class_weights(class_counts, method, beta), label_smoothing=ls)
    if name == "label_smoothing":
        return WeightedCrossEntropyLoss(label_smoothing=0.1 if label_smoothing is None else label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=gamma, label_smoothing=ls)
    if name == "logit_adjusted":
        if class_counts is None:
            raise ValueError("loss 'logit_adjusted' needs class_counts (the training split's label counts)")
        return LogitAdjustedLoss(class_counts, tau=tau, label_smoothing=ls)
    if name == "soft_label":
        if severity is None:
            raise ValueError("loss 'soft_label' needs a severity matrix")
        return SoftLabelLoss(severity, soft_label_beta)
    if name in ("rcl", "rcl_log", "rcl_focal", "rcl_soft"):
        if severity is None:
            raise ValueError(f"loss {name!r} needs a severity matrix")
        default_form = "log" if name == "rcl_log" else "expected"
        kwargs = dict(lam=lam, form=form or default_form, base={"rcl_focal": "focal", "rcl_soft": "soft"}.get(name, "ce"),
                      gamma=gamma, label_smoothing=ls, soft_label_beta=soft_label_beta)
        if risk_start_epoch > 0:
            n = None if class_counts is None else int(np.sum(np.asarray(class_counts)))
            return DeferredRiskLoss(severity, start_epoch=risk_start_epoch, samples_per_epoch=n, **kwargs)
        return RiskCalibratedLoss(severity, **kwargs)
    raise ValueError(f"Unknown loss {name!r}; choose one of {list(LOSS_NAMES)}")


# ----------------------------------------------------------------------------- issue 13 methods
class LogitAdjustedLoss(WeightedCrossEntropyLoss):
    """Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021)::

        L(z, y) = -log softmax(z + tau·log π)_y,     π = training class frequencies

    Prediction stays ``argmax_j z_j``: rare classes must win by a margin ``tau·log(π_y'/π_y)``
    during training, which moves the decision boundary towards the frequent classes.
    """

    def __init__(self, class_counts: ArrayLike, tau: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(None, label_smoothing)
        n = np.asarray(class_counts, dtype=np.float64)
        if n.ndim != 1 or len(n) < 2 or (n <= 0).any():
            raise ValueError(f"class_counts must be >= 2 positive counts, got {n.tolist()}")
        if not math.isfinite(tau):
            raise ValueError(f"tau must be finite, got {tau}")
        self.tau = float(tau)
        self.register_buffer("log_prior", torch.tensor(np.log(n / n.sum()), dtype=torch.float32))

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(logits, labels, self.log_prior.numel())
        return super().per_sample(logits.float() + self.tau * self.log_prior.to(logits.device), labels)


def severity_soft_targets(severity: Union[SeverityMatrix, str, ArrayLike], beta: float) -> torch.Tensor:
    """``Q[y, j] = exp(-beta·M[y, j]) / Σ_k exp(-beta·M[y, k])`` (Bertinetto et al., "Making Better
    Mistakes", CVPR 2020, soft labels with the class distance replaced by the clinical cost)."""
    if beta <= 0 or not math.isfinite(beta):
        raise ValueError(f"soft_label_beta must be finite and > 0, got {beta}")
    m = torch.tensor(_matrix_of(severity), dtype=torch.float64)
    return torch.softmax(-beta * m, dim=1).float()


class SoftLabelLoss(_BaseLoss):
    """Cross-entropy against the cost-derived soft labels ``-Σ_j Q[y, j] log p_j`` (see
    :func:`severity_soft_targets`): mass moves to the classes whose confusion is cheap, so
    the network learns to place its doubt on low-cost mistakes."""

    def __init__(self, severity: Union[SeverityMatrix, str, ArrayLike], beta: float = 1.0) -> None:
        super().__init__(None, 0.0)
        self.beta = float(beta)
        self.register_buffer("targets", severity_soft_targets(severity, beta))

    def base_per_sample(self, log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if log_p.shape[1] != self.targets.shape[0]:
            raise ValueError(f"logits have {log_p.shape[1]} classes but the severity matrix has {self.targets.shape[0]}")
        return -(self.targets.to(log_p.device)[labels] * log_p).sum(-1)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def auc_margin_penalty(score: torch.Tensor, positive: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The AUC-margin (AUC-M) objective of Yuan et al., "Large-scale Robust Deep AUC Maximization",
    ICCV 2021 (LibAUC's ``AUCMLoss``), with its inner problems solved in closed form on the batch::

        min_{a,b} max_{α>=0} E[(h-a)²|+] + E[(h-b)²|-] + 2α(m - E[h|+] + E[h|-]) - α²
          = Var(h|+) + Var(h|-) + max(0, m - (E[h|+] - E[h|-]))²

    (``a = E[h|+]``, ``b = E[h|-]``, ``α = max(0, m - E[h|+] + E[h|-])``). Zero for a batch
    without positives or without negatives.
    """
    pos = positive.bool()
    if pos.all() or not pos.any():
        return score.sum() * 0.0
    hp, hn = score[pos].float(), score[~pos].float()
    gap = margin - (hp.mean() - hn.mean())
    return hp.var(unbiased=False) + hn.var(unbiased=False) + torch.clamp(gap, min=0.0) ** 2


class AUCMarginLoss(nn.Module):
    """``loss(z, y) + weight · AUC-M(h, y ∈ S)`` with the critical-class score
    ``h = Σ_{j∈S} softmax(z)_j`` and ``S`` the classes whose miss is critical
    (:meth:`SeverityMatrix.positive_rows`; MEL, BCC, AKIEC on ISIC). The ranking term acts on what
    a threshold rule cannot change: the order of images by their critical-class score."""

    def __init__(self, loss: nn.Module, severity: Union[SeverityMatrix, str], weight: float = 1.0,
                 margin: float = 1.0) -> None:
        super().__init__()
        sev = SeverityMatrix.resolve(severity)
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"aucm_weight must be finite and >= 0, got {weight}")
        if not margin > 0 or not math.isfinite(margin):
            raise ValueError(f"aucm_margin must be finite and > 0, got {margin}")
        critical = np.asarray(sev.positive_rows, dtype=bool)
        if not critical.any() or critical.all():
            raise ValueError("AUCMarginLoss needs a severity matrix with some, but not all, critical classes")
        self.loss, self.weight, self.margin = loss, float(weight), float(margin)
        self.register_buffer("critical_classes", torch.tensor(critical))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        base = self.loss(logits, labels)
        if self.weight == 0:
            return base
        crit = self.critical_classes.to(logits.device)
        score = (F.softmax(logits.float(), dim=-1) * crit).sum(-1)
        return base + self.weight * auc_margin_penalty(score, crit[labels.long()], self.margin)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, margin={self.margin}"


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
