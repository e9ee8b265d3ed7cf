"""The runs of a risk-control study with their group ids (lesions, near-copy clusters), and the test risk
averaged over groups.

The runs' ``validation_predictions.npz`` / ``test_predictions.npz`` hold logits and labels, not the group ids
of their rows. Each run's ``cell.json`` holds its data spec (dataset, data_dir, split_seed, ...):
:func:`recover_group_ids` rebuilds the run's validation and test splits with the loader the training used
(:func:`rcl_hf.train_data.load_data`: deterministic, nothing is trained) and takes their ``group_id`` column
as the rows' group ids only when the rebuilt split's labels equal the saved labels row for row; a run whose
labels differ is refused (``ValueError``), not guessed. The group is the lesion on ISIC 2018 (``lesion_id``)
and the cluster of byte-identical and perceptual near-copies on Brain Tumor MRI (its loader's ``group_id``).

:func:`load_grouped_runs` loads a grid's finished cells (:func:`research.report.load_runs`) with their group
ids; :func:`test_risks` scores a calibrated decision layer on test per image and averaged over groups.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .comparison import Run
from .grid import DONE_FILE, Cell, Grid, is_done, load_grid
from .report import load_runs

__all__ = ["GroupedRun", "rebuild_eval_splits", "recover_group_ids", "finished_cells", "load_grouped_runs",
           "group_averaged_risk", "test_risks", "TRAINING_ONLY_DATA_KEYS"]

#: Data arguments that shape what is trained but not the validation / test splits (left out of the key under
#: which a rebuilt split is shared between runs).
TRAINING_ONLY_DATA_KEYS = ("cache_dir", "cache_resized", "max_train_samples", "augmentation")
#: The saved prediction files per split, by the names the loader's splits carry.
SPLIT_FILES = {"validation": "validation_predictions.npz", "test": "test_predictions.npz"}
#: The short split names of :class:`research.comparison.Run`.
SHORT = {"validation": "val", "test": "test"}


@dataclass
class GroupedRun:
    """A finished run, the group ids of its validation and test rows (``{"val": ..., "test": ...}``, ``None``
    when unknown) and the grid it came from."""

    run: Run
    groups: Optional[Dict[str, np.ndarray]] = None
    grid: str = ""
    folder: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


def rebuild_eval_splits(data_spec: Dict[str, Any], cache: Dict[str, Any]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``{"validation": (labels, group ids), "test": ...}`` of the splits a cell's data spec gives, rebuilt with
    the training's loader and subsample (:func:`rcl_hf.train_data.load_data`, then
    :func:`rcl_hf.train_data.run_splits`); one load per distinct split-shaping spec, kept in ``cache``."""
    from rcl_hf.train_args import DataArguments
    from rcl_hf.train_data import load_data, run_splits

    key = json.dumps({k: v for k, v in data_spec.items() if k not in TRAINING_ONLY_DATA_KEYS}, sort_keys=True)
    if key not in cache:
        args = DataArguments(**data_spec)
        dsd, _ = load_data(args)
        splits = run_splits(dsd, args)
        out = {}
        for split in SPLIT_FILES:
            ds = splits[split]
            if "group_id" not in ds.column_names:
                raise ValueError(f"the rebuilt {split} split of {args.dataset!r} has no group_id column")
            out[split] = (np.asarray(ds["label"], dtype=np.int64), np.asarray(ds["group_id"], dtype=str))
        cache[key] = out
    return cache[key]


