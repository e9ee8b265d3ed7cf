"""Risk-aware medical image classification: the rcl_hf Gradio Space.

Upload an image (or pick an example) and the Space shows, for each loaded model:

* the class probabilities (``gr.Label``);
* the argmax decision and the Bayes-risk decision ``argmin_j Σ_i p_i M[i, j]``;
* the expected clinical cost of both decisions, and the probability that each
  decision is a *critical* error (``Σ_i p_i C[i, j]``);
* the critical mass: the probability on classes whose miss would be critical;
* a **REFER TO A SPECIALIST** flag when the Bayes decision's expected cost exceeds
  the referral threshold τ (a slider; moving it re-scores without re-running
  the network);
* the model's severity matrix ``M`` as a heat map, critical cells outlined.

With ``--compare`` (or ``RCL_COMPARE``) two models run side by side on the same
image, e.g. a cross-entropy baseline and a risk-calibrated model.

Run locally::

    python spaces_demo/app.py --model PATH_OR_HUB_ID [--compare PATH_OR_HUB_ID] \\
        [--examples_dir DIR] [--host 127.0.0.1] [--port 7860] [--threads N]

On the Hugging Face Hub, set the Space variables ``RCL_MODEL`` (and optionally
``RCL_COMPARE``, ``RCL_MODEL_LABEL``, ``RCL_COMPARE_LABEL``, ``RCL_TORCH_THREADS``);
``RCL_MODEL``/``RCL_COMPARE`` take precedence over ``--model``/``--compare``.

Input handling (:func:`load_input_image`): the only file read is the upload that
Gradio hands over (it must lie in Gradio's upload folder); uploads are capped in
bytes (``--max_upload_mb``) and pixels (``--max_pixels``, checked from the header
before decoding, so a decompression bomb is refused without being expanded).
Grayscale, palette, alpha, 16/32-bit, CMYK, YCbCr and LAB images are converted
to 8-bit RGB the way rcl_hf's data loaders convert them (alpha dropped; 16/32-bit
rescaled to 8 bits only when values leave ``[0, 255]``); empty files, non-images,
truncated files and oversize images get one clear message.

Examples are generated from rcl_hf's embedded synthetic dataset at start-up
(a few PNGs in a cache folder; no medical data is shipped), or copied, after
validation, from ``--examples_dir``.

This is a research demo, not a medical device.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import html
import io
import logging
import os
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger("rcl_hf.space")

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "InputImageError",
    "InputInfo",
    "SpaceModel",
    "SpaceStartupError",
    "analyze",
    "build_demo",
    "launch_demo",
    "load_input_image",
    "load_space_model",
    "main",
    "make_examples",
    "resolve_model_ids",
    "score",
    "severity_heatmap",
]

#: Largest accepted ``width * height`` (about 7000 x 7000). PIL's own
#: decompression-bomb guard (about 89.5 MP) sits above it.
DEFAULT_MAX_PIXELS: int = 50_000_000
#: Largest accepted upload, in megabytes (enforced by Gradio's upload route and
#: again before decoding).
DEFAULT_MAX_UPLOAD_MB: float = 25.0
#: Longest side of the decoded image kept for display and inference (the
#: processor resizes to the model's input size anyway). JPEGs are decoded at a
#: reduced DCT scale when they are much larger.
WORKING_SIDE: int = 1024
#: Number of examples generated per synthetic class.
EXAMPLES_PER_CLASS: int = 2
#: Maximum number of images taken from ``--examples_dir``.
MAX_USER_EXAMPLES: int = 24
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

DISCLAIMER = "Research demo of rcl_hf, **not a medical device**: do not use it for diagnosis."


# =============================================================================== input images
class InputImageError(ValueError):
    """An upload cannot be analysed; the message is shown to the user as is.

    ``kind`` is one of ``"empty"``, ``"too_large"``, ``"not_image"``,
    ``"truncated"``, ``"mode"``, ``"not_uploaded"``.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class InputInfo:
    """What :func:`load_input_image` found and did (JSON-ready through :meth:`as_dict`)."""

    width: int
    height: int
    mode: str
    format: Optional[str]
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"width": self.width, "height": self.height, "mode": self.mode, "format": self.format, "notes": list(self.notes)}


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _read_source(source: Any, max_bytes: int) -> Tuple[bytes, str]:
    """Bytes and a display name for a path / bytes / file object / data URL."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "<upload>"
    elif isinstance(source, str) and source.startswith("data:"):
        head, _, payload = source.partition(",")
        if ";base64" not in head:
            raise InputImageError("The upload is a data URL without base64 content: not an image.", "not_image")
        if len(payload) * 3 // 4 > max_bytes:
            raise InputImageError(
                f"The upload is about {_human_bytes(len(payload) * 3 / 4)}, above the limit of {_human_bytes(max_bytes)}.",
                "too_large",
            )
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise InputImageError("The upload is a data URL whose base64 content does not decode: not an image.", "not_image") from None
        name = "<data URL>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = path.name
        if not path.is_file():
            raise InputImageError(f"No image received: the uploaded file {name!r} is missing.", "empty")
        size = path.stat().st_size
        if size > max_bytes:
            raise InputImageError(
                f"The file {name!r} is {_human_bytes(size)}, above the upload limit of {_human_bytes(max_bytes)}.",
                "too_large",
            )
        data = path.read_bytes()
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        name = getattr(source, "name", "<stream>")
    else:
        raise InputImageError(
            f"Expected an uploaded image file, bytes, a PIL image or an array, got {type(source).__name__}.", "not_image"
        )
    if not data:
        raise InputImageError(f"The upload {name!r} is empty (0 bytes): please choose an image file.", "empty")
    if len(data) > max_bytes:
        raise InputImageError(
            f"The upload {name!r} is {_human_bytes(len(data))}, above the limit of {_human_bytes(max_bytes)}.", "too_large"
        )
    return data, name


def _rescale_to_uint8(img: Image.Image) -> Tuple[Image.Image, str]:
    """16/32-bit single-channel image to 8 bits (rcl_hf's loader rule)."""
    arr = np.asarray(img).astype(np.float64)
    if arr.ndim != 2:
        raise InputImageError(f"Unsupported {img.mode} image with shape {arr.shape}.", "mode")
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo = min(0.0, float(arr.min())) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 0.0
    note = f"{img.mode} (16/32-bit) image converted to 8-bit RGB"
    if lo < 0 or hi > 255:
        arr = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
        note += f" (values rescaled from [{lo:g}, {hi:g}] to [0, 255])"
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L"), note


def _convert(img: Image.Image, *paths: Tuple[str, ...]) -> Image.Image:
    """``img`` converted along the first conversion path PIL supports (e.g. ``("LA", "RGB")``)."""
    errors = []
    for path in paths:
        try:
            out = img
            for mode in path:
                out = out.convert(mode)
            return out
        except (ValueError, OSError, TypeError) as err:  # PIL has no such conversion / bad palette
            errors.append(f"{'->'.join(path)}: {err}")
    raise InputImageError(f"Cannot convert a {img.mode} image to RGB ({'; '.join(errors)}).", "mode")


def _to_rgb(img: Image.Image) -> Tuple[Image.Image, Optional[str]]:
    """Convert any PIL mode the Space accepts to ``RGB``; return ``(image, note)``.

    Raises:
        InputImageError: (kind ``"mode"``) when PIL has no conversion for the mode.
    """
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode == "L":
        return _convert(img, ("RGB",)), "grayscale image replicated to 3 channels"
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        paths = (("RGBA", "RGB"), ("RGB",)) if has_alpha else (("RGB",), ("RGBA", "RGB"))
        return _convert(img, *paths), f"palette image ({mode}) converted to RGB" + (", alpha dropped" if has_alpha else "")
    if mode in ("RGBA", "RGBa", "LA", "La"):
        # premultiplied La has no direct RGB conversion in PIL: go through LA / RGBA
        return _convert(img, ("RGB",), ("LA", "RGB"), ("RGBA", "RGB")), f"{mode} image: alpha channel dropped"
    if mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return _convert(img, ("RGB",), ("RGBA", "RGB")), f"{mode} image converted to RGB"
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray, note = _rescale_to_uint8(img)
        return gray.convert("RGB"), note
    raise InputImageError(f"Unsupported image mode {mode!r}: save the image as RGB or grayscale PNG/JPEG.", "mode")


def load_input_image(
    source: Any,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    working_side: Optional[int] = WORKING_SIDE,
) -> Tuple[Image.Image, InputInfo]:
    """Decode one user image safely into an 8-bit ``RGB`` ``PIL.Image``.

    Args:
        source: a file path (the upload Gradio hands over), ``bytes``, a base64
            ``data:`` URL, a binary file object, a ``PIL.Image.Image`` or a numpy
            array (``H x W``, ``H x W x 3`` or ``H x W x 4``).
        max_pixels: refuse images with more than this many pixels; checked from the
            file header before any pixel is decoded.
        max_bytes: refuse files larger than this.
        working_side: downscale (aspect kept) so the longest side is at most this;
            ``None`` keeps the full resolution.

    Returns:
        ``(rgb_image, info)``; ``info.notes`` lists every conversion made.

    Raises:
        InputImageError: empty input, not an image, truncated/corrupt data, too many
            bytes or pixels, or a pixel mode with no RGB form, with a message fit for
            the user.
    """
    if source is None:
        raise InputImageError("No image received: upload an image or pick an example.", "empty")
    notes: List[str] = []
    if isinstance(source, np.ndarray):
        if source.size == 0:
            raise InputImageError("The image array is empty.", "empty")
        if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)):
            raise InputImageError(f"Expected an H x W (x 1/3/4) image array, got shape {source.shape}.", "not_image")
        if source.shape[0] * source.shape[1] > max_pixels:
            raise InputImageError(_too_many_pixels(source.shape[1], source.shape[0], max_pixels), "too_large")
        arr = source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source
        if arr.dtype != np.uint8:
            if arr.ndim == 2:
                img = Image.fromarray(arr.astype(np.float32), mode="F")
            else:
                a = arr.astype(np.float64)
                a = a * 255.0 if np.nanmax(a) <= 1.0 else a
                img = Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8))
                notes.append(f"{arr.dtype} array converted to 8-bit")
        else:
            img = Image.fromarray(arr)
        fmt = None
    elif isinstance(source, Image.Image):
        w, h = source.size
        if w * h > max_pixels:
            raise InputImageError(_too_many_pixels(w, h, max_pixels), "too_large")
        img, fmt = source, source.format
    else:
        data, name = _read_source(source, max_bytes)
        img, fmt = _decode(data, name, max_pixels, working_side, notes)
    if img.width == 0 or img.height == 0:
        raise InputImageError(f"The image has no pixels ({img.width}x{img.height}).", "empty")
    width, height = getattr(img, "rcl_stored_size", img.size)
    mode = img.mode
    rgb, note = _to_rgb(img)
    if note:
        notes.append(note)
    if working_side and max(rgb.size) > working_side:
        rgb = rgb.copy()
        rgb.thumbnail((working_side, working_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        notes.append(f"downscaled from {width}x{height} to {rgb.width}x{rgb.height} for analysis")
    return rgb, InputInfo(width=width, height=height, mode=mode, format=fmt, notes=notes)


def _too_many_pixels(w: int, h: int, max_pixels: int) -> str:
    return (
        f"The image is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
        f"{max_pixels / 1e6:.1f} megapixels: downscale it before uploading."
    )


def _decode(data: bytes, name: str, max_pixels: int, working_side: Optional[int], notes: List[str]) -> Tuple[Image.Image, Optional[str]]:
    """Open (header only), check the pixel count, then decode the first frame.

    Every exception PIL raises while parsing the untrusted bytes (malformed
    headers raise ``TypeError``, ``struct.error``, ``IndexError``... as well as
    ``OSError``) becomes an :class:`InputImageError`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode_unchecked(data, name, max_pixels, working_side, notes)
        except InputImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise InputImageError(
                f"The image {name!r} is a decompression bomb or far too large ({err}); the limit is "
                f"{max_pixels / 1e6:.1f} megapixels.",
                "too_large",
            ) from None
        except UnidentifiedImageError:
            raise InputImageError(
                f"The file {name!r} is not an image that can be read (PNG, JPEG, BMP, TIFF, GIF and WebP are supported).",
                "not_image",
            ) from None
        except MemoryError:
            raise InputImageError(f"The image {name!r} needs too much memory to decode.", "too_large") from None
        except _Truncated as err:
            raise InputImageError(f"The image {name!r} is damaged or truncated and cannot be decoded ({err.__cause__}).", "truncated") from None
        except Exception as err:  # malformed headers: any parser error means "cannot be decoded"
            raise InputImageError(f"The file {name!r} is not a readable image ({type(err).__name__}: {err}).", "not_image") from None


class _Truncated(Exception):
    """Internal: the header was fine, decoding the pixels failed."""


def _decode_unchecked(data: bytes, name: str, max_pixels: int, working_side: Optional[int], notes: List[str]) -> Tuple[Image.Image, Optional[str]]:
    img = Image.open(io.BytesIO(data))
    fmt = img.format
    w, h = img.size
    if w * h > max_pixels:
        raise InputImageError(_too_many_pixels(w, h, max_pixels), "too_large")
    frames = getattr(img, "n_frames", 1) or 1
    if frames > 1:
        notes.append(f"{fmt} with {frames} frames: the first frame is analysed")
    if fmt == "JPEG" and working_side and max(w, h) >= 2 * working_side:
        # DCT-scaled decode (1/2, 1/4, 1/8), never below working_side: faster, less memory
        if img.draft(img.mode, (working_side, working_side)) is not None and img.size != (w, h):
            notes.append(f"JPEG decoded at reduced scale {img.size[0]}x{img.size[1]}")
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise _Truncated() from err
    try:
        orientation = img.getexif().get(0x0112)
        if orientation not in (None, 1):
            img = ImageOps.exif_transpose(img)
            notes.append("rotated upright from its EXIF orientation")
            if orientation in (5, 6, 7, 8):  # a quarter turn swaps the sides
                w, h = h, w
    except Exception:  # a malformed EXIF block must not make a good image unusable
        pass
    img.rcl_stored_size = (w, h)  # type: ignore[attr-defined]  # before any draft scaling
    return img, fmt


# =============================================================================== models
class SpaceStartupError(RuntimeError):
    """The Space cannot start (no model named, a missing folder, an offline Hub id)."""


@dataclass
class SpaceModel:
    """A loaded rcl_hf classifier with the name shown in the UI."""

    model: Any
    name: str
    source: str = ""

    @property
    def severity(self):
        return self.model.severity

    @property
    def labels(self) -> List[str]:
        return list(self.model.severity.labels)


def _display_name(name_or_path: str) -> str:
    p = name_or_path.rstrip("/\\")
    if os.path.isdir(p):
        return os.path.basename(os.path.abspath(p)) or p
    return p


def load_space_model(name_or_path: str, label: Optional[str] = None) -> SpaceModel:
    """Load a model for the Space with :func:`rcl_hf.inference.load_model`.

    Raises:
        SpaceStartupError: one line that says what is wrong (missing folder, no
            ``config.json``, offline or unknown Hub id, no severity matrix).
    """
    name_or_path = str(name_or_path).strip()
    if not name_or_path:
        raise SpaceStartupError("The model name is empty: pass --model PATH_OR_HUB_ID or set RCL_MODEL.")
    expanded = os.path.expanduser(name_or_path)
    # A Hub id is "name" or "owner/name"; anything else is a local path.
    looks_local = name_or_path.startswith((".", "/", "~", "\\")) or name_or_path.rstrip("/").count("/") > 1 or os.path.exists(expanded)
    if looks_local and not os.path.exists(expanded):
        raise SpaceStartupError(f"Model folder {name_or_path!r} does not exist.")
    if os.path.isdir(expanded) and not os.path.isfile(os.path.join(expanded, "config.json")):
        raise SpaceStartupError(
            f"{name_or_path!r} is a folder but not a saved model: it has no config.json "
            "(save one with model.save_pretrained and image_processor.save_pretrained)."
        )
    # imported after the path checks: a missing folder is reported without loading torch
    from rcl_hf.hub.errors import HubUnavailableError
    from rcl_hf.inference import load_model

    try:
        model = load_model(expanded if os.path.exists(expanded) else name_or_path)
    except HubUnavailableError as err:
        raise SpaceStartupError(str(err)) from None
    except (OSError, ValueError) as err:
        raise SpaceStartupError(f"Cannot load model {name_or_path!r}: {err}") from None
    return SpaceModel(model=model, name=label or _display_name(name_or_path), source=name_or_path)


def _as_space_model(model: Any, default_name: str) -> SpaceModel:
    if isinstance(model, SpaceModel):
        return model
    if not hasattr(model, "severity") or not hasattr(model, "image_processor"):
        raise TypeError("build_demo needs models from rcl_hf.inference.load_model (with .severity and .image_processor)")
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or default_name
    return SpaceModel(model=model, name=_display_name(name) or default_name, source=name)


# =============================================================================== scoring
def score(space_model: SpaceModel, probabilities: Sequence[float], threshold: float) -> Dict[str, Any]:
    """The risk summary of one model's probabilities for one image (JSON-ready).

    Keys: ``model``, ``probabilities`` (label -> p), ``argmax``, ``bayes_decision``,
    ``expected_cost`` (of the Bayes decision), ``argmax_expected_cost``,
    ``critical_mass``, ``critical_classes`` (the positive classes),
    ``critical_error_risk`` (``{"argmax", "bayes_decision"}``: probability that the
    decision is a critical error, ``Σ_i p_i C[i, j]``), ``decision_costs`` (label ->
    expected cost of deciding that label), ``refer``, ``threshold``.
    """
    from rcl_hf.inference import risk_summary

    sev = space_model.severity
    pred = risk_summary(np.asarray(probabilities, dtype=np.float64)[None], sev, threshold)
    rec = pred.as_records()[0]
    p = pred.probabilities[0]
    decision_costs = p @ sev.matrix
    crit_risk = p @ sev.critical.astype(np.float64)
    a, b = int(pred.argmax[0]), int(pred.bayes_decision[0])
    rec.update(
        model=space_model.name,
        argmax_expected_cost=float(pred.argmax_expected_cost[0]),
        critical_classes=[label for label, pos in zip(sev.labels, sev.positive_rows) if pos],
        critical_error_risk={"argmax": float(crit_risk[a]), "bayes_decision": float(crit_risk[b])},
        decision_costs={label: float(c) for label, c in zip(sev.labels, decision_costs)},
        threshold=float(threshold),
    )
    return rec


def _check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"The referral threshold must be a number, got {threshold!r}.") from None
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"The referral threshold must be a finite number >= 0, got {threshold!r}.")
    return t


def _probabilities(space_model: SpaceModel, rgb: Image.Image) -> np.ndarray:
    from rcl_hf.inference import predict_proba

    return predict_proba(space_model.model, [rgb])[0]


def analyze(
    image: Any,
    threshold: float,
    model: Union[SpaceModel, Any],
    compare: Optional[Union[SpaceModel, Any]] = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
) -> Dict[str, Any]:
    """Analyse one image with one or two models: the Space's whole computation, without the UI.

    Args:
        image: anything :func:`load_input_image` accepts.
        threshold: referral threshold τ on the Bayes decision's expected cost.
        model: the main model (a :class:`SpaceModel` or a model from
            :func:`rcl_hf.inference.load_model`).
        compare: an optional second model, scored on the same image.
        max_pixels, max_bytes: input caps.

    Returns:
        ``{"input": InputInfo.as_dict(), "threshold": τ, "models": [score(...), ...]}``.

    Raises:
        InputImageError: the image cannot be used (message fit for the user).
        ValueError: a bad threshold.
    """
    t = _check_threshold(threshold)
    models = [_as_space_model(model, "model")] + ([_as_space_model(compare, "compare")] if compare is not None else [])
    rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
    return {"input": info.as_dict(), "threshold": t, "models": [score(m, _probabilities(m, rgb), t) for m in models]}


# =============================================================================== rendering
def severity_heatmap(severity: Any, title: Optional[str] = None):
    """The severity matrix as a heat map (a ``matplotlib.figure.Figure``).

    Rows are the true class, columns the prediction; each cell shows its cost;
    critical cells are outlined in black and tagged "CRITICAL".
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    m = np.asarray(severity.matrix)
    crit = np.asarray(severity.critical)
    labels = list(severity.labels)
    k = len(labels)
    side = max(3.6, 0.75 * k + 1.8)
    fig = Figure(figsize=(side + 0.9, side), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="YlOrRd", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=labels, rotation=40 if max(len(x) for x in labels) > 5 else 0, ha="right" if max(len(x) for x in labels) > 5 else "center", fontsize=8)
    ax.set_yticks(range(k), labels=labels, fontsize=8)
    ax.set_xlabel("predicted class", fontsize=9)
    ax.set_ylabel("true class", fontsize=9)
    for i in range(k):
        for j in range(k):
            v = m[i, j]
            color = "white" if v > 0.6 else "black"
            if crit[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.4, hatch="//", alpha=0.35))
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="black", linewidth=2.0))
                ax.text(j, i - 0.12, f"{v:g}", ha="center", va="center", fontsize=9, fontweight="bold", color=color)
                ax.text(j, i + 0.22, "CRITICAL", ha="center", va="center", fontsize=5.5, fontweight="bold", color=color)
            else:
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=9, color=color)
    fig.colorbar(im, ax=ax, shrink=0.8, label="cost of the error")
    ax.set_title(title or "Severity matrix M[true, predicted]", fontsize=10)
    return fig


