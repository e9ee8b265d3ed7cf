"""Data pipeline: images/s decoded and transformed, from the original files ("cold") vs the resized cache.

The pipeline is the one training uses: :func:`rcl_hf.data.transforms.apply_transforms`
(decode with ``open_image_rgb``, JPEG draft (training splits), ``RandomResizedCrop`` to 224 px,
flip, normalise), read through a ``torch.utils.data.DataLoader`` with batch 32
and ``transformers.default_data_collator``, as the Trainer reads it.

* ``cold``: the dataset as loaded (full-size image bytes);
* ``cached``: the same dataset after :func:`rcl_hf.data.transforms.cache_resized`
  (shorter side 224 px, JPEG q95, ``save_to_disk``; memory-mapped);
* the one-time cost of building the cache is reported beside them.

Images: by default generated 512 x 512 JPEGs (the synthetic generator's scans,
drawn at full size, like typical MRI slices); with ``--real`` also the first
images of ``../shared/data/brain_tumor_mri/Training`` through the project's
loader (those copies are at most 256 px, so the cache gains less there).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

IMAGE_SIZE = 224


def generated_dataset(n: int, side: int = 512, seed: int = 0):
    """``n`` synthetic scans as ``side`` x ``side`` JPEG bytes in a ``datasets.Dataset`` (``image``, ``label``)."""
    import datasets
    import numpy as np
    from PIL import Image

    from rcl_hf.data.synthetic import SYNTHETIC_LABELS, generate_images

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SYNTHETIC_LABELS), size=n)
    images: List[Dict[str, Any]] = []
    for start in range(0, n, 16):  # chunks keep the float work arrays small
        for k, pixels in enumerate(generate_images(labels[start:start + 16], rng, image_size=side)):
            buf = io.BytesIO()
            Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2)).save(buf, format="JPEG", quality=90)
            images.append({"bytes": buf.getvalue(), "path": f"scan_{start + k:05d}.jpg"})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=SYNTHETIC_LABELS)})
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


def real_dataset(n: int, data_dir: Optional[str] = None):
    """The first ``n`` training images of Brain Tumor MRI through ``rcl_hf.data.load_dataset``."""
    from rcl_hf.data import load_dataset

    root = Path(data_dir) if data_dir else Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = root / "brain_tumor_mri" / "Training"
    if not folder.is_dir():
        raise FileNotFoundError(f"--real needs the Brain Tumor MRI images at {folder}")
    dsd = load_dataset("brain_tumor_mri", folder, val_size=0.0, test_size=0.0, progress=False)
    ds = dsd["train"].shuffle(seed=0)
    return ds.select(range(min(n, len(ds)))).select_columns(["image", "label", "sha1"])


def _measure(name: str, ds: Any, repeats: int, batch: int, work: str) -> Dict[str, Any]:
    import datasets
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from benchmarks import interleave, stats
    from rcl_hf.data.transforms import apply_transforms, cache_resized

    t = time.perf_counter()
    cached = cache_resized(datasets.DatasetDict({"train": ds}), IMAGE_SIZE, os.path.join(work, name))["train"]
    build_s = time.perf_counter() - t
    loaders = {}
    for variant, data in (("cold", ds), ("cached", cached)):
        tf = apply_transforms(datasets.DatasetDict({"train": data}), image_size=IMAGE_SIZE)["train"]
        loaders[variant] = DataLoader(tf, batch_size=batch, shuffle=False, collate_fn=default_data_collator, num_workers=0)

    def pass_over(loader: Any):
        def go() -> None:
            for b in loader:
                assert b["pixel_values"].shape[-1] == IMAGE_SIZE

        return go

    times = interleave({k: pass_over(v) for k, v in loaders.items()}, repeats=repeats, warmup=1)
    n = len(ds)
    ips = {k: stats([n / t for t in v]) for k, v in times.items()}
    sizes = {k: _mean_side(d) for k, d in (("cold", ds), ("cached", cached))}
    return {"n": n, "build_s": build_s, "build_ips": n / build_s, "ips": ips, "times_s": times, "sides": sizes}


def _mean_side(ds: Any) -> str:
    import datasets

    from rcl_hf.data.images import open_image_rgb  # the package's one decoder

    raw = ds.cast_column("image", datasets.Image(decode=False)).select(range(min(8, len(ds))))
    sides = [open_image_rgb(v).size for v in raw["image"]]
    w = sum(s[0] for s in sides) / len(sides)
    h = sum(s[1] for s in sides) / len(sides)
    return f"{w:.0f}x{h:.0f}"


def run(quick: bool = False, real: bool = False, repeats: Optional[int] = None, data_dir: Optional[str] = None,
        **_: Any) -> Dict[str, Any]:
    import datasets

    from benchmarks import make_ratio

    datasets.disable_progress_bars()
    n, batch = (16, 8) if quick else (256, 32)
    repeats = repeats or (2 if quick else 5)
    work = tempfile.mkdtemp(prefix="rcl_bench_data_")
    side = 128 if quick else 512
    sources = {f"generated {side} px JPEG": lambda: generated_dataset(n, side=side)}
    if real:
        sources["Brain Tumor MRI (real, <= 256 px)"] = lambda: real_dataset(n, data_dir)
    measured: Dict[str, Dict[str, Any]] = {}
    try:
        for i, (label, make) in enumerate(sources.items()):
            measured[label] = _measure(f"src{i}", make(), repeats, batch, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios, rows, findings = [], [], []
    for label, m in measured.items():
        cold, cached = m["ips"]["cold"]["median"], m["ips"]["cached"]["median"]
        ratios.append(make_ratio(f"images/s decoded + transformed, cached vs cold ({label})", "cached img/s",
                                 "cold img/s", cached, cold, None, ">=", "img/s"))
        for variant in ("cold", "cached"):
            s = m["ips"][variant]
            rows.append([label, variant, m["sides"][variant], s["median"], s["p10"], s["p90"], s["n"],
                         1e3 * batch / s["median"]])
        rows.append([label, "cache build (once)", "-", m["build_ips"], m["build_ips"], m["build_ips"], 1,
                     1e3 * batch / m["build_ips"]])
        epochs = m["build_s"] / max(1e-9, m["n"] / cold - m["n"] / cached) if cached > cold else float("inf")
        findings.append(f"{label}: cached {cached:.0f} img/s vs cold {cold:.0f} img/s ({cached / cold:.2f}x); building "
                        f"the cache took {m['build_s']:.1f} s for {m['n']} images, repaid after "
                        f"{epochs:.1f} epoch(s)." if epochs != float("inf") else
                        f"{label}: the cache does not speed decoding up here ({cached / cold:.2f}x).")
    return {
        "benchmark": "data_pipeline",
        "title": f"Data pipeline: decode + transform to {IMAGE_SIZE} px, cold vs resized cache (CPU, workers 0)",
        "config": {"images": n, "batch": batch, "repeats": repeats, "transform": "train (RandomResizedCrop 0.8-1, h-flip)",
                   "loader": "DataLoader + default_data_collator, num_workers=0", "real": real, "quick": quick},
        "ratios": ratios,
        "table": {"columns": ["images", "variant", "stored size", "median img/s", "p10", "p90", "passes",
                              "ms per batch"], "rows": rows},
        "findings": findings,
        "raw": {label: {k: v for k, v in m.items()} for label, m in measured.items()},
    }
