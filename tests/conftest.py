"""Shared fixtures: the small synthetic dataset, a dataset of real-size image files, a tiny checkpoint.

* :func:`synthetic_dataset_dir` — a factory ``make(seed=0, n_train=32, n_validation=16, n_test=16)``
  returning a ``save_to_disk`` folder of the embedded synthetic data (32 px), built once per session
  and argument set (tests must not write into it);
* :func:`real_size_dataset` — synthetic-looking scans saved as JPEG *files* of varied, odd sizes
  (300-600 px a side), in a ``save_to_disk`` ``DatasetDict`` whose ``image`` column points at them,
  so preprocessing (decoding, resizing) runs as on a real download;
* :func:`tiny_checkpoint` — a random-init ``hf-resnet`` (32 px, synthetic severity) saved with its
  image processor and label maps, as ``scripts/train.py`` saves a run (built by
  ``checkpoints.save_tiny_checkpoint``, which tests that modify a checkpoint call for their own copy);
* :func:`tiny_dataset` — the synthetic 200 / 40 / 61 ``save_to_disk`` folder the training tests share;
* :func:`cer_metric` — the ``evaluate`` metric, loaded once from its folder (offline);
* :func:`space_app` — the Space's ``spaces_demo/app.py`` module, loaded once (``space_app.load_space_app``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest


@pytest.fixture(scope="session")
def synthetic_dataset_dir(tmp_path_factory) -> Callable[..., Path]:
    """Factory for small synthetic ``save_to_disk`` folders, cached per ``(seed, n_train, n_validation, n_test)``."""
    made: Dict[Tuple[int, int, int, int], Path] = {}

    def make(seed: int = 0, n_train: int = 32, n_validation: int = 16, n_test: int = 16) -> Path:
        key = (seed, n_train, n_validation, n_test)
        if key not in made:
            from rcl_hf.data.synthetic import load_synthetic

            path = tmp_path_factory.mktemp("synthetic") / f"synthetic_{seed}_{n_train}_{n_validation}_{n_test}"
            load_synthetic(seed=seed, n_train=n_train, n_validation=n_validation, n_test=n_test).save_to_disk(str(path))
            made[key] = path
        return made[key]

    return make


def write_real_size_split(folder: Path, n: int, seed: int, sizes: Tuple[int, int] = (300, 600)) -> Dict[str, list]:
    """Write ``n`` synthetic scans as JPEG files of random sizes in ``sizes``.

    Returns ``{"image": paths, "label": ints, "source_file": paths}`` (``save_to_disk`` embeds the
    image bytes; ``source_file`` keeps where the file is).

    The synthetic generator draws at 96 px; each image is resized (bicubic) to its own odd
    width and height, given fresh pixel noise so no two files share content, and saved as
    JPEG (quality 90).
    """
    from PIL import Image

    from rcl_hf.data.synthetic import generate_images

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, pixels in enumerate(generate_images(labels, rng, image_size=96)):
        w, h = (int(v) | 1 for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        big = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
        big = np.clip(big + rng.normal(0.0, 20.0, size=big.shape), 0, 255).astype(np.uint8)
        path = folder / f"scan_{seed}_{k:04d}.jpg"
        Image.fromarray(np.repeat(big[:, :, None], 3, axis=2)).save(path, format="JPEG", quality=90)
        paths.append(str(path))
    return {"image": paths, "label": labels.astype(int).tolist(), "source_file": list(paths)}


@pytest.fixture(scope="session")
def real_size_dataset(tmp_path_factory) -> Path:
    """``save_to_disk`` folder: train 64 / validation 24 / test 160 JPEG files of 300-600 px, synthetic labels;
    ``source_file`` holds each file's absolute path."""
    import datasets

    from rcl_hf.data.synthetic import SYNTHETIC_LABELS
    from rcl_hf.severity import SeverityMatrix

    root = tmp_path_factory.mktemp("real_size")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=SYNTHETIC_LABELS),
                                  "source_file": datasets.Value("string")})
    info = datasets.DatasetInfo(
        description=json.dumps({"rcl_severity": SeverityMatrix.preset("synthetic").to_dict(), "dataset": "real_size"}),
        features=features,
    )
    splits = {}
    for seed, (split, n) in enumerate((("train", 64), ("validation", 24), ("test", 160))):
        data = write_real_size_split(root / "files" / split, n, seed)
        splits[split] = datasets.Dataset.from_dict(data, features=features, info=info.copy())
    path = root / "dataset"
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init ``hf-resnet`` checkpoint (32 px, synthetic severity) with processor and label maps."""
    from checkpoints import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "tiny")


@pytest.fixture(scope="module")
def tiny_dataset(synthetic_dataset_dir) -> str:
    """A small synthetic DatasetDict saved with ``save_to_disk`` (200 / 40 / 61 images, 32 px): enough to train one
    epoch, with an uneven test split (61) for multi-process evaluation."""
    return str(synthetic_dataset_dir(seed=3, n_train=200, n_validation=40, n_test=61))


@pytest.fixture(scope="session")
def cer_metric():
    """The Critical Error Rate metric through ``evaluate.load`` on its local folder (no Hub)."""
    import evaluate

    from rcl_hf.metrics import METRIC_PATH

    return evaluate.load(METRIC_PATH)


@pytest.fixture(scope="session")
def space_app():
    """The Space's app module (``spaces_demo/app.py`` is a script, not a package module), loaded once."""
    from space_app import load_space_app

    return load_space_app()
