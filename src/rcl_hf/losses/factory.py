"""``build_loss(name, ...)``: one factory so a config string picks any loss of this package."""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch.nn as nn

from ..severity import SeverityMatrix
from .auc_margin import AUCMarginLoss
from .base import ArrayLike, _BaseLoss, class_weights
from .cross_entropy import LogitAdjustedLoss, WeightedCrossEntropyLoss
from .focal import FocalLoss
from .risk_calibrated import DeferredRiskLoss, RiskCalibratedLoss
from .soft_label import SoftLabelLoss

__all__ = ["build_loss", "LOSS_NAMES"]

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
