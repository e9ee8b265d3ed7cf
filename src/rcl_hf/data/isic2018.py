"""ISIC 2018 Task 3 / HAM10000 (dermoscopy, 7 classes): layout scanner.

Two layouts are read (``docs/datasets.md``):

1. **Official ISIC 2018 Task 3**::

       ISIC2018_Task3_{Training,Validation,Test}_Input/ISIC_xxxxxxx.jpg
       ISIC2018_Task3_{split}_GroundTruth/ISIC2018_Task3_{split}_GroundTruth.csv
           image,MEL,NV,BCC,AKIEC,BKL,DF,VASC     (one-hot)
       ISIC2018_Task3_Training_LesionGroupings.csv   (optional: image,lesion_id,diagnosis_confirm_type)
       HAM10000_metadata.csv                         (optional: lesion_id,image_id,dx,dx_type,...)

   Each split with both an ``_Input`` folder and a ground-truth CSV is an official
   split (``Training`` -> train, ``Validation`` -> validation, ``Test`` -> test).
   The ground-truth CSV may also sit directly in ``data_dir``.

2. **HAM10000**: ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,...``) with the
   images ``<image_id>.jpg`` in one or more folders anywhere under ``data_dir``
   (e.g. ``HAM10000_images_part_1/``, ``HAM10000_images_part_2/``); all of it is one
   pool.

Labels: a one-hot row must have exactly one 1 and zeros elsewhere, otherwise it
is skipped (``ambiguous_label``).  When ``HAM10000_metadata.csv`` is present too,
its ``dx`` must agree with the ground truth, otherwise the image is skipped
(``label_conflict``).  Grouping: ``lesion_id`` from the LesionGroupings CSV, or
from the HAM10000 metadata; several images of one lesion never straddle splits.
Images without a known lesion (the official Validation/Test) are grouped by
content hash.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..severity import PRESETS
from .records import Problem, Record, Scan, file_kind, iter_files, iter_images

NAME = "isic2018"
LABELS = list(PRESETS[NAME].labels)
PRETTY_NAME = "ISIC 2018 Task 3 (HAM10000)"
DESCRIPTION = (
    "Dermoscopic images of pigmented skin lesions in seven diagnostic classes: melanoma (MEL), melanocytic "
    "nevus (NV), basal cell carcinoma (BCC), actinic keratosis / Bowen's disease (AKIEC), benign keratosis "
    "(BKL), dermatofibroma (DF) and vascular lesion (VASC); the HAM10000 collection used as the ISIC 2018 "
    "Task 3 training set."
)
LICENSE = "cc-by-nc-4.0"
LICENSE_TEXT = "CC BY-NC 4.0 (Attribution-NonCommercial 4.0 International)"
HOMEPAGE = "https://challenge.isic-archive.com/data/#2018"
CITATION = """@article{tschandl2018ham10000,
  author = {Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  title = {The {HAM10000} dataset, a large collection of multi-source dermatoscopic images of common pigmented skin lesions},
  journal = {Scientific Data},
  volume = {5},
  pages = {180161},
  year = {2018},
  doi = {10.1038/sdata.2018.161}
}
@article{codella2019skin,
  author = {Codella, Noel and Rotemberg, Veronica and Tschandl, Philipp and Celebi, M. Emre and Dusza, Stephen and
            Gutman, David and Helba, Brian and Kalloo, Aadi and Liopyris, Konstantinos and Marchetti, Michael and
            Kittler, Harald and Halpern, Allan},
  title = {Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the International Skin Imaging Collaboration ({ISIC})},
  journal = {arXiv preprint arXiv:1902.03368},
  year = {2019}
}"""
GROUPING = (
    "By lesion_id (LesionGroupings CSV or HAM10000_metadata.csv): all images of one lesion share a split. "
    "Images without a lesion id are grouped by content hash."
)

OFFICIAL_SPLITS = {"Training": "train", "Validation": "validation", "Test": "test"}
#: HAM10000 ``dx`` code -> ISIC 2018 Task 3 class.
DX_TO_LABEL = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AKIEC", "bkl": "BKL", "df": "DF", "vasc": "VASC"}


def _read_csv(path: Path, required: List[str]) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _one_hot(row: Dict[str, str]) -> Tuple[Optional[str], str]:
    """``(label, "")`` for a clean one-hot row, else ``(None, reason)``."""
    ones, bad = [], []
    for c in LABELS:
        raw = row.get(c, "")
        try:
            v = float(raw)
        except ValueError:
            return None, f"non-numeric value {raw!r} in column {c}"
        if v == 1.0:
            ones.append(c)
        elif v != 0.0:
            bad.append(f"{c}={raw}")
    if bad:
        return None, f"soft or invalid one-hot value(s) {bad}"
    if len(ones) != 1:
        return None, f"one-hot row has {len(ones)} classes set {ones} (expected exactly 1)"
    return ones[0], ""


def _find_gt(root: Path, split: str) -> Optional[Path]:
    fname = f"ISIC2018_Task3_{split}_GroundTruth.csv"
    for cand in (root / f"ISIC2018_Task3_{split}_GroundTruth" / fname, root / fname):
        if cand.is_file():
            return cand
    return None


def _index_images(folder: Path, root: Path, problems: List[Problem], flat: bool) -> Dict[str, Path]:
    """``{image_id: path}`` for the images under ``folder``; duplicates and odd files reported."""
    index: Dict[str, Path] = {}
    for path, show in iter_images(folder, root, problems, report_other=flat):
        if flat and path.parent != folder:
            problems.append(Problem(show, "wrong_place", f"image is nested inside {folder.name}/ (expected directly in it)"))
            continue
        stem = path.stem
        if stem in index:
            problems.append(
                Problem(show, "duplicate_name", f"image id {stem} also at {index[stem].relative_to(root).as_posix()}; kept that one")
            )
            continue
        index[stem] = path
    return index


def _lesion_tables(root: Path) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str], bool]:
    """``(lesion_of, dx_type_of, ham_label_of, has_ham)`` from LesionGroupings CSVs and HAM10000 metadata."""
    lesion: Dict[str, str] = {}
    dx_type: Dict[str, str] = {}
    ham_label: Dict[str, str] = {}
    for split in OFFICIAL_SPLITS:
        p = root / f"ISIC2018_Task3_{split}_LesionGroupings.csv"
        if p.is_file():
            for row in _read_csv(p, ["image", "lesion_id"]):
                if row["lesion_id"]:
                    lesion[row["image"]] = row["lesion_id"]
                if row.get("diagnosis_confirm_type"):
                    dx_type[row["image"]] = row["diagnosis_confirm_type"]
    ham = _find_ham(root)
    if ham is not None:
        for row in _read_csv(ham, ["lesion_id", "image_id", "dx"]):
            img = row["image_id"]
            if row["lesion_id"]:
                lesion.setdefault(img, row["lesion_id"])
            if row.get("dx_type"):
                dx_type.setdefault(img, row["dx_type"])
            ham_label[img] = DX_TO_LABEL.get(row["dx"].lower(), f"?{row['dx']}")
    return lesion, dx_type, ham_label, ham is not None


def _find_ham(root: Path) -> Optional[Path]:
    for cand in (root / "HAM10000_metadata.csv", root / "HAM10000_metadata"):
        if cand.is_file():
            return cand
    return None


def _extra(image_id: str, lesion: Dict[str, str], dx_type: Dict[str, str]) -> Dict[str, Any]:
    return {"image_id": image_id, "lesion_id": lesion.get(image_id), "dx_type": dx_type.get(image_id)}


def scan(data_dir: os.PathLike, **options: Any) -> Scan:
    """Find every labelled image under ``data_dir``; see the module docstring."""
    if options:
        raise ValueError(f"isic2018 takes no extra options, got {sorted(options)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"isic2018: data_dir {str(root)!r} is not a directory")
    records: List[Record] = []
    problems: List[Problem] = []
    sources: Dict[str, str] = {}
    lesion, dx_type, ham_label, has_ham = _lesion_tables(root)

    gts = {s: _find_gt(root, s) for s in OFFICIAL_SPLITS}
    inputs = {s: root / f"ISIC2018_Task3_{s}_Input" for s in OFFICIAL_SPLITS}
    if any(gts.values()):
        for s, split in OFFICIAL_SPLITS.items():
            gt, inp = gts[s], inputs[s]
            if gt is None and not inp.is_dir():
                continue
            if gt is None:
                n = sum(1 for p in iter_files(inp) if file_kind(p.name) == "image")
                problems.append(
                    Problem(f"{inp.name}/", "missing_label", f"no ISIC2018_Task3_{s}_GroundTruth.csv; {n} image(s) skipped")
                )
                continue
            rows = _read_csv(gt, ["image", *LABELS])
            if not inp.is_dir():
                problems.append(Problem(f"{inp.name}/", "missing_image", f"input folder missing; {len(rows)} labelled row(s) skipped"))
                continue
            index = _index_images(inp, root, problems, flat=True)
            seen: Dict[str, str] = {}
            gt_show = gt.relative_to(root).as_posix()
            for line, row in enumerate(rows, start=2):
                image_id = row["image"]
                label, why = _one_hot(row)
                where = f"{gt_show}:{line} ({image_id})"
                if label is None:
                    problems.append(Problem(where, "ambiguous_label", why))
                    seen[image_id] = "?"
                    continue
                if image_id in seen:
                    if seen[image_id] != label:
                        problems.append(Problem(where, "label_conflict", f"listed again with label {label} (first {seen[image_id]})"))
                        records[:] = [r for r in records if r.extra.get("image_id") != image_id]
                    continue
                seen[image_id] = label
                path = index.get(image_id)
                if path is None:
                    problems.append(Problem(where, "missing_image", f"no image {image_id} in {inp.name}/"))
                    continue
                if has_ham and image_id in ham_label and ham_label[image_id] != label:
                    problems.append(
                        Problem(
                            path.relative_to(root).as_posix(),
                            "label_conflict",
                            f"ground truth says {label} but HAM10000_metadata.csv says {ham_label[image_id]}",
                        )
                    )
                    continue
                records.append(Record(str(path), label, split=split, group=lesion.get(image_id), extra=_extra(image_id, lesion, dx_type)))
            for image_id, path in index.items():
                if image_id not in seen:
                    problems.append(Problem(path.relative_to(root).as_posix(), "missing_label", f"not listed in {gt.name}"))
            sources[split] = f"official ({inp.name}/ + {gt.name})"
    elif has_ham:
        ham = _find_ham(root)
        assert ham is not None
        index = _index_images(root, root, problems, flat=False)
        rows = _read_csv(ham, ["lesion_id", "image_id", "dx"])
        listed = set()
        for line, row in enumerate(rows, start=2):
            image_id = row["image_id"]
            where = f"{ham.name}:{line} ({image_id})"
            label = DX_TO_LABEL.get(row["dx"].lower())
            if label is None:
                problems.append(Problem(where, "ambiguous_label", f"unknown dx {row['dx']!r} (expected one of {sorted(DX_TO_LABEL)})"))
                listed.add(image_id)
                continue
            if image_id in listed:
                problems.append(Problem(where, "duplicate_name", "image id listed twice in the metadata; first row kept"))
                continue
            listed.add(image_id)
            path = index.get(image_id)
            if path is None:
                problems.append(Problem(where, "missing_image", f"no image file {image_id}.* under the data folder"))
                continue
            records.append(Record(str(path), label, split=None, group=lesion.get(image_id), extra=_extra(image_id, lesion, dx_type)))
        for image_id, path in index.items():
            if image_id not in listed:
                problems.append(Problem(path.relative_to(root).as_posix(), "missing_label", f"image id not in {ham.name}"))
    else:
        raise ValueError(
            f"isic2018: found neither ISIC2018_Task3_*_GroundTruth.csv nor HAM10000_metadata.csv under {str(root)!r}"
        )
    from datasets import Value

    return Scan(
        name=NAME,
        root=root,
        records=records,
        problems=problems,
        group_column="lesion_id",
        extra_features={"image_id": Value("string"), "lesion_id": Value("string"), "dx_type": Value("string")},
        split_sources=sources,
    )


def load_isic2018(data_dir: os.PathLike, **kwargs: Any):
    """``rcl_hf.data.load_dataset("isic2018", data_dir, **kwargs)``."""
    from .loading import load_dataset

    return load_dataset(NAME, data_dir, **kwargs)
