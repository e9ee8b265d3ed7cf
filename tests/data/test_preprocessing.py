"""One preprocessing: the processor saved beside a checkpoint reproduces the evaluation transform.

``pipeline("image-classification", model=folder)`` must score an image as the evaluation did,
or the numbers on the model card are not what a Hub user gets.  Checked three ways:

* tensors: the saved ``preprocessor_config.json``, loaded by ``transformers`` (PIL and
  torchvision backends), gives the eval transform's ``pixel_values`` on odd-size images;
* end to end: a model trained by ``rcl_hf.train_job.run_training`` on real-size JPEG files,
  then ``pipeline()`` in a subprocess that never imports ``rcl_hf``, agrees with the saved
  ``test_predictions.npz`` on >= 99% of the test images;
* the same on a few hundred Brain MRI images (``realdata``).

Each check fails on the old processor (``resample=2``, bilinear, against a bicubic evaluation):
the controls below prove the comparison can tell the two apart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from rcl_hf.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformConfig,
    apply_transforms,
    build_transforms,
    resolve_transform_config,
)
from rcl_hf.models import build_image_processor, build_model
from rcl_hf.severity import SeverityMatrix

SEVERITY = SeverityMatrix.preset("synthetic")
ODD_SIZES = [(301, 457), (599, 333), (417, 417), (61, 37)]
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_tumor_mri"


def _one_level(std=IMAGENET_STD) -> float:
    """One 8-bit level after normalisation: ``1 / (255 * min(std))``."""
    return 1.0 / (255.0 * min(std))


def _odd_images(tmp_path: Path) -> List[str]:
    """Smooth structure plus pixel noise (as in a scan) at odd sizes, saved as PNG (lossless)."""
    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate(ODD_SIZES):
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8))
        arr = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16) + rng.integers(-30, 31, (h, w, 3))
        paths.append(str(tmp_path / f"odd_{k}.png"))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def _eval_pixels(paths: List[str], size: int) -> torch.Tensor:
    """``pixel_values`` of the evaluation path: ``apply_transforms`` on an eval split of image files."""
    import datasets

    ds = datasets.Dataset.from_dict({"image": paths, "label": [0] * len(paths)},
                                    features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    return apply_transforms(ds, image_size=size)[:]["pixel_values"]


def _load_processor(folder: Path, backend: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(folder), backend=backend)
    except TypeError:  # transformers 4.x: use_fast selects the backend
        return AutoImageProcessor.from_pretrained(str(folder), use_fast=backend == "torchvision")


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("backend", ["pil", "torchvision"])
def test_saved_processor_gives_the_eval_tensors_on_odd_sizes(tmp_path, size, backend):
    model, data_config = build_model("hf-resnet", SEVERITY, image_size=size)
    build_image_processor(model, data_config).save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())
    assert saved["resample"] == 3 and saved["size"] == {"height": size, "width": size}  # bicubic, as evaluated
    processor = _load_processor(tmp_path / "model", backend)
    paths = _odd_images(tmp_path)
    ours = _eval_pixels(paths, size)
    theirs = processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    assert theirs.shape == ours.shape == (len(paths), 3, size, size)
    diff = (theirs - ours).abs()
    # PIL backend: the very same PIL resize; torchvision backend: its uint8 bicubic rounds to within one level.
    tol = 1e-5 if backend == "pil" else 1.01 * _one_level()
    assert float(diff.max()) <= tol and float(diff.mean()) < 1e-3, (float(diff.max()), float(diff.mean()))

    # Control: the old processor (bilinear, resample=2) is far off on the same images.
    from transformers import ViTImageProcessor

    old = ViTImageProcessor(size={"height": size, "width": size}, resample=2, image_mean=list(IMAGENET_MEAN),
                            image_std=list(IMAGENET_STD))
    old_pixels = old([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    assert float((old_pixels - ours).abs().max()) > 10 * _one_level()


def test_one_definition_round_trips_through_the_processor():
    cfg = TransformConfig(image_size=(48, 40), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear")
    proc = cfg.to_image_processor()
    assert proc.resample == 2 and proc.size == {"height": 48, "width": 40} and proc.rescale_factor == pytest.approx(1 / 255)
    assert resolve_transform_config(proc) == cfg
    default = resolve_transform_config(None, image_size=32)
    model, data_config = build_model("hf-resnet", SEVERITY, image_size=32)
    assert resolve_transform_config(build_image_processor(model, data_config)) == default  # the eval default: bicubic
    assert default.interpolation == "bicubic"
    with pytest.raises(ValueError, match="crop_pct=0.875: no transformers image processor"):
        TransformConfig(crop_pct=0.875).to_image_processor()
    with pytest.raises(ValueError, match="has no PIL filter"):
        TransformConfig(interpolation="nearest-exact").to_image_processor()


def test_eval_transform_is_timm_and_equals_the_torchvision_pipeline():
    """``create_transform`` (timm) gives bit-for-bit the hand-written torchvision eval pipeline it replaced."""
    import timm.data
    from torchvision import transforms as T

    assert tuple(timm.data.IMAGENET_DEFAULT_MEAN) == IMAGENET_MEAN and tuple(timm.data.IMAGENET_DEFAULT_STD) == IMAGENET_STD
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (333, 599, 3), dtype=np.uint8))
    bicubic = T.InterpolationMode.BICUBIC
    norm = [T.ToTensor(), T.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))]
    cases = [
        (dict(image_size=32), T.Compose([T.Resize((32, 32), interpolation=bicubic), *norm])),
        (dict(image_size=(24, 40)), T.Compose([T.Resize((24, 40), interpolation=bicubic), *norm])),
        (dict(image_size=32, crop_pct=0.875), T.Compose([T.Resize(36, interpolation=bicubic), T.CenterCrop(32), *norm])),
        (dict(image_size=(24, 40), crop_pct=0.8),
         T.Compose([T.Resize((30, 50), interpolation=bicubic), T.CenterCrop((24, 40)), *norm])),
    ]
    for kw, reference in cases:
        assert torch.equal(build_transforms(**kw)(img), reference(img)), kw


# ----------------------------------------------------------------------------- end to end: train, then pipeline()
PIPELINE_SCRIPT = r"""
import json, sys
from transformers import pipeline
listing = json.load(open(sys.argv[1]))
top = {}
for folder in listing["folders"]:
    clf = pipeline("image-classification", model=folder, device="cpu")
    top[folder] = [out[0]["label"] for out in clf(listing["paths"], top_k=1, batch_size=16)]
