"""Loading a registered dataset from its original download layout: :func:`load_dataset`.

Pipeline of :func:`load_dataset` (one module per idea):

1. the dataset's layout scanner (``brain_tumor_mri``, ``isic2018``, ``breakhis``,
   ``sicapv2``) lists labelled files (:class:`~rcl_hf.data.records.Record`),
   official splits and groups, and reports files it cannot place
   (:class:`~rcl_hf.data.records.Problem`);
2. :func:`~rcl_hf.data.images.validate_images` reads, hashes and decodes every
   image once (cached by path, size and mtime) and reports bad files;
3. byte-identical files, and for datasets without patient ids (Brain MRI) also
   perceptual near-copies, are merged into one group
   (:func:`~rcl_hf.data.duplicates.content_groups`); identical files with
   different labels are skipped;
4. missing validation / test splits are derived, grouped and stratified
   (:func:`~rcl_hf.data.splits.grouped_stratified_split`); no group may
   straddle derived splits (checked);
5. the duplicate audit runs over the final splits; cross-split copies can be
   dropped from the evaluation split;
6. each split becomes a ``datasets.Dataset`` whose ``image`` column holds file
   paths (decoded lazily; nothing is decoded twice at load time), with the
   metadata of :mod:`rcl_hf.data.metadata` (severity matrix, split sources).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from ..severity import PRESETS, SeverityMatrix
from .duplicates import SPLIT_ORDER, content_groups, cross_split_drop_indices, find_duplicates
from .images import DEFAULT_MAX_PIXELS, validate_images
from .metadata import METADATA_VERSION
from .records import LoadReport, Problem, raise_for_problems
from .registry import canonical_name, dataset_module
from .splits import group_overlaps, grouped_stratified_split

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TEST_SIZE", "derived_split_fractions", "load_dataset"]

#: Share of the pool carved out as ``test`` when the data has no test split and no ``test_size`` is given.
DEFAULT_TEST_SIZE = 0.15


def derived_split_fractions(
    present: Iterable[str], val_size: float, test_size: Optional[float], *, derive_test: bool = True
) -> Dict[str, float]:
    """The fractions of a training pool to carve into the missing ``validation`` / ``test`` splits.

    ``validation`` gets ``val_size`` when ``present`` has no validation split and ``val_size > 0``;
    ``test`` gets ``test_size`` (``None``: :data:`DEFAULT_TEST_SIZE`) when ``present`` has no test split,
    ``derive_test`` is on and the fraction is positive.  Used by :func:`load_dataset` and by
    :func:`rcl_hf.train_data.carve_missing_splits` (a ``DatasetDict`` from elsewhere).

    Returns:
        ``{"train": the rest, "validation": ..., "test": ...}`` (the keys of the carved splits after
        ``"train"``), ready for :func:`~rcl_hf.data.splits.grouped_stratified_split`; ``{}`` when no
        split is missing.

    Raises:
        ValueError: the carved fractions leave nothing for ``train``.
    """
    present = set(present)
    fractions: Dict[str, float] = {}
    if "validation" not in present and val_size > 0:
        fractions["validation"] = float(val_size)
    if "test" not in present and derive_test:
        t = DEFAULT_TEST_SIZE if test_size is None else float(test_size)
        if t > 0:
            fractions["test"] = t
    if not fractions:
        return {}
    rest = 1.0 - sum(fractions.values())
    if rest <= 0:
        raise ValueError(f"val_size + test_size must be below 1, got {fractions}")
    return {"train": rest, **fractions}


def _check_fraction(name: str, value: Optional[float]) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def load_dataset(
    name: str,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    *,
    seed: int = 0,
    val_size: float = 0.15,
    test_size: Optional[float] = None,
    strict: bool = False,
    drop_cross_split_duplicates: bool = False,
    cache_dir: Optional[Union[str, os.PathLike, bool]] = None,
    official_splits: bool = True,
    perceptual: Optional[bool] = None,
    max_distance: Optional[int] = None,
    convert_modes: bool = True,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    num_workers: Optional[int] = None,
    progress: bool = True,
    return_report: bool = False,
    **options: Any,
):
    """Load a registered dataset from its original layout as a ``datasets.DatasetDict``.

    Args:
        name: ``"brain_tumor_mri"``, ``"isic2018"``, ``"breakhis"``, ``"sicapv2"``, ``"imagefolder"``
            (your own class folders; no severity preset: give the run one) or
            ``"synthetic"`` (the embedded default; no ``data_dir``; ``seed`` and
            ``options`` go to :func:`~rcl_hf.data.synthetic.load_synthetic`).
        data_dir: the dataset's folder as downloaded.
        seed: seed of every derived split.
        val_size: fraction of the training pool carved out as ``validation`` when the
            layout has no official validation split (0: none).
        test_size: fraction of the pool carved out as ``test`` when the layout has no
            official test split (``None``: 0.15 then); ignored, with a warning, when the
            data has an official test split (unless ``official_splits=False``).
        strict: raise one ``ValueError`` listing every skipped file or row instead
            of skipping with a report.
        drop_cross_split_duplicates: remove copies of a training image (byte-identical,
            or perceptual with ``perceptual=True``) from ``validation`` / ``test``.
        cache_dir: cache of image checks (``None``: ``$RCL_HF_CACHE`` or
            ``~/.cache/rcl_hf``; ``False``: no cache).
        official_splits: ``False`` pools everything and derives all splits.
        perceptual: also group perceptual near-copies (dHash distance <= ``max_distance``)
            and report them in the duplicate audit.  ``None``: the dataset's default,
            ``PERCEPTUAL_GROUPING`` of its module (on for Brain MRI, which has no patient
            ids and holds adjacent slices and re-encoded copies; off elsewhere).
        max_distance: dHash Hamming distance for ``perceptual`` (``None``: the dataset's
            ``PERCEPTUAL_MAX_DISTANCE``, else 0).  Clusters are connected components, so a
            large distance can chain many similar images (e.g. dark MRI slices) into one
            very large group.
        convert_modes: convert unusual pixel modes to RGB (reported as ``"converted"``);
            ``False`` skips such files instead.
        max_pixels: skip images larger than this.
        num_workers: threads for the image check (default ``min(8, cpu_count)``).
        progress: tqdm progress bars.
        return_report: return ``(DatasetDict, LoadReport)``.
        **options: dataset options (``fold`` and ``magnification`` for BreaKHis, ``fold``
            for SICAPv2).

    Returns:
        ``DatasetDict`` with splits among ``train``, ``validation``, ``test``; features
        ``image`` (``datasets.Image``), ``label`` (``ClassLabel`` in the severity preset's
        order), the dataset's id columns, ``group_id``, ``source_file`` (relative path)
        and ``sha1`` (of the source file).

    Raises:
        ValueError: unknown dataset, missing layout, bad fractions, no usable image,
            or (strict) any skipped file.
    """
    import datasets

    key = canonical_name(name)
    if key == "synthetic":
        if data_dir is not None:
            raise ValueError("The synthetic dataset is generated on the fly: it takes no data_dir")
        try:
            from .synthetic import load_synthetic
        except ImportError as err:
            raise ValueError(f"The synthetic dataset is unavailable: {err}") from err
        dsd = load_synthetic(seed=seed, **options)
        return (dsd, LoadReport("synthetic", "<generated>")) if return_report else dsd
    if data_dir is None:
        raise ValueError(f"load_dataset({key!r}) needs data_dir, the folder of the original download")
    _check_fraction("val_size", val_size)
    _check_fraction("test_size", test_size)

    t0 = time.perf_counter()
    module = dataset_module(key)
    if perceptual is None:
        perceptual = bool(getattr(module, "PERCEPTUAL_GROUPING", False))
    if max_distance is None:
        max_distance = int(getattr(module, "PERCEPTUAL_MAX_DISTANCE", 0))
    if not isinstance(max_distance, int) or not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be an int in [0, 64] (dHash bits), got {max_distance!r}")
    scan = module.scan(Path(data_dir), **options)
    root = scan.root
    report = LoadReport(key, os.fspath(data_dir), problems=list(scan.problems), notes=list(scan.notes))
    t_scan = time.perf_counter()

    def show(path: str) -> str:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            return path

    # 2. one pass over the image bytes
    checks = validate_images(
        [r.path for r in scan.records],
        root=root,
        cache_dir=cache_dir,
        max_pixels=max_pixels,
        num_workers=num_workers,
        progress=progress,
        desc=f"Checking {key} images",
    )
    t_check = time.perf_counter()
    recs, chks = [], []
    for r, c in zip(scan.records, checks):
        if not c.ok:
            report.problems.append(Problem(show(r.path), c.kind or "corrupt", c.reason or "unreadable"))
            continue
        if c.note:
            if not convert_modes:
                report.problems.append(Problem(show(r.path), "mode", f"unusual pixel mode {c.mode} (convert_modes=False)"))
                continue
            report.problems.append(Problem(show(r.path), "mode", c.note, action="converted"))
        recs.append(r)
        chks.append(c)

    # 3. identical bytes under different labels: one of them is wrong -> skip all copies
    labels_by_sha: Dict[str, set] = {}
    for r, c in zip(recs, chks):
        labels_by_sha.setdefault(c.sha1, set()).add(r.label)
    conflicted = {s for s, ls in labels_by_sha.items() if len(ls) > 1}
    if conflicted:
        keep = []
        for r, c in zip(recs, chks):
            if c.sha1 in conflicted:
                report.problems.append(
                    Problem(show(r.path), "label_conflict", f"byte-identical copies carry labels {sorted(labels_by_sha[c.sha1])}")
                )
            else:
                keep.append((r, c))
        recs, chks = [k[0] for k in keep], [k[1] for k in keep]
    if strict:
        raise_for_problems(report.problems, f"{key} at {os.fspath(data_dir)}")
    if not recs:
        raise ValueError(f"{key}: no usable image under {os.fspath(data_dir)!r}\n{report.summary()}")
    unusable = [c for c in scan.labels or () if c not in {r.label for r in recs}]
    if unusable:  # a class the layout names (imagefolder) lost every image to the checks
        raise ValueError(f"{key}: class(es) {unusable} under {os.fspath(data_dir)!r} have no usable image\n{report.summary()}")

    sha1s = [c.sha1 for c in chks]
    dhashes = [int(c.dhash, 16) if c.dhash else None for c in chks] if perceptual else None
    sha_groups = content_groups([r.group for r in recs], sha1s)
    groups = content_groups([r.group for r in recs], sha1s, dhashes, max_distance) if perceptual else sha_groups
    merged = sum(1 for r, g in zip(recs, sha_groups) if r.group is not None and g != r.group)
    if merged:
        report.notes.append(f"{merged} image(s) joined another group because byte-identical copies link them")
    if perceptual:
        n_before, n_after = len(set(sha_groups)), len(set(groups))
        report.notes.append(
            f"perceptual grouping (dHash distance <= {max_distance}): {n_before} content groups -> {n_after} groups, "
            f"largest {max(Counter(groups).values())} images; pass perceptual=False to group by file content only"
        )

    # 4. splits
    splits = [r.split for r in recs]
    if not official_splits:
        splits = [None] * len(recs)
    sources = {s: v for s, v in scan.split_sources.items() if official_splits and s in set(splits)}
    present = {s for s in splits if s is not None}
    if "test" in present and test_size is not None:
        msg = (
            f"test_size={test_size} ignored: the data has an official test split ({sources.get('test', 'test')}); "
            "pass official_splits=False to re-split everything"
        )
        logger.warning("%s: %s", key, msg)
        report.notes.append(msg)
    splits = ["train" if s is None else s for s in splits]
    fractions = derived_split_fractions(present, val_size, test_size)
    if fractions:
        pool = [i for i, s in enumerate(splits) if s == "train"]
        if not pool:
            raise ValueError(f"{key}: no training images to derive {sorted(fractions)} from")
        parts = grouped_stratified_split([recs[i].label for i in pool], [groups[i] for i in pool], fractions, seed=seed)
        for split, idx in parts.items():
            for j in idx:
                splits[pool[j]] = split
        pool_src = sources.get("train", "all images")
        derived_note = ", ".join(f"{s} {fractions[s]:.0%}" for s in fractions)
        for split in fractions:
            sources[split] = (
                f"{'derived' if split != 'train' else 'rest'} from {pool_src}: grouped by "
                f"{scan.group_column or 'content hash'} (group_id), stratified by label, seed {seed} ({derived_note})"
            )
    derived_family = set(fractions)  # splits carved from one pool: their groups must be disjoint

    # 5. duplicate audit (+ optional drop from evaluation splits)
    names = [show(r.path) for r in recs]
    dup = find_duplicates(sha1s, splits, [r.label for r in recs], names, dhashes, max_distance)
    if drop_cross_split_duplicates:
        drop = set(cross_split_drop_indices(dup))
        if drop:
            for i in sorted(drop):
                first = next(g for g in dup.groups if i in g.indices)
                keep_at = [n for n, s in zip(first.names, first.splits) if s != splits[i]]
                report.problems.append(
                    Problem(names[i], "cross_split_duplicate", f"{first.kind} copy of {keep_at[0]} removed from {splits[i]}", action="dropped")
                )
            dup.dropped = [names[i] for i in sorted(drop)]
            keep_idx = [i for i in range(len(recs)) if i not in drop]
            recs = [recs[i] for i in keep_idx]
            chks = [chks[i] for i in keep_idx]
            groups = [groups[i] for i in keep_idx]
            splits = [splits[i] for i in keep_idx]
            names = [names[i] for i in keep_idx]
    report.duplicates = dup

    by_split: Dict[str, List[int]] = {s: [] for s in SPLIT_ORDER}
    for i, s in enumerate(splits):
        by_split.setdefault(s, []).append(i)
    by_split = {s: idx for s, idx in by_split.items() if idx}
    overlaps = group_overlaps({s: [groups[i] for i in idx] for s, idx in by_split.items()})
    for pair, both in overlaps.items():
        a, b = pair.split("|")
        if a in derived_family and b in derived_family:
            raise RuntimeError(f"internal error: derived splits {a!r} and {b!r} share groups {both[:5]}")
        report.group_overlaps[pair] = both
        logger.warning(
            "%s: official/derived splits %s and %s share %d group(s) (e.g. %s); the official split is kept as is%s",
            key, a, b, len(both), both[:3],
            "" if drop_cross_split_duplicates else "; drop_cross_split_duplicates=True removes byte-identical copies",
        )

    # 6. datasets
    label_names = list(scan.labels or module.LABELS)
    sev = SeverityMatrix.preset(key) if key in PRESETS else None  # imagefolder: the run's --severity gives it
    if sev is not None:
        sev.check_labels(label_names, what=f"{key} loader")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=label_names),
            **scan.extra_features,
            "group_id": datasets.Value("string"),
            "source_file": datasets.Value("string"),
            "sha1": datasets.Value("string"),
        }
    )
    counts = {s: dict(Counter(recs[i].label for i in idx)) for s, idx in by_split.items()}
    report.counts = {s: {l: c.get(l, 0) for l in label_names} for s, c in counts.items()}
    report.split_sources = {s: sources.get(s, "official") for s in by_split}
    problem_counts = Counter(f"{p.kind}:{p.action}" for p in report.problems)
    meta = {
        **({"rcl_severity": sev.to_dict()} if sev is not None else {}),
        "dataset": key,
        "rcl_hf": {
            "version": METADATA_VERSION,
            "pretty_name": module.PRETTY_NAME,
            "group_column": scan.group_column or "group_id",
            "grouping": module.GROUPING,
            "perceptual_grouping": {"enabled": bool(perceptual), "max_distance": max_distance if perceptual else None},
            "split_sources": report.split_sources,
            "seed": seed,
            "val_size": val_size,
            "test_size": test_size,
            "problems": dict(problem_counts),
            "duplicates": {k: v for k, v in dup.to_dict().items() if k != "details"},
            "group_overlaps": {pair: len(v) for pair, v in report.group_overlaps.items()},
        },
    }
    info_kwargs = dict(
        description=json.dumps(meta),
        citation=module.CITATION,
        homepage=module.HOMEPAGE,
        license=module.LICENSE,
    )
    out = datasets.DatasetDict()
    for split in SPLIT_ORDER:
        idx = by_split.get(split)
        if not idx:
            continue
        idx = sorted(idx, key=lambda i: names[i])
        data: Dict[str, List[Any]] = {
            "image": [recs[i].path for i in idx],
            "label": [label_names.index(recs[i].label) for i in idx],
        }
        for col in scan.extra_features:
            data[col] = [recs[i].extra.get(col) for i in idx]
        data["group_id"] = [groups[i] for i in idx]
        data["source_file"] = [names[i] for i in idx]
        data["sha1"] = [chks[i].sha1 for i in idx]
        out[split] = datasets.Dataset.from_dict(
            data, features=features, info=datasets.DatasetInfo(features=features, **info_kwargs), split=split
        )
    t_end = time.perf_counter()
    report.timings = {
        "scan_s": round(t_scan - t0, 3),
        "check_s": round(t_check - t_scan, 3),
        "build_s": round(t_end - t_check, 3),
        "total_s": round(t_end - t0, 3),
    }
    n_skipped = len(report.skipped)
    if n_skipped:
        logger.warning(
            "%s: skipped %d file(s)/row(s) (%s); pass return_report=True for the list",
            key, n_skipped, ", ".join(f"{k} {v}" for k, v in Counter(p.kind for p in report.skipped).items()),
        )
    logger.info("%s", report.summary())
    return (out, report) if return_report else out
