"""Duplicate audit: byte-identical and perceptually identical images, within and across splits.

* **Exact** duplicates share the SHA-1 of their file bytes.
* **Perceptual** duplicates (optional) have difference hashes (dHash, 64 bits)
  within a Hamming distance ``max_distance``.  dHash (N. Krawetz, "Kind of like
  that", hackerfactor.com, 2013): shrink the grayscale image to 9x8, and set bit
  ``8*r + c`` when ``pixel[r, c] < pixel[r, c + 1]``.  It survives re-encoding
  and resizing, not crops or rotations.

A duplicate that sits in two splits leaks: the evaluation split then scores
images the model trained on.  :func:`find_duplicates` reports every group of
duplicates with the splits it touches and whether its members disagree on the
label; :func:`cross_split_drop_indices` picks the copies to drop from the
later split (order ``train < validation < test``) when the user asks for it.

:func:`merge_groups` unions grouping ids that share identical content, so that a
split grouped by patient (or, for Brain MRI which has no patient ids, by
content hash alone) never puts byte-identical files on both sides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "DuplicateGroup",
    "DuplicateReport",
    "SPLIT_ORDER",
    "ahash",
    "audit_duplicates",
    "cross_split_drop_indices",
    "dhash",
    "find_duplicates",
    "hamming",
    "merge_groups",
]

#: Priority when a copy must go: a duplicate is kept in the earliest split.
SPLIT_ORDER = ("train", "validation", "test")


def dhash(img: Image.Image, hash_size: int = 8) -> int:
    """Difference hash (``hash_size**2`` bits) of ``img``; see the module docstring."""
    small = img.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.BOX)
    px = np.asarray(small, dtype=np.int16)
    bits = (px[:, :-1] < px[:, 1:]).flatten()
    return int(np.packbits(bits).view(">u8")[0]) if hash_size == 8 else int("".join("1" if b else "0" for b in bits), 2)


def ahash(img: Image.Image, hash_size: int = 8) -> int:
    """Average hash: bit set where the 8x8 grayscale thumbnail exceeds its mean."""
    small = np.asarray(img.convert("L").resize((hash_size, hash_size), Image.Resampling.BOX), dtype=np.float64)
    bits = (small > small.mean()).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return int(bin(int(a) ^ int(b)).count("1"))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


@dataclass
class DuplicateGroup:
    """Files that are copies of each other: ``kind`` ``"exact"`` (same SHA-1) or ``"perceptual"``."""

    kind: str
    key: str
    indices: List[int]
    splits: List[str]
    labels: List[str]
    names: List[str]

    @property
    def cross_split(self) -> bool:
        return len(set(self.splits)) > 1

    @property
    def label_conflict(self) -> bool:
        return len(set(self.labels)) > 1

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "files": [{"split": s, "label": l, "file": n} for s, l, n in zip(self.splits, self.labels, self.names)],
        }


@dataclass
class DuplicateReport:
    """All duplicate groups; see :attr:`cross_split`, :attr:`label_conflicts`."""

    groups: List[DuplicateGroup] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)  # names dropped by drop_cross_split_duplicates

    def of_kind(self, kind: str) -> List[DuplicateGroup]:
        return [g for g in self.groups if g.kind == kind]

    @property
    def cross_split(self) -> List[DuplicateGroup]:
        return [g for g in self.groups if g.cross_split]

    @property
    def within_split(self) -> List[DuplicateGroup]:
        return [g for g in self.groups if not g.cross_split]

    @property
    def label_conflicts(self) -> List[DuplicateGroup]:
        return [g for g in self.groups if g.label_conflict]

    def summary(self) -> str:
        parts = []
        for kind in ("exact", "perceptual"):
            gs = self.of_kind(kind)
            if not gs:
                continue
            n_files = sum(len(g.indices) for g in gs)
            n_cross = sum(g.cross_split for g in gs)
            n_conf = sum(g.label_conflict for g in gs)
            parts.append(
                f"{kind} duplicates: {len(gs)} group(s), {n_files} files, {n_files - len(gs)} redundant; "
                f"{n_cross} group(s) across splits, {n_conf} with conflicting labels"
            )
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} cross-split duplicate(s) from evaluation splits")
        return "; ".join(parts) if parts else "no duplicates"

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for kind in ("exact", "perceptual"):
            gs = self.of_kind(kind)
            out[kind] = {
                "groups": len(gs),
                "files": sum(len(g.indices) for g in gs),
                "cross_split_groups": sum(g.cross_split for g in gs),
                "label_conflict_groups": sum(g.label_conflict for g in gs),
            }
        out["dropped"] = list(self.dropped)
        out["details"] = [g.to_dict() for g in self.groups]
        return out


def _perceptual_components(hashes: Sequence[Optional[int]], max_distance: int, chunk: int = 1024) -> List[List[int]]:
    """Connected components of ``hamming(h_i, h_j) <= max_distance`` (vectorised, chunked)."""
    valid = [i for i, h in enumerate(hashes) if h is not None]
    if len(valid) < 2:
        return []
    arr = np.array([hashes[i] for i in valid], dtype=np.uint64)
    uf = _UnionFind(len(valid))
    for start in range(0, len(arr), chunk):
        block = arr[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ arr[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        for a, b in zip(ii + start, jj):
            if a < b:
                uf.union(int(a), int(b))
    comps: Dict[int, List[int]] = {}
    for k in range(len(valid)):
        comps.setdefault(uf.find(k), []).append(valid[k])
    return [sorted(c) for c in comps.values() if len(c) > 1]


def find_duplicates(
    sha1s: Sequence[Optional[str]],
    splits: Sequence[str],
    labels: Sequence[str],
    names: Sequence[str],
    dhashes: Optional[Sequence[Optional[int]]] = None,
    max_distance: int = 0,
) -> DuplicateReport:
    """Group exact (same SHA-1) and, when ``dhashes`` is given, perceptual duplicates.

    A perceptual group is reported only when it is not already one exact group.
    """
    by_sha: Dict[str, List[int]] = {}
    for i, s in enumerate(sha1s):
        if s:
            by_sha.setdefault(s, []).append(i)
    report = DuplicateReport()

    def group(kind: str, key: str, idx: List[int]) -> DuplicateGroup:
        return DuplicateGroup(
            kind, key, idx, [splits[i] for i in idx], [labels[i] for i in idx], [names[i] for i in idx]
        )

    for sha, idx in sorted(by_sha.items(), key=lambda kv: kv[1][0]):
        if len(idx) > 1:
            report.groups.append(group("exact", sha, idx))
    if dhashes is not None:
        for comp in _perceptual_components(dhashes, max_distance):
            if len({sha1s[i] for i in comp}) > 1:
                report.groups.append(group("perceptual", f"{dhashes[comp[0]]:016x}", comp))
    return report


def cross_split_drop_indices(report: DuplicateReport, kinds: Iterable[str] = ("exact", "perceptual")) -> List[int]:
    """Indices to drop so no duplicate group spans splits: keep the copies in the earliest split.

    Split priority is :data:`SPLIT_ORDER` (``train`` keeps, ``validation`` before ``test``).
    """
    rank = {s: r for r, s in enumerate(SPLIT_ORDER)}
    kinds = set(kinds)
    drop = set()
    for g in report.groups:
        if g.kind not in kinds or not g.cross_split:
            continue
        keep = min(g.splits, key=lambda s: rank.get(s, len(rank)))
        drop.update(i for i, s in zip(g.indices, g.splits) if s != keep)
    return sorted(drop)


def merge_groups(groups: Sequence[Optional[str]], keys: Sequence[Optional[str]], prefix: str = "sha1:") -> List[str]:
    """Union grouping ids that share a content key (SHA-1, or a perceptual cluster id).

    A record without a group takes ``prefix + key[:16]``; every connected component
    of "same group or same key" then takes its smallest id.  So byte-identical
    files always end up in one group, whatever ids they came with.
    """
    n = len(groups)
    if len(keys) != n:
        raise ValueError(f"merge_groups: {n} groups but {len(keys)} keys")
    ids = [g if g is not None else (prefix + (keys[i] or f"row{i}")[:16]) for i, g in enumerate(groups)]
    uf = _UnionFind(n)
    first_by_id: Dict[str, int] = {}
    first_by_key: Dict[str, int] = {}
    for i in range(n):
        j = first_by_id.setdefault(ids[i], i)
        if j != i:
            uf.union(i, j)
        k = keys[i]
        if k:
            j = first_by_key.setdefault(k, i)
            if j != i:
                uf.union(i, j)
    comp_min: Dict[int, str] = {}
    for i in range(n):
        r = uf.find(i)
        if r not in comp_min or ids[i] < comp_min[r]:
            comp_min[r] = ids[i]
    return [comp_min[uf.find(i)] for i in range(n)]


def audit_duplicates(
    dataset_dict: Mapping[str, Any],
    perceptual: bool = False,
    max_distance: int = 0,
    progress: bool = True,
) -> DuplicateReport:
    """Audit a ``DatasetDict`` (or any ``{split: Dataset}``) for duplicates across and within splits.

    Uses the ``sha1`` column when present, otherwise hashes the stored image bytes
    (or files).  ``perceptual=True`` decodes every image once to compute its dHash.
    Row indices in the report are positions in the concatenation of the splits in
    ``dataset_dict`` order; ``names`` are ``source_file`` values when present.
    """
    from datasets import Image as ImageFeature
    from tqdm.auto import tqdm

    from .checks import _source_bytes, open_image_rgb

    sha1s: List[Optional[str]] = []
    splits: List[str] = []
    labels: List[str] = []
    names: List[str] = []
    dh: List[Optional[int]] = []
    for split, ds in dataset_dict.items():
        label_feat = ds.features.get("label")
        lab = ds["label"] if "label" in ds.column_names else [None] * len(ds)
        labels.extend(label_feat.int2str(v) if hasattr(label_feat, "int2str") and v is not None else str(v) for v in lab)
        splits.extend([split] * len(ds))
        names.extend(ds["source_file"] if "source_file" in ds.column_names else [f"{split}[{i}]" for i in range(len(ds))])
        need_bytes = "sha1" not in ds.column_names or perceptual
        if "sha1" in ds.column_names:
            sha1s.extend(ds["sha1"])
        if need_bytes:
            raw = ds.cast_column("image", ImageFeature(decode=False))
            for value in tqdm(raw["image"], desc=f"Hashing {split}", disable=not progress, leave=False):
                data, _ = _source_bytes(value)
                if "sha1" not in ds.column_names:
                    sha1s.append(hashlib.sha1(data).hexdigest())
                if perceptual:
                    try:
                        dh.append(dhash(open_image_rgb(data, draft_size=(64, 64))))
                    except ValueError:
                        dh.append(None)
    return find_duplicates(sha1s, splits, labels, names, dh if perceptual else None, max_distance)
