"""The AUC-margin ranking penalty on the critical-class score (Yuan et al., "Large-scale Robust Deep AUC
Maximization", ICCV 2021)."""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..severity import SeverityMatrix

__all__ = ["AUCMarginLoss", "auc_margin_penalty"]


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
