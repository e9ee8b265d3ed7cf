"""Loading a trained model and making risk-aware predictions.

For probabilities ``p`` over K classes and the model's severity matrix ``M``:

* argmax decision ``argmax_j p_j``;
* Bayes-risk decision ``argmin_j Σ_i p_i M[i, j]`` and its expected cost
  ``r = min_j Σ_i p_i M[i, j]`` (SPEC.md section 1);
* critical mass ``Σ_{i positive} p_i``: the probability that the case belongs to
  a class whose miss would be critical;
* referral: ``refer = r > τ`` ("refer to a specialist").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch

from .hub.errors import offline_error
from .models import severity_from_config
from .severity import SeverityMatrix

__all__ = ["Prediction", "load_model", "predict", "predict_proba", "risk_summary", "DEFAULT_REFERRAL_THRESHOLD"]

DEFAULT_REFERRAL_THRESHOLD = 0.1


@dataclass
class Prediction:
    """Risk-aware prediction for a batch of N images (arrays have N rows)."""

    labels: List[str]
    probabilities: np.ndarray  # (N, K)
    argmax: np.ndarray  # (N,)
    bayes_decision: np.ndarray  # (N,)
    expected_cost: np.ndarray  # (N,) expected cost of the Bayes decision
    argmax_expected_cost: np.ndarray  # (N,) expected cost of the argmax decision
    critical_mass: np.ndarray  # (N,)
    refer: np.ndarray  # (N,) bool
    threshold: float

    def as_records(self) -> List[dict]:
        """One plain dict per image (JSON-ready)."""
        out = []
        for n in range(len(self.argmax)):
            out.append(
                {
                    "probabilities": {label: float(p) for label, p in zip(self.labels, self.probabilities[n])},
                    "argmax": self.labels[int(self.argmax[n])],
                    "bayes_decision": self.labels[int(self.bayes_decision[n])],
                    "expected_cost": float(self.expected_cost[n]),
                    "critical_mass": float(self.critical_mass[n]),
                    "refer": bool(self.refer[n]),
                }
            )
        return out


def risk_summary(probs: np.ndarray, severity: SeverityMatrix, threshold: float = DEFAULT_REFERRAL_THRESHOLD) -> Prediction:
    """Decisions, costs and referral flags from probabilities ``(N, K)``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.shape[1] != severity.num_labels:
        raise ValueError(f"probabilities have {p.shape[1]} classes, the severity matrix {severity.num_labels}")
    if not 0 <= threshold:
        raise ValueError(f"referral threshold must be >= 0, got {threshold}")
    expected = p @ severity.matrix  # (N, K) cost of deciding j
    bayes = expected.argmin(1)
    arg = p.argmax(1)
    rows = np.arange(len(p))
    cost = expected[rows, bayes]
    return Prediction(
        labels=list(severity.labels),
        probabilities=p,
        argmax=arg,
        bayes_decision=bayes,
        expected_cost=cost,
        argmax_expected_cost=expected[rows, arg],
        critical_mass=p[:, severity.positive_rows].sum(1),
        refer=cost > threshold,
        threshold=float(threshold),
    )


def load_model(name_or_path: str, device: Union[str, torch.device] = "cpu"):
    """Load a classifier saved by rcl_hf from a folder, a Hub id, or the local Hub cache.

    Works offline (``HF_HUB_OFFLINE=1``) when the id is in the cache; raises
    :class:`rcl_hf.hub.errors.HubUnavailableError` with one clear line otherwise.
    The returned model is in eval mode and has ``.severity`` (a
    :class:`SeverityMatrix`) and ``.image_processor`` attributes.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    name = os.fspath(name_or_path)
    if not os.path.isdir(name) and (name.count("/") != 1 or name.startswith((".", "/"))):
        raise offline_error(name, FileNotFoundError(name))
    try:
        model = AutoModelForImageClassification.from_pretrained(name_or_path)
    except OSError as err:
        raise offline_error(name_or_path, err) from None
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{name_or_path!r} has no usable image processor (preprocessor_config.json): {err}") from None
    model.severity = severity_from_config(model.config)
    model.image_processor = processor
    return model.to(device).eval()


def predict_proba(model: Any, images: Sequence[Any], image_processor: Any = None, batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, K)`` for PIL images (converted to RGB)."""
    processor = image_processor or getattr(model, "image_processor", None)
    if processor is None:
        raise ValueError("predict needs an image processor: load the model with rcl_hf.load_model or pass one")
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
            logits = model(pixel_values=pixel_values).logits.float()
            out.append(torch.softmax(logits, -1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels))


def predict(
    model: Any,
    images: Union[Any, Sequence[Any]],
    threshold: float = DEFAULT_REFERRAL_THRESHOLD,
    severity: Optional[SeverityMatrix] = None,
    image_processor: Any = None,
) -> Prediction:
    """Probabilities, argmax and Bayes-risk decisions, expected cost and referral flags.

    Args:
        model: from :func:`load_model` (or any image classifier plus ``severity``
            and ``image_processor``).
        images: a PIL image or a sequence of them.
        threshold: referral threshold τ on the Bayes decision's expected cost.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    sev = severity or getattr(model, "severity", None) or severity_from_config(model.config)
    return risk_summary(predict_proba(model, images, image_processor), sev, threshold)
