"""Clinical metrics: the functional core and the `evaluate` module.

``METRIC_PATH`` is the folder of the `evaluate` metric, so that
``evaluate.load(rcl_hf.metrics.METRIC_PATH)`` works offline; ``ECE_METRIC_PATH`` is the
expected-calibration-error metric's folder.
"""

import os

from .functional import (
    bayes_risk_decision,
    confusion_matrix,
    critical_error_rate,
    expected_costs,
    metrics_from_confusion,
    relative_safety_improvement,
    softmax,
)
from .trainer_metrics import make_compute_metrics

METRIC_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "critical_error_rate")
#: The folder of the expected-calibration-error `evaluate` metric (``evaluate.load(ECE_METRIC_PATH)``).
ECE_METRIC_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expected_calibration_error")

__all__ = [
    "ECE_METRIC_PATH",
    "METRIC_PATH",
    "bayes_risk_decision",
    "confusion_matrix",
    "critical_error_rate",
    "expected_costs",
    "make_compute_metrics",
    "metrics_from_confusion",
    "relative_safety_improvement",
    "softmax",
]
