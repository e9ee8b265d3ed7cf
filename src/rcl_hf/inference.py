"""Loading a trained model and answering with its decision layer.

:func:`load_model` loads a classifier saved by rcl_hf (a folder, a Hub id, or the local Hub cache) with its
image processor and its :class:`rcl_hf.DecisionLayer` (severity matrix, ``risk_calibration.json``,
``ood_guard.safetensors``); :func:`forward_logits` is the forward pass of raw images (logits, and the
classifier's input embeddings for the OOD guard); :func:`predict` is the two together: the decision layer's
answer (:class:`rcl_hf.decision_layer.Prediction`: calibrated probabilities, the rule's decision, expected
cost, referral with its reason — ``unusable``, ``outside`` or ``uncertain`` —, certified or not, the harmful-shift
check of a batch). The decision itself is :meth:`rcl_hf.DecisionLayer.apply`'s: the pipeline and the Space call the same.

Inputs: PIL images, paths (``str``/``Path``), ``bytes``, numpy arrays ``(H, W)``,
``(H, W, 3|4)`` (uint8, or floats in [0, 1]), and http(s) URLs (fetched with
``transformers.image_utils.load_image``; offline they fail with a clear
``ValueError``). Files are decoded by :func:`rcl_hf.data.open_image_rgb`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .data.images import usability_problem
from .decision_layer import DecisionLayer, Prediction, check_threshold
from .model_source import resolve_model_folder
from .offline import offline_error
from .metrics.functional import softmax
from .severity import SeverityMatrix

__all__ = ["load_model", "predict", "predict_proba", "as_rgb_image", "forward_logits", "attach_decision_layer"]


def load_model(name_or_path: str, device: Union[str, torch.device] = "cpu", severity: Any = None,
               revision: Optional[str] = None):
    """Load a classifier saved by rcl_hf from a folder, a Hub id, or the local Hub cache.

    A Hub id (``owner/name``, at ``revision``: a branch, tag or commit, default ``main``) resolves to one snapshot
    folder of the Hugging Face cache (:func:`rcl_hf.model_source.resolve_model_folder`: a cached snapshot is used as
    is, a missing one downloaded unless offline), and everything below is read from that folder. The models shipped
    in this repository are put in the cache by ``rcl-seed-cache`` (:func:`rcl_hf.hub.seed_cache`).
    Works offline (``HF_HUB_OFFLINE=1``) when the id is in the cache; raises
    :class:`rcl_hf.offline.HubUnavailableError` with one clear line otherwise (a revision the cache lacks
    names the cached ones).
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
    folder = resolve_model_folder(name, revision)
    try:
        model = AutoModelForImageClassification.from_pretrained(folder)
    except OSError as err:
        raise offline_error(name, err) from None
    try:
        processor = _load_processor(folder)
    except (OSError, ValueError) as err:
        raise ValueError(f"{name!r} has no usable image processor (preprocessor_config.json): {err}") from None
    model.image_processor = processor
    model.rcl_source = folder  # the folder everything was read from (a cache snapshot for a Hub id)
    attach_decision_layer(model, folder, severity)
    return model.to(device).eval()


def attach_decision_layer(model: Any, name: str, severity: Any = None) -> Any:
    """Set ``model.decision_layer`` (:meth:`rcl_hf.DecisionLayer.from_pretrained` of the model folder, or of the local
    Hub cache for an id) and its parts ``model.severity``, ``model.risk_calibration`` and ``model.ood_guard``; shared
    by :func:`load_model` and the pipeline task."""
    layer = DecisionLayer.from_pretrained(name, model.config, severity)
    model.decision_layer = layer
    model.severity, model.risk_calibration, model.ood_guard = layer.severity, layer.calibration, layer.ood_guard
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


