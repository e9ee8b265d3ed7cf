"""Trained cost-aware abstention: SelectiveNet on frozen-backbone embeddings, with the
selective risk counted in clinical cost, against the referral rule on a cross-entropy head trained the
same way.

SelectiveNet (Geifman & El-Yaniv, "SelectiveNet: A Deep Neural Network with an Integrated Reject
Option", ICML 2019) learns a prediction head ``f``, an auxiliary head ``h`` and a selector
``g(x) ∈ (0, 1)`` for a target coverage ``c``::

    L = α · [ Σ_i g_i ℓ_i / Σ_i g_i  +  λ_c · max(0, c − mean_i g_i)² ]  +  (1 − α) · CE(h(x), y)

with ``ℓ_i = CE(f(x_i), y_i)`` (the paper; family ``selectivenet``) or, cost-aware, ``ℓ_i = CE + λ Σ_j
p_ij M[y_i, j]`` (the risk term of RCL inside the selective risk; family ``selectivenet_cost``).
Defaults α = 0.5, λ_c = 32 (the paper's). The control, ``ce``, is a linear head trained with CE by the
same loop (same epochs, optimiser, schedule, seeds).

At coverage ``c`` a model decides the ``ceil(c·N)`` images it ranks safest and refers the rest:
ranked by the expected cost of the decision ``Σ_i p_i M[i, ŷ]`` (the referral rule, every family) or by
``g`` (SelectiveNet families); decided by argmax or the Bayes rule. Which (ranking, decision) a family
uses is chosen on validation (mean selective CER over the runs); the test split is read once, to score
it. Selective CER = critical errors among the decided images / decided images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from rcl_hf.metrics.functional import bayes_risk_decision, expected_costs, softmax
from rcl_hf.severity import SeverityMatrix

__all__ = ["AbstentionConfig", "train_head", "selective_outcomes", "RANKINGS", "DECISIONS", "FAMILIES"]

#: How the images to decide are ranked, and how they are decided.
RANKINGS: Tuple[str, ...] = ("expected_cost", "selector")
DECISIONS: Tuple[str, ...] = ("argmax", "bayes")
#: Trained families: (name, selective loss or None for the plain CE head).
FAMILIES: Tuple[Tuple[str, Any], ...] = (("ce", None), ("selectivenet", "ce"), ("selectivenet_cost", "cost"))


@dataclass(frozen=True)
class AbstentionConfig:
    """Training of every head (identical for the CE control and the SelectiveNet families)."""

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    alpha: float = 0.5
    lambda_c: float = 32.0
    lam: float = 1.0  # weight of the expected-cost term in the cost-aware selective risk
    selector_hidden: int = 64

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.lambda_c < 0 or self.lam < 0:
            raise ValueError(f"lambda_c and lam must be >= 0, got {self.lambda_c} and {self.lam}")


def train_head(x: np.ndarray, y: np.ndarray, severity: SeverityMatrix, selective: Any = None,
               coverage: float = 0.9, seed: int = 0, config: AbstentionConfig = AbstentionConfig()):
    """Train a linear head on embeddings ``x`` (N, D) with labels ``y``; ``selective`` None (CE head),
    ``"ce"`` (SelectiveNet) or ``"cost"`` (cost-aware SelectiveNet) at target ``coverage``.

    Returns ``predict(x) -> (logits (N, K), selector (N,) or None)``.
    """
    import torch
    import torch.nn.functional as F

    if selective not in (None, "ce", "cost"):
        raise ValueError(f"selective must be None, 'ce' or 'cost', got {selective!r}")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    k = severity.num_labels
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need embeddings (N, D) and N labels, got {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in [0, {k}), got [{y.min()}, {y.max()}]")
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    d = x.shape[1]
    f = torch.nn.Linear(d, k)
    heads = torch.nn.ModuleDict({"f": f})
    if selective is not None:
        heads["h"] = torch.nn.Linear(d, k)
        heads["g"] = torch.nn.Sequential(torch.nn.Linear(d, config.selector_hidden), torch.nn.ReLU(),
                                         torch.nn.Linear(config.selector_hidden, 1))
    m = torch.tensor(np.array(severity.matrix), dtype=torch.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(heads.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(y) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    heads.train()
    for _ in range(config.epochs):
        for idx in torch.randperm(len(y), generator=gen).split(config.batch_size):
            xb, yb = xt[idx], yt[idx]
            z = heads["f"](xb)
            ce = F.cross_entropy(z, yb, reduction="none")
            if selective is None:
                loss = ce.mean()
            else:
                ell = ce + config.lam * (z.softmax(1) * m[yb]).sum(1) if selective == "cost" else ce
                g = torch.sigmoid(heads["g"](xb)).squeeze(1)
                risk = (g * ell).sum() / g.sum().clamp_min(1e-6)
                penalty = config.lambda_c * torch.clamp(coverage - g.mean(), min=0.0) ** 2
                loss = config.alpha * (risk + penalty) + (1 - config.alpha) * F.cross_entropy(heads["h"](xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    heads.eval()

    def predict(xs: np.ndarray) -> Tuple[np.ndarray, Any]:
        with torch.no_grad():
            xs_t = torch.from_numpy(np.asarray(xs, dtype=np.float32))
            z = heads["f"](xs_t).double().numpy()
            g = torch.sigmoid(heads["g"](xs_t)).squeeze(1).double().numpy() if "g" in heads else None
        return z, g

    return predict


def selective_outcomes(logits: np.ndarray, selector: Any, labels: np.ndarray, severity: SeverityMatrix,
                       coverage: float, ranking: str, decision: str) -> Dict[str, np.ndarray]:
    """Per-image outcomes of deciding the ``ceil(coverage·N)`` safest images.

    Returns ``{"critical", "correct"}`` (N,) floats scaled by ``N / n_decided`` and zero on referred images,
    so that their means are the selective CER and selective accuracy (the form
    :func:`research.clustered.paired_clustered_bootstrap` resamples by image).
    """
    if ranking not in RANKINGS or decision not in DECISIONS:
        raise ValueError(f"ranking must be one of {RANKINGS} and decision one of {DECISIONS}, got {ranking!r}, "
                         f"{decision!r}")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    p = softmax(np.asarray(logits, dtype=np.float64))
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    d = p.argmax(1) if decision == "argmax" else bayes_risk_decision(p, severity)[0]
    if ranking == "selector":
        if selector is None:
            raise ValueError("ranking 'selector' needs a model with a selector head")
        unsafe = -np.asarray(selector, dtype=np.float64)
    else:
        unsafe = expected_costs(p, severity)[np.arange(n), d]
    k = int(np.ceil(coverage * n - 1e-9))
    decided = np.zeros(n, dtype=bool)
    decided[np.argsort(unsafe, kind="stable")[:k]] = True
    scale = n / k
    return {"critical": severity.critical[y, d] * decided * scale, "correct": (d == y) * decided * scale}


def options(family: str) -> List[Tuple[str, str]]:
    """The (ranking, decision) pairs a family may choose among on validation."""
    rankings = RANKINGS if family != "ce" else ("expected_cost",)
    return [(r, d) for r in rankings for d in DECISIONS]


def choose(val_cer: Dict[Tuple[str, str], Sequence[float]]) -> Tuple[str, str]:
    """The option with the lowest mean validation selective CER (ties: the first in option order)."""
    if not val_cer:
        raise ValueError("no options to choose among")
    return min(val_cer, key=lambda o: (float(np.mean(val_cer[o])), list(val_cer).index(o)))