_CARD_STYLE = (
    "border:1px solid #d0d7de;border-radius:10px;padding:12px 14px;background:#ffffff;color:#1f2328;"
    "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:14px;line-height:1.45"
)


def _fmt_p(x: float) -> str:
    return f"{x:.3f}"


def decision_card_html(rec: Mapping[str, Any]) -> str:
    """The decision panel of one model as HTML (escaped labels, inline styles)."""
    e = html.escape
    t = rec["threshold"]
    if rec["refer"]:
        banner = (
            '<div class="rcl-refer" style="background:#b42318;color:#ffffff;font-weight:800;font-size:18px;'
            'letter-spacing:0.02em;padding:10px 12px;border-radius:8px;margin-bottom:10px">'
            f"&#9888; REFER TO A SPECIALIST<div style=\"font-weight:500;font-size:13px;color:#ffffff\">expected clinical cost "
            f"{_fmt_p(rec['expected_cost'])} &gt; threshold &tau; = {t:.2f}</div></div>"
        )
    else:
        banner = (
            '<div class="rcl-no-refer" style="background:#1a7f37;color:#ffffff;font-weight:700;font-size:16px;'
            'padding:10px 12px;border-radius:8px;margin-bottom:10px">'
            f"&#10003; No referral needed<div style=\"font-weight:500;font-size:13px;color:#ffffff\">expected clinical cost "
            f"{_fmt_p(rec['expected_cost'])} &le; threshold &tau; = {t:.2f}</div></div>"
        )
    probs = rec["probabilities"]
    crit_classes = set(rec["critical_classes"])
    a, b = rec["argmax"], rec["bayes_decision"]
    differ = (
        ' <span style="background:#fff1c2;color:#7a4d00;border-radius:4px;padding:0 5px;font-size:12px">differs from argmax</span>'
        if a != b
        else ""
    )

    def line(name: str, value: str) -> str:
        return (
            '<div style="display:flex;gap:12px;padding:3px 0;border-bottom:1px solid #eaeef2">'
            f'<div style="flex:0 0 42%;font-weight:600">{name}</div><div style="flex:1">{value}</div></div>'
        )

    crit = rec["critical_error_risk"]
    summary = (
        '<div style="margin-bottom:10px">'
        + line("Argmax decision", f"{e(a)} (p = {_fmt_p(probs[a])})")
        + line("Bayes-risk decision", f"<b>{e(b)}</b>{differ}")
        + line("Expected clinical cost", f"{_fmt_p(rec['expected_cost'])} (Bayes) &middot; {_fmt_p(rec['argmax_expected_cost'])} (argmax)")
        + line("Critical mass", f"{_fmt_p(rec['critical_mass'])} on {e(', '.join(rec['critical_classes']))} (classes whose miss is critical)")
        + line("P(critical error)", f"{_fmt_p(crit['argmax'])} acting on argmax &middot; {_fmt_p(crit['bayes_decision'])} on the Bayes decision")
        + "</div>"
    )
    th = 'style="text-align:left;padding:2px 8px;border-bottom:1px solid #d0d7de"'
    rows = []
    for label, p in probs.items():
        marks = []
        if label == a:
            marks.append("argmax")
        if label == b:
            marks.append("Bayes")
        if label in crit_classes:
            marks.append("miss is critical")
        rows.append(
            f'<tr><td style="padding:2px 8px">{e(label)}</td><td style="padding:2px 8px;text-align:right">{_fmt_p(p)}</td>'
            f'<td style="padding:2px 8px;text-align:right">{_fmt_p(rec["decision_costs"][label])}</td>'
            f'<td style="padding:2px 8px;color:#57606a">{e(", ".join(marks))}</td></tr>'
        )
    table = (
        '<table style="border-collapse:collapse;font-size:13px;width:100%">'
        f"<tr><th {th}>class</th><th {th}>probability</th><th {th}>cost if decided</th><th {th}></th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return f'<div class="rcl-card" style="{_CARD_STYLE}">{banner}{summary}{table}</div>'


def comparison_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """Side-by-side summary of two models on the same image (markdown)."""
    if len(records) < 2:
        return ""
    a, b = records[0], records[1]

    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = [
        f"| | **{esc(a['model'])}** | **{esc(b['model'])}** |",
        "|---|---|---|",
        f"| argmax decision | {esc(a['argmax'])} | {esc(b['argmax'])} |",
        f"| Bayes-risk decision | {esc(a['bayes_decision'])} | {esc(b['bayes_decision'])} |",
        f"| expected clinical cost | {a['expected_cost']:.3f} | {b['expected_cost']:.3f} |",
        f"| critical mass | {a['critical_mass']:.3f} | {b['critical_mass']:.3f} |",
        f"| P(critical error), argmax | {a['critical_error_risk']['argmax']:.3f} | {b['critical_error_risk']['argmax']:.3f} |",
        f"| refer to a specialist | {'**YES**' if a['refer'] else 'no'} | {'**YES**' if b['refer'] else 'no'} |",
    ]
    if a["bayes_decision"] == b["bayes_decision"]:
        verdict = f"Both models decide **{esc(a['bayes_decision'])}** (Bayes-risk decision)."
    else:
        verdict = (
            f"The models disagree: **{esc(a['model'])}** decides {esc(a['bayes_decision'])}, "
            f"**{esc(b['model'])}** decides {esc(b['bayes_decision'])}."
        )
    return "### Side by side\n\n" + verdict + "\n\n" + "\n".join(lines)


def input_markdown(info: Mapping[str, Any]) -> str:
    text = f"**Input:** {info['width']}x{info['height']} px, mode {info['mode']}" + (f", {info['format']}" if info.get("format") else "")
    if info.get("notes"):
        text += "  \n" + "  \n".join(f"- {html.escape(n)}" for n in info["notes"])
    return text


# =============================================================================== examples
def _examples_root() -> Path:
    return Path(os.environ.get("RCL_SPACE_CACHE") or Path(tempfile.gettempdir()) / "rcl_hf_space")


def _model_input_side(models: Sequence[SpaceModel]) -> int:
    sides = []
    for m in models:
        size = getattr(m.model.image_processor, "size", None) or {}
        side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else None
        if side:
            sides.append(int(side))
    return int(min(max(max(sides, default=224), 128), 384))


def make_examples(
    examples_dir: Optional[str] = None,
    image_size: int = 224,
    per_class: int = EXAMPLES_PER_CLASS,
    seed: int = 0,
    cache_dir: Optional[Union[str, Path]] = None,
) -> List[Tuple[str, str]]:
    """Example images for the Space: ``[(png_path, caption), ...]``.

    Without ``examples_dir``: ``per_class`` images per class of rcl_hf's embedded
    synthetic dataset (test split, ``seed``), written once as PNGs to a cache
    folder (``$RCL_SPACE_CACHE`` or the system temp folder). With
    ``examples_dir``: up to :data:`MAX_USER_EXAMPLES` image files from that folder
    (not recursive), each validated with :func:`load_input_image` and re-saved as
    PNG in the cache folder; unreadable files are skipped with a log message.
    Only the cache folder is served to the browser.
    """
    root = Path(cache_dir) if cache_dir else _examples_root()
    out: List[Tuple[str, str]] = []
    if examples_dir:
        src = Path(examples_dir)
        if not src.is_dir():
            raise SpaceStartupError(f"--examples_dir {examples_dir!r} is not a folder.")
        key = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]
        dest = root / f"user-{key}"
        dest.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        for p in files[:MAX_USER_EXAMPLES]:
            try:
                rgb, _ = load_input_image(p)
            except InputImageError as err:
                logger.warning("skipping example %s: %s", p, err)
                continue
            target = dest / f"{p.stem}.png"
            _save_png(rgb, target)
            out.append((str(target), p.stem))
        if not out:
            raise SpaceStartupError(f"--examples_dir {examples_dir!r} holds no readable image ({', '.join(_IMAGE_SUFFIXES)}).")
        return out

    from rcl_hf.data.synthetic import SYNTHETIC_LABELS, load_synthetic

    dest = root / f"synthetic-s{seed}-{image_size}px"
    dest.mkdir(parents=True, exist_ok=True)
    names = [f"{label}_{n + 1}" for label in SYNTHETIC_LABELS for n in range(per_class)]
    targets = [dest / f"{name}.png" for name in names]
    if not all(t.is_file() for t in targets):
        ds = load_synthetic(seed=seed, n_train=0, n_validation=0, n_test=max(40, 12 * per_class), image_size=image_size)["test"]
        taken: Dict[int, int] = {}
        for row in ds:
            y = int(row["label"])
            if taken.get(y, 0) >= per_class:
                continue
            taken[y] = taken.get(y, 0) + 1
            _save_png(row["image"].convert("RGB"), dest / f"{SYNTHETIC_LABELS[y]}_{taken[y]}.png")
    for t, name in zip(targets, names):
        if t.is_file():
            out.append((str(t), f"synthetic {name.replace('_', ' ')}"))
    return out