def forward_logits(model: Any, images: Sequence[Any], image_processor: Any = None, batch_size: int = 32,
                   embeddings: bool = False, traced: Any = None,
                   on_image: Optional[Callable[[Any], None]] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(logits (N, K), embeddings (N, D) or None)`` of raw images: the forward pass behind :func:`predict`, the
    pipeline's batches, the Space, ``rcl-calibrate`` and the OOD guard's fit.

    Each input is read by :func:`as_rgb_image` (``on_image`` sees each decoded image, e.g. to check that it can be
    assessed), each batch is preprocessed by the model's image processor and run through
    :func:`rcl_hf.frozen.forward_pixels` (the model as it is: eval mode from :func:`load_model`; ``traced``, a
    traced forward pass, for the batches it accepts). ``embeddings``: also the input of the classifier's last
    ``nn.Linear`` (:func:`rcl_hf.frozen.find_classifier`), the OOD guard's embedding.
    """
    from .frozen import forward_pixels

    processor = image_processor or getattr(model, "image_processor", None)
    if processor is None:
        raise ValueError("predict needs an image processor: load the model with rcl_hf.load_model or pass one")

    def batches():
        for start in range(0, len(images), batch_size):
            batch = [as_rgb_image(im) for im in images[start : start + batch_size]]
            if on_image is not None:
                for im in batch:
                    on_image(im)
            yield processor(images=batch, return_tensors="pt")["pixel_values"]

    logits, feats = forward_pixels(model, batches(), embeddings=embeddings, traced=traced)
    z = np.concatenate(logits) if logits else np.zeros((0, model.config.num_labels), dtype=np.float32)
    e = (torch.cat(feats).flatten(1).numpy() if feats else np.zeros((0, 0))) if embeddings else None
    return z, e


def predict_proba(model: Any, images: Sequence[Any], image_processor: Any = None, batch_size: int = 32) -> np.ndarray:
    """The model's own class probabilities ``softmax(z)`` ``(N, K)``, before any calibration (inputs as for
    :func:`predict`, whose ``probabilities`` are the calibrated ones)."""
    return softmax(forward_logits(model, images, image_processor, batch_size)[0], axis=1)


def predict(
    model: Any,
    images: Union[Any, Sequence[Any]],
    threshold: Optional[float] = None,
    severity: Optional[SeverityMatrix] = None,
    image_processor: Any = None,
    ood_guard: Any = None,
    calibration: Any = None,
    batch_size: int = 32,
    labels: Any = None,
) -> Prediction:
    """The decision layer's answer (:meth:`rcl_hf.DecisionLayer.apply`) for raw images.

    An image that cannot be assessed (too small or blank), that the OOD guard finds unlike the training images,
    or whose decision's expected cost exceeds the certified threshold is referred (``refer``), with the reason
    in ``reasons`` (``"unusable"``, ``"outside"``, ``"uncertain"``).

    Args:
        model: from :func:`load_model` (or any image classifier plus ``severity``
            and ``image_processor``).
        images: one image or a list/tuple of them: PIL images, paths, bytes, numpy
            arrays or http(s) URLs.
        threshold: ``None`` (default) uses the model's certified referral threshold
            (``risk_calibration.json``), or the hand-set
            :data:`rcl_hf.decision_layer.DEFAULT_REFERRAL_THRESHOLD` when it has none; a number overrides it,
            and the prediction is then not certified.
        severity, ood_guard, calibration: override the model's decision layer's parts.
        labels: the true class indices of a labelled batch (a local audit set): the harmful-shift check
            (``drift``) then also tests whether the batch's realised certified risk exceeds ``α``.
    """
    t = None if threshold is None else check_threshold(threshold)
    if not isinstance(images, (list, tuple)):
        images = [images]
    layer = DecisionLayer.from_model(model, severity, calibration, ood_guard)
    problems: List[Optional[str]] = []
    z, e = forward_logits(model, images, image_processor, batch_size, embeddings=layer.needs_embeddings,
                          on_image=lambda im: problems.append(usability_problem(im)))
    return layer.apply(z, e, threshold=t, unusable=[p is not None for p in problems], labels=labels)
