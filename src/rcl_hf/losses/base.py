"""What every loss shares: per-sample parts in float32 from log-softmax, (smoothed) targets, class
weights, ``log(1 - p_j)`` computed stably, and reading a severity matrix."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..severity import SeverityMatrix

__all__ = ["class_weights", "log1m_softmax", "ArrayLike"]

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
