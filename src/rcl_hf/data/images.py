"""Image decoding and per-file image checks: the one decoder of the package.

:func:`open_image_rgb` is the one decoder the loaders, the transforms, the
duplicate audit and the Gradio Space share; it raises :class:`ImageLoadError`
(a ``ValueError``) for bad input: empty files, truncated JPEG/PNG, non-images
with an image extension, images above ``max_pixels``, unknown pixel modes.

One pass per file (:func:`validate_images`): the bytes are read once, hashed
(SHA-1, for the duplicate audit), checked with ``PIL.Image.verify`` (container
integrity: PNG CRCs, JPEG markers), then decoded with ``Image.load`` (catches
truncation) at a reduced JPEG draft scale (DCT scaling still reads every
entropy-coded block, so truncation is still caught, at a fraction of the cost),
and fingerprinted with a difference hash (:func:`dhash`).  Results are cached on
disk (``<cache_dir>/image_checks/<hash of the data root>.json``, written
atomically) keyed by ``(path, size, mtime_ns)`` so a second load only ``stat``s
the files and reads the SHA-1, size and dHash back.

Pixel modes (:func:`to_rgb`): ``RGB`` passes, ``L`` is replicated to three
channels; the unusual ones are converted and reported with action
``"converted"``:

* ``1``, ``P`` (palette), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` — ``Image.convert("RGB")``
  (a palette with transparency goes through ``RGBA`` first);
* ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La`` — the alpha channel is dropped;
* ``I;16*``, ``I``, ``F`` (16/32-bit) — rescaled to 8 bits:
  ``v8 = round(255 * (v - lo) / (hi - lo))`` with ``lo = min(0, v.min())`` and
  ``hi = v.max()``, applied only when the values leave ``[0, 255]``.

Image hashes: dHash (N. Krawetz, "Kind of like that", hackerfactor.com, 2013):
shrink the grayscale image to 9x8 and set bit ``8*r + c`` when
``pixel[r, c] < pixel[r, c + 1]``; it survives re-encoding and resizing, not
crops or rotations.  :mod:`rcl_hf.data.duplicates` groups files by it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..atomic_io import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageCheck",
    "ImageLoadError",
    "default_cache_dir",
    "dhash",
    "hamming",
    "inspect_image_bytes",
    "open_image_rgb",
    "usability_problem",
    "MIN_SIDE",
    "MIN_PIXEL_STD",
    "read_image_bytes",
    "to_rgb",
    "validate_images",
]

#: Largest accepted ``width * height``; PIL's own decompression-bomb limit
#: (``Image.MAX_IMAGE_PIXELS``, about 89.5 MP) is the default.
DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

_CACHE_VERSION = 1
_DRAFT = (64, 64)  # JPEG draft size used by the validation pass


class ImageLoadError(ValueError):
    """An image cannot be used: empty, truncated, not an image, too large or in an unknown mode.

    ``kind`` is one of ``"empty"``, ``"truncated"``, ``"corrupt"``, ``"not_image"``,
    ``"too_large"``, ``"mode"``, ``"missing_image"``.
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


