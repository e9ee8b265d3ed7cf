"""Training and evaluation image transforms, applied lazily with ``with_transform``.

Output of every transformed split: ``{"pixel_values": float tensor (B, 3, H, W), "labels": [int]}``
— what ``transformers`` image classifiers and ``default_data_collator`` expect.
With the ``Trainer``, set ``remove_unused_columns=False`` (the transform needs the
``image`` column) and ``label_names=["labels"]``.

* **train**: ``RandomResizedCrop(size, scale, ratio=(3/4, 4/3))`` -> horizontal flip
  (p=``hflip``) -> vertical flip (p=``vflip``) -> tensor -> ``Normalize(mean, std)``.
  Hand-built with torchvision: timm's ``RandomResizedCropAndInterpolation`` draws
  from Python's ``random`` (not torch's generator, which
  ``rcl_hf.train_job.SeededAugmentation`` seeds per row) and ``create_transform``
  adds colour jitter.
* **eval**: ``timm.data.create_transform(is_training=False)``: with ``crop_pct=None``,
  resize straight to ``size`` (the ``transformers`` ViT-processor convention; timm's
  ``crop_mode="squash"``, ``crop_pct=1``); with ``crop_pct``, resize the shorter
  side to ``size / crop_pct`` and centre-crop ``size`` (timm's ``"center"`` mode; a
  non-square size squashes to ``size / crop_pct`` first).

Normalisation: ``x = (v / 255 - mean) / std`` per channel.

One definition of preprocessing: :class:`TransformConfig` (size, crop,
interpolation, mean, std; rescale ``1/255``) builds the eval transform *and*
(:meth:`TransformConfig.to_image_processor`) the ``ViTImageProcessor`` saved beside
every checkpoint, so ``transformers.pipeline("image-classification", model=folder)``
preprocesses like the evaluation (same interpolation; equal tensors on the PIL
backend, within one 8-bit level on the torchvision backend).

Decoding goes through :func:`rcl_hf.data.images.open_image_rgb` (any mode to RGB,
EXIF orientation), on the raw bytes or path: ``apply_transforms`` switches the
``image`` column to ``Image(decode=False)`` so an image is decoded once per
access, not twice.  Training splits decode JPEGs at a DCT draft scale (>= 2x the
target size; faster); evaluation splits decode in full, as ``pipeline`` does.

:func:`cache_resized` writes a copy whose images are downscaled once (shorter
side ``size``) and saved with ``save_to_disk``; epochs after the first then
decode small files instead of full-size originals (the cached copies are
re-encoded, so evaluation on them differs slightly from ``pipeline`` on originals).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image

from ..atomic_io import commit_dir, staging_dir
from .images import DEFAULT_MAX_PIXELS, open_image_rgb
from .metadata import dataset_fingerprint

#: ImageNet statistics, equal to ``timm.data.IMAGENET_DEFAULT_MEAN`` / ``_STD`` (tested); not imported from
#: timm here so that reading them does not import timm.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "TransformConfig",
    "apply_transforms",
    "build_transforms",
    "cache_resized",
    "resolve_transform_config",
]

SizeLike = Union[int, Sequence[int]]


def _hw(image_size: SizeLike) -> Tuple[int, int]:
    if isinstance(image_size, int):
        hw = (image_size, image_size)
    else:
        vals = [int(v) for v in image_size]
        hw = (vals[-2], vals[-1]) if len(vals) >= 2 else (vals[0], vals[0])
    if min(hw) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return hw


#: PIL resampling filter (the ``resample`` of ``transformers`` image processors) -> interpolation name.
_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_RESAMPLE_OF = {name: code for code, name in _PIL_RESAMPLE_NAMES.items()}


@dataclass
class TransformConfig:
    """Everything the transforms need: size ``(H, W)``, normalisation, crop and interpolation.

    The one definition of evaluation preprocessing: :func:`build_transforms` and
    :meth:`to_image_processor` both read it.  Pixels are rescaled by ``1/255``.
    """

    image_size: Tuple[int, int] = (224, 224)
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    crop_pct: Optional[float] = None
    interpolation: str = "bicubic"

    def to_image_processor(self) -> Any:
        """The ``transformers`` image processor that preprocesses like the evaluation transform.

        ``ViTImageProcessor``: resize to ``(H, W)`` with ``resample`` = this config's
        interpolation as a PIL filter, rescale ``1/255``, normalise with ``mean`` / ``std``.

        Raises:
            ValueError: ``crop_pct`` is set (no ``transformers`` processor reproduces timm's
                centre crop: its offsets round differently), or an interpolation PIL lacks.
        """
        from transformers import ViTImageProcessor

        if self.crop_pct is not None:
            raise ValueError(
                f"crop_pct={self.crop_pct}: no transformers image processor reproduces this centre crop exactly "
                "(crop offsets round differently); train and evaluate with crop_pct=None to save a processor"
            )
        resample = _RESAMPLE_OF.get(self.interpolation.lower())
        if resample is None:
            raise ValueError(f"Interpolation {self.interpolation!r} has no PIL filter; use one of {sorted(_RESAMPLE_OF)}")
        h, w = self.image_size
        return ViTImageProcessor(
            do_resize=True,
            size={"height": int(h), "width": int(w)},
            resample=resample,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(self.mean),
            image_std=list(self.std),
        )


def _size_fields(size: Any) -> Dict[str, Any]:
    """``height`` / ``width`` / ``shortest_edge`` of a processor size (dict, ``SizeDict`` or int)."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, Mapping):
        return dict(size)
    return {k: getattr(size, k, None) for k in ("height", "width", "shortest_edge")}


