"""Losses, one family per module (timm's layout), each with its formula and paper in the docstring.

* :mod:`.risk_calibrated`: the risk-calibrated loss ``L = B(z, y) + λ·R(p, y)`` (expected and log forms) and
  its deferred variant (risk term from a given epoch on);
* :mod:`.cross_entropy`: cross-entropy with class weights / label smoothing, logit-adjusted cross-entropy;
* :mod:`.focal`: focal loss;
* :mod:`.soft_label`: cross-entropy on cost-derived soft labels;
* :mod:`.auc_margin`: the AUC-margin penalty on the critical-class score (a wrapper);
* :mod:`.factory`: :func:`build_loss`, the one place a config string becomes a loss.

See ``docs/loss.md`` for the definitions the code relies on.
"""

from .auc_margin import AUCMarginLoss, auc_margin_penalty
from .base import class_weights, log1m_softmax
from .cross_entropy import LogitAdjustedLoss, WeightedCrossEntropyLoss
from .factory import LOSS_NAMES, build_loss
from .focal import FocalLoss
from .risk_calibrated import DeferredRiskLoss, RiskCalibratedLoss, loss_epoch_callback
from .soft_label import SoftLabelLoss, severity_soft_targets

__all__ = [
    "RiskCalibratedLoss",
    "DeferredRiskLoss",
    "FocalLoss",
    "WeightedCrossEntropyLoss",
    "LogitAdjustedLoss",
    "SoftLabelLoss",
    "AUCMarginLoss",
    "class_weights",
    "log1m_softmax",
    "severity_soft_targets",
    "auc_margin_penalty",
    "build_loss",
    "LOSS_NAMES",
    "loss_epoch_callback",
]
