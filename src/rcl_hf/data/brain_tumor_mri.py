"""Brain Tumor MRI (M. Nickparvar, Kaggle): layout scanner.

Layout (``docs/datasets.md``)::

    <data_dir>/Training/{glioma,meningioma,notumor,pituitary}/Tr-*.jpg
    <data_dir>/Testing/{glioma,meningioma,notumor,pituitary}/Te-*.jpg

The class folder is the label.  ``Training`` is the official train split and
``Testing`` the official test split; either may be missing, and ``data_dir`` may
also be one split folder that holds the class folders directly (then it is the
pool that derived splits are carved from).  The older Kaggle naming
(``glioma_tumor``, ``no_tumor``, ...) is accepted.

There are no patient ids.  Byte-identical duplicates exist, some across
``Training`` and ``Testing``, and so do near-copies (re-encoded files, adjacent
slices of one scan).  The grouping column ``group_id`` is therefore the file's
content hash merged with perceptual clusters (dHash distance <=
:data:`PERCEPTUAL_MAX_DISTANCE`, the default :data:`PERCEPTUAL_GROUPING`; pass
``perceptual=False`` to group by file content only), so copies never straddle
derived splits; the duplicate audit reports the official cross-split copies,
and ``drop_cross_split_duplicates=True`` removes them from the test split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..severity import PRESETS
from .records import Problem, Record, Scan, file_kind, iter_class_images, iter_files

NAME = "brain_tumor_mri"
LABELS = list(PRESETS[NAME].labels)
PRETTY_NAME = "Brain Tumor MRI"
DESCRIPTION = (
    "Brain MRI slices (T1-weighted contrast-enhanced, T2 and FLAIR) in four classes: glioma, meningioma, "
    "pituitary tumour, and no tumour. Combined by M. Nickparvar from the figshare (Cheng et al.), SARTAJ "
    "and Br35H collections."
)
LICENSE = "cc0-1.0"
LICENSE_TEXT = "CC0 1.0 Universal (public domain dedication)"
HOMEPAGE = "https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset"
CITATION = """@misc{nickparvar2021brain,
  author = {Msoud Nickparvar},
  title = {Brain Tumor MRI Dataset},
  year = {2021},
  publisher = {Kaggle},
  doi = {10.34740/KAGGLE/DSV/2645886},
  url = {https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset}
}"""
GROUPING = (
    "No patient ids exist. Images are grouped by content: the SHA-1 of the file bytes, merged with perceptual "
    "near-copies (64-bit difference hash within a small Hamming distance), so byte-identical and near-identical "
    "images always fall in the same derived split."
)
#: Perceptual grouping is on by default for this dataset (``load_dataset(..., perceptual=False)`` turns it off).
PERCEPTUAL_GROUPING = True
#: dHash Hamming distance that joins two images into one group (measured: see ``load_dataset``).
PERCEPTUAL_MAX_DISTANCE = 2

#: Folder name (lower case) -> label.
CLASS_FOLDERS: Dict[str, str] = {
    **{c: c for c in LABELS},
    "glioma_tumor": "glioma",
    "meningioma_tumor": "meningioma",
    "no_tumor": "notumor",
    "pituitary_tumor": "pituitary",
}
#: Split folder name (lower case) -> split.
SPLIT_FOLDERS: Dict[str, str] = {"training": "train", "train": "train", "testing": "test", "test": "test"}


def _scan_split_dir(split_dir: Path, root: Path, split: Optional[str], records: List[Record], problems: List[Problem]) -> None:
    for path, label, _ in iter_class_images(split_dir, root, problems, lambda name: CLASS_FOLDERS.get(name.lower()),
                                            expected=sorted(set(CLASS_FOLDERS))):
        records.append(Record(str(path), label, split=split, group=None))


def scan(data_dir: os.PathLike, **options: Any) -> Scan:
    """Find every labelled image under ``data_dir``; see the module docstring."""
    if options:
        raise ValueError(f"brain_tumor_mri takes no extra options, got {sorted(options)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"brain_tumor_mri: data_dir {str(root)!r} is not a directory")
    records: List[Record] = []
    problems: List[Problem] = []
    sources: Dict[str, str] = {}
    children = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    split_dirs = [(children[k], SPLIT_FOLDERS[k]) for k in children if k in SPLIT_FOLDERS]
    class_dirs = [k for k in children if k in CLASS_FOLDERS]
    if split_dirs:
        seen = set()
        for d, split in split_dirs:
            if split in seen:
                raise ValueError(f"brain_tumor_mri: two folders for the {split} split under {str(root)!r}")
            seen.add(split)
            sources[split] = f"official ({d.name}/)"
            _scan_split_dir(d, root, split, records, problems)
        for k in class_dirs:  # class folders beside Training/Testing: ambiguous split
            for path in iter_files(children[k]):
                if file_kind(path.name) == "image":
                    problems.append(
                        Problem(path.relative_to(root).as_posix(), "wrong_place", "class folder outside Training/ and Testing/")
                    )
        for path in root.iterdir():
            if path.is_file() and file_kind(path.name) == "image":
                problems.append(Problem(path.name, "wrong_place", "image is not inside Training/ or Testing/"))
    elif class_dirs:
        _scan_split_dir(root, root, None, records, problems)
    else:
        raise ValueError(
            f"brain_tumor_mri: no Training/ or Testing/ folder and no class folders {LABELS} under {str(root)!r}"
        )
    return Scan(
        name=NAME,
        root=root,
        records=records,
        problems=problems,
        group_column=None,
        extra_features={},
        split_sources=sources,
    )


def load_brain_tumor_mri(data_dir: os.PathLike, **kwargs: Any):
    """``rcl_hf.data.load_dataset("brain_tumor_mri", data_dir, **kwargs)``."""
    from .loading import load_dataset

    return load_dataset(NAME, data_dir, **kwargs)
