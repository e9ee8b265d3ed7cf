"""The paper's four medical datasets (and the embedded synthetic default) as ``datasets.DatasetDict``.

>>> from rcl_hf.data import load_dataset, severity_for
>>> dsd = load_dataset("brain_tumor_mri", "../shared/data/brain_tumor_mri")   # doctest: +SKIP
>>> dsd["train"].features["label"].names                                     # doctest: +SKIP
['glioma', 'meningioma', 'notumor', 'pituitary']
>>> severity_for(dsd).is_critical("glioma", "notumor")                        # doctest: +SKIP
True

Loading (:func:`load_dataset`, :mod:`rcl_hf.data.loading`) runs one module per idea:
layout scanners (``brain_tumor_mri``, ``isic2018``, ``breakhis``, ``sicapv2``), the one-pass
image check (:mod:`.images`), content and perceptual grouping and the duplicate audit
(:mod:`.duplicates`), grouped stratified splits (:mod:`.splits`) and the metadata every split
carries (:mod:`.metadata`).
"""

from __future__ import annotations

from typing import Any

from .duplicates import DuplicateReport, audit_duplicates
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, open_image_rgb, validate_images
from .loading import load_dataset
from .metadata import dataset_metadata, severity_for
from .records import LoadReport, Problem
from .registry import available_datasets, dataset_module
from .splits import check_disjoint_groups, grouped_stratified_split, subsample

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DuplicateReport",
    "ImageLoadError",
    "LoadReport",
    "Problem",
    "apply_transforms",
    "audit_duplicates",
    "available_datasets",
    "build_dataset_card",
    "build_transforms",
    "cache_resized",
    "check_disjoint_groups",
    "dataset_metadata",
    "dataset_module",
    "grouped_stratified_split",
    "load_dataset",
    "load_synthetic",
    "open_image_rgb",
    "severity_for",
    "subsample",
    "validate_images",
]


def __getattr__(name: str) -> Any:  # lazy re-exports: keep `import rcl_hf.data` light
    if name == "load_synthetic":
        from .synthetic import load_synthetic

        return load_synthetic
    if name in ("build_transforms", "apply_transforms", "cache_resized"):
        from . import transforms

        return getattr(transforms, name)
    if name == "build_dataset_card":
        from .card import build_dataset_card

        return build_dataset_card
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