def resolve_transform_config(
    source: Any = None,
    *,
    image_size: Optional[SizeLike] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    crop_pct: Optional[float] = None,
    interpolation: Optional[str] = None,
) -> TransformConfig:
    """Build a :class:`TransformConfig` from a model's preprocessing description.

    ``source`` may be ``None`` (ImageNet defaults, 224), a timm data config dict
    (``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``, as from
    ``timm.data.resolve_data_config``), a timm model (its ``pretrained_cfg``), or a
    ``transformers`` image processor (``size``, ``crop_size``, ``image_mean``,
    ``image_std``, ``resample``).  Explicit keyword arguments override it.
    """
    cfg = TransformConfig()
    if source is None:
        pass
    elif isinstance(source, Mapping):  # timm data config
        if "input_size" in source:
            cfg.image_size = _hw(source["input_size"])
        cfg.mean = tuple(source.get("mean", cfg.mean))
        cfg.std = tuple(source.get("std", cfg.std))
        if source.get("crop_pct") is not None:
            cfg.crop_pct = float(source["crop_pct"])
        cfg.interpolation = str(source.get("interpolation", cfg.interpolation))
    elif hasattr(source, "pretrained_cfg") or hasattr(source, "default_cfg"):  # timm model
        from timm.data import resolve_data_config

        return resolve_transform_config(
            resolve_data_config({}, model=source),
            image_size=image_size, mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation,
        )
    elif hasattr(source, "image_mean") or hasattr(source, "size"):  # transformers image processor
        crop = _size_fields(getattr(source, "crop_size", None)) if getattr(source, "do_center_crop", False) else {}
        size = crop if crop.get("height") or crop.get("shortest_edge") else _size_fields(getattr(source, "size", None))
        if size.get("height") and size.get("width"):
            cfg.image_size = (int(size["height"]), int(size["width"]))
        elif size.get("shortest_edge"):
            cfg.image_size = _hw(int(size["shortest_edge"]))
        if getattr(source, "do_center_crop", False) and getattr(source, "crop_pct", None):
            cfg.crop_pct = float(source.crop_pct)
        elif getattr(source, "do_center_crop", False):
            edge = _size_fields(getattr(source, "size", None)).get("shortest_edge")
            if edge:
                cfg.crop_pct = min(1.0, min(cfg.image_size) / float(edge))
        if getattr(source, "image_mean", None) is not None:
            cfg.mean = tuple(float(v) for v in source.image_mean)
        if getattr(source, "image_std", None) is not None:
            cfg.std = tuple(float(v) for v in source.image_std)
        resample = getattr(source, "resample", None)
        if resample is not None:
            cfg.interpolation = _PIL_RESAMPLE_NAMES.get(int(resample), cfg.interpolation)
    else:
        raise ValueError(
            f"Cannot read a transform config from {type(source).__name__}: pass a timm data config dict, "
            "a timm model or a transformers image processor"
        )
    if image_size is not None:
        cfg.image_size = _hw(image_size)
    if mean is not None:
        cfg.mean = tuple(float(v) for v in mean)
    if std is not None:
        cfg.std = tuple(float(v) for v in std)
    if crop_pct is not None:
        cfg.crop_pct = float(crop_pct)
    if interpolation is not None:
        cfg.interpolation = interpolation
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        raise ValueError(f"mean and std need 3 channels and std > 0, got mean={cfg.mean} std={cfg.std}")
    if cfg.crop_pct is not None and not (0 < cfg.crop_pct <= 1):
        raise ValueError(f"crop_pct must be in (0, 1], got {cfg.crop_pct}")
    return cfg


