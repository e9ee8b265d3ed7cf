"""Reuse frozen-backbone embeddings across split seeds: the embedding of an image does not depend on
which split it falls into, so a grid with several ``split_seeds`` needs the backbone pass once.

:func:`rcl_hf.frozen.cached_embeddings` caches embeddings *per split* (the key holds the split's
fingerprint). :func:`seed_split_cache` builds, for a cell of another split seed, exactly the cache
entries that :func:`rcl_hf.train_job.run_training` will look up — the same splits
(:func:`rcl_hf.train_data.run_splits`), input size (``ModelArguments.input_size``) and key
(:func:`rcl_hf.frozen.embedding_key_parts`, :func:`rcl_hf.frozen.embedding_cache_path`), rows in
the new split's order — from the entries of a split seed that was already embedded, matched image
by image (``image_id`` / path column). Eval-mode backbones embed each image independently, so the
result equals a fresh pass up to float rounding of batched convolutions (checked by
:func:`seed_split_cache` on the source split: the key it computes must be the one the Trainer wrote,
or it refuses).

For a grid (:func:`research.grid.run_grid`): :func:`embedding_seed_cells` picks the one cell per
group of identical images and backbone that embeds first, and :func:`share_embeddings` seeds every other
split's cache from a finished cell of its group.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rcl_hf.atomic_io import publish_new_dir

logger = logging.getLogger(__name__)

__all__ = ["split_cache_paths", "seed_split_cache", "load_split_embeddings", "embedding_group", "embedding_seed_cells",
           "share_embeddings"]

_ID_COLUMNS = ("image_id", "source_file", "path", "file_name", "filename")


def _image_ids(ds: Any) -> list:
    """One id per row: the first string id column of :data:`_ID_COLUMNS`, else the SHA-1 of the encoded image
    (identical bytes embed identically, so a content id is as good as a name)."""
    import hashlib

    for c in _ID_COLUMNS:
        if c in ds.column_names and ds.features[c].dtype == "string":
            return list(ds[c])
    if "image" not in ds.column_names:
        raise ValueError(f"no image-id column among {ds.column_names} (tried {_ID_COLUMNS}) and no 'image' column")
    import datasets

    raw = ds.cast_column("image", datasets.Image(decode=False))["image"]
    out = []
    for r in raw:
        data = r.get("bytes") if isinstance(r, dict) else None
        if data is None and isinstance(r, dict) and r.get("path"):
            with open(r["path"], "rb") as fh:
                data = fh.read()
        if data is None:
            raise ValueError("an image has neither bytes nor a path to read its content id from")
        out.append("sha1:" + hashlib.sha1(data).hexdigest())
    return out


def split_cache_paths(model_args: Any, data_args: Any) -> Dict[str, Any]:
    """``{split: (cache path, raw split)}`` that the frozen-backbone run of these arguments reads."""
    return _split_cache(model_args, data_args)[0]


def load_split_embeddings(model_args: Any, data_args: Any) -> Tuple[Dict[str, Tuple[np.ndarray, np.ndarray]], Any]:
    """``({split: (embeddings (N, D), labels (N,))}, severity)`` from the cache a frozen-backbone cell of these
    arguments wrote (or :func:`seed_split_cache` seeded). Raises ``FileNotFoundError`` when a split is not cached."""
    import datasets

    paths, severity = _split_cache(model_args, data_args)
    out = {}
    for s, (path, raw) in paths.items():
        if not os.path.exists(os.path.join(path, "dataset_info.json")):
            raise FileNotFoundError(f"split {s!r} has no cached embeddings at {path}: run a frozen-backbone cell "
                                    "of this split seed first")
        ds = datasets.load_from_disk(path).with_format("numpy")
        labels = np.asarray(ds["labels"], dtype=np.int64)
        if not np.array_equal(labels, np.asarray(raw["label"], dtype=np.int64)):
            raise ValueError(f"cached embeddings of split {s!r} at {path} do not match the split's labels")
        out[s] = (np.asarray(ds["embeddings"], dtype=np.float32), labels)
    return out, severity


def _split_cache(model_args: Any, data_args: Any) -> Tuple[Dict[str, Any], Any]:
    from rcl_hf.frozen import embedding_cache_path, embedding_key_parts
    from rcl_hf.models import build_model
    from rcl_hf.train_data import load_data, run_splits
    from rcl_hf.train_job import resolve_severity
    from rcl_hf.trainer import RiskArguments

    cache_dir = data_args.resolved_cache_dir()
    if not cache_dir:
        raise ValueError("seeding the embedding cache needs data.cache_dir")
    dsd, dataset_severity = load_data(data_args)
    labels = dsd["train"].features["label"].names
    severity = resolve_severity(RiskArguments(loss="ce"), dataset_severity, labels)
    image_size = model_args.input_size(data_args.dataset)
    model, data_config = build_model(model_args.backbone, severity, image_size=image_size, pretrained=model_args.pretrained)
    out = {}
    for s, raw in run_splits(dsd, data_args).items():
        key = embedding_key_parts(model, data_config, backbone=model_args.backbone, pretrained=model_args.pretrained,
                                  image_size=image_size, dataset=data_args.dataset, split=s)
        out[s] = (embedding_cache_path(cache_dir, key, raw), raw)
    return out, severity


def seed_split_cache(model_args: Any, source_data_args: Any, target_data_args: Any) -> Optional[Dict[str, str]]:
    """Write the target split seed's embedding cache from the source split seed's (see module docstring).

    Returns the written paths, ``{}`` when the target is cached already, ``None`` when the source
    is not cached (nothing written). Raises ``ValueError`` when an image of the target has no
    embedding in the source.
    """
    import datasets

    src = split_cache_paths(model_args, source_data_args)
    if not all(os.path.exists(os.path.join(p, "dataset_info.json")) for p, _ in src.values()):
        return None
    dst = split_cache_paths(model_args, target_data_args)
    if all(os.path.exists(os.path.join(p, "dataset_info.json")) for p, _ in dst.values()):
        return {}
    pool: Dict[str, np.ndarray] = {}
    for path, raw in src.values():
        emb = np.asarray(datasets.load_from_disk(path).with_format("numpy")["embeddings"], dtype=np.float32)
        pool.update(zip(_image_ids(raw), emb))
    written = {}
    for s, (path, raw) in dst.items():
        if os.path.exists(os.path.join(path, "dataset_info.json")):
            continue
        ids = _image_ids(raw)
        missing = [i for i in ids if i not in pool]
        if missing:
            raise ValueError(f"{len(missing)} image(s) of split {s!r} have no source embedding, e.g. {missing[:3]}")
        emb = np.stack([pool[i] for i in ids])
        ds = datasets.Dataset.from_dict(
            {"embeddings": emb.tolist(), "labels": list(raw["label"])},
            features=datasets.Features({"embeddings": datasets.Sequence(datasets.Value("float32"), length=emb.shape[1]),
                                        "labels": datasets.Value("int64")}))
        publish_new_dir(path, ds.save_to_disk)
        written[s] = path
    return written


def embedding_group(cell: Any) -> Tuple[Any, ...]:
    """Cells of one group embed the same images with the same frozen backbone (whatever their split)."""
    return (cell.data.get("dataset"), cell.data.get("data_dir"), json.dumps(cell.model, sort_keys=True, default=str))


def embedding_seed_cells(todo: Sequence[Any]) -> List[Any]:
    """The first frozen-backbone grid cell of each embedding group of a split-seed grid: run before the others,
    so that its backbone pass is the only one and every other split reuses it (:func:`share_embeddings`)."""
    seeds, seen = [], set()
    for c in todo:
        if c.split_seed is not None and c.model.get("freeze_backbone") and embedding_group(c) not in seen:
            seen.add(embedding_group(c))
            seeds.append(c)
    return seeds


def share_embeddings(cells: Sequence[Any], todo: Sequence[Any], is_done: Callable[[Any], bool]) -> None:
    """Frozen-backbone grid cells of ``todo`` (of a new split seed) reuse the embeddings of a finished cell of
    ``cells`` (``is_done``) over the same images; a failure only means that the cell embeds itself."""
    from rcl_hf.train_job import DataArguments, ModelArguments

    seen = set()
    for cell in todo:
        group = (cell.dataset, cell.backbone, cell.split_seed)
        if cell.split_seed is None or not cell.model.get("freeze_backbone") or group in seen:
            continue
        seen.add(group)
        # a finished split of the same images under the same backbone (its cache exists): another split seed of
        # this dataset entry first, then other entries of the same data (e.g. one dataset under two groupings)
        sources, keys = [], set()
        for c in sorted(cells, key=lambda c: (c.dataset != cell.dataset, c.dataset, c.split_seed)):
            key = (c.dataset, c.split_seed)
            if (embedding_group(c) == embedding_group(cell) and key != (cell.dataset, cell.split_seed)
                    and key not in keys and is_done(c)):
                keys.add(key)
                sources.append(c)
        for source in sources:
            src = f"{source.dataset} split {source.split_seed}"
            try:
                written = seed_split_cache(ModelArguments(**cell.model), DataArguments(**source.data),
                                           DataArguments(**cell.data))
            except Exception as err:  # noqa: BLE001 - the cell then embeds its split itself
                logger.warning("embeddings of %s not shared from split %s: %s", group, src, err)
                continue
            if written is not None:
                logger.warning("split %s of %s/%s: embeddings from split %s (%d split(s) written)",
                               cell.split_seed, cell.dataset, cell.backbone, src, len(written))
                break