def _save_png(img: Image.Image, target: Path) -> None:
    tmp = target.with_suffix(f".tmp{os.getpid()}.png")
    img.save(tmp, format="PNG")
    os.replace(tmp, target)


# =============================================================================== the Blocks app
_INTRO = """# Risk-aware medical image classification
**rcl_hf** puts a clinical *severity matrix* into the training loss, so that a model avoids the
mistakes that matter: a tumour called "no tumour", a malignant lesion called benign. Upload an
image: besides the class probabilities you see the **Bayes-risk decision** (the class with the lowest
expected clinical cost), the **critical mass** (probability on classes whose miss would be critical),
and a **referral flag** when the expected cost of the best decision exceeds the threshold below.
"""


def build_demo(
    model: Union[SpaceModel, Any],
    compare: Optional[Union[SpaceModel, Any]] = None,
    examples: Optional[Sequence[Union[str, Tuple[str, str]]]] = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    threshold: Optional[float] = None,
):
    """Build the Space's ``gr.Blocks``.

    Args:
        model: the main model (:class:`SpaceModel` or a model from ``load_model``).
        compare: optional second model shown side by side.
        examples: example image paths, or ``(path, caption)`` pairs (see :func:`make_examples`).
        max_pixels, max_upload_mb: input caps (pass ``max_upload_mb`` to
            :func:`launch_demo` too, which enforces it on the upload route).
        threshold: initial referral threshold (default
            :data:`rcl_hf.inference.DEFAULT_REFERRAL_THRESHOLD`).

    The public API endpoint ``/analyze`` takes ``(image, threshold)`` and returns,
    per model, ``(label, decision_html, result_json)``, then the comparison
    markdown (compare mode), the input description and the converted input.
    """
    import gradio as gr
    from rcl_hf.inference import DEFAULT_REFERRAL_THRESHOLD

    models = [_as_space_model(model, "model")] + ([_as_space_model(compare, "compare")] if compare is not None else [])
    if len(models) == 2 and models[0].name == models[1].name:
        models[1] = replace(models[1], name=models[1].name + " (compare)")
    max_bytes = int(max_upload_mb * 1024 * 1024)
    tau0 = DEFAULT_REFERRAL_THRESHOLD if threshold is None else _check_threshold(threshold)

    def preprocess_upload(payload: Any) -> Optional[str]:
        """``gr.Image`` preprocess that hands over the uploaded file's path, unopened.

        Gradio's own preprocess decodes with PIL and would fail with a generic error
        on a non-image or a decompression bomb; here :func:`load_input_image` does
        all decoding. Only files inside Gradio's upload folder are accepted. (Set on
        the instance: a ``gr.Image`` subclass would make Gradio write an ``app.pyi``.)
        """
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if url and url.startswith("data:"):
            return url
        path = getattr(payload, "path", None)
        if not path:
            return None
        try:
            return _uploaded_path(path)
        except InputImageError as err:
            raise gr.Error(str(err), title="Refused", print_exception=False) from None

    def run(image: Any, tau: float, clear_on_empty: bool = False):
        if image is None and clear_on_empty:
            return _empty_outputs(len(models))
        try:
            t = _check_threshold(tau)
            rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
            probs = [_probabilities(m, rgb) for m in models]
        except (InputImageError, ValueError) as err:
            raise gr.Error(str(err), title="Cannot analyse this input", print_exception=False) from None
        except Exception as err:  # never crash the Space: one message, the trace in the log
            logger.error("analysis failed:\n%s", traceback.format_exc())
            raise gr.Error(f"The analysis failed unexpectedly ({type(err).__name__}: {err}).", title="Internal error") from None
        if info.notes:
            gr.Info("; ".join(info.notes), title="Input converted")
        preview = rgb.copy()
        preview.thumbnail((384, 384))
        state = {"probs": [p.tolist() for p in probs]}
        return (*_model_outputs(probs, t), input_markdown(info.as_dict()), preview, state)

    def _model_outputs(probs: Sequence[np.ndarray], t: float) -> tuple:
        recs = [score(m, p, t) for m, p in zip(models, probs)]
        out: List[Any] = []
        for rec in recs:
            out += [rec["probabilities"], decision_card_html(rec), rec]
        out.append(comparison_markdown(recs) if len(models) > 1 else "")
        return tuple(out)

    def _empty_outputs(n: int) -> tuple:
        return (*([None, "", None] * n), "", "", None, None)

    def rescore(state: Optional[Dict[str, Any]], tau: float):
        if not state or not state.get("probs"):
            return tuple(gr.skip() for _ in range(3 * len(models) + 1))
        try:
            t = _check_threshold(tau)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return _model_outputs([np.asarray(p) for p in state["probs"]], t)

    with gr.Blocks(title="rcl_hf: risk-aware classification", analytics_enabled=False) as demo:
        gr.Markdown(_INTRO)
        gr.Markdown(DISCLAIMER)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = gr.Image(
                    label="Image (PNG, JPEG, BMP, TIFF, WebP)",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=300,
                    elem_id="rcl-input",
                )
                image.preprocess = preprocess_upload  # type: ignore[method-assign]
                tau = gr.Slider(
                    0.0, 1.0, value=tau0, step=0.01,
                    label="Referral threshold τ (expected clinical cost)",
                    info="Refer to a specialist when the best decision's expected cost exceeds τ.",
                    elem_id="rcl-threshold",
                )
                button = gr.Button("Analyze", variant="primary", elem_id="rcl-analyze")
                input_info = gr.Markdown(label="Input", elem_id="rcl-input-info")
                if examples:
                    pairs = [(e, Path(e).stem) if isinstance(e, (str, os.PathLike)) else (str(e[0]), str(e[1])) for e in examples]
                    gr.Examples(
                        examples=[[p] for p, _ in pairs],
                        inputs=[image],
                        example_labels=[c for _, c in pairs],
                        label="Examples (synthetic, no patient data)" if all(c.startswith("synthetic") for _, c in pairs) else "Examples",
                        examples_per_page=12,
                    )
            outputs: List[Any] = []
            for k, m in enumerate(models):
                with gr.Column(scale=1, min_width=320):
                    gr.Markdown(f"### {html.escape(m.name)}")
                    label = gr.Label(num_top_classes=len(m.labels), label=f"Class probabilities ({m.name})", elem_id=f"rcl-probs-{k}")
                    card = gr.HTML(label=f"Decision ({m.name})", elem_id=f"rcl-decision-{k}", js_on_load=None)
                    with gr.Accordion("Severity matrix (critical cells outlined)", open=True):
                        gr.Plot(value=severity_heatmap(m.severity, title=f"Severity matrix of {m.name}"), format="png", label="Severity matrix", show_label=False)
                    with gr.Accordion("Raw result (JSON)", open=False):
                        raw = gr.JSON(label=f"Result JSON ({m.name})")
                    outputs += [label, card, raw]
        summary = gr.Markdown(label="Side by side", elem_id="rcl-compare")
        with gr.Accordion("Converted input (what the models receive before resizing)", open=False):
            preview = gr.Image(label="converted input", interactive=False, type="pil", format="png", height=220)
        state = gr.State()
        all_outputs = [*outputs, summary, input_info, preview, state]
        score_outputs = [*outputs, summary]

        def analyze_image(image: Any, threshold: float):
            """Analyse one image: per model (probabilities, decision HTML, JSON), comparison, input info, converted input."""
            return run(image, threshold)

        def on_image_change(image: Any, threshold: float):
            return run(image, threshold, clear_on_empty=True)

        button.click(analyze_image, [image, tau], all_outputs, api_name="analyze")
        image.change(on_image_change, [image, tau], all_outputs, api_visibility="private")
        tau.release(rescore, [state, tau], score_outputs, api_visibility="private")
        gr.Markdown(
            "Costs: `M[i, j]` is the clinical cost of predicting *j* when the truth is *i* (rcl_hf's presets: 0 correct, "
            "0.1 fine-grained, 0.3 over-call, 1.0 critical; a model may carry its own). Bayes-risk decision: `argmin_j Σ_i p_i M[i, j]`; referral when that minimum "
            "exceeds τ. Method: Risk-Calibrated Learning (arXiv:2604.12693); the exact losses are rcl_hf's definitions."
        )
    return demo