def recover_group_ids(folder: str, labels: Dict[str, np.ndarray], cache: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """The group ids of a run's saved rows, ``{split: ids}`` for each split of ``labels`` (``validation`` /
    ``test``, or their short names ``val`` / ``test``), from the split its ``cell.json`` rebuilds.

    Raises:
        ValueError: the rebuilt split does not match the saved labels row for row (the run is refused).
    """
    with open(os.path.join(folder, DONE_FILE), encoding="utf-8") as fh:
        spec = json.load(fh)["spec"]["data"]
    splits = rebuild_eval_splits(spec, cache)
    long = {v: k for k, v in SHORT.items()}
    out = {}
    for split, saved in labels.items():
        rebuilt_labels, ids = splits[long.get(split, split)]
        saved = np.asarray(saved).astype(np.int64)
        if len(rebuilt_labels) != len(saved) or not np.array_equal(rebuilt_labels, saved):
            raise ValueError(f"{folder}: the rebuilt {long.get(split, split)} split does not match the saved labels "
                             "row for row")
        out[split] = ids
    return out


def finished_cells(grid: Grid) -> Tuple[List[Cell], List[str]]:
    """``(finished cells, ids of the others)``. A cell is finished when :func:`research.grid.is_done` says so,
    or when its done-marker matches the cell's arguments apart from ``data.cache_dir`` (where caches live,
    which differs between checkouts and changes nothing that is trained or scored): such a cell is returned
    with the marker's ``cache_dir``, so that :func:`research.report.load_runs` accepts it."""
    done, missing = [], []
    for cell in grid.cells:
        if is_done(cell):
            done.append(cell)
            continue
        marker = os.path.join(cell.output_dir, DONE_FILE)
        try:
            with open(marker, encoding="utf-8") as fh:
                recorded = json.load(fh)
        except (OSError, ValueError):
            missing.append(cell.cell_id)
            continue
        data = (recorded.get("spec") or {}).get("data") or {}
        moved = replace(cell, data={**cell.data, "cache_dir": data.get("cache_dir")})
        if "cache_dir" in cell.data and is_done(moved):
            done.append(moved)
        else:
            missing.append(cell.cell_id)
    return done, missing


def load_grouped_runs(config: Any, cache: Optional[Dict[str, Any]] = None, groups: bool = True) -> List[GroupedRun]:
    """The finished runs of a grid (a YAML path or a parsed :class:`~research.grid.Grid`), each with its group
    ids (:func:`recover_group_ids`) when ``groups``."""
    import logging

    grid = config if isinstance(config, Grid) else load_grid(config)
    cells, missing = finished_cells(grid)
    if missing:
        logging.getLogger(__name__).warning("%s: %d cell(s) not done and left out, e.g. %s", grid.name, len(missing),
                                            missing[:3])
    cache = {} if cache is None else cache
    out = []
    for cell, run in zip(cells, load_runs(grid, cells)):
        ids = recover_group_ids(cell.output_dir, run.labels, cache) if groups else None
        out.append(GroupedRun(run, ids, grid.name, cell.output_dir))
    return out


def group_averaged_risk(decisions: np.ndarray, refer: np.ndarray, labels: np.ndarray, severity: Any,
                        groups: Sequence[Any], kind: str) -> float:
    """The risk ``kind`` with each group weighing the same (the quantity the group-level certificate bounds,
    :func:`rcl_hf.calibration.risk_control.group_risk_curve`): the mean over groups with a critical-capable
    image of the share of them missed (``critical_miss``), or over groups with an accepted image of the share
    of critical errors among them (``cer_accepted``; 0 when no image is accepted, as per image)."""
    from rcl_hf.calibration.risk_control import group_codes

    g, n_groups = group_codes(groups)
    err = severity.critical[labels, decisions]
    acc = ~np.asarray(refer, dtype=bool)
    if kind == "critical_miss":
        base, loss = severity.positive_rows[labels], err & acc
    elif kind == "cer_accepted":
        base, loss = acc, err
    else:
        raise ValueError(f"unknown risk kind {kind!r}")
    n = np.bincount(g, weights=base.astype(np.float64), minlength=n_groups)
    k = np.bincount(g, weights=(loss & base).astype(np.float64), minlength=n_groups)
    has = n > 0
    return float((k[has] / n[has]).mean()) if has.any() else 0.0


def test_risks(cal: Any, logits: np.ndarray, labels: np.ndarray, severity: Any,
               groups: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
    """What the calibrated layer does on test (:func:`rcl_hf.calibration.evaluate_calibration`: coverage, the
    risk of each kind per image, accuracy, ...), plus each risk averaged over groups (``group_critical_miss``,
    ``group_cer_accepted``: :func:`group_averaged_risk`; NaN without groups)."""
    from rcl_hf.calibration import evaluate_calibration
    from rcl_hf.calibration.risk_control import RISK_KINDS

    out = evaluate_calibration(cal, logits, labels, severity)
    y = np.asarray(labels).astype(np.int64)
    if groups is not None:
        _, d, _, refer = cal.decide(np.asarray(logits, dtype=np.float64), severity)
    for kind in RISK_KINDS:
        out[f"group_{kind}"] = float("nan") if groups is None else group_averaged_risk(d, refer, y, severity, groups,
                                                                                        kind)
    return out
