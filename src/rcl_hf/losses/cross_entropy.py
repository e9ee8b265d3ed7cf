"""Cross-entropy with class weights and label smoothing, and logit-adjusted cross-entropy (Menon et al.,
"Long-tail learning via logit adjustment", ICLR 2021)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import ArrayLike, _BaseLoss

__all__ = ["WeightedCrossEntropyLoss", "LogitAdjustedLoss"]


class WeightedCrossEntropyLoss(_BaseLoss):
    """Cross-entropy ``-sum_k q_k log p_k`` with optional label smoothing and class
    weights ``w_y`` (the per-sample loss is multiplied by ``w_y`` and the batch
    mean taken over samples, so gradient accumulation stays exact; torch's own
    ``weight=`` would instead divide by the summed weights of the batch).  The
    per-sample term is :func:`torch.nn.functional.cross_entropy` with ``label_smoothing``."""

    def base_per_sample(self, log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # log_softmax(log p) = log p, so cross_entropy on log-probabilities is the CE of p
        return F.cross_entropy(log_p, labels, reduction="none", label_smoothing=self.label_smoothing)


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
