"""The decision layer, calibrated and certified on a held-out calibration split.

* :mod:`.fit` — :func:`calibrate`: temperature, decision rule and a certified referral threshold;
* :mod:`.risk_control` — Learn then Test (fixed sequence, binomial / Hoeffding–Bentkus p-values)
  and conformal risk control;
* :mod:`.per_class` — per-disease certificates (one shared threshold, an intersection–union test);
* :mod:`.planner` — how many calibration units of each class a certificate needs;
* :mod:`.record` — :class:`RiskCalibration`, the versioned ``risk_calibration.json``;
* :mod:`.drift` — does a batch show a harmful shift, one that may break the certificate?
* :mod:`.model_folder` — calibrating a saved model folder from a dataset split (``rcl-calibrate``).
"""

from .drift import DriftReport, check_drift
from .fit import (DEFAULT_ALPHA, DEFAULT_DELTA, DEFAULT_RISK_KIND, calibrate, check_calibration_groups, evaluate_calibration,
                  summarize_decisions)
from .record import RISK_CALIBRATION_FILE, RISK_DESCRIPTIONS, RiskCalibration
from .risk_control import METHODS, RISK_KINDS, smallest_certifiable_alpha

__all__ = [
    "calibrate",
    "evaluate_calibration",
    "summarize_decisions",
    "check_calibration_groups",
    "RiskCalibration",
    "RISK_CALIBRATION_FILE",
    "RISK_DESCRIPTIONS",
    "RISK_KINDS",
    "METHODS",
    "DEFAULT_ALPHA",
    "DEFAULT_DELTA",
    "DEFAULT_RISK_KIND",
    "smallest_certifiable_alpha",
    "DriftReport",
    "check_drift",
]
