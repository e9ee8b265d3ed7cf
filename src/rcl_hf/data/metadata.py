"""The metadata every loaded split carries, and the severity matrix read back from it.

The severity preset travels in every split's ``info.description``: a JSON object
``{"rcl_severity": SeverityMatrix.to_dict(), "dataset": name, "rcl_hf": {...}}``
that survives ``save_to_disk`` / ``load_from_disk``; :func:`severity_for` reads
it back.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

from ..severity import PRESETS, SeverityMatrix

__all__ = ["METADATA_VERSION", "dataset_metadata", "severity_for"]

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
