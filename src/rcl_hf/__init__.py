"""rcl_hf: Risk-Calibrated Learning for the Hugging Face stack.

Public API (see README.md):

* :class:`SeverityMatrix` — clinical costs and the critical mask;
* :class:`RiskCalibratedLoss`, :class:`FocalLoss`, :func:`build_loss` — losses;
* :mod:`rcl_hf.metrics` — Critical Error Rate and companions (functional + `evaluate`);
* :class:`RiskCalibratedTrainer`, :class:`RiskArguments` — the Trainer;
* :mod:`rcl_hf.data` — the four datasets and the embedded synthetic default;
* :mod:`rcl_hf.models`, :mod:`rcl_hf.inference`, :mod:`rcl_hf.hub` — models, prediction, the Hub.
"""

from . import metrics
from .losses import CrossEntropyLoss, FocalLoss, RiskCalibratedLoss, build_loss, class_weights
from .severity import SeverityMatrix
from .trainer import RiskArguments, RiskCalibratedTrainer

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import rcl_hf` light for the metric module and scripts
    if name in ("load_model", "predict"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'rcl_hf' has no attribute {name!r}")


__all__ = [
    "CrossEntropyLoss",
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
