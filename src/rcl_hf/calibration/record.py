"""``risk_calibration.json``: the decision layer a model folder carries.

A :class:`RiskCalibration` holds everything :func:`rcl_hf.predict` needs to turn
probabilities into the certified decision: the temperature ``T``, the decision rule
(blend weight ``w``: 0 = argmax, 1 = Bayes-risk rule), the certified referral threshold
``τ`` on the decision's expected cost, and the certificate itself (risk kind, ``α``, ``δ``,
method, sample sizes, what the calibration split showed, which dataset and split). It is
versioned (:data:`SCHEMA_VERSION`), validated when read, and written atomically
(:func:`rcl_hf.atomic_io.atomic_write_json`).

``unit`` (``image`` or ``group``) and ``n_groups`` (groups in the certification part, when group ids
were given) were added within schema version 1 as optional fields: a file written before them reads
as an image-level certificate without groups, and an older reader that ignores them still applies the
same threshold (a group-level certificate only assumes less).

Schema version 2 adds ``conditional`` and ``per_class`` (:mod:`rcl_hf.calibration.per_class`: for each
critical-capable class, whether its ``critical_miss`` is certified, on how many units, the smallest ``α`` its
size could certify and its realised risk on the certification part). Version 1 files still load (no per-class
certificate); files are written as version 2.

``score_band`` (:func:`rcl_hf.calibration.drift.score_band`: the lower edge of the upper band of referral scores,
its nominal share, and how many of the certification part's cases lie above it) was added within schema version 2
as an optional field, for the harmful-shift check (:mod:`rcl_hf.calibration.drift`): a file written before it
reads with the band computed from its ``score_quantiles`` (:func:`~rcl_hf.calibration.drift.band_reference`), and
an older reader ignores it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from scipy.special import log_softmax

from ..atomic_io import atomic_write_json
from ..decision import blend_decision, decision_scores
from ..metrics.functional import softmax
from ..severity import SeverityMatrix
from .per_class import CONDITIONAL, per_class_sentences
from .risk_control import METHODS, P_VALUES, REFER_ALL, RISK_KINDS, UNITS

__all__ = ["RiskCalibration", "RISK_CALIBRATION_FILE", "SCHEMA_VERSION", "RISK_DESCRIPTIONS"]

RISK_CALIBRATION_FILE = "risk_calibration.json"
SCHEMA_VERSION = 2
#: Schema versions this rcl_hf reads (version 1: no per-class certificates).
READABLE_SCHEMA_VERSIONS = (1, 2)
#: What each risk means, in a clinician's words (the card and the Space use these).
RISK_DESCRIPTIONS = {
    "critical_miss": "critical cases missed (neither diagnosed safely nor referred)",
    "cer_accepted": "critical errors among the cases the model decides itself",
}


@dataclass
class RiskCalibration:
    """The calibrated, certified decision layer of one model (see the module docstring)."""

    risk_kind: str
    alpha: float
    delta: float
    method: str
    p_value: str
    temperature: float
    blend_weight: float
    threshold: float
    labels: List[str]
    n_calibration: int
    n_tune: int
    n_certify: int
    n_risk: int  # units the certified risk was averaged over (critical-capable cases or groups, or all certify units)
    calibration: Dict[str, float]  # coverage, risk, accuracy_accepted, ... on the certification part
    score_quantiles: List[float]  # 101 quantiles of the referral score on the certification part (drift test)
    dataset: Optional[str] = None
    split: str = "validation"
    tolerance: float = 0.01
    class_scale: Optional[List[float]] = None  # vector scaling of log-probabilities (replaces the temperature)
    class_bias: Optional[List[float]] = None
    unit: str = "image"  # the certificate's unit: independent images, or groups (lesions, patients)
    n_groups: Optional[int] = None  # groups in the certification part (None: no group ids were given)
    schema_version: int = SCHEMA_VERSION
    notes: List[str] = field(default_factory=list)
    conditional: Optional[str] = None  # None: the pooled certificate only; "class": per class too
    per_class: Optional[Dict[str, Dict[str, Any]]] = None  # label -> certified, n_risk, smallest_alpha, risk
    score_band: Optional[Dict[str, float]] = None  # band_lower, band_share, n, in_band (the harmful-shift check)

    # ---------------------------------------------------------------- applying it
    @property
    def rule(self) -> str:
        """``argmax``, ``bayes`` or ``blend(w=…)``."""
        return {0.0: "argmax", 1.0: "bayes"}.get(float(self.blend_weight), f"blend(w={self.blend_weight:g})")

    @property
    def refers_everything(self) -> bool:
        return self.threshold <= REFER_ALL

    def probabilities(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities from logits ``z`` ``(N, K)``: ``softmax(z / T)``; with vector scaling,
        ``softmax(a ⊙ log softmax(z) + b)`` (:func:`rcl_hf.decision.fit_vector_scaling`)."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.labels):
            raise ValueError(f"logits must be (N, {len(self.labels)}), got shape {z.shape}")
        if self.class_scale is not None:
            return softmax(log_softmax(z, axis=1) * np.asarray(self.class_scale) + np.asarray(self.class_bias), axis=1)
        return softmax(z / self.temperature, axis=1)

    def decide(self, logits: Any, severity: SeverityMatrix, threshold: Optional[float] = None) -> Tuple[np.ndarray, ...]:
        """``(calibrated probabilities, decisions, referral scores, refer)`` for logits ``(N, K)``;
        ``threshold`` overrides the certified one (then the guarantee no longer holds)."""
        self.check_severity(severity)
        p = self.probabilities(logits)
        d = blend_decision(p, severity, float(self.blend_weight))
        s = decision_scores(p, d, severity)
        tau = self.threshold if threshold is None else float(threshold)
        return p, d, s, s > tau

    def check_severity(self, severity: SeverityMatrix) -> None:
        if list(severity.labels) != list(self.labels):
            raise ValueError(f"the risk calibration was made for labels {self.labels}, the model's severity has "
                             f"{list(severity.labels)}: recalibrate (rcl-calibrate) for this model")

    # ---------------------------------------------------------------- words
    def certificate(self) -> str:
        """One sentence that says what is certified, for cards, logs and the Space."""
        what = RISK_DESCRIPTIONS[self.risk_kind]
        conf = f"{1 - self.delta:.0%} confidence" if self.method == "ltt" else "on average (conformal risk control)"
        cov = self.calibration.get("coverage", float("nan"))
        if self.refers_everything:
            return (f"No threshold could be certified for at most {self.alpha:.0%} {what} on {self.n_certify:,} "
                    f"{self.split} images: every case is referred.")
        by_class = ""
        if self.per_class:
            by_class = " Per disease: " + "; ".join(per_class_sentences(self.per_class, self.alpha, self.unit,
                                                                          self.refers_everything)) + "."
        grouped = (f" in {self.n_groups:,} independent groups (the dataset's group ids: a lesion, a patient, or "
                   "near-copies of one image)" if self.unit == "group" else "")
        return (f"Decides {cov:.0%} of cases itself; at most {self.alpha:.0%} {what}, certified on "
                f"{self.n_certify:,} {self.split} images{grouped}{f' of {self.dataset}' if self.dataset else ''} at {conf}."
                + by_class)

    # ---------------------------------------------------------------- storage
    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["rule"] = self.rule
        out["certificate"] = self.certificate()
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "risk calibration") -> "RiskCalibration":
        """Validate and build; every problem is one ``ValueError`` that names the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(f"{where}: schema_version {version!r} is not supported (this rcl_hf reads {list(READABLE_SCHEMA_VERSIONS)}); "
                             "recalibrate with rcl-calibrate")
        names = {f.name for f in fields(cls)}
        missing = sorted(f.name for f in fields(cls)
                         if f.name not in data and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        cal = cls(**{k: v for k, v in data.items() if k in names})
        cal.validate(where)
        return cal

    def validate(self, where: str = "risk calibration") -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"{where}: {msg}")

        if self.risk_kind not in RISK_KINDS:
            bad(f"risk_kind must be one of {RISK_KINDS}, got {self.risk_kind!r}")
        if self.method not in METHODS:
            bad(f"method must be one of {METHODS}, got {self.method!r}")
        if self.p_value not in P_VALUES:
            bad(f"p_value must be one of {P_VALUES}, got {self.p_value!r}")
        for name in ("alpha", "delta"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                bad(f"{name} must be a number in (0, 1), got {v!r}")
        if not isinstance(self.temperature, (int, float)) or not (math.isfinite(self.temperature) and self.temperature > 0):
            bad(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not isinstance(self.blend_weight, (int, float)) or not 0 <= self.blend_weight <= 1:
            bad(f"blend_weight must be in [0, 1], got {self.blend_weight!r}")
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold) or self.threshold < REFER_ALL:
            bad(f"threshold must be a finite number >= {REFER_ALL}, got {self.threshold!r}")
        if not isinstance(self.labels, list) or len(self.labels) < 2 or not all(isinstance(x, str) for x in self.labels):
            bad(f"labels must be a list of >= 2 class names, got {self.labels!r}")
        for name in ("n_calibration", "n_tune", "n_certify", "n_risk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                bad(f"{name} must be an integer >= 0, got {v!r}")
        if self.n_tune + self.n_certify != self.n_calibration:
            bad(f"n_tune + n_certify ({self.n_tune} + {self.n_certify}) must equal n_calibration ({self.n_calibration})")
        if self.unit not in UNITS:
            bad(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.n_groups is not None and (isinstance(self.n_groups, bool) or not isinstance(self.n_groups, int)
                                          or not 0 <= self.n_groups <= self.n_certify):
            bad(f"n_groups must be absent or an integer in [0, n_certify = {self.n_certify}], got {self.n_groups!r}")
        if self.unit == "group":
            if self.n_groups is None or self.n_risk > self.n_groups:
                bad(f"a group-level certificate needs n_groups >= n_risk ({self.n_risk}), got {self.n_groups!r}")
            if self.method == "ltt" and self.p_value == "binomial":
                bad("a group-level LTT certificate needs p_value 'hoeffding_bentkus' (group losses are not 0/1)")
        vector = [*(self.class_scale or []), *(self.class_bias or [])]
        if (self.class_scale is None) != (self.class_bias is None) or (self.class_scale is not None and not (
                len(self.class_scale) == len(self.class_bias) == len(self.labels)
                and all(isinstance(x, (int, float)) and math.isfinite(x) for x in vector))):
            bad(f"class_scale and class_bias must both be absent or both lists of {len(self.labels)} finite numbers")
        if self.conditional not in CONDITIONAL:
            bad(f"conditional must be one of {CONDITIONAL}, got {self.conditional!r}")
        if self.per_class is not None:
            keys = {"certified", "n_risk", "smallest_alpha", "risk"}
            if self.conditional != "class" or not isinstance(self.per_class, dict) or not all(
                    label in self.labels and isinstance(f, dict) and keys <= set(f) for label, f in self.per_class.items()):
                bad(f"per_class must map class names of labels to {sorted(keys)} (with conditional 'class')")
        band = self.score_band
        if band is not None and not (
                isinstance(band, dict) and {"band_lower", "band_share", "n", "in_band"} <= set(band)
                and all(isinstance(band[k], (int, float)) and not isinstance(band[k], bool) for k in ("band_lower", "band_share"))
                and all(isinstance(band[k], int) and not isinstance(band[k], bool) for k in ("n", "in_band"))
                and 0 <= band["in_band"] <= band["n"]
                and 0 < band["band_share"] < 1 and math.isfinite(band["band_lower"])):
            bad("score_band must be absent or {band_lower, band_share in (0, 1), n, in_band in [0, n]} (integers n, in_band)")
        q = self.score_quantiles
        if not isinstance(q, list) or len(q) < 2 or any(not isinstance(x, (int, float)) for x in q) or np.any(np.diff(q) < 0):
            bad("score_quantiles must be a non-decreasing list of numbers")

    def save(self, target: Union[str, os.PathLike]) -> Path:
        """Write ``risk_calibration.json`` into the folder ``target`` (or to ``target`` itself when it names a
        ``.json`` file), atomically; returns its path."""
        self.validate()
        path = Path(target) if str(target).endswith(".json") else Path(target) / RISK_CALIBRATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: Union[str, os.PathLike]) -> Optional["RiskCalibration"]:
        """The calibration in ``folder`` (a model folder or the file), ``None`` when there is none;
        a damaged or invalid file raises one ``ValueError`` naming it."""
        path = Path(folder)
        if path.is_dir():
            path = path / RISK_CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable risk calibration ({err}); recalibrate with rcl-calibrate") from None
        data = {k: v for k, v in data.items() if k not in ("rule", "certificate")}  # derived on write
        return cls.from_dict(data, where=str(path))
