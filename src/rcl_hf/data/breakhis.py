"""BreaKHis v1 (breast histopathology, 8 subtypes, 4 magnifications): layout scanner.

Layout (``docs/datasets.md``; Spanhol et al. 2016)::

    BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<slide>/<mag>/<file>.png
        subtype: adenosis fibroadenoma phyllodes_tumor tubular_adenoma
                 ductal_carcinoma lobular_carcinoma mucinous_carcinoma papillary_carcinoma
        slide:   SOB_B_A_14-22549AB          mag: 40X 100X 200X 400X
        file:    SOB_B_A-14-22549AB-40-001.png
                 <procedure>_<B|M>_<type>-<year>-<slide>-<magnification>-<sequence>.png
    Folds.csv   (optional: fold,mag,grp,filename — the official 5 folds, grp train/test)

``data_dir`` may be any folder above the subtype folders.  The label is the
subtype folder; the file name must agree with it (type code, benign/malignant
letter), with its slide folder and with its magnification folder, otherwise the
file is skipped as ``wrong_place`` — a mismatch means one of the two is wrong,
and guessing would risk a silent mislabel.

Grouping: the patient, i.e. the slide id ``<year>-<slide>`` (``14-22549AB``);
BreaKHis has one slide per patient.  Splits: with ``Folds.csv``, fold ``fold``
(1-5) gives train/test and validation is carved from train by slide; without
it, validation and test are both derived by slide.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..severity import PRESETS
from .records import Problem, Record, Scan, file_kind, iter_files, unsupported_file

NAME = "breakhis"
LABELS = list(PRESETS[NAME].labels)
PRETTY_NAME = "BreaKHis v1 (Breast Cancer Histopathological Image Classification)"
DESCRIPTION = (
    "7,909 microscopic images (700x460 RGB PNG) of breast tumour tissue from 82 patients, at 40x, 100x, 200x "
    "and 400x magnification, in four benign (adenosis, fibroadenoma, phyllodes tumour, tubular adenoma) and "
    "four malignant (ductal, lobular, mucinous, papillary carcinoma) subtypes."
)
LICENSE = "other"
LICENSE_TEXT = (
    "Released by the P&D Laboratory (Parana, Brazil) for research and academic use; cite Spanhol et al. 2016. "
    "Check the terms on the homepage before redistribution."
)
HOMEPAGE = "https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/"
CITATION = """@article{spanhol2016breakhis,
  author = {Spanhol, Fabio A. and Oliveira, Luiz S. and Petitjean, Caroline and Heutte, Laurent},
  title = {A Dataset for Breast Cancer Histopathological Image Classification},
  journal = {IEEE Transactions on Biomedical Engineering},
  volume = {63},
  number = {7},
  pages = {1455--1462},
  year = {2016},
  doi = {10.1109/TBME.2015.2496264}
}"""
GROUPING = "By patient = slide id (<year>-<slide>, e.g. 14-22549AB): all magnifications of a patient share a split."

#: File-name type code -> subtype (label).
TYPE_CODES: Dict[str, str] = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
BENIGN = ("adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma")
MAGNIFICATIONS = (40, 100, 200, 400)
#: ``SOB_B_A-14-22549AB-40-001.png``
FILE_RE = re.compile(
    r"^(?P<proc>[A-Za-z]+)_(?P<cls>[BM])_(?P<type>[A-Z]+)-(?P<year>\d+)-(?P<slide>[0-9A-Za-z]+)-(?P<mag>\d+)-(?P<seq>\d+)$"
)


def parse_filename(name: str) -> Optional[Dict[str, Any]]:
    """Fields of a BreaKHis file name, or ``None`` when it does not follow the pattern.

    >>> parse_filename("SOB_B_A-14-22549AB-40-001.png")["slide_id"]
    '14-22549AB'
    """
    m = FILE_RE.match(os.path.splitext(os.path.basename(name))[0])
    if m is None or m["type"] not in TYPE_CODES:
        return None
    return {
        "procedure": m["proc"],
        "tumor_class": "benign" if m["cls"] == "B" else "malignant",
        "subtype": TYPE_CODES[m["type"]],
        "type_code": m["type"],
        "slide_id": f"{m['year']}-{m['slide']}",
        "slide_folder": f"{m['proc']}_{m['cls']}_{m['type']}_{m['year']}-{m['slide']}",
        "magnification": int(m["mag"]),
        "sequence": int(m["seq"]),
    }


def _find_folds(root: Path, folds_csv: Optional[os.PathLike]) -> Optional[Path]:
    if folds_csv is not None:
        p = Path(folds_csv)
        if not p.is_file():
            raise ValueError(f"breakhis: folds_csv {str(p)!r} does not exist")
        return p
    for p in sorted(root.iterdir()):
        if p.is_file() and p.name.lower() == "folds.csv":
            return p
    return None


def _check_place(path: Path, info: Dict[str, Any]) -> Optional[str]:
    """Why ``path`` contradicts its file name, or ``None`` when folders and name agree."""
    parts = [p.lower() for p in path.parts]
    mag_dir, slide_dir, subtype_dir = parts[-2], parts[-3], parts[-4]
    if subtype_dir != info["subtype"]:
        return f"file name says {info['subtype']} ({info['type_code']}) but it is in the {path.parts[-4]!r} folder"
    if slide_dir != info["slide_folder"].lower():
        return f"file name says slide {info['slide_folder']} but it is in the slide folder {path.parts[-3]!r}"
    if mag_dir != f"{info['magnification']}x":
        return f"file name says {info['magnification']}X but it is in the {path.parts[-2]!r} folder"
    expected_class = "benign" if info["subtype"] in BENIGN else "malignant"
    if info["tumor_class"] != expected_class:
        return f"file name marks a {info['tumor_class']} case but {info['subtype']} is {expected_class}"
    for cls in ("benign", "malignant"):
        if cls in parts[:-4] and cls != expected_class:
            return f"{info['subtype']} is {expected_class} but the file is under a {cls!r} folder"
    return None


def scan(
    data_dir: os.PathLike,
    *,
    fold: int = 1,
    magnification: Optional[int] = None,
    folds_csv: Optional[os.PathLike] = None,
) -> Scan:
    """Find every labelled image under ``data_dir``; see the module docstring.

    Args:
        fold: official fold (1-5) of ``Folds.csv`` to use for train/test.
        magnification: keep only 40, 100, 200 or 400 (``None``: all four).
        folds_csv: explicit path of ``Folds.csv`` (default: ``data_dir/Folds.csv`` when present).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"breakhis: data_dir {str(root)!r} is not a directory")
    if magnification is not None and int(magnification) not in MAGNIFICATIONS:
        raise ValueError(f"breakhis: magnification must be one of {MAGNIFICATIONS}, got {magnification!r}")
    records: List[Record] = []
    problems: List[Problem] = []
    for path in iter_files(root):
        show = path.relative_to(root).as_posix()
        kind = file_kind(path.name)
        if kind == "ignore":
            continue
        rel = path.relative_to(root).parts
        in_tree = any(p.lower() in BENIGN + tuple(TYPE_CODES.values()) for p in rel[:-1])
        if kind == "other":
            if in_tree:
                problems.append(unsupported_file(path, show))
            continue
        info = parse_filename(path.name)
        if info is None:
            problems.append(
                Problem(show, "wrong_place", "file name does not follow <proc>_<B|M>_<type>-<year>-<slide>-<mag>-<seq>.png")
            )
            continue
        if len(rel) < 4:
            problems.append(Problem(show, "wrong_place", "image is not inside <subtype>/<slide>/<magnification>/ folders"))
            continue
        why = _check_place(path.relative_to(root), info)
        if why is not None:
            problems.append(Problem(show, "wrong_place", why))
            continue
        if magnification is not None and info["magnification"] != int(magnification):
            continue
        records.append(
            Record(
                str(path),
                info["subtype"],
                split=None,
                group=info["slide_id"],
                extra={"slide_id": info["slide_id"], "magnification": info["magnification"]},
            )
        )
    if not records and not problems:
        raise ValueError(f"breakhis: no BreaKHis images (<subtype>/<slide>/<mag>/SOB_*.png) under {str(root)!r}")

    sources: Dict[str, str] = {}
    folds = _find_folds(root, folds_csv)
    if folds is not None:
        with open(folds, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in ("fold", "grp", "filename") if c not in header]
            if missing:
                raise ValueError(f"{folds}: missing column(s) {missing}; found {header}")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
        available = sorted({r["fold"] for r in rows}, key=lambda s: (len(s), s))
        if str(fold) not in available:
            raise ValueError(f"breakhis: fold {fold!r} not in {folds.name} (folds: {available})")
        grp_of: Dict[str, str] = {}
        for line, r in enumerate(rows, start=2):
            if r["fold"] != str(fold):
                continue
            base = os.path.basename(r["filename"].replace("\\", "/"))
            grp = r["grp"].lower()
            if grp not in ("train", "test"):
                problems.append(Problem(f"{folds.name}:{line}", "ambiguous_label", f"grp {r['grp']!r} is neither train nor test"))
                continue
            if base in grp_of and grp_of[base] != grp:
                problems.append(Problem(f"{folds.name}:{line} ({base})", "label_conflict", "listed as both train and test"))
                grp_of[base] = "conflict"
                continue
            grp_of[base] = grp
        kept: List[Record] = []
        found = set()
        for rec in records:
            base = os.path.basename(rec.path)
            found.add(base)
            grp = grp_of.get(base)
            show = Path(rec.path).relative_to(root).as_posix()
            if grp is None:
                problems.append(Problem(show, "not_in_split", f"not listed in {folds.name} fold {fold}"))
            elif grp == "conflict":
                problems.append(Problem(show, "label_conflict", f"{folds.name} fold {fold} lists it as both train and test"))
            else:
                rec.split = grp
                kept.append(rec)
        records = kept
        for base, grp in grp_of.items():
            if base in found:
                continue
            info = parse_filename(base)
            if magnification is not None and info is not None and info["magnification"] != int(magnification):
                continue
            problems.append(Problem(f"{folds.name} ({base})", "missing_image", f"listed in fold {fold} but no such image under the data folder"))
        sources = {"train": f"official ({folds.name} fold {fold}, grp=train)", "test": f"official ({folds.name} fold {fold}, grp=test)"}
    from datasets import Value

    return Scan(
        name=NAME,
        root=root,
        records=records,
        problems=problems,
        group_column="slide_id",
        extra_features={"slide_id": Value("string"), "magnification": Value("int32")},
        split_sources=sources,
    )


def load_breakhis(data_dir: os.PathLike, **kwargs: Any):
    """``rcl_hf.data.load_dataset("breakhis", data_dir, **kwargs)``."""
    from .loading import load_dataset

    return load_dataset(NAME, data_dir, **kwargs)
