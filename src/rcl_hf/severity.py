"""Clinical severity matrices.

A severity matrix ``M`` (K x K) gives ``M[i, j]``, the clinical cost of predicting
class ``j`` when the truth is class ``i``; the critical mask ``C`` (K x K, bool)
marks the errors that are clinically catastrophic (a tumour called "no tumour",
a malignant lesion called benign).  Both follow ``docs/severity.md``:

* ``M >= 0``, ``M[i, i] = 0``, every entry finite and in ``[0, 1]``;
* ``C[i, i]`` is false and every critical cell carries the largest cost of its row.

Default costs (``docs/severity.md``): correct 0, fine-grained 0.1, over-call (a
benign/normal case called malignant) 0.3, critical 1.0.

Reference: "Risk-Calibrated Learning: Minimizing Fatal Errors in Medical AI",
arXiv:2604.12693 (the severity-matrix idea; the exact presets are this project's).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from .atomic_io import atomic_write_bytes

__all__ = ["SeverityMatrix", "PRESETS", "FINE_COST", "OVERCALL_COST", "CRITICAL_COST"]

FINE_COST = 0.1
OVERCALL_COST = 0.3
CRITICAL_COST = 1.0

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class _PresetDef:
    labels: Sequence[str]
    positive: Sequence[str]
    ordinal: bool = False
    description: str = ""


#: Label order and "positive" (malignant / tumour / cancer) group of each preset.
PRESETS: Dict[str, _PresetDef] = {
    "brain_tumor_mri": _PresetDef(
        labels=("glioma", "meningioma", "notumor", "pituitary"),
        positive=("glioma", "meningioma", "pituitary"),
        description="Brain Tumor MRI: any tumour called 'notumor' is critical.",
    ),
    "isic2018": _PresetDef(
        labels=("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
        positive=("MEL", "BCC", "AKIEC"),
        description="ISIC 2018 Task 3: a malignant lesion (MEL, BCC, AKIEC) called benign is critical.",
    ),
    "breakhis": _PresetDef(
        labels=(
            "adenosis",
            "fibroadenoma",
            "phyllodes_tumor",
            "tubular_adenoma",
            "ductal_carcinoma",
            "lobular_carcinoma",
            "mucinous_carcinoma",
            "papillary_carcinoma",
        ),
        positive=("ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"),
        description="BreaKHis: a carcinoma called any benign subtype is critical.",
    ),
    "sicapv2": _PresetDef(
        labels=("NC", "G3", "G4", "G5"),
        positive=("G3", "G4", "G5"),
        ordinal=True,
        description="SICAPv2: cancer called non-cancerous (NC) is critical; grade errors cost 0.1*|i-j|.",
    ),
    "synthetic": _PresetDef(
        labels=("normal", "lesion_round", "lesion_oval", "lesion_ring"),
        positive=("lesion_round", "lesion_oval", "lesion_ring"),
        description="Embedded synthetic default: any lesion called 'normal' is critical.",
    ),
}


class SeverityMatrix:
    """A validated clinical severity matrix with its critical mask.

    Args:
        labels: class names, in the order of the matrix rows/columns.
        matrix: ``K x K`` costs, ``matrix[i, j]`` = cost of predicting ``j`` for truth ``i``.
        critical: ``K x K`` booleans, true where the error is critical. When
            omitted, every cell whose cost equals :data:`CRITICAL_COST` is critical.

    Raises:
        ValueError: naming the offending cell or label when the input breaks a rule
            of ``docs/severity.md``.

    Example:
        >>> sev = SeverityMatrix.preset("brain_tumor_mri")
        >>> sev.cost("glioma", "notumor"), sev.is_critical("glioma", "notumor")
        (1.0, True)
    """

    def __init__(
        self,
        labels: Sequence[str],
        matrix: Any,
        critical: Optional[Any] = None,
        name: Optional[str] = None,
    ) -> None:
        labels = [str(label) for label in labels]
        if len(labels) < 2:
            raise ValueError(f"A severity matrix needs at least 2 labels, got {len(labels)}: {labels}")
        seen = set()
        for label in labels:
            if label in seen:
                raise ValueError(f"Duplicate label {label!r} in severity labels {labels}")
            seen.add(label)
        k = len(labels)
        try:
            m = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Severity matrix is not numeric: {err}") from err
        if m.shape != (k, k):
            raise ValueError(f"Severity matrix has shape {m.shape}, expected ({k}, {k}) for labels {labels}")
        if critical is None:
            c = np.isclose(m, CRITICAL_COST) & ~np.eye(k, dtype=bool)
        else:
            c_raw = np.asarray(critical)
            if c_raw.shape != (k, k):
                raise ValueError(f"Critical mask has shape {c_raw.shape}, expected ({k}, {k}) for labels {labels}")
            if c_raw.dtype != bool and not np.all(np.isin(c_raw, (0, 1))):
                raise ValueError("Critical mask must hold booleans (or 0/1)")
            c = c_raw.astype(bool)
        for i in range(k):
            for j in range(k):
                v = m[i, j]
                cell = f"cell [{labels[i]!r} -> {labels[j]!r}] ({i}, {j})"
                if not np.isfinite(v):
                    raise ValueError(f"Severity {cell} is not finite: {v}")
                if v < 0:
                    raise ValueError(f"Severity {cell} is negative: {v}")
                if v > 1:
                    raise ValueError(f"Severity {cell} is {v}, above the maximum of 1")
            if m[i, i] != 0:
                raise ValueError(f"Severity diagonal cell [{labels[i]!r} -> {labels[i]!r}] must be 0, got {m[i, i]}")
            if c[i, i]:
                raise ValueError(f"Critical mask diagonal cell [{labels[i]!r} -> {labels[i]!r}] must be False")
            row_max = m[i].max()
            for j in np.flatnonzero(c[i]):
                if m[i, j] < row_max:
                    raise ValueError(
                        f"Critical cell [{labels[i]!r} -> {labels[j]!r}] has cost {m[i, j]}, "
                        f"below its row's maximum {row_max}: a critical error must be the costliest"
                    )
                if m[i, j] == 0:
                    raise ValueError(f"Critical cell [{labels[i]!r} -> {labels[j]!r}] has zero cost")
        self.labels: List[str] = labels
        self.matrix: np.ndarray = m
        self.critical: np.ndarray = c
        self.name = name
        self.matrix.setflags(write=False)
        self.critical.setflags(write=False)

    # ------------------------------------------------------------------ basics
    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        """Position of ``label``; ``ValueError`` naming the known labels if absent."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"Unknown label {label!r}; severity labels are {self.labels}") from None

    def cost(self, true_label: str, predicted_label: str) -> float:
        return float(self.matrix[self.index(true_label), self.index(predicted_label)])

    def is_critical(self, true_label: str, predicted_label: str) -> bool:
        return bool(self.critical[self.index(true_label), self.index(predicted_label)])

    @property
    def positive_rows(self) -> np.ndarray:
        """Boolean vector: true for classes whose row holds at least one critical cell."""
        return self.critical.any(axis=1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeverityMatrix):
            return NotImplemented
        return (
            self.labels == other.labels
            and np.array_equal(self.matrix, other.matrix)
            and np.array_equal(self.critical, other.critical)
        )

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return f"SeverityMatrix({name}labels={self.labels}, n_critical_cells={int(self.critical.sum())})"

    # ---------------------------------------------------------- constructors
    @classmethod
    def from_groups(
        cls,
        labels: Sequence[str],
        positive: Iterable[str],
        fine: float = FINE_COST,
        overcall: float = OVERCALL_COST,
        critical: float = CRITICAL_COST,
        ordinal: bool = False,
        name: Optional[str] = None,
    ) -> "SeverityMatrix":
        """Build a matrix from a "positive" group (malignant / tumour / cancer).

        * positive -> negative: ``critical`` cost, marked critical;
        * negative -> positive: ``overcall`` cost;
        * within a group: ``fine`` cost, or ``fine * |i - j|`` when ``ordinal`` (for
          positive classes listed in grade order, e.g. Gleason G3 < G4 < G5).
        """
        labels = list(labels)
        positive = list(positive)
        for p in positive:
            if p not in labels:
                raise ValueError(f"Unknown positive label {p!r}; labels are {labels}")
        if not positive:
            raise ValueError("from_groups needs at least one positive label")
        if len(positive) == len(labels):
            raise ValueError("from_groups needs at least one negative (benign / normal) label")
        k = len(labels)
        is_pos = np.array([label in positive for label in labels])
        pos_rank = {label: r for r, label in enumerate(l for l in labels if l in positive)}
        m = np.zeros((k, k))
        c = np.zeros((k, k), dtype=bool)
        for i, li in enumerate(labels):
            for j, lj in enumerate(labels):
                if i == j:
                    continue
                if is_pos[i] and not is_pos[j]:
                    m[i, j], c[i, j] = critical, True
                elif not is_pos[i] and is_pos[j]:
                    m[i, j] = overcall
                elif ordinal and is_pos[i]:
                    m[i, j] = min(fine * abs(pos_rank[li] - pos_rank[lj]), critical)
                else:
                    m[i, j] = fine
        return cls(labels, m, c, name=name)

    @classmethod
    def preset(cls, name: str) -> "SeverityMatrix":
        """The preset ``name`` (see :data:`PRESETS` and ``docs/severity.md``)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown severity preset {name!r}; choose one of {sorted(PRESETS)}")
        p = PRESETS[name]
        return cls.from_groups(p.labels, p.positive, ordinal=p.ordinal, name=name)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON form: ``{"labels", "matrix", "critical"[, "name"]}``."""
        d: Dict[str, Any] = {
            "labels": list(self.labels),
            "matrix": self.matrix.tolist(),
            "critical": self.critical.tolist(),
        }
        if self.name:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SeverityMatrix":
        if not isinstance(data, dict):
            raise ValueError(f"Severity data must be a JSON object, got {type(data).__name__}")
        missing = [key for key in ("labels", "matrix") if key not in data]
        if missing:
            raise ValueError(f"Severity data is missing key(s) {missing}; expected 'labels', 'matrix', 'critical'")
        return cls(data["labels"], data["matrix"], data.get("critical"), name=data.get("name"))

    def to_json(self, path: PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically (:func:`rcl_hf.atomic_io.atomic_write_bytes`)."""
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=2).encode("utf-8"))

    @classmethod
    def from_json(cls, path: PathLike) -> "SeverityMatrix":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"Severity file {os.fspath(path)!r} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def resolve(cls, spec: Union["SeverityMatrix", str, Dict[str, Any], None], default: Optional[str] = None) -> "SeverityMatrix":
        """Accept a SeverityMatrix, a preset name, a JSON path or a dict."""
        if spec is None:
            if default is None:
                raise ValueError("No severity matrix given")
            spec = default
        if isinstance(spec, SeverityMatrix):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if isinstance(spec, (str, os.PathLike)):
            s = os.fspath(spec)
            if s in PRESETS:
                return cls.preset(s)
            if os.path.exists(s):
                return cls.from_json(s)
            raise ValueError(f"{s!r} is neither a severity preset ({sorted(PRESETS)}) nor an existing JSON file")
        raise ValueError(f"Cannot build a severity matrix from {type(spec).__name__}")

    # -------------------------------------------------------------- reorder
    def reorder(self, labels: Sequence[str]) -> "SeverityMatrix":
        """Same costs, rows/columns permuted to ``labels`` (e.g. a dataset's order).

        Raises ``ValueError`` when ``labels`` is not a permutation of :attr:`labels`.
        """
        labels = list(labels)
        missing = [label for label in self.labels if label not in labels]
        extra = [label for label in labels if label not in self.labels]
        if missing or extra or len(labels) != len(self.labels):
            raise ValueError(
                f"Cannot reorder severity labels {self.labels} to {labels}: "
                f"missing {missing}, unknown {extra}"
            )
        idx = [self.labels.index(label) for label in labels]
        return SeverityMatrix(labels, self.matrix[np.ix_(idx, idx)], self.critical[np.ix_(idx, idx)], name=self.name)

    def check_labels(self, labels: Sequence[str], what: str = "dataset") -> None:
        """Raise ``ValueError`` unless ``labels`` equals :attr:`labels` in order."""
        labels = list(labels)
        if labels != self.labels:
            if sorted(labels) == sorted(self.labels):
                hint = " (same names, other order: use .reorder())"
            else:
                missing = [label for label in labels if label not in self.labels]
                extra = [label for label in self.labels if label not in labels]
                hint = (f": {what.lower()} classes without a severity row: {missing}" if missing else "") + (
                    f"{';' if missing else ':'} severity labels that are no {what.lower()} class: {extra}" if extra else "")
            raise ValueError(f"{what} labels {labels} do not match severity labels {self.labels}{hint}")

    def to_markdown(self) -> str:
        """The matrix as a markdown table, critical cells in bold with a marker."""
        head = "| true \\ predicted | " + " | ".join(self.labels) + " |"
        sep = "|---" * (self.num_labels + 1) + "|"
        rows = []
        for i, li in enumerate(self.labels):
            cells = []
            for j in range(self.num_labels):
                v = f"{self.matrix[i, j]:g}"
                cells.append(f"**{v} ⚠**" if self.critical[i, j] else v)
            rows.append(f"| **{li}** | " + " | ".join(cells) + " |")
        return "\n".join([head, sep, *rows])
