"""Loading a trained model and making risk-aware predictions.

For probabilities ``p`` over K classes and the model's severity matrix ``M``:

* argmax decision ``argmax_j p_j``;
* Bayes-risk decision ``argmin_j Σ_i p_i M[i, j]`` and its expected cost
  ``r = min_j Σ_i p_i M[i, j]`` (docs/decision.md);
* critical mass ``Σ_{i positive} p_i``: the probability that the case belongs to
  a class whose miss would be critical;
* the **decision layer**: when the model folder carries ``risk_calibration.json``
  (:mod:`rcl_hf.calibration`), the decision is the calibrated one — temperature ``T``, the
  decision rule chosen on validation, and the referral threshold certified there
  (``refer = r > τ̂``, with ``r`` the expected cost of the decision taken); without a calibration,
  the Bayes decision with a hand-set ``τ`` (:data:`DEFAULT_REFERRAL_THRESHOLD`), and no guarantee.
  An explicit ``threshold`` overrides the certified one, and the prediction then says that the
  guarantee no longer holds;
* drift: for a batch of at least 20 images, :func:`rcl_hf.calibration.check_drift` tells whether it
  still looks like the calibration data (share of OOD flags, shift of the referral scores);
* out-of-distribution guard (:mod:`rcl_hf.ood`, when the model folder has
  ``ood_guard.safetensors``): ``ood_score`` (Mahalanobis distance of the penultimate
  embedding) and ``out_of_distribution = ood_score > τ_ood``; ``None`` without a guard.

Inputs: PIL images, paths (``str``/``Path``), ``bytes``, numpy arrays ``(H, W)``,
``(H, W, 3|4)`` (uint8, or floats in [0, 1]), and http(s) URLs (fetched with
``transformers.image_utils.load_image``; offline they fail with a clear
``ValueError``). Files are decoded by :func:`rcl_hf.data.open_image_rgb`.
Softmax: ``torch.softmax`` on the logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch

from .calibration.drift import DriftReport, check_drift
from .calibration.record import RISK_CALIBRATION_FILE, RiskCalibration
from .offline import offline_error
from .ood import OOD_GUARD_FILE, OODGuard
from .models import severity_for_model, severity_from_config
from .severity import SeverityMatrix

__all__ = ["Prediction", "load_model", "predict", "predict_proba", "risk_summary", "check_threshold", "as_rgb_image",
           "forward_images", "attach_decision_layer", "DEFAULT_REFERRAL_THRESHOLD", "UNCERTIFIED_NOTE", "OVERRIDE_NOTE"]

DEFAULT_REFERRAL_THRESHOLD = 0.1
UNCERTIFIED_NOTE = ("this model carries no risk calibration: the referral threshold is hand-set and nothing is "
                    "certified (calibrate it with rcl-calibrate)")
OVERRIDE_NOTE = "an explicit referral threshold overrides the certified one: the guarantee no longer holds"


@dataclass
class Prediction:
    """Risk-aware prediction for a batch of N images (arrays have N rows)."""

    labels: List[str]
    probabilities: np.ndarray  # (N, K), calibrated (softmax(z / T)) when the model carries a calibration
    argmax: np.ndarray  # (N,)
    bayes_decision: np.ndarray  # (N,)
    expected_cost: np.ndarray  # (N,) expected cost of the decision taken (the referral score)
    argmax_expected_cost: np.ndarray  # (N,) expected cost of the argmax decision
    critical_mass: np.ndarray  # (N,)
    refer: np.ndarray  # (N,) bool
    threshold: float
    ood_score: Optional[np.ndarray] = None  # (N,) Mahalanobis score; None when the model has no OOD guard
    out_of_distribution: Optional[np.ndarray] = None  # (N,) bool; None when the model has no OOD guard
    ood_threshold: Optional[float] = None
    decision: Optional[np.ndarray] = None  # (N,) the decision layer's decision (calibrated rule, else Bayes)
    certified: bool = False  # the referral follows a certified threshold
    calibration: Optional[RiskCalibration] = None
    note: Optional[str] = None  # why the answer is not certified, when it is not
    drift: Optional[DriftReport] = None

    def __post_init__(self) -> None:
        if self.decision is None:
            self.decision = self.bayes_decision

    def as_records(self) -> List[dict]:
        """One plain dict per image (JSON-ready)."""
        out = []
        for n in range(len(self.argmax)):
            out.append(
                {
                    "probabilities": {label: float(p) for label, p in zip(self.labels, self.probabilities[n])},
                    "decision": self.labels[int(self.decision[n])],
                    "argmax": self.labels[int(self.argmax[n])],
                    "bayes_decision": self.labels[int(self.bayes_decision[n])],
                    "expected_cost": float(self.expected_cost[n]),
                    "critical_mass": float(self.critical_mass[n]),
                    "refer": bool(self.refer[n]),
                    "certified": bool(self.certified),
                    "ood_score": None if self.ood_score is None else float(self.ood_score[n]),
                    "out_of_distribution": None if self.out_of_distribution is None else bool(self.out_of_distribution[n]),
                }
            )
        return out


def risk_summary(probs: np.ndarray, severity: SeverityMatrix, threshold: Optional[float] = None,
                 calibration: Optional[RiskCalibration] = None) -> Prediction:
    """Decisions, costs and referral flags from probabilities ``(N, K)``.

    With a ``calibration``, its temperature, rule and certified threshold decide (an explicit
    ``threshold`` overrides the last, and the result is then not certified); without one, the Bayes
    decision (:func:`rcl_hf.metrics.functional.bayes_risk_decision`, the project's one Bayes rule)
    and ``threshold`` (default :data:`DEFAULT_REFERRAL_THRESHOLD`).
    """
    from .metrics.functional import bayes_risk_decision, expected_costs

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.shape[1] != severity.num_labels:
        raise ValueError(f"probabilities have {p.shape[1]} classes, the severity matrix {severity.num_labels}")
    t = None if threshold is None else check_threshold(threshold)
    if calibration is not None:
        p, decision, cost, refer = calibration.decide(p, severity, t)
        certified = t is None and not calibration.refers_everything
        note = OVERRIDE_NOTE if t is not None else (calibration.notes[0] if calibration.notes else None)
        t = calibration.threshold if t is None else t
    else:
        t = DEFAULT_REFERRAL_THRESHOLD if t is None else t
        decision, cost = bayes_risk_decision(p, severity)
        refer, certified, note = cost > t, False, UNCERTIFIED_NOTE
    bayes = bayes_risk_decision(p, severity)[0]
    arg = p.argmax(1)
    return Prediction(
        labels=list(severity.labels),
        probabilities=p,
        argmax=arg,
        bayes_decision=bayes,
        expected_cost=cost,
        argmax_expected_cost=expected_costs(p, severity)[np.arange(len(arg)), arg],  # cost of acting on argmax
        critical_mass=p[:, severity.positive_rows].sum(1),
        refer=refer,
        threshold=float(t),
        decision=decision,
        certified=certified,
        calibration=calibration,
        note=note,
    )


def check_threshold(threshold: Any) -> float:
    """The referral threshold as a finite float >= 0, else a ``ValueError`` that says what was given."""
    if isinstance(threshold, bool):
        raise ValueError(f"The referral threshold must be a number, got {threshold!r}.")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"The referral threshold must be a number, got {threshold!r}.") from None
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"The referral threshold must be a finite number >= 0, got {threshold!r}.")
    return t


def load_model(name_or_path: str, device: Union[str, torch.device] = "cpu", severity: Any = None):
    """Load a classifier saved by rcl_hf from a folder, a Hub id, or the local Hub cache.

    Works offline (``HF_HUB_OFFLINE=1``) when the id is in the cache; raises
    :class:`rcl_hf.offline.HubUnavailableError` with one clear line otherwise.
    The returned model is in eval mode and has ``.severity`` (a
    :class:`SeverityMatrix`), ``.image_processor`` and ``.ood_guard`` (an
    :class:`rcl_hf.ood.OODGuard`, or ``None`` when the folder has none) attributes.
    ``.risk_calibration`` is the folder's :class:`rcl_hf.calibration.RiskCalibration` (``None``
    without ``risk_calibration.json``). ``severity`` (a preset, JSON path or :class:`SeverityMatrix`,
    matched to the model's labels by name) is for models trained without rcl_hf, whose config
    carries none.
    The image processor is the class named in ``preprocessor_config.json``
    (``image_processor_type``, e.g. the ``ViTImageProcessor`` that training saved), not
    the one ``AutoImageProcessor`` picks from the model type: for timm models that is
    ``TimmWrapperImageProcessor`` (bicubic, no torchvision variant), which preprocesses
    differently from training and printed "Requested torchvision backend is not available".
    """
    from transformers import AutoModelForImageClassification

    name = os.fspath(name_or_path)
    if not os.path.isdir(name) and (name.count("/") != 1 or name.startswith((".", "/"))):
        raise offline_error(name, FileNotFoundError(name))
    try:
        model = AutoModelForImageClassification.from_pretrained(name_or_path)
    except OSError as err:
        raise offline_error(name_or_path, err) from None
    try:
        processor = _load_processor(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{name_or_path!r} has no usable image processor (preprocessor_config.json): {err}") from None
    model.image_processor = processor
    attach_decision_layer(model, name, severity)
    return model.to(device).eval()


def attach_decision_layer(model: Any, name: str, severity: Any = None) -> Any:
    """Set ``model.severity``, ``model.ood_guard`` and ``model.risk_calibration`` from the model folder
    (or the local Hub cache for an id); shared by :func:`load_model` and the pipeline task."""
    if severity is not None:
        model.severity = severity_for_model([model.config.id2label[i] for i in range(model.config.num_labels)], severity)
    else:
        model.severity = severity_from_config(model.config)
    model.ood_guard = OODGuard.load(name) if os.path.isdir(name) else _hub_guard(name, OOD_GUARD_FILE, OODGuard.load)
    model.risk_calibration = (RiskCalibration.load(name) if os.path.isdir(name)
                              else _hub_guard(name, RISK_CALIBRATION_FILE, RiskCalibration.load))
    if model.risk_calibration is not None:
        model.risk_calibration.check_severity(model.severity)
    return model


def _load_processor(name_or_path: str) -> Any:
    """The image processor class the folder names (``image_processor_type``), else ``AutoImageProcessor``."""
    import transformers
    from transformers.image_processing_utils import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    cls = getattr(transformers, str(config.get("image_processor_type") or ""), None)
    if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
        return cls.from_pretrained(name_or_path)
    return transformers.AutoImageProcessor.from_pretrained(name_or_path)


def _hub_guard(name: str, filename: str, load: Any) -> Any:
    """A side file of a Hub model (OOD guard, risk calibration) from the local cache, loaded with ``load``
    (never downloads at run time beyond the model itself); ``None`` when the cache has none."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(name, filename)
    except Exception:  # noqa: BLE001 - a malformed id simply has no such file
        return None
    return load(path) if isinstance(path, str) else None


def as_rgb_image(image: Any, max_pixels: Optional[int] = None) -> Any:
    """One input as an RGB ``PIL.Image``: a PIL image, path, bytes, numpy array or http(s) URL."""
    from PIL import Image

    from .data import DEFAULT_MAX_PIXELS, open_image_rgb

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"a numpy image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
                raise ValueError(f"a numpy image must hold finite numbers, got dtype {arr.dtype}")
            scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
            arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(arr)
    elif isinstance(image, str) and image.startswith(("http://", "https://")):
        from transformers.image_utils import load_image

        try:
            image = load_image(image)
        except Exception as err:  # noqa: BLE001 - offline, 404, not an image: one clear line
            raise ValueError(f"Cannot fetch image URL {image!r} ({type(err).__name__}: {err}); "
                             "offline, pass a local file instead") from None
    elif not isinstance(image, (Image.Image, str, os.PathLike, bytes, bytearray)) and not hasattr(image, "read"):
        raise ValueError(f"Cannot read an image from a {type(image).__name__}: pass a PIL image, a path, bytes, "
                         "a numpy array or a URL")
    return open_image_rgb(image, limit)


def forward_images(model: Any, images: Sequence[Any], image_processor: Any = None, batch_size: int = 32,
                   embeddings: bool = False):
    """``(probabilities (N, K), embeddings (N, D) or None)``: softmax of the logits and, when asked,
    the input of the classifier's last ``nn.Linear`` (:func:`rcl_hf.frozen.find_classifier`).

    Unlike :func:`rcl_hf.frozen.extract_embeddings` (rows already transformed for training, model
    switched to eval mode and ``channels_last`` for the pass), this takes raw inputs of any kind
    :func:`as_rgb_image` reads, preprocesses each batch with the model's image processor, and runs
    the model as it is (from :func:`load_model`: eval mode). Both share :func:`rcl_hf.frozen.forward_pixels`.
    """
    from .frozen import forward_pixels

    processor = image_processor or getattr(model, "image_processor", None)
    if processor is None:
        raise ValueError("predict needs an image processor: load the model with rcl_hf.load_model or pass one")

    def batches():
        for start in range(0, len(images), batch_size):
            batch = [as_rgb_image(im) for im in images[start : start + batch_size]]
            yield processor(images=batch, return_tensors="pt")["pixel_values"]

    probs, feats = forward_pixels(model, batches(), embeddings=embeddings)
    p = np.concatenate(probs) if probs else np.zeros((0, model.config.num_labels))
    z = (torch.cat(feats).flatten(1).numpy() if feats else np.zeros((0, 0))) if embeddings else None
    return p, z


def predict_proba(model: Any, images: Sequence[Any], image_processor: Any = None, batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, K)`` (inputs as for :func:`predict`)."""
    return forward_images(model, images, image_processor, batch_size)[0]


def predict(
    model: Any,
    images: Union[Any, Sequence[Any]],
    threshold: Optional[float] = None,
    severity: Optional[SeverityMatrix] = None,
    image_processor: Any = None,
    ood_guard: Optional[OODGuard] = None,
    calibration: Optional[RiskCalibration] = None,
) -> Prediction:
    """The decision layer's answer: decisions, expected cost, referral, OOD flags and drift.

    Args:
        model: from :func:`load_model` (or any image classifier plus ``severity``
            and ``image_processor``).
        images: one image or a list/tuple of them: PIL images, paths, bytes, numpy
            arrays or http(s) URLs.
        threshold: ``None`` (default) uses the model's certified referral threshold
            (``risk_calibration.json``), or the hand-set :data:`DEFAULT_REFERRAL_THRESHOLD` when it
            has none; a number overrides it, and the prediction is then not certified.
        ood_guard, calibration: override ``model.ood_guard`` / ``model.risk_calibration``.
    """
    t = None if threshold is None else check_threshold(threshold)
    if not isinstance(images, (list, tuple)):
        images = [images]
    sev = severity or getattr(model, "severity", None) or severity_from_config(model.config)
    guard = ood_guard if ood_guard is not None else getattr(model, "ood_guard", None)
    cal = calibration if calibration is not None else getattr(model, "risk_calibration", None)
    probs, z = forward_images(model, images, image_processor, embeddings=guard is not None)
    pred = risk_summary(probs, sev, t, cal)
    if guard is not None:
        pred.ood_score = guard.score(z)
        pred.out_of_distribution = pred.ood_score > guard.threshold
        pred.ood_threshold = float(guard.threshold)
    if cal is not None or guard is not None:
        pred.drift = check_drift(pred.expected_cost if cal is not None else None,
                                 cal.score_quantiles if cal is not None else None, pred.out_of_distribution,
                                 guard.false_alarm_rate if guard is not None else None)
    return pred
