"""The embedded default dataset: synthetic "scans" generated on the fly.

No file is shipped; every image is drawn from a seeded generator in seconds.
The structure mirrors the real problem (docs/severity.md, preset ``synthetic``):

* ``normal`` — a smooth, noisy tissue-like background;
* ``lesion_round``, ``lesion_oval``, ``lesion_ring`` — the same background with a
  bright lesion: a disc, an ellipse, or an annulus.

Two kinds of difficulty are built in on purpose:

* *fine-grained*: an oval's aspect ratio starts near 1 and a ring's wall can be
  thick, so the three lesion subtypes are easy to confuse (cost 0.1);
* *critical*: a share of lesions (``subtle_fraction``) are small and faint,
  close to the background's noise, so they pass for ``normal`` — calling such
  a case normal is the critical error (cost 1.0) that cross-entropy makes and the
  risk-calibrated loss is meant to suppress.

Design (what the main job's question needs, and what it must not contain):

* the critical cases are *rankable*: a faint lesion still adds signal (contrast 0.03-0.09 over a
  disc of ~30 pixels, against pixel noise 0.06 and a smooth background of 0.08), so a model can
  learn to score it above a normal case, and a decision rule or a loss can move the operating point
  along a CER-accuracy front; they are not label noise, which no method could fix;
* nothing in the generator looks at the loss or the severity costs: the images, class frequencies
  and the share of faint lesions are fixed before any model is trained, with the same seed for every
  method, and were not tuned on the main job's result; the only link to the costs is the preset
  ``synthetic`` (any lesion called ``normal`` is critical, subtype confusions cost 0.1), the same
  structure as the real presets;
* difficulty competes: the three lesion subtypes are confusable (fine-grained, cheap errors) while
  the faint lesions are the expensive ones, so a training loss that weighs costs can spend capacity
  differently from cross-entropy, and a post-hoc rule can trade accuracy for CER; which one wins is
  the measured question.

Images are grayscale-looking RGB, ``image_size`` pixels square.  Each case has a
``patient_id`` (2-3 cases per patient, never shared across splits) so grouped
code paths run on it as on real data.
"""

from __future__ import annotations

import json
from typing import Dict, Optional

import numpy as np
from PIL import Image

from ..severity import PRESETS, SeverityMatrix

__all__ = ["generate_images", "load_synthetic", "SYNTHETIC_LABELS"]

PRETTY_NAME = "rcl_hf synthetic lesions"
SYNTHETIC_LABELS = list(PRESETS["synthetic"].labels)


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Low-frequency texture (bilinear-upsampled coarse noise) plus pixel noise, in [0, 1]."""
    coarse = rng.normal(0.0, 1.0, size=(n, 5, 5))
    x = np.linspace(0, 4, size)
    i0 = np.clip(np.floor(x).astype(int), 0, 3)
    f = x - i0
    rows = coarse[:, i0, :] * (1 - f)[None, :, None] + coarse[:, i0 + 1, :] * f[None, :, None]
    smooth = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]
    base = 0.45 + 0.08 * smooth + rng.normal(0.0, 0.06, size=(n, size, size))
    return base


def generate_images(
    labels: np.ndarray,
    rng: np.random.Generator,
    image_size: int = 32,
    subtle_fraction: float = 0.25,
) -> np.ndarray:
    """Draw one uint8 ``(N, H, W)`` image per label (0 = normal, 1-3 = lesion subtypes)."""
    n = len(labels)
    imgs = _background(rng, n, image_size)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    for k in range(n):
        y = int(labels[k])
        if y == 0:
            continue
        subtle = rng.random() < subtle_fraction
        contrast = rng.uniform(0.03, 0.09) if subtle else rng.uniform(0.15, 0.35)
        scale = image_size / 32.0
        radius = (rng.uniform(2.5, 3.5) if subtle else rng.uniform(3.5, 6.0)) * scale
        cy, cx = rng.uniform(0.3, 0.7, size=2) * image_size
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        if y == 2:  # oval: aspect 1.3-2.2, close to "round" at the low end
            aspect = rng.uniform(1.3, 2.2)
            r = np.sqrt((u / (radius * np.sqrt(aspect))) ** 2 + (v * np.sqrt(aspect) / radius) ** 2)
        else:
            r = np.hypot(u, v) / radius
        if y == 3:  # ring: wall thickness 0.3-0.6 of the radius; thick walls look like discs
            wall = rng.uniform(0.3, 0.6)
            profile = np.clip(1.0 - np.abs(r - (1 - wall / 2)) / (wall / 2), 0, 1)
        else:
            profile = np.clip(1.2 - r, 0, 1) ** 0.5 * (r < 1.2)
        imgs[k] += contrast * profile
    return (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)


def _split(
    n: int, seed: int, image_size: int, class_probs: np.ndarray, subtle_fraction: float, prefix: str
) -> Dict[str, list]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(class_probs), size=n, p=class_probs)
    pixels = generate_images(labels, rng, image_size, subtle_fraction)
    patient = np.cumsum(rng.random(n) < 0.45)  # runs of ~2-3 consecutive cases per patient
    return {
        "image": [Image.fromarray(np.repeat(p[:, :, None], 3, axis=2)) for p in pixels],
        "label": labels.astype(int).tolist(),
        "patient_id": [f"{prefix}-{int(p):05d}" for p in patient],
    }


def load_synthetic(
    seed: int = 0,
    n_train: int = 2400,
    n_validation: int = 600,
    n_test: int = 1200,
    image_size: int = 32,
    subtle_fraction: float = 0.25,
    class_probs: Optional[list] = None,
):
    """Build the synthetic :class:`datasets.DatasetDict` (train / validation / test).

    Args:
        seed: one seed determines every image; splits use independent streams.
        n_train, n_validation, n_test: split sizes.
        image_size: side length in pixels.
        subtle_fraction: share of lesions drawn faint and small (the critical cases).
        class_probs: class frequencies (default: normal 0.4, each lesion 0.2).

    The severity preset ``synthetic`` travels in each split's ``info.description``
    (read it back with :func:`rcl_hf.data.severity_for`).
    """
    import datasets

    probs = np.asarray(class_probs if class_probs is not None else [0.4, 0.2, 0.2, 0.2], dtype=np.float64)
    if probs.shape != (4,) or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
        raise ValueError(f"class_probs must be 4 non-negative numbers summing to 1, got {probs.tolist()}")
    if not 0.0 <= subtle_fraction <= 1.0:
        raise ValueError(f"subtle_fraction must be in [0, 1], got {subtle_fraction}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=SYNTHETIC_LABELS),
            "patient_id": datasets.Value("string"),
        }
    )
    severity = SeverityMatrix.preset("synthetic")
    info = datasets.DatasetInfo(
        description=json.dumps({"rcl_severity": severity.to_dict(), "dataset": "synthetic", "seed": seed}),
        features=features,
    )
    out = {}
    for i, (name, n) in enumerate((("train", n_train), ("validation", n_validation), ("test", n_test))):
        if n <= 0:
            continue
        data = _split(n, seed * 1000 + i, image_size, probs, subtle_fraction, f"{name[:2]}{seed}")
        out[name] = datasets.Dataset.from_dict(data, features=features, info=info.copy(), split=name)
    return datasets.DatasetDict(out)
