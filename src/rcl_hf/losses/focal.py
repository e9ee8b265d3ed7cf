"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017):
``FL = -sum_k q_k * (1 - p_k)^gamma * log p_k`` with ``q`` the (smoothed) target."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .base import ArrayLike, _BaseLoss, _soft_targets

__all__ = ["FocalLoss"]


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
