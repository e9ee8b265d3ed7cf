"""The Space's example gallery: a user's folder of images, or synthetic images for the synthetic model only."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image

from ..atomic_io import atomic_write_bytes
from .inputs import InputImageError, load_input_image
from .startup import SpaceStartupError

logger = logging.getLogger("rcl_hf.space")

__all__ = ["examples_root", "make_examples", "model_input_side", "EXAMPLES_PER_CLASS", "MAX_USER_EXAMPLES"]

EXAMPLES_PER_CLASS: int = 2
MAX_USER_EXAMPLES: int = 24
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def examples_root() -> Path:
    """Cache folder of the example PNGs (``$RCL_SPACE_CACHE`` or the temp folder); the only folder served."""
    return Path(os.environ.get("RCL_SPACE_CACHE") or Path(tempfile.gettempdir()) / "rcl_hf_space")


def model_input_side(models: Sequence[Any]) -> int:
    """The side of the example images: the models' input side (their image processors), within 128-384."""
    sides = []
    for m in models:
        size = getattr(m.model.image_processor, "size", None) or {}
        side = (size.get("height") or size.get("shortest_edge")) if isinstance(size, dict) else None
        if side:
            sides.append(int(side))
    return int(min(max(max(sides, default=224), 128), 384))


def _save_png(img: Image.Image, target: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(target, buf.getvalue())


def make_examples(
    examples_dir: Optional[str] = None,
    image_size: int = 224,
    per_class: int = EXAMPLES_PER_CLASS,
    seed: int = 0,
    cache_dir: Optional[Union[str, Path]] = None,
    labels: Optional[Sequence[str]] = None,
) -> List[Tuple[str, str]]:
    """Example images: ``[(png_path, caption), ...]``, re-saved as PNGs in the cache folder.

    With ``examples_dir``: up to :data:`MAX_USER_EXAMPLES` validated images of that
    folder. Without it: images generated from rcl_hf's synthetic dataset, but only
    when the model's ``labels`` are the synthetic ones (``None``: assume so); for
    any other model the gallery is hidden (``[]``): no example from another domain.
    """
    root = Path(cache_dir) if cache_dir else examples_root()
    out: List[Tuple[str, str]] = []
    if examples_dir:
        src = Path(examples_dir)
        if not src.is_dir():
            raise SpaceStartupError(f"--examples_dir {examples_dir!r} is not a folder.")
        dest = root / f"user-{hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]}"
        dest.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        for p in files[:MAX_USER_EXAMPLES]:
            try:
                rgb, _ = load_input_image(p)
            except InputImageError as err:
                logger.warning("skipping example %s: %s", p, err)
                continue
            _save_png(rgb, dest / f"{p.stem}.png")
            out.append((str(dest / f"{p.stem}.png"), p.stem))
        if not out:
            raise SpaceStartupError(f"--examples_dir {examples_dir!r} holds no readable image ({', '.join(_IMAGE_SUFFIXES)}).")
        return out

    from ..data.synthetic import SYNTHETIC_LABELS, load_synthetic  # only when a gallery is made: keeps the import light

    if labels is not None and list(labels) != list(SYNTHETIC_LABELS):
        logger.info("no example images for labels %s: the gallery is hidden (pass --examples_dir)", list(labels))
        return []
    dest = root / f"synthetic-s{seed}-{image_size}px"
    dest.mkdir(parents=True, exist_ok=True)
    names = [f"{label}_{n + 1}" for label in SYNTHETIC_LABELS for n in range(per_class)]
    targets = [dest / f"{name}.png" for name in names]
    if not all(t.is_file() for t in targets):
        ds = load_synthetic(seed=seed, n_train=0, n_validation=0, n_test=max(40, 12 * per_class), image_size=image_size)["test"]
        taken: Dict[int, int] = {}
        for row in ds:
            y = int(row["label"])
            if taken.get(y, 0) < per_class:
                taken[y] = taken.get(y, 0) + 1
                _save_png(row["image"].convert("RGB"), dest / f"{SYNTHETIC_LABELS[y]}_{taken[y]}.png")
    return [(str(t), f"synthetic {n.replace('_', ' ')}") for t, n in zip(targets, names) if t.is_file()]