assert not [m for m in sys.modules if m == "rcl_hf" or m.startswith("rcl_hf.")], "rcl_hf was imported"
print(json.dumps(top))
"""


def _pipeline_top1(folders: List[Path], paths: List[str], tmp_path: Path) -> Dict[str, List[str]]:
    """Top-1 labels of ``transformers.pipeline`` per model folder, in a fresh interpreter that never imports rcl_hf."""
    listing = tmp_path / "listing.json"
    listing.write_text(json.dumps({"folders": [str(f) for f in folders], "paths": paths}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(listing)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train(dataset: str, out: Path, data_dir=None, epochs: int = 2):
    from rcl_hf.trainer import RiskArguments
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training

    return run_training(
        ModelArguments(backbone="hf-resnet", image_size=32),
        DataArguments(dataset=dataset, data_dir=data_dir, cache_dir="none"),
        RiskArguments(loss="ce"),
        default_training_args(str(out), num_train_epochs=epochs, per_device_train_batch_size=16,
                              per_device_eval_batch_size=64, learning_rate=3e-3, seed=0, disable_tqdm=True,
                              save_total_limit=1, dataloader_num_workers=0, use_cpu=True),
    )


def _agreements(out: Path, test_paths: List[str], tmp_path: Path) -> Tuple[float, float]:
    """Share of test images where ``pipeline()`` gives the saved top-1: with the saved processor, and (control)
    with a copy of the run whose processor resizes bilinearly, as the old one did."""
    config = json.loads((out / "config.json").read_text())
    saved = np.load(out / "test_predictions.npz")["logits"].argmax(-1)
    assert len(saved) == len(test_paths)
    expected = [config["id2label"][str(int(i))] for i in saved]
    old = tmp_path / "old_bilinear_processor"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("checkpoint-*"))
    proc = json.loads((old / "preprocessor_config.json").read_text())
    (old / "preprocessor_config.json").write_text(json.dumps({**proc, "resample": 2}))
    top = _pipeline_top1([out, old], test_paths, tmp_path)
    return tuple(float(np.mean([a == b for a, b in zip(expected, top[str(f)])])) for f in (out, old))


def test_pipeline_reproduces_saved_test_predictions_on_real_size_images(real_size_dataset, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("RCL_HF_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    _train(str(real_size_dataset), out)
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["resample"] == 3 and TransformConfig().interpolation == "bicubic"  # the evaluation's interpolation
    paths = list(datasets.load_from_disk(str(real_size_dataset))["test"]["source_file"])
    assert len(paths) == 160 and min(min(Image.open(p).size) for p in paths) >= 300
    agreement, old = _agreements(out, paths, tmp_path)
    print(f"real-size images: pipeline() agrees on {agreement:.1%} of {len(paths)} test images (bilinear control {old:.1%})")
    assert agreement >= 0.99, f"pipeline() agrees with the saved test predictions on {agreement:.1%} only"
    assert old < 0.99, f"control: a bilinear processor still agrees on {old:.1%}; the check cannot see the bug"


@pytest.mark.realdata
def test_pipeline_reproduces_saved_test_predictions_on_brain_mri(tmp_path, monkeypatch):
    """A few hundred real Brain MRI images (links in a Training/Testing tree), same check."""
    if not (DATA / "Training").is_dir():
        pytest.skip(f"{DATA} is absent")
    monkeypatch.setenv("RCL_HF_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "brain"
    for cls in ("glioma", "meningioma", "notumor", "pituitary"):
        files = sorted((DATA / "Training" / cls).glob("*.jpg"))
        for split, chosen in (("Training", files[:60]), ("Testing", files[-50:])):
            (tree / split / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (tree / split / cls / f.name).symlink_to(f)
    out = tmp_path / "run"
    _train("brain_tumor_mri", out, data_dir=str(tree), epochs=1)
    from rcl_hf.data import load_dataset

    test = load_dataset("brain_tumor_mri", tree, progress=False, drop_cross_split_duplicates=True)["test"]  # as trained
    paths = [str(tree / p) for p in test["source_file"]]
    assert len(paths) >= 150
    agreement, old = _agreements(out, paths, tmp_path)
    print(f"Brain MRI: pipeline() agrees on {agreement:.1%} of {len(paths)} test images (bilinear control {old:.1%})")
    assert agreement >= 0.99, f"pipeline() agrees with the saved test predictions on {agreement:.1%} only"
