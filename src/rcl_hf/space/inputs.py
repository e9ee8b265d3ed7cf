"""Uploads for the Space: byte cap, data URLs, then the package's decoder.

Decoding, pixel caps (checked from the header, so a decompression bomb is refused
unexpanded), truncation and mode conversion are :func:`rcl_hf.data.open_image_rgb`'s;
this module adds only what an upload needs: a byte limit, ``data:`` URLs, a
description of the input and a working size for display.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..data import DEFAULT_MAX_PIXELS as DATA_MAX_PIXELS
from ..data import ImageLoadError, open_image_rgb
from ..data.images import MIN_PIXEL_STD, MIN_SIDE, to_rgb, usability_problem

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_MB", "WORKING_SIDE", "MIN_SIDE", "MIN_PIXEL_STD", "InputImageError",
           "InputInfo", "load_input_image", "check_usable"]

#: Largest accepted ``width * height`` for an upload (about 7000 x 7000), below the data loaders' limit.
DEFAULT_MAX_PIXELS: int = min(50_000_000, DATA_MAX_PIXELS)
#: Largest accepted upload, in megabytes.
DEFAULT_MAX_UPLOAD_MB: float = 25.0
#: Longest side kept for display and inference (the processor resizes anyway); JPEGs decode at a reduced DCT scale.
WORKING_SIDE: int = 1024


#: The Space's input error is the package's: ``kind`` is ``"empty"``, ``"too_large"``, ``"not_image"``,
#: ``"truncated"``, ``"corrupt"``, ``"mode"``, ``"missing_image"``, ``"not_uploaded"``, or ``"unusable"``
#: (:func:`check_usable`: a decodable image with nothing to diagnose).
InputImageError = ImageLoadError


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
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _too_large(what: str, size: float, max_bytes: int) -> InputImageError:
    return InputImageError(f"{what} is {_human_bytes(size)}, above the limit of {_human_bytes(max_bytes)}.", "too_large")


def _read_source(source: Any, max_bytes: int) -> Tuple[bytes, str]:
    """Bytes and a display name for a path / bytes / file object / ``data:`` URL, within ``max_bytes``."""
    if source is None:
        raise InputImageError("No image received: upload an image or pick an example.", "empty")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "<upload>"
    elif isinstance(source, str) and source.startswith("data:"):
        head, _, payload = source.partition(",")
        if ";base64" not in head:
            raise InputImageError("The upload is a data URL without base64 content: not an image.", "not_image")
        if len(payload) * 3 // 4 > max_bytes:
            raise _too_large("The upload", len(payload) * 3 / 4, max_bytes)
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
        if path.stat().st_size > max_bytes:
            raise _too_large(f"The file {name!r}", path.stat().st_size, max_bytes)
        data = path.read_bytes()
    elif hasattr(source, "read"):
        data, name = source.read(max_bytes + 1), getattr(source, "name", "<stream>")
    else:
        raise InputImageError(f"Expected an uploaded image file, bytes, a PIL image or an array, got {type(source).__name__}.", "not_image")
    if not data:
        raise InputImageError(f"The upload {name!r} is empty (0 bytes): please choose an image file.", "empty")
    if len(data) > max_bytes:
        raise _too_large(f"The upload {name!r}", len(data), max_bytes)
    return data, name


def _user_error(err: ValueError, name: str, max_pixels: int) -> InputImageError:
    """The decoder's error as the message the user reads (pixel limits in megapixels)."""
    kind = getattr(err, "kind", "not_image")
    text = str(err).replace("<bytes>: ", "")
    if kind == "too_large":
        text = f"{text} (the limit is {max_pixels / 1e6:.1f} megapixels)"
    return InputImageError(f"{name}: {text}" if name and name not in text else text, kind)


def load_input_image(
    source: Any,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    working_side: Optional[int] = WORKING_SIDE,
) -> Tuple[Image.Image, InputInfo]:
    """Decode one user image safely into an 8-bit ``RGB`` ``PIL.Image`` and describe it.

    ``source``: a path (the file Gradio saved), bytes, a file object, a ``data:``
    URL, a ``PIL.Image`` or a numpy array. Conversions (grayscale, palette, alpha,
    16/32-bit, CMYK, ...) follow rcl_hf's loaders (:func:`rcl_hf.data.images.to_rgb`);
    each becomes a note.

    Raises:
        InputImageError: empty, too large (bytes or pixels), not an image, truncated, unsupported mode.
    """
    from ..inference import as_rgb_image

    notes: List[str] = []
    if isinstance(source, (Image.Image, np.ndarray)):
        img = source if isinstance(source, Image.Image) else None
        try:
            rgb = as_rgb_image(source, max_pixels)
        except ValueError as err:
            raise _user_error(err, "", max_pixels) from None
        mode, fmt, (w, h) = (img.mode, img.format, img.size) if img is not None else ("array", None, rgb.size)
        if img is not None and mode not in ("RGB", "L"):
            notes.append(to_rgb(img)[1] or f"{mode} image converted to RGB")
    else:
        data, name = _read_source(source, max_bytes)
        try:  # header only: mode, format and stored size for the description
            with Image.open(io.BytesIO(data)) as head:
                mode, fmt, (w, h) = head.mode, head.format, head.size
        except Exception:  # noqa: BLE001 - open_image_rgb below gives the precise message
            mode, fmt, (w, h) = "?", None, (0, 0)
        draft = (working_side, working_side) if working_side else None
        try:
            rgb = open_image_rgb(data, max_pixels, draft_size=draft)
        except ImageLoadError as err:
            raise _user_error(err, name, max_pixels) from None
        except Exception as err:  # noqa: BLE001 - a PIL parser may raise anything on a malformed header
            raise InputImageError(f"{name}: not a readable image ({type(err).__name__}: {err})", "not_image") from None
        if mode not in ("RGB", "L", "?"):  # the loaders' conversion note (alpha dropped, 16-bit rescaled, ...)
            with Image.open(io.BytesIO(data)) as again:
                note = to_rgb(again)[1]
            notes.append(note or f"{mode} image converted to RGB")
    if mode == "L":
        notes.append("grayscale image replicated to 3 channels")
    if working_side and max(rgb.size) > working_side:
        rgb = rgb.copy()
        rgb.thumbnail((working_side, working_side), Image.Resampling.LANCZOS)
        notes.append(f"downscaled to {rgb.size[0]}x{rgb.size[1]} for display and inference")
    return rgb, InputInfo(width=int(w), height=int(h), mode=mode, format=fmt, notes=notes)


def check_usable(rgb: Image.Image, info: Optional[InputInfo] = None) -> None:
    """Refuse, before any model runs, an image with nothing to diagnose (:func:`rcl_hf.data.images.usability_problem`:
    too small or blank).

    Raises:
        InputImageError: ``kind="unusable"``, with the reason in plain words.
    """
    problem = usability_problem(rgb, (info.width, info.height) if info is not None else None)
    if problem is not None:
        raise InputImageError(problem, "unusable")
