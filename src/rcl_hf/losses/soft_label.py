"""Soft labels from the clinical cost (Bertinetto et al., "Making Better Mistakes", CVPR 2020, with the
class distance replaced by the severity matrix)."""

from __future__ import annotations

import math
from typing import Union

import torch

from ..severity import SeverityMatrix
from .base import ArrayLike, _BaseLoss, _matrix_of

__all__ = ["SoftLabelLoss", "severity_soft_targets"]


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