def build_transforms(
    image_size: SizeLike,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    train: bool = False,
    *,
    crop_pct: Optional[float] = None,
    interpolation: str = "bicubic",
    scale: Tuple[float, float] = (0.8, 1.0),
    hflip: float = 0.5,
    vflip: float = 0.0,
) -> Callable[[Image.Image], Any]:
    """A pipeline ``RGB PIL image -> normalised float tensor (3, H, W)``; see the module docstring."""
    from torchvision import transforms as T

    h, w = _hw(image_size)
    try:
        interp = T.InterpolationMode(interpolation.lower())
    except ValueError:
        raise ValueError(f"Unknown interpolation {interpolation!r}; use bilinear, bicubic, nearest, ...") from None
    if crop_pct is not None and not (0 < crop_pct <= 1):
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if not train:
        from timm.data import create_transform

        return create_transform(
            input_size=(3, h, w), is_training=False, interpolation=interp.value, mean=tuple(mean), std=tuple(std),
            crop_pct=1.0 if crop_pct is None else crop_pct,
            crop_mode="center" if crop_pct is not None and h == w else "squash",
        )
    steps = [T.RandomResizedCrop((h, w), scale=tuple(scale), ratio=(3 / 4, 4 / 3), interpolation=interp, antialias=True)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if vflip > 0:
        steps.append(T.RandomVerticalFlip(vflip))
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(steps)


class ImageTransform:
    """Batch transform for ``Dataset.with_transform``: decode, transform, rename ``label`` -> ``labels``.

    Picklable (a class, not a closure) so DataLoader workers can use it.
    """

    def __init__(
        self,
        transform: Callable[[Image.Image], Any],
        draft_size: Optional[Tuple[int, int]] = None,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
        image_column: str = "image",
        label_column: str = "label",
    ) -> None:
        self.transform = transform
        self.draft_size = draft_size
        self.max_pixels = max_pixels
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, batch: Dict[str, list]) -> Dict[str, Any]:
        import torch

        pixels = [
            self.transform(open_image_rgb(v, self.max_pixels, draft_size=self.draft_size))
            for v in batch[self.image_column]
        ]
        out: Dict[str, Any] = {"pixel_values": torch.stack(pixels)}
        if self.label_column in batch:
            out["labels"] = [int(v) for v in batch[self.label_column]]
        return out


def apply_transforms(
    dsd: Any,
    image_size: Optional[SizeLike] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    *,
    source: Any = None,
    train_splits: Sequence[str] = ("train",),
    crop_pct: Optional[float] = None,
    interpolation: Optional[str] = None,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    image_column: str = "image",
    label_column: str = "label",
    **augment: Any,
) -> Any:
    """Attach train/eval transforms to every split lazily (``with_transform``).

    Args:
        dsd: a ``DatasetDict`` (or a single ``Dataset``, treated as an eval split).
        image_size, mean, std, crop_pct, interpolation: override ``source``.
        source: a timm data config / timm model / ``transformers`` image processor
            (see :func:`resolve_transform_config`).
        train_splits: splits that get the random training transform.
        **augment: ``scale``, ``hflip``, ``vflip`` for :func:`build_transforms`.

    Returns:
        The same kind of object, whose rows read ``{"pixel_values", "labels"}``.
    """
    import datasets

    cfg = resolve_transform_config(
        source, image_size=image_size, mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation
    )
    draft = (2 * cfg.image_size[1], 2 * cfg.image_size[0])

    def one(ds: "datasets.Dataset", train: bool) -> "datasets.Dataset":
        if image_column not in ds.column_names:
            raise ValueError(f"No {image_column!r} column to transform; columns are {ds.column_names}")
        feat = ds.features[image_column]
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        tf = build_transforms(
            cfg.image_size, cfg.mean, cfg.std, train=train, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, **augment
        )
        # evaluation decodes in full, as pipeline() does: a JPEG draft changes the pixels
        return ds.with_transform(ImageTransform(tf, draft if train else None, max_pixels, image_column, label_column))

    if isinstance(dsd, datasets.Dataset):
        return one(dsd, train=False)
    return datasets.DatasetDict({split: one(ds, split in train_splits) for split, ds in dsd.items()})


