"""The models the Space serves: loaded once with their decision layers, one calibration per offered target risk."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..decision_layer import DecisionLayer
from ..offline import HubUnavailableError
from ..inference import load_model
from .certified import expected_images, load_calibrations, model_dataset, resolve_choice
from .startup import SpaceStartupError
from .traced import trace_forward

logger = logging.getLogger("rcl_hf.space")

__all__ = ["SpaceModel", "load_space_model", "as_space_model"]


@dataclass
class SpaceModel:
    """A loaded rcl_hf classifier with the name shown in the UI, its calibrations (one per target risk, keyed
    ``"10%"``; ``None``: read from the model and its folder) and the dataset it was trained on."""

    model: Any
    name: str
    source: str = ""
    calibrations: Optional[Dict[str, Any]] = None
    dataset: Optional[str] = None
    #: the forward pass traced once (:func:`rcl_hf.space.traced.trace_forward`), or ``None``: the eager model
    traced: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        folder = self.source if self.source and os.path.isdir(self.source) else None
        default = getattr(self.model, "risk_calibration", None)
        if self.calibrations is None:
            self.calibrations = load_calibrations(folder, default)
        if self.dataset is None:
            self.dataset = model_dataset(folder, self.labels, default)

    @property
    def severity(self):
        return self.model.severity

    @property
    def labels(self) -> List[str]:
        return list(self.model.severity.labels)

    @property
    def ood_guard(self):
        return getattr(self.model, "ood_guard", None)

    def decision_layer(self, risk: Any = None) -> Tuple[Optional[str], DecisionLayer]:
        """``(the offered target risk chosen, e.g. "10%", or None; the model's decision layer with that risk's
        calibration)``. ``risk``: ``"10%"`` or ``0.1``; ``None``: 10% when offered, else the model's default. A
        target risk the model does not offer is a ``ValueError``."""
        key = resolve_choice(risk, self.calibrations or {})
        return key, DecisionLayer.from_model(self.model).with_calibration(self.calibrations[key] if key else None)

    @property
    def certified(self) -> bool:
        return bool(self.calibrations)

    @property
    def expects(self) -> str:
        return expected_images(self.dataset, self.labels)


def _display_name(name_or_path: str) -> str:
    p = name_or_path.rstrip("/\\")
    return (os.path.basename(os.path.abspath(p)) or p) if os.path.isdir(p) else p


def load_space_model(name_or_path: str, label: Optional[str] = None) -> SpaceModel:
    """Load a model with :func:`rcl_hf.inference.load_model`; one-line :class:`SpaceStartupError` on failure."""
    name_or_path = str(name_or_path).strip()
    if not name_or_path:
        raise SpaceStartupError("The model name is empty: pass --model PATH_OR_HUB_ID or set RCL_MODEL.")
    expanded = os.path.expanduser(name_or_path)
    looks_local = name_or_path.startswith((".", "/", "~", "\\")) or name_or_path.rstrip("/").count("/") > 1 or os.path.exists(expanded)
    if looks_local and not os.path.exists(expanded):
        raise SpaceStartupError(f"Model folder {name_or_path!r} does not exist.")
    if os.path.isdir(expanded) and not os.path.isfile(os.path.join(expanded, "config.json")):
        raise SpaceStartupError(
            f"{name_or_path!r} is a folder but not a saved model: it has no config.json "
            "(save one with model.save_pretrained and image_processor.save_pretrained)."
        )
    source = expanded if os.path.exists(expanded) else name_or_path
    try:
        model = load_model(source)
        # the Space's copy only infers: convolutions run 10-20% faster on CPU with channels-last weights
        # (outputs equal to float32 rounding, ~1e-8)
        model.to(memory_format=torch.channels_last)
        space_model = SpaceModel(model=model, name=label or _display_name(name_or_path), source=getattr(model, "rcl_source", source),
                                 traced=trace_forward(model))
    except HubUnavailableError as err:
        raise SpaceStartupError(str(err)) from None
    except (OSError, ValueError) as err:
        raise SpaceStartupError(f"Cannot load model {name_or_path!r}: {err}") from None
    if model.ood_guard is None:
        logger.warning("%s has no OOD guard (ood_guard.safetensors): every input gets a diagnosis; fit one with "
                       "rcl-ood-guard --model DIR --dataset NAME --data_dir DIR", name_or_path)
    if not space_model.certified:
        logger.warning("%s has no risk calibration (risk_calibration.json): its answers are not certified", name_or_path)
    return space_model


def as_space_model(model: Any, default_name: str) -> SpaceModel:
    """A :class:`SpaceModel` from a SpaceModel or a model returned by ``load_model``."""
    if isinstance(model, SpaceModel):
        return model
    if not hasattr(model, "severity") or not hasattr(model, "image_processor"):
        raise TypeError("build_demo needs models from rcl_hf.inference.load_model (with .severity and .image_processor)")
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or default_name
    return SpaceModel(model=model, name=_display_name(name) or default_name, source=name)
