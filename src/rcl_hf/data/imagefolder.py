"""Your own images: one folder per class (``imagefolder``), labels from the folder names.

Layout (``docs/own_data.md``)::

    <data_dir>/<class>/*.png          # any of rcl_hf.data.records.IMAGE_EXTENSIONS
    <data_dir>/groups.csv             # optional: file,group (e.g. a patient id per image)

Each sub-folder of ``data_dir`` is a class; its name is the label, and the labels are
the folder names in sorted order (as in the ``datasets`` ``imagefolder`` builder).  The
severity matrix is not part of the layout: give it to ``scripts/train.py`` with
``--severity my_severity.json`` (labels = the folder names; ``docs/severity.md``).

There are no official splits: validation and test are carved from all images, grouped and
stratified by label (``--val_size``, ``--test_size``).  Groups (``group_id``): the group
of ``groups.csv`` when the file names the image, merged with the file's content hash
and perceptual near-copies (dHash distance <= :data:`PERCEPTUAL_MAX_DISTANCE`, as for
Brain MRI), so copies of one image never straddle splits.

Checks (a ``ValueError`` naming the folder): ``data_dir`` is not a folder, it has no
class folder, only one, or a class folder holds no image.  Files that cannot be used are
reported and skipped like in every loader (:func:`rcl_hf.data.load_dataset`): a corrupt
or truncated image, an image outside a class folder or nested below one, a non-image
file; ``strict=True`` raises instead.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List

from .records import IMAGE_EXTENSIONS, Problem, Record, Scan, iter_class_images

NAME = "imagefolder"
#: The labels are the class folders of each data folder (``Scan.labels``), not fixed here.
LABELS: List[str] = []
PRETTY_NAME = "Image folder"
DESCRIPTION = "Your own images, one folder per class; the labels are the folder names."
LICENSE = "other"
LICENSE_TEXT = "The license of your images."
HOMEPAGE = ""
CITATION = ""
GROUPING = (
    "The group of groups.csv (file,group) when given, merged with the SHA-1 of the file bytes and perceptual "
    "near-copies (64-bit difference hash within a small Hamming distance), so byte-identical and near-identical "
    "images always fall in the same derived split."
)
PERCEPTUAL_GROUPING = True
PERCEPTUAL_MAX_DISTANCE = 2
#: The optional group file at the top of the data folder.
GROUPS_FILE = "groups.csv"


def _read_groups(path: Path, root: Path, problems: List[Problem]) -> Dict[str, str]:
    """``relative file -> group`` from ``groups.csv`` (columns ``file``, ``group``)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"file", "group"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"imagefolder: {str(path)!r} needs the columns file,group; it has {reader.fieldnames}")
            groups: Dict[str, str] = {}
            for row in reader:
                name = Path((row["file"] or "").strip()).as_posix()
                group = (row["group"] or "").strip()
                if name and group:
                    if not (root / name).is_file():
                        problems.append(Problem(f"{GROUPS_FILE}: {name}", "missing_image", "no such image; row ignored"))
                    groups[name] = group
            return groups
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"imagefolder: cannot read {str(path)!r}: {err}") from None


def scan(data_dir: os.PathLike, **options: Any) -> Scan:
    """Find every labelled image under ``data_dir``; see the module docstring."""
    if options:
        raise ValueError(f"imagefolder takes no extra options, got {sorted(options)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"imagefolder: data_dir {str(root)!r} is not a directory")
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")
    if not class_dirs:
        raise ValueError(f"imagefolder: no class folder under {str(root)!r}; put each class's images in "
                         f"{str(root / '<class>')}/ (the folder name is the label)")
    if len(class_dirs) < 2:
        raise ValueError(f"imagefolder: only one class folder ({class_dirs[0]!r}) under {str(root)!r}; "
                         "a classifier needs at least two classes")
    problems: List[Problem] = []
    groups_path = root / GROUPS_FILE
    groups = _read_groups(groups_path, root, problems) if groups_path.is_file() else {}
    records: List[Record] = []
    for path, label, show in iter_class_images(root, root, problems):
        records.append(Record(str(path), label, split=None, group=groups.get(show)))
    found = {r.label for r in records}
    empty = [c for c in class_dirs if c not in found]
    if empty:
        raise ValueError(f"imagefolder: class folder(s) {empty} under {str(root)!r} hold no image "
                         f"(image files: {', '.join(sorted(IMAGE_EXTENSIONS))}); fill or remove them")
    notes = [f"groups from {GROUPS_FILE}: {len(set(groups.values()))} group(s) for {len(groups)} file(s)"] if groups else []
    return Scan(
        name=NAME,
        root=root,
        records=records,
        problems=problems,
        group_column=GROUPS_FILE if groups else None,
        extra_features={},
        split_sources={},
        notes=notes,
        labels=class_dirs,
    )


def load_imagefolder(data_dir: os.PathLike, **kwargs: Any):
    """``rcl_hf.data.load_dataset("imagefolder", data_dir, **kwargs)``."""
    from .loading import load_dataset

    return load_dataset(NAME, data_dir, **kwargs)