# --------------------------------------------------------------------------- resize cache
def _resize_batch(batch: Dict[str, list], size: int, fmt: str, quality: int, max_pixels: Optional[int], image_column: str) -> Dict[str, list]:
    out = []
    for v in batch[image_column]:
        img = open_image_rgb(v, max_pixels, draft_size=(size, size))
        w, h = img.size
        short = min(w, h)
        if short > size:
            nw, nh = max(1, round(w * size / short)), max(1, round(h * size / short))
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        buf = io.BytesIO()
        if fmt == "JPEG":
            img.save(buf, format="JPEG", quality=quality)
        else:
            img.save(buf, format="PNG")
        name = os.path.basename(v.get("path") or "") if isinstance(v, dict) else ""
        out.append({"bytes": buf.getvalue(), "path": name or None})
    return {image_column: out}


def _cache_key(ds: Any, split: str, size: int, fmt: str, quality: int) -> str:
    h = hashlib.sha1(json.dumps([split, size, fmt, quality]).encode())
    if "sha1" in ds.column_names:  # content-addressed: same files, same cache
        for s in ds["sha1"]:
            h.update((s or "-").encode())
        h.update(str(len(ds)).encode())
    else:
        h.update(dataset_fingerprint(ds).encode())
    return h.hexdigest()[:16]


def cache_resized(
    dsd: Any,
    size: int,
    cache_dir: Union[str, os.PathLike],
    *,
    fmt: str = "JPEG",
    quality: int = 95,
    num_proc: Optional[int] = None,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    image_column: str = "image",
) -> Any:
    """Downscale every image once (shorter side ``size``, never upscaled) and cache it on disk.

    Each split is written with ``save_to_disk`` under ``cache_dir/<split>-<size>-<key>``,
    the key hashing the split's ``sha1`` column (or fingerprint), ``size``, ``fmt`` and
    ``quality``; a later call with the same data loads it (memory-mapped) instead.
    Other columns and the dataset info (severity metadata included) are kept; the
    ``sha1`` column still describes the original file.

    Args:
        fmt: ``"JPEG"`` (``quality``) or ``"PNG"`` (lossless).
        num_proc: processes for ``Dataset.map``.
    """
    import datasets

    fmt = fmt.upper()
    if fmt not in ("JPEG", "PNG"):
        raise ValueError(f"fmt must be 'JPEG' or 'PNG', got {fmt!r}")
    if int(size) <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    base = Path(cache_dir)
    single = isinstance(dsd, datasets.Dataset)
    items = {"train": dsd} if single else dict(dsd)
    out = {}
    for split, ds in items.items():
        target = base / f"{split}-{int(size)}-{_cache_key(ds, split, int(size), fmt, quality)}"
        if not (target / "dataset_info.json").is_file():
            raw = ds.cast_column(image_column, datasets.Image(decode=False))
            features = raw.features.copy()
            features[image_column] = datasets.Image()
            resized = raw.map(
                _resize_batch,
                batched=True,
                batch_size=64,
                fn_kwargs=dict(size=int(size), fmt=fmt, quality=quality, max_pixels=max_pixels, image_column=image_column),
                features=features,
                num_proc=num_proc,
                desc=f"Resizing {split} to {size}px",
                load_from_cache_file=False,
            )
            staging = staging_dir(target)
            resized.save_to_disk(staging)
            commit_dir(staging, target)
        out[split] = datasets.load_from_disk(str(target))
    return out["train"] if single else datasets.DatasetDict(out)