def default_cache_dir() -> Path:
    """``$RCL_HF_CACHE`` or ``~/.cache/rcl_hf``."""
    env = os.environ.get("RCL_HF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rcl_hf"


# --------------------------------------------------------------------------- modes
def _rescale_to_uint8(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.float64)
    if arr.ndim != 2:
        raise ImageLoadError(f"unsupported {img.mode} image with shape {arr.shape}", kind="mode")
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo = min(0.0, float(arr.min())) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 0.0
    if lo < 0 or hi > 255:
        arr = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Tuple[Image.Image, Optional[str]]:
    """Convert ``img`` to ``RGB``; return ``(rgb_image, note)``.

    ``note`` is ``None`` for ``RGB`` and ``L`` (ordinary colour / grayscale) and
    describes the conversion for every other mode (see the module docstring).

    Raises:
        ImageLoadError: (kind ``"mode"``) for a mode with no sensible RGB form.
    """
    try:
        return _to_rgb(img)
    except ImageLoadError:
        raise
    except (ValueError, OSError) as err:
        raise ImageLoadError(f"cannot convert {img.mode!r} image to RGB: {err}", kind="mode") from None


def _to_rgb(img: Image.Image) -> Tuple[Image.Image, Optional[str]]:
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode == "L":
        return img.convert("RGB"), None
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        out = img.convert("RGBA").convert("RGB") if has_alpha else img.convert("RGB")
        return out, f"palette image ({mode}) converted to RGB" + (", alpha dropped" if has_alpha else "")
    if mode in ("RGBA", "LA"):
        return img.convert("RGB"), f"{mode} image: alpha channel dropped"
    if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
        return img.convert("RGBA" if mode == "RGBa" else "LA").convert("RGB"), f"{mode} image: alpha channel dropped"
    if mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return img.convert("RGB"), f"{mode} image converted to RGB"
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _rescale_to_uint8(img).convert("RGB"), f"{mode} (16/32-bit) image rescaled to 8-bit RGB"
    raise ImageLoadError(f"unsupported image mode {mode!r}", kind="mode")


def read_image_bytes(source: Any) -> Tuple[bytes, str]:
    """Bytes and a display name from a path, bytes, a file object or a ``datasets`` image dict.

    Raises:
        ImageLoadError: a missing or unreadable file, a dict without bytes or path, another type.
    """
    if isinstance(source, dict):  # datasets Image(decode=False) value: {"bytes": ..., "path": ...}
        if source.get("bytes") is not None:
            return bytes(source["bytes"]), str(source.get("path") or "<bytes>")
        if source.get("path"):
            return read_image_bytes(source["path"])
        raise ImageLoadError("image dict has neither 'bytes' nor 'path'", kind="missing_image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as fh:
                return fh.read(), path
        except FileNotFoundError:
            raise ImageLoadError(f"{path}: file not found", kind="missing_image") from None
        except OSError as err:
            raise ImageLoadError(f"{path}: cannot read file ({err})", kind="corrupt") from err
    if hasattr(source, "read"):
        return source.read(), str(getattr(source, "name", "<file>"))
    raise ImageLoadError(f"cannot read an image from {type(source).__name__}", kind="not_image")


def _decode(data: bytes, name: str, max_pixels: Optional[int], draft_size: Optional[Tuple[int, int]], verify: bool) -> Image.Image:
    if len(data) == 0:
        raise ImageLoadError(f"{name}: empty file (0 bytes)", kind="empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageLoadError(f"{name}: not an image (PIL cannot identify the format)", kind="not_image") from None
        except Image.DecompressionBombError as err:
            raise ImageLoadError(f"{name}: image too large ({err})", kind="too_large") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageLoadError(f"{name}: corrupt image header ({err})", kind="corrupt") from None
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageLoadError(f"{name}: image too large ({w}x{h} = {w * h} pixels > max_pixels={max_pixels})", kind="too_large")
        if verify:
            try:
                img.verify()
            except Exception as err:  # PIL raises OSError, SyntaxError, struct.error, ...
                kind = "truncated" if "truncat" in str(err).lower() else "corrupt"
                raise ImageLoadError(f"{name}: {'truncated' if kind == 'truncated' else 'corrupt'} image ({err})", kind=kind) from None
            img = Image.open(io.BytesIO(data))
        if draft_size is not None and img.format == "JPEG":
            img.draft(img.mode if img.mode in ("RGB", "L") else None, draft_size)
        try:
            if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global set by someone else must not hide truncation here
                raise ImageLoadError(
                    f"{name}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; truncated files cannot be detected", kind="corrupt"
                )
            img.load()
        except ImageLoadError:
            raise
        except Exception as err:
            kind = "truncated" if "truncat" in str(err).lower() else "corrupt"
            raise ImageLoadError(f"{name}: {'truncated' if kind == 'truncated' else 'corrupt'} image ({err})", kind=kind) from None
    return img


def open_image_rgb(
    source: Any,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    *,
    draft_size: Optional[Tuple[int, int]] = None,
    exif_transpose: bool = True,
) -> Image.Image:
    """Decode an image fully and return it as a loaded ``RGB`` ``PIL.Image``.

    Args:
        source: a path, ``bytes``, a binary file object, a ``PIL.Image.Image``, or a
            ``datasets`` image dict ``{"bytes": ..., "path": ...}``.
        max_pixels: reject images with more than this many pixels (``None``: no limit
            beyond PIL's own decompression-bomb guard).
        draft_size: for JPEG, let libjpeg decode at the smallest DCT scale (1/2, 1/4,
            1/8) that keeps at least this ``(width, height)``; much faster for large
            files that are downscaled anyway.
        exif_transpose: apply the EXIF orientation tag, as ``datasets.Image`` does.

    Raises:
        ImageLoadError: empty file, truncated or corrupt data, not an image, more
            than ``max_pixels`` pixels, or a pixel mode with no RGB form.
    """
    if isinstance(source, Image.Image):
        w, h = source.size
        if w == 0 or h == 0:
            raise ImageLoadError(f"image has no pixels ({w}x{h})", kind="empty")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageLoadError(f"image too large ({w}x{h} > max_pixels={max_pixels})", kind="too_large")
        img = source
    else:
        data, name = read_image_bytes(source)
        img = _decode(data, name, max_pixels, draft_size, verify=False)
    if exif_transpose:
        try:
            if img.getexif().get(0x0112) not in (None, 1):
                img = ImageOps.exif_transpose(img)
        except Exception:  # malformed EXIF must not make a good image unusable
            pass
    rgb, _ = to_rgb(img)
    return rgb




# --------------------------------------------------------------------------- usable for diagnosis
#: Shortest side of an image that can be assessed (a smaller image holds too little to diagnose).
MIN_SIDE: int = 32
#: Standard deviation of the grey levels (0-255) below which an image is blank: one uniform colour, no anatomy.
MIN_PIXEL_STD: float = 2.0


def usability_problem(rgb: Image.Image, size: Optional[Tuple[int, int]] = None) -> Optional[str]:
    """Why a decoded image holds nothing to diagnose, in plain words, or ``None`` when it can be assessed: a side
    shorter than :data:`MIN_SIDE` pixels (of ``size``, the image as uploaded, when given) or a blank image
    (grey-level standard deviation below :data:`MIN_PIXEL_STD`). The decision layer refers such an image with
    the reason ``"unusable"`` (:class:`rcl_hf.DecisionLayer`)."""
    w, h = size if size is not None and all(size) else rgb.size
    if min(w, h) < MIN_SIDE:
        return (f"The image is too small to assess ({w}x{h} pixels; at least {MIN_SIDE} pixels a side "
                "are needed). Upload the original scan.")
    grey = rgb.convert("L")
    if max(grey.size) > 256:
        grey = grey.copy()
        grey.thumbnail((256, 256))
    if float(np.asarray(grey, dtype=np.float32).std()) < MIN_PIXEL_STD:
        return "The image is blank: it is one uniform colour with nothing visible to assess. Upload the original scan."
    return None


# --------------------------------------------------------------------------- hashes
def dhash(img: Image.Image, hash_size: int = 8) -> int:
    """Difference hash (``hash_size**2`` bits) of ``img``; see the module docstring."""
    small = img.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.BOX)
    px = np.asarray(small, dtype=np.int16)
    bits = (px[:, :-1] < px[:, 1:]).flatten()
    return int(np.packbits(bits).view(">u8")[0]) if hash_size == 8 else int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return int(bin(int(a) ^ int(b)).count("1"))


# --------------------------------------------------------------------------- one-pass validation
@dataclass
class ImageCheck:
    """What the validation pass learnt about one file (cached between runs)."""

    ok: bool
    kind: Optional[str] = None  # ImageLoadError kind when not ok
    reason: Optional[str] = None
    mode: Optional[str] = None
    width: int = 0
    height: int = 0
    sha1: Optional[str] = None
    dhash: Optional[str] = None  # 64-bit difference hash, 16 hex digits
    note: Optional[str] = None  # conversion note for unusual modes


def inspect_image_bytes(data: bytes, name: str = "<bytes>", max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Check one image's bytes: SHA-1, verify, decode, mode, difference hash."""
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        img = _decode(data, name, max_pixels, _DRAFT, verify=True)
        mode, (w, h) = img.mode, img.size
        if img.format == "JPEG":  # draft shrinks size; report the stored size
            with Image.open(io.BytesIO(data)) as hdr:
                w, h = hdr.size
        rgb, note = to_rgb(img)
        return ImageCheck(True, mode=mode, width=w, height=h, sha1=sha1, dhash=f"{dhash(rgb):016x}", note=note)
    except ImageLoadError as err:
        reason = str(err)
        if reason.startswith(f"{name}: "):
            reason = reason[len(name) + 2 :]
        return ImageCheck(False, kind=err.kind, reason=reason, sha1=sha1 if data else None)


class _CheckCache:
    """``{relative_path: [size, mtime_ns, ImageCheck fields]}`` in one JSON file per data root.

    The file's name is a hash of the root's real path, so a key is in effect the
    file's absolute path; an entry counts only while the file's size and
    ``mtime_ns`` are unchanged.  A cache that cannot be read or has the wrong shape
    is ignored with a warning and rebuilt; a malformed entry is a miss.
    """

    def __init__(self, path: Optional[Path], max_pixels: Optional[int]) -> None:
        self.path = path
        self.header = {"version": _CACHE_VERSION, "max_pixels": max_pixels}
        self.entries: Dict[str, Any] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                with open(path, encoding="utf-8") as fh:
                    blob = json.load(fh)
                if not isinstance(blob, dict) or not isinstance(blob.get("entries"), dict):
                    raise ValueError(f"expected an object with 'header' and 'entries', got {type(blob).__name__}")
                if blob.get("header") == self.header:
                    self.entries = blob["entries"]
            except (OSError, ValueError) as err:
                logger.warning("Ignoring unreadable image-check cache %s (rebuilding it): %s", path, err)

    def get(self, key: str, stat: os.stat_result) -> Optional[ImageCheck]:
        hit = self.entries.get(key)
        if not (isinstance(hit, list) and len(hit) == 3 and isinstance(hit[2], dict)):
            return None
        if hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            try:
                return ImageCheck(**hit[2])
            except TypeError:  # fields of another layout
                return None
        return None

    def put(self, key: str, stat: os.stat_result, check: ImageCheck) -> None:
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, asdict(check)]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            blob = json.dumps({"header": self.header, "entries": self.entries}, separators=(",", ":"))
            atomic_write_bytes(self.path, blob.encode("utf-8"))
        except OSError as err:  # a read-only cache location only costs speed
            logger.warning("Cannot write image-check cache %s: %s", self.path, err)


def _check_file(path: str, max_pixels: Optional[int]) -> ImageCheck:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        return ImageCheck(False, kind="corrupt", reason=f"cannot read file ({err})")
    return inspect_image_bytes(data, path, max_pixels)


def validate_images(
    paths: Sequence[Union[str, os.PathLike]],
    *,
    root: Optional[Union[str, os.PathLike]] = None,
    cache_dir: Optional[Union[str, os.PathLike, bool]] = None,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    num_workers: Optional[int] = None,
    progress: bool = True,
    desc: str = "Checking images",
) -> List[ImageCheck]:
    """Check every file once (read, SHA-1, verify, decode) and return one :class:`ImageCheck` each.

    Args:
        paths: the files, in the order of the returned list.
        root: the data root; cache keys are paths relative to it.
        cache_dir: folder for the on-disk cache (``None``: :func:`default_cache_dir`;
            ``False``: no cache).  Entries are keyed by ``(relative path, size, mtime_ns)``.
        max_pixels: see :func:`open_image_rgb`.
        num_workers: decoding threads (PIL releases the GIL); default ``min(8, cpu_count)``.
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    paths = [os.fspath(p) for p in paths]
    root_s = os.path.realpath(os.fspath(root)) if root is not None else None
    cache_path: Optional[Path] = None
    if cache_dir is not False and root_s is not None:
        base = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        cache_path = base / "image_checks" / f"{hashlib.sha1(root_s.encode()).hexdigest()[:16]}.json"
    cache = _CheckCache(cache_path, max_pixels)

    results: List[Optional[ImageCheck]] = [None] * len(paths)
    stats: List[Optional[os.stat_result]] = [None] * len(paths)
    keys: List[str] = [""] * len(paths)
    todo: List[int] = []
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError as err:
            results[i] = ImageCheck(False, kind="missing_image", reason=f"cannot stat file ({err})")
            continue
        stats[i] = st
        keys[i] = os.path.relpath(os.path.realpath(p), root_s) if root_s else p
        hit = cache.get(keys[i], st)
        if hit is not None:
            results[i] = hit
        else:
            todo.append(i)
    if todo:
        workers = num_workers or min(8, os.cpu_count() or 1)
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False)
        try:
            if workers <= 1:
                fresh = []
                for i in todo:
                    fresh.append(_check_file(paths[i], max_pixels))
                    bar.update(1)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    fresh = []
                    for check in pool.map(lambda i: _check_file(paths[i], max_pixels), todo, chunksize=1):
                        fresh.append(check)
                        bar.update(1)
        finally:
            bar.close()
        for i, check in zip(todo, fresh):
            results[i] = check
            if check.kind != "corrupt" or check.sha1 is not None:  # do not cache I/O errors
                cache.put(keys[i], stats[i], check)  # type: ignore[arg-type]
        cache.save()
    return results  # type: ignore[return-value]
