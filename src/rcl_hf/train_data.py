"""Data for a training run: loading (registered loader, ``save_to_disk`` folder, image folders, Hub id),
carving missing validation / test splits, and training augmentation seeded per ``(seed, epoch, row)``."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from transformers import TrainerCallback

from .train_args import AUGMENTATIONS, DataArguments

logger = logging.getLogger("rcl_hf.train_job")

__all__ = ["load_data", "carve_missing_splits", "run_splits", "SeededAugmentation", "AugmentationEpochCallback",
           "ROW_COLUMN"]


def load_data(data_args: DataArguments, seed: Optional[int] = None):
    """Return ``(DatasetDict, SeverityMatrix or None)`` from the data arguments."""
    import datasets

    from . import data as rcl_data

    name = data_args.dataset
    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_dict.json")) or os.path.exists(os.path.join(name, "dataset_info.json"))
    ):
        try:
            dsd = datasets.load_from_disk(name)
        except (IndexError, KeyError) as err:  # datasets fails this way on a saved empty split
            empty = []
            for split in (json.load(open(os.path.join(name, "dataset_dict.json"))).get("splits", [])
                          if os.path.exists(os.path.join(name, "dataset_dict.json")) else []):
                try:
                    if len(datasets.load_from_disk(os.path.join(name, split))) == 0:
                        empty.append(split)
                except (IndexError, KeyError):
                    empty.append(split)
            if empty:
                raise ValueError(f"Split {empty[0]!r} of dataset {name!r} is empty (or unreadable)") from None
            raise ValueError(f"Cannot read the saved dataset {name!r}: {type(err).__name__}: {err}") from None
    elif name in rcl_data.available_datasets():
        kwargs: Dict[str, Any] = {"seed": data_args.split_seed if seed is None else seed}
        if name != "synthetic":
            kwargs.update(val_size=data_args.val_size, test_size=data_args.test_size,
                          drop_cross_split_duplicates=data_args.drop_cross_split_duplicates,
                          perceptual=data_args.perceptual_grouping)
        dsd = rcl_data.load_dataset(name, data_args.data_dir, **kwargs)
    elif data_args.train_dir:  # transformers' run_image_classification.py layout: class sub-folders
        files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir:
            files["validation"] = os.path.join(data_args.validation_dir, "**")
        dsd = datasets.load_dataset("imagefolder", data_files=files)
    else:
        try:
            dsd = datasets.load_dataset(name)
        except Exception as err:  # offline / unknown id
            raise ValueError(
                f"Cannot load dataset {name!r}: not a registered loader {rcl_data.available_datasets()}, not a "
                f"save_to_disk folder, and the Hub id failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            ) from None
    if not isinstance(dsd, datasets.DatasetDict):
        raise ValueError(f"Dataset {name!r} must have splits (a DatasetDict), got {type(dsd).__name__}")
    dsd = _rename_columns(dsd, data_args.image_column_name, data_args.label_column_name, name)
    if "train" not in dsd:
        raise ValueError(f"Dataset {name!r} has no 'train' split: {list(dsd)}")
    if name not in rcl_data.available_datasets():  # registered loaders carve their own splits
        dsd = carve_missing_splits(dsd, data_args.val_size, data_args.test_size, seed=data_args.split_seed, name=name)
    for split in dsd:
        if len(dsd[split]) == 0:
            raise ValueError(f"Split {split!r} of dataset {name!r} is empty")
        if "label" not in dsd[split].column_names or "image" not in dsd[split].column_names:
            raise ValueError(f"Split {split!r} needs 'image' and 'label' columns, has {dsd[split].column_names}")
    try:
        severity = rcl_data.severity_for(dsd)
    except ValueError:
        severity = None
    return dsd, severity


def run_splits(dsd: Any, data_args: DataArguments) -> Dict[str, Any]:
    """The rows a run trains and evaluates on: ``train`` (``max_train_samples``) and ``validation`` /
    ``test`` when present (``max_eval_samples``), each subsampled by
    :func:`rcl_hf.data.splits.subsample` (``subset`` mode, seeded by ``split_seed``). Their fingerprints
    key the frozen-backbone embedding cache, so every reader of that cache takes its splits from here."""
    from .data.splits import subsample

    out = {"train": subsample(dsd["train"], data_args.max_train_samples, data_args.subset, seed=data_args.split_seed)}
    out.update({s: subsample(dsd[s], data_args.max_eval_samples, data_args.subset, seed=data_args.split_seed)
                for s in ("validation", "test") if s in dsd})
    return out


def _rename_columns(dsd: Any, image: str, label: str, name: str) -> Any:
    """``--image_column_name`` / ``--label_column_name`` renamed to ``image`` / ``label``."""
    for given, ours in ((image, "image"), (label, "label")):
        if given == ours:
            continue
        if given not in dsd["train" if "train" in dsd else next(iter(dsd))].column_names:
            raise ValueError(f"Dataset {name!r} has no column {given!r} (--{ours}_column_name)")
        dsd = dsd.rename_column(given, ours)
    return dsd


def carve_missing_splits(dsd: Any, val_size: float, test_size: Optional[float], seed: int = 0, name: str = "dataset") -> Any:
    """Carve ``validation`` (``val_size``) and, for a train-only dataset, ``test`` (``test_size``, default
    :data:`rcl_hf.data.loading.DEFAULT_TEST_SIZE`) out of ``train``, whole groups at a time and stratified by
    label: the fractions of :func:`rcl_hf.data.loading.derived_split_fractions`, as for a registered loader,
    split by :func:`rcl_hf.data.splits.grouped_stratified_split`.

    Groups: the ``group_id`` column, else ``sha1`` (identical files together), else one group per row
    (a warning says the split is not grouped). A split that is not carved is named in a warning.
    """
    import datasets

    from .data.loading import derived_split_fractions
    from .data.splits import grouped_stratified_split

    fractions = derived_split_fractions(dsd, val_size, test_size, derive_test=len(dsd) == 1)
    want = [s for s in fractions if s != "train"]
    if "test" not in dsd and "test" not in want:
        logger.warning("Dataset %r has no test split: no held-out test metrics will be reported", name)
    if "validation" not in dsd and "validation" not in want:
        logger.warning("Dataset %r has no validation split and --val_size is 0: nothing to select checkpoints on", name)
    if not want:
        return dsd
    train = dsd["train"]
    cols = train.column_names
    column = "group_id" if "group_id" in cols else ("sha1" if "sha1" in cols else None)
    groups = list(train[column]) if column else list(range(len(train)))
    if column is None:
        logger.warning("Dataset %r has no group_id column: %s carved row by row (not grouped by patient or lesion)",
                       name, " and ".join(want))
    parts = grouped_stratified_split(list(train["label"]), groups, fractions, seed=seed)
    logger.warning("Dataset %r had no %s split: carved %s out of train (%s)", name, " / ".join(want),
                   ", ".join(f"{k} {len(parts[k])} rows" for k in want), f"grouped by {column}" if column else "not grouped")
    return datasets.DatasetDict({**dsd, **{k: train.select(v) for k, v in parts.items()}})


def _augmentation(data_args: DataArguments) -> Dict[str, Any]:
    name = data_args.augmentation or ("flip" if data_args.dataset == "synthetic" else "crop_flip")
    if name not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {name!r}; choose one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]



ROW_COLUMN = "rcl_row_index"


class SeededAugmentation:
    """Training transform whose random draws depend only on ``(seed, epoch, row)``.

    The torchvision augmentations draw from torch's global generator, so the
    augmentation a sample gets would depend on how many draws came before it: on
    the number of processes, of DataLoader workers, and -- on
    ``--resume_from_checkpoint`` -- on the Trainer restoring its RNG state only
    after the first resumed batch was prefetched.  Here every sample is
    transformed with torch's CPU generator seeded by ``SeedSequence([seed, epoch, row])``
    (its previous state is restored afterwards: the global stream is untouched), so a
    resumed or multi-process run sees exactly the augmentations of an
    uninterrupted single-process run.  ``epoch`` is set by
    :class:`AugmentationEpochCallback`.

    Args:
        transform: the batch transform (``rcl_hf.data.transforms.ImageTransform``).
        seed: base seed (``TrainingArguments.data_seed`` or ``seed``).
    """

    def __init__(self, transform: Any, seed: int) -> None:
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def __call__(self, batch: Dict[str, list]) -> Dict[str, Any]:
        rows = batch[ROW_COLUMN]
        parts = []
        # Reseed torch's CPU generator per sample and restore it afterwards (``Generator.manual_seed``:
        # ``torch.manual_seed`` also seeds every device and costs milliseconds per call).
        generator = torch.default_generator
        saved = generator.get_state()
        try:
            for j, row in enumerate(rows):
                one = {k: [v[j]] for k, v in batch.items() if k != ROW_COLUMN}
                generator.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, int(row)]).generate_state(1)[0]))
                parts.append(self.transform(one))
        finally:
            generator.set_state(saved)
        out: Dict[str, Any] = {}
        for key in parts[0] if parts else ():
            values = [p[key] for p in parts]
            out[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else [x for v in values for x in v]
        return out


class AugmentationEpochCallback(TrainerCallback):
    """Tell a :class:`SeededAugmentation` which epoch starts (``floor(state.epoch)``, also on resume)."""

    def __init__(self, augmentation: SeededAugmentation) -> None:
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmentation.epoch = int(math.floor((state.epoch or 0.0) + 1e-9))


def _seeded_train_split(train_ds: Any, seed: int) -> Tuple[Any, SeededAugmentation]:
    """Wrap the (already transformed) training split in a :class:`SeededAugmentation`."""
    fmt = train_ds.format
    transform = (fmt.get("format_kwargs") or {}).get("transform")
    if transform is None:
        raise ValueError("The training split has no transform to seed")
    augmentation = SeededAugmentation(transform, seed)
    ds = train_ds.with_format(None).add_column(ROW_COLUMN, np.arange(len(train_ds), dtype=np.int64))
    return ds.with_transform(augmentation), augmentation
