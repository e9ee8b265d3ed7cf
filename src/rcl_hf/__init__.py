"""rcl_hf: Risk-Calibrated Learning for the Hugging Face stack.

Public API (see README.md):

* :class:`SeverityMatrix` — clinical costs and the critical mask;
* :class:`RiskCalibratedLoss`, :class:`FocalLoss`, :func:`build_loss` — losses;
* :mod:`rcl_hf.metrics` — Critical Error Rate and companions (functional + `evaluate`);
* :class:`RiskCalibratedTrainer`, :class:`RiskArguments` — the Trainer;
* :mod:`rcl_hf.data` — the four datasets and the embedded synthetic default;
* :class:`DecisionLayer` — the one object every answer goes through (rule, certified referral, OOD guard);
* :mod:`rcl_hf.calibration` — fitting and certifying it (``risk_calibration.json``);
* :mod:`rcl_hf.models`, :mod:`rcl_hf.inference`, :mod:`rcl_hf.hub` — models, prediction, the Hub;
* the ``risk-aware-image-classification`` task of ``transformers.pipeline`` (:mod:`rcl_hf.pipeline`).
"""

from . import metrics
from .losses import WeightedCrossEntropyLoss, FocalLoss, RiskCalibratedLoss, build_loss, class_weights
from .severity import SeverityMatrix

__version__ = "0.1.0"

from .pipeline_registration import install as _install_pipeline_task

_install_pipeline_task()  # pipeline("risk-aware-image-classification", ...) once transformers.pipelines loads


_LAZY = {"load_model": "inference", "predict": "inference", "DecisionLayer": "decision_layer",
         "Prediction": "decision_layer",
         "RiskArguments": "trainer", "RiskCalibratedTrainer": "trainer"}
_LAZY_MODULES = ("calibration", "data", "hub", "inference", "losses", "models")


def __getattr__(name):  # lazy: `import rcl_hf` stays light (no transformers.Trainer) for the Space and metric
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _LAZY_MODULES:  # `rcl_hf.data.severity_for(...)` works after a plain `import rcl_hf`
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rcl_hf' has no attribute {name!r}")


__all__ = [
    "DecisionLayer",
    "Prediction",
    "WeightedCrossEntropyLoss",
    "FocalLoss",
    "RiskArguments",
    "RiskCalibratedLoss",
    "RiskCalibratedTrainer",
    "SeverityMatrix",
    "build_loss",
    "class_weights",
    "load_model",
    "metrics",
    "predict",
]
