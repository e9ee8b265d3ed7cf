"""The metadata every loaded split carries, and the severity matrix read back from it.

The severity preset travels in every split's ``info.description``: a JSON object
``{"rcl_severity": SeverityMatrix.to_dict(), "dataset": name, "rcl_hf": {...}}``
that survives ``save_to_disk`` / ``load_from_disk``; :func:`severity_for` reads
it back.  :func:`dataset_fingerprint` reads the identity ``datasets`` gives a split
(the key of rcl_hf's on-disk caches).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

from ..severity import PRESETS, SeverityMatrix

__all__ = ["METADATA_VERSION", "dataset_fingerprint", "dataset_metadata", "severity_for"]

#: Version of the ``"rcl_hf"`` block written by :func:`rcl_hf.data.load_dataset`.
METADATA_VERSION = 1


def _first_split(dataset: Any) -> Any:
    if isinstance(dataset, Mapping):
        if not dataset:
            raise ValueError("Empty DatasetDict: no split to read metadata from")
        return next(iter(dataset.values()))
    return dataset


def dataset_metadata(dataset: Any) -> Dict[str, Any]:
    """The JSON object stored in ``info.description`` (``{}`` when there is none)."""
    ds = _first_split(dataset)
    desc = getattr(getattr(ds, "info", None), "description", "") or ""
    try:
        meta = json.loads(desc)
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def severity_for(dataset: Any) -> SeverityMatrix:
    """The :class:`SeverityMatrix` that travels with a ``DatasetDict`` (or ``Dataset``).

    Read from ``info.description`` (``"rcl_severity"``), reordered to the ``label``
    column's ``ClassLabel`` order when needed; without stored metadata, the preset
    whose labels match the ``ClassLabel`` names.

    Raises:
        ValueError: no stored matrix and no preset with these label names.
    """
    ds = _first_split(dataset)
    names: Optional[List[str]] = None
    feat = getattr(ds, "features", {}).get("label") if hasattr(ds, "features") else None
    if feat is not None and getattr(feat, "names", None):
        names = list(feat.names)
    stored = dataset_metadata(ds).get("rcl_severity")
    if stored is not None:
        sev = SeverityMatrix.from_dict(stored)
        if names is not None and names != sev.labels:
            sev = sev.reorder(names)
        return sev
    if names is None:
        raise ValueError("No severity metadata and no ClassLabel 'label' column to match a preset against")
    for preset, spec in PRESETS.items():
        if sorted(spec.labels) == sorted(names):
            return SeverityMatrix.preset(preset).reorder(names)
    raise ValueError(f"No severity metadata and no preset matches the labels {names}; presets: {sorted(PRESETS)}")


def dataset_fingerprint(ds: Any) -> str:
    """The ``datasets`` fingerprint of a ``datasets.Dataset``: a hash of its table and of every
    transform that made it (``select``, ``map``, ...), equal for equal data loaded twice.

    The frozen-backbone embedding cache (:func:`rcl_hf.frozen.embedding_cache_key`) and the
    resized-image cache (:func:`rcl_hf.data.transforms.cache_resized`) are keyed by it.
    ``datasets`` offers no public accessor: it lives in the private attribute
    ``Dataset._fingerprint`` (present from datasets 1.0 through 5.2, this project's minimum;
    ``datasets.fingerprint.generate_fingerprint`` re-hashes the whole state and gives another
    value).  This is the one place that reads it, and a test fails if it disappears, rather than
    letting every split of one size share a cache entry.

    Raises:
        TypeError: ``ds`` carries no fingerprint (not a ``datasets.Dataset``, or a ``datasets``
            version that dropped the attribute).
    """
    fingerprint = getattr(ds, "_fingerprint", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise TypeError(f"{type(ds).__name__} has no datasets fingerprint (Dataset._fingerprint): "
                        "a datasets.Dataset is needed to key the cache")
    return fingerprint
