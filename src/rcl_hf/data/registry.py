"""The registered datasets: names, aliases and the module (layout scanner) behind each."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, List

__all__ = ["DATASETS", "available_datasets", "canonical_name", "dataset_module"]

#: Registered datasets: name -> module (relative to :mod:`rcl_hf.data`) with ``scan()``.
DATASETS: Dict[str, str] = {
    "brain_tumor_mri": ".brain_tumor_mri",
    "isic2018": ".isic2018",
    "breakhis": ".breakhis",
    "sicapv2": ".sicapv2",
    "synthetic": ".synthetic",
    "imagefolder": ".imagefolder",
}
ALIASES: Dict[str, str] = {
    "brain_mri": "brain_tumor_mri",
    "brain_tumor": "brain_tumor_mri",
    "isic": "isic2018",
    "isic2018_task3": "isic2018",
    "ham10000": "isic2018",
    "breakhis_v1": "breakhis",
    "sicap": "sicapv2",
    "image_folder": "imagefolder",
}


def available_datasets() -> List[str]:
    """Names accepted by :func:`rcl_hf.data.load_dataset`."""
    return list(DATASETS)


def canonical_name(name: str) -> str:
    """The registered name of ``name`` (case, ``-``/``_`` and aliases folded).

    Raises:
        ValueError: an unknown dataset name.
    """
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {available_datasets()} (aliases: {sorted(ALIASES)})")
    return key


def dataset_module(name: str) -> ModuleType:
    """The module behind a registered dataset (``scan``, ``LABELS``, ``LICENSE``, ``CITATION``, ...)."""
    return importlib.import_module(DATASETS[canonical_name(name)], __package__)