def _uploaded_path(path: str) -> str:
    """Refuse any path outside Gradio's upload/cache folder (defence in depth)."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    abs_path = os.path.abspath(path)
    if not is_in_or_equal(abs_path, get_upload_folder()):
        raise InputImageError("Refusing to read a file that was not uploaded through this page.", "not_uploaded")
    return abs_path


def launch_demo(
    demo: Any,
    host: Optional[str] = None,
    port: Optional[int] = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Queue and launch ``demo`` (no public share link, upload size capped).

    ``host``/``port`` default to ``$GRADIO_SERVER_NAME`` (else ``127.0.0.1``) and
    ``$GRADIO_SERVER_PORT`` (else 7860), as on Hugging Face Spaces.
    """
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = int(port or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=int(max_upload_mb * 1024 * 1024),
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=False,
        footer_links=["api"],
        allowed_paths=[str(_examples_root())],
        ssr_mode=False,
    )


# =============================================================================== CLI
def resolve_model_ids(
    model: Optional[str], compare: Optional[str], environ: Optional[Mapping[str, str]] = None
) -> Tuple[str, Optional[str]]:
    """``(model, compare)``: ``RCL_MODEL`` / ``RCL_COMPARE`` when set, else the CLI values.

    Raises:
        SpaceStartupError: when no model is named anywhere.
    """
    env = os.environ if environ is None else environ
    env_model = (env.get("RCL_MODEL") or "").strip()
    env_compare = (env.get("RCL_COMPARE") or "").strip()
    chosen = env_model or (model or "").strip()
    if not chosen:
        raise SpaceStartupError(
            "No model to serve: pass --model PATH_OR_HUB_ID (a folder saved by rcl_hf or a Hub id), "
            "or set the RCL_MODEL environment variable (a Space variable on the Hub)."
        )
    chosen_compare = env_compare or (compare or "").strip() or None
    return chosen, chosen_compare


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python spaces_demo/app.py",
        description="Risk-aware Gradio Space for an rcl_hf classifier (RCL_MODEL / RCL_COMPARE override --model / --compare).",
    )
    p.add_argument("--model", help="model folder saved by rcl_hf, or a Hub id")
    p.add_argument("--compare", help="second model shown side by side (e.g. a cross-entropy baseline)")
    p.add_argument("--model_label", default=os.environ.get("RCL_MODEL_LABEL"), help="name shown for --model")
    p.add_argument("--compare_label", default=os.environ.get("RCL_COMPARE_LABEL"), help="name shown for --compare")
    p.add_argument("--examples_dir", help="folder of example images (default: generated synthetic examples)")
    p.add_argument("--host", default=None, help="bind address (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--threshold", type=float, default=None, help="initial referral threshold τ")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted width*height")
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest accepted upload (MB)")
    p.add_argument(
        "--threads", type=int, default=int(os.environ.get("RCL_TORCH_THREADS") or 1),
        help="torch CPU threads per inference (default $RCL_TORCH_THREADS, else 1: on a shared 2-core CPU, and with "
        "two requests served at once, one thread is faster and steadier than torch's default; see "
        "benchmarks/space_latency.py)",
    )
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns a process exit code (2 on a start-up error)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        model_id, compare_id = resolve_model_ids(args.model, args.compare)
        if args.examples_dir and not os.path.isdir(args.examples_dir):
            raise SpaceStartupError(f"--examples_dir {args.examples_dir!r} is not a folder.")
        if os.environ.get("RCL_MODEL") and args.model and args.model != model_id:
            logger.info("RCL_MODEL=%s overrides --model %s", model_id, args.model)
        main_model = load_space_model(model_id, args.model_label)
        other = load_space_model(compare_id, args.compare_label) if compare_id else None
        if other is not None and other.labels != main_model.labels:
            logger.warning("the two models have different labels: %s vs %s", main_model.labels, other.labels)
        side = _model_input_side([m for m in (main_model, other) if m is not None])
        examples = make_examples(args.examples_dir, image_size=side)
        demo = build_demo(main_model, other, examples, max_pixels=args.max_pixels,
                          max_upload_mb=args.max_upload_mb, threshold=args.threshold)
    except SpaceStartupError as err:
        print(f"rcl_hf Space: cannot start: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"rcl_hf Space: cannot start: {err}", file=sys.stderr)
        return 2
    if args.threads and args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)  # only once the Space really starts (main() is also called in tests)
    launch_demo(demo, args.host, args.port, max_upload_mb=args.max_upload_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
