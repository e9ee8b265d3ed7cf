"""SICAPv2 (prostate histology patches, Gleason grades): layout scanner.

Layout (``docs/datasets.md``; Silva-Rodriguez et al. 2020)::

    SICAPv2/images/<wsi>_Block_Region_<r>_<i>_<j>_xini_<x>_yini_<y>.jpg   (512x512)
    SICAPv2/masks/...
    SICAPv2/partition/Test/{Train,Test}.xlsx
    SICAPv2/partition/Validation/Val{1..4}/{Train,Test}.xlsx
        columns: image_name, NC, G3, G4, G5, G4C   (one-hot over NC/G3/G4/G5; G4C = cribriform G4)

``data_dir`` is ``SICAPv2/`` or its parent.  Labels come only from the
partition sheets.  Splits are the official patient-level partitions:

* test = ``partition/Test/Test.xlsx``;
* with ``partition/Validation/Val<fold>/``: train = its ``Train.xlsx``,
  validation = its ``Test.xlsx`` (the official cross-validation fold);
* without it: train = ``partition/Test/Train.xlsx`` and validation is carved
  from it grouped by WSI.

A row must set exactly one of NC/G3/G4/G5 (``G4C`` may only accompany ``G4``),
otherwise it is skipped (``ambiguous_label``).  Grouping: the WSI id, the name
prefix before ``_Block``; it is also checked across the official partitions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..severity import PRESETS
from .records import Problem, Record, Scan, iter_images

NAME = "sicapv2"
LABELS = list(PRESETS[NAME].labels)
PRETTY_NAME = "SICAPv2 (prostate histology, Gleason grading)"
DESCRIPTION = (
    "512x512 patches from 155 prostate biopsy whole-slide images (95 patients), labelled non-cancerous (NC) "
    "or with the Gleason pattern G3, G4 or G5; G4 patches with a cribriform pattern are flagged."
)
LICENSE = "cc-by-4.0"
LICENSE_TEXT = "CC BY 4.0 (Mendeley Data release)"
HOMEPAGE = "https://data.mendeley.com/datasets/9xxm58dvs3/1"
CITATION = """@article{silvarodriguez2020going,
  author = {Silva-Rodr{\\'i}guez, Julio and Colomer, Adri{\\'a}n and Sales, Mar{\\'i}a A. and Molina, Rafael and Naranjo, Valery},
  title = {Going deeper through the {Gleason} scoring scale: An automatic end-to-end system for histology prostate grading and cribriform pattern detection},
  journal = {Computer Methods and Programs in Biomedicine},
  volume = {195},
  pages = {105637},
  year = {2020},
  doi = {10.1016/j.cmpb.2020.105637}
}"""
GROUPING = "By whole-slide image (wsi_id, the patch-name prefix before _Block): all patches of a WSI share a split."

SHEET_COLUMNS = ["image_name", "NC", "G3", "G4", "G5"]


def wsi_of(image_name: str) -> Optional[str]:
    """WSI id of a patch name (prefix before ``_Block``), or ``None``.

    >>> wsi_of("16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg")
    '16B0001851'
    """
    stem = os.path.splitext(os.path.basename(image_name))[0]
    head, sep, _ = stem.partition("_Block")
    return head if sep and head else None


def _root(data_dir: Path) -> Path:
    for cand in (data_dir, data_dir / "SICAPv2"):
        if (cand / "partition").is_dir():
            return cand
    raise ValueError(f"sicapv2: no partition/ folder in {str(data_dir)!r} or its SICAPv2/ subfolder")


def _read_sheet(path: Path, root: Path, problems: List[Problem]) -> Dict[str, Tuple[str, bool]]:
    """``{image_stem: (label, cribriform)}`` from one partition sheet; bad rows reported."""
    import pandas as pd

    try:
        df = pd.read_excel(path, engine="openpyxl")
    except Exception as err:  # openpyxl raises many types for a bad workbook
        raise ValueError(f"sicapv2: cannot read {path}: {err}") from err
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in SHEET_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    show = path.relative_to(root).as_posix()
    out: Dict[str, Tuple[str, bool]] = {}
    has_g4c = "G4C" in df.columns
    for line, row in enumerate(df.itertuples(index=False), start=2):
        rd = dict(zip(df.columns, row))
        name = str(rd["image_name"]).strip()
        stem = os.path.splitext(name)[0] if name.lower().endswith((".jpg", ".jpeg", ".png")) else name
        where = f"{show}:{line} ({name})"
        try:
            vals = {c: float(rd[c]) for c in LABELS}
            g4c = float(rd["G4C"]) if has_g4c and str(rd["G4C"]) not in ("", "nan") else 0.0
        except (TypeError, ValueError) as err:
            problems.append(Problem(where, "ambiguous_label", f"non-numeric label value ({err})"))
            continue
        ones = [c for c, v in vals.items() if v == 1.0]
        others = [f"{c}={v:g}" for c, v in vals.items() if v not in (0.0, 1.0)]
        if others or len(ones) != 1:
            problems.append(Problem(where, "ambiguous_label", f"one-hot row sets {ones or 'no class'}" + (f", invalid {others}" if others else "")))
            out[stem] = ("?", False)  # listed (so not "missing_label"), already reported
            continue
        label = ones[0]
        if g4c not in (0.0, 1.0) or (g4c == 1.0 and label != "G4"):
            problems.append(Problem(where, "ambiguous_label", f"G4C={g4c:g} (cribriform) but the class is {label}"))
            out[stem] = ("?", False)
            continue
        if stem in out and out[stem][0] != label and out[stem][0] != "?":
            problems.append(Problem(where, "label_conflict", f"listed twice: {out[stem][0]} and {label}"))
            out[stem] = ("?", False)
            continue
        out[stem] = (label, g4c == 1.0)
    return out


def scan(data_dir: os.PathLike, *, fold: Optional[int] = 1) -> Scan:
    """Find every labelled patch under ``data_dir``; see the module docstring.

    Args:
        fold: cross-validation fold ``Val<fold>`` (1-4) giving train/validation;
            ``None`` derives validation from ``partition/Test/Train.xlsx`` by WSI.
    """
    base = Path(data_dir)
    if not base.is_dir():
        raise ValueError(f"sicapv2: data_dir {str(base)!r} is not a directory")
    root = _root(base)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise ValueError(f"sicapv2: no images/ folder in {str(root)!r}")
    test_dir = root / "partition" / "Test"
    for f in ("Train.xlsx", "Test.xlsx"):
        if not (test_dir / f).is_file():
            raise ValueError(f"sicapv2: missing official partition file {str(test_dir / f)!r}")
    problems: List[Problem] = []
    sheets: Dict[str, Dict[str, Tuple[str, bool]]] = {}
    sources: Dict[str, str] = {}
    sheets["test"] = _read_sheet(test_dir / "Test.xlsx", root, problems)
    sources["test"] = "official (partition/Test/Test.xlsx)"
    val_dir = root / "partition" / "Validation" / f"Val{fold}" if fold is not None else None
    full_train = _read_sheet(test_dir / "Train.xlsx", root, problems)
    if val_dir is not None and val_dir.is_dir():
        for f in ("Train.xlsx", "Test.xlsx"):
            if not (val_dir / f).is_file():
                raise ValueError(f"sicapv2: missing partition file {str(val_dir / f)!r}")
        sheets["train"] = _read_sheet(val_dir / "Train.xlsx", root, problems)
        sheets["validation"] = _read_sheet(val_dir / "Test.xlsx", root, problems)
        sources["train"] = f"official (partition/Validation/Val{fold}/Train.xlsx)"
        sources["validation"] = f"official (partition/Validation/Val{fold}/Test.xlsx)"
        for split in ("train", "validation"):  # the CV fold must agree with partition/Test/Train.xlsx
            for stem, (label, _) in sheets[split].items():
                ref = full_train.get(stem)
                if ref is not None and "?" not in (ref[0], label) and ref[0] != label:
                    problems.append(
                        Problem(f"images/{stem}.jpg", "label_conflict", f"Val{fold} says {label}, partition/Test/Train.xlsx says {ref[0]}")
                    )
                    sheets[split][stem] = ("?", False)
    else:
        if fold is not None and (root / "partition" / "Validation").is_dir():
            raise ValueError(f"sicapv2: no partition/Validation/Val{fold}/ (fold must be 1-4, or None to derive validation)")
        sheets["train"] = full_train
        sources["train"] = "official (partition/Test/Train.xlsx)"

    # A patch may sit in one split only.
    where_listed: Dict[str, List[str]] = {}
    for split, sheet in sheets.items():
        for stem in sheet:
            where_listed.setdefault(stem, []).append(split)
    index: Dict[str, Path] = {}
    for path, show in iter_images(images_dir, root, problems):
        if path.parent != images_dir:
            problems.append(Problem(show, "wrong_place", "image is nested inside images/ (expected directly in it)"))
            continue
        if path.stem in index:
            problems.append(Problem(show, "duplicate_name", f"also at {index[path.stem].relative_to(root).as_posix()}; kept that one"))
            continue
        index[path.stem] = path
    records: List[Record] = []
    for stem, splits in where_listed.items():
        if len(splits) > 1:
            problems.append(Problem(f"images/{stem}.jpg", "label_conflict", f"listed in several splits {splits}; skipped from all"))
            continue
        split = splits[0]
        label, cribriform = sheets[split][stem]
        if label == "?":
            continue  # already reported
        path = index.get(stem)
        if path is None:
            problems.append(Problem(f"images/{stem}.jpg", "missing_image", f"listed for {split} but not in images/"))
            continue
        wsi = wsi_of(stem)
        if wsi is None:
            problems.append(Problem(path.relative_to(root).as_posix(), "wrong_place", "patch name has no <wsi>_Block prefix; cannot group it"))
            continue
        records.append(Record(str(path), label, split=split, group=wsi, extra={"wsi_id": wsi, "cribriform": cribriform}))
    listed_any = set(where_listed) | set(full_train)
    for stem, path in index.items():
        if stem not in listed_any:
            problems.append(Problem(path.relative_to(root).as_posix(), "missing_label", "not listed in any partition sheet"))
        elif stem not in where_listed:
            problems.append(Problem(path.relative_to(root).as_posix(), "not_in_split", f"in partition/Test/Train.xlsx but not in Val{fold}"))
    records.sort(key=lambda r: r.path)
    from datasets import Value

    return Scan(
        name=NAME,
        root=root,
        records=records,
        problems=problems,
        group_column="wsi_id",
        extra_features={"wsi_id": Value("string"), "cribriform": Value("bool")},
        split_sources=sources,
    )


def load_sicapv2(data_dir: os.PathLike, **kwargs: Any):
    """``rcl_hf.data.load_dataset("sicapv2", data_dir, **kwargs)``."""
    from .loading import load_dataset

    return load_dataset(NAME, data_dir, **kwargs)
