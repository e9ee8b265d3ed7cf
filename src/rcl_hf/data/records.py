"""The scan model every loader shares: labelled records, reported problems, the load report.

A layout scanner (``brain_tumor_mri``, ``isic2018``, ``breakhis``, ``sicapv2``)
walks a download with :func:`iter_files`, sorts each file with :func:`file_kind`,
and returns a :class:`Scan`: one :class:`Record` ``(path, label, split, group)``
per labelled image and one :class:`Problem` ``(path, kind, reason, action)`` per
file or label row it cannot place.  A file is never given a label it was not
given by the dataset's own layout.  :func:`rcl_hf.data.load_dataset` gathers the
problems of every stage in a :class:`LoadReport`; in strict mode
:func:`raise_for_problems` raises one ``ValueError`` that lists them.

Image bytes are not read here: decoding and per-file image checks live in
:mod:`rcl_hf.data.images`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

__all__ = [
    "IMAGE_EXTENSIONS",
    "LoadReport",
    "PROBLEM_KINDS",
    "Problem",
    "Record",
    "Scan",
    "file_kind",
    "iter_class_images",
    "iter_files",
    "iter_images",
    "raise_for_problems",
    "unsupported_file",
]

#: Extensions treated as images (compared in lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
#: Side files that ship with the datasets and are skipped without a report.
IGNORED_EXTENSIONS = frozenset({".txt", ".md", ".csv", ".xlsx", ".xls", ".json", ".pdf", ".html", ".xml", ".ini", ".db"})
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})

#: Problem kinds (the ``kind`` field of :class:`Problem`).
PROBLEM_KINDS = (
    "empty",  # zero-byte file
    "truncated",  # image data ends early
    "corrupt",  # fails PIL verify/decoding for another reason
    "not_image",  # PIL cannot identify the format
    "too_large",  # more than max_pixels
    "mode",  # unusual pixel mode (converted, or skipped when conversion is off)
    "unsupported_file",  # a non-image file where images are expected
    "wrong_place",  # a file outside the folder that gives its label / a name that contradicts it
    "missing_image",  # a label row whose image file does not exist
    "missing_label",  # an image without a label row
    "ambiguous_label",  # a one-hot row with zero or several classes
    "label_conflict",  # two sources give the same image different labels
    "duplicate_name",  # the same image id found twice in the layout
    "not_in_split",  # an image the official split files do not list
    "cross_split_duplicate",  # dropped from an evaluation split (drop_cross_split_duplicates)
)


# --------------------------------------------------------------------------- files
def file_kind(name: str) -> str:
    """``"image"``, ``"ignore"`` (a known side file, hidden file) or ``"other"`` for a file name."""
    low = name.lower()
    if low in IGNORED_NAMES or low.startswith("."):
        return "ignore"
    ext = os.path.splitext(low)[1]
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in IGNORED_EXTENSIONS:
        return "ignore"
    return "other"


def unsupported_file(path: Path, show: str) -> "Problem":
    """The report for a file that is neither an image nor a known side file."""
    return Problem(show, "unsupported_file", f"not an image file (extension {path.suffix or 'none'!r})")


def iter_images(folder: Path, root: Path, problems: List["Problem"],
                report_other: bool = True) -> Iterator[Tuple[Path, str]]:
    """``(path, shown path)`` of every image file under ``folder`` (``shown path``: relative to ``root``). Known side
    files and hidden files are skipped silently; another file is skipped too, and reported into ``problems`` as an
    unsupported file when ``report_other``."""
    for path in iter_files(folder):
        show = path.relative_to(root).as_posix()
        kind = file_kind(path.name)
        if kind == "image":
            yield path, show
        elif kind == "other" and report_other:
            problems.append(unsupported_file(path, show))


def iter_class_images(folder: Path, root: Path, problems: List["Problem"],
                      label_of: Callable[[str], Optional[str]] = lambda name: name,
                      expected: Sequence[str] = ()) -> Iterator[Tuple[Path, str, str]]:
    """``(path, label, shown path)`` of every image directly inside a class folder of ``folder`` (``folder/<class>/x``),
    the layout of class-folder datasets; the label is ``label_of(class folder name)``. What is not such an image is
    reported into ``problems`` and skipped: a non-image file, an image outside a class folder, one under a folder
    that ``label_of`` does not know (``None``; ``expected`` lists the known ones), one nested deeper. Known side
    files and hidden files are skipped silently. ``shown path``: relative to ``root``."""
    for path, show in iter_images(folder, root, problems):
        rel = path.relative_to(folder).parts
        if len(rel) == 1:
            problems.append(Problem(show, "wrong_place", "image is not inside a class folder; cannot tell its label"))
            continue
        label = label_of(rel[0])
        if label is None:
            problems.append(
                Problem(show, "wrong_place", f"folder {rel[0]!r} is not a class folder (expected one of {list(expected)})")
            )
            continue
        if len(rel) > 2:
            problems.append(
                Problem(show, "wrong_place", f"image is nested below the class folder {rel[0]!r} ({'/'.join(rel[1:-1])})")
            )
            continue
        yield path, label, show


def iter_files(root: Union[str, os.PathLike]) -> Iterator[Path]:
    """Every regular file under ``root``, recursively, in sorted (deterministic) order.

    Hidden directories (``.git``, ``.cache``, ``__MACOSX``) are not entered.
    """
    stack = [os.fspath(root)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:  # unreadable directory: surface it, do not hide it
            raise ValueError(f"Cannot list directory {d!r}: {err}") from err
        subdirs = []
        for e in entries:
            if e.is_dir(follow_symlinks=True):
                if not e.name.startswith(".") and e.name != "__MACOSX":
                    subdirs.append(e.path)
            elif e.is_file(follow_symlinks=True):
                yield Path(e.path)
        stack.extend(reversed(subdirs))


# --------------------------------------------------------------------------- what loaders hand over
@dataclass
class Problem:
    """One reported file or label row: ``kind`` is one of :data:`PROBLEM_KINDS`; ``action`` is
    ``"skipped"``, ``"converted"`` or ``"dropped"``."""

    path: str
    kind: str
    reason: str
    action: str = "skipped"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} [{self.kind}, {self.action}]"


@dataclass
class Record:
    """One labelled image found by a layout scanner.

    ``split`` is the official split (``"train"``, ``"validation"``, ``"test"``) or
    ``None`` for the pool that derived splits are carved from.  ``group`` is the
    patient / lesion / slide / WSI id, or ``None`` when the layout has none (the
    file's content hash then stands in, so byte-identical files stay together).
    """

    path: str
    label: str
    split: Optional[str] = None
    group: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Scan:
    """A layout scanner's result: records, problems found while scanning, and how to read them."""

    name: str
    root: Path
    records: List[Record]
    problems: List[Problem]
    group_column: Optional[str]  # dataset-specific id column ("lesion_id", ...) or None
    extra_features: Dict[str, Any]  # column -> datasets feature, in column order
    split_sources: Dict[str, str]  # official split -> where it came from
    notes: List[str] = field(default_factory=list)
    labels: Optional[List[str]] = None  # the class names when the layout sets them (imagefolder), else the module's LABELS


@dataclass
class LoadReport:
    """Everything :func:`rcl_hf.data.load_dataset` skipped, converted, dropped or noticed."""

    dataset: str
    data_dir: str
    problems: List[Problem] = field(default_factory=list)
    duplicates: Any = None  # rcl_hf.data.duplicates.DuplicateReport
    split_sources: Dict[str, str] = field(default_factory=dict)
    group_overlaps: Dict[str, List[str]] = field(default_factory=dict)  # "a|b" -> groups in both official splits
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def skipped(self) -> List[Problem]:
        return [p for p in self.problems if p.action == "skipped"]

    def summary(self) -> str:
        by = Counter((p.kind, p.action) for p in self.problems)
        parts = [f"{n} {action} ({kind})" for (kind, action), n in sorted(by.items())]
        lines = [f"{self.dataset} at {self.data_dir}: " + (", ".join(parts) if parts else "no problems")]
        if self.duplicates is not None:
            lines.append(self.duplicates.summary())
        for pair, groups in self.group_overlaps.items():
            lines.append(f"official splits {pair.replace('|', ' and ')} share {len(groups)} group(s), e.g. {groups[:3]}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "problems": [asdict(p) for p in self.problems],
            "duplicates": self.duplicates.to_dict() if self.duplicates is not None else None,
            "split_sources": self.split_sources,
            "group_overlaps": self.group_overlaps,
            "counts": self.counts,
            "timings": self.timings,
            "notes": self.notes,
        }


def raise_for_problems(problems: Sequence[Problem], what: str, limit: int = 20) -> None:
    """Strict mode: raise one ``ValueError`` listing every skipped file (up to ``limit``)."""
    bad = [p for p in problems if p.action == "skipped"]
    if not bad:
        return
    listed = "\n".join(f"  - {p}" for p in bad[:limit])
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    raise ValueError(f"strict mode: {len(bad)} problem(s) in {what}:\n{listed}{more}")
