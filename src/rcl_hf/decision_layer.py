"""The decision layer: one object that turns a model's logits into the answer, for every caller.

A :class:`DecisionLayer` holds the three parts a model folder carries beside its weights and applies them
together, as MAPIE's controllers hold the risk and its levels and apply them:

* the **severity matrix** ``M`` (``config.json``, :class:`rcl_hf.SeverityMatrix`);
* the **risk calibration** (``risk_calibration.json``, :class:`rcl_hf.calibration.RiskCalibration`):
  temperature ``T`` (or vector scaling), the decision rule chosen on validation (a blend weight,
  :mod:`rcl_hf.decision`) and the referral threshold ``τ̂`` certified there by Learn then Test
  (Angelopoulos et al. 2021) or conformal risk control;
* the **out-of-distribution guard** (``ood_guard.safetensors``, :class:`rcl_hf.ood.OODGuard`, Lee et al. 2018):
  a Mahalanobis score on the classifier's input embedding and its conformal threshold ``τ_ood``.

For logits ``z`` (and embeddings ``e`` when there is a guard), :meth:`DecisionLayer.apply` returns the
:class:`Prediction`::

    p = softmax(z / T)                      (calibrated; softmax(z) without a calibration)
    ŷ = the calibrated rule's decision      (Bayes-risk rule argmin_j Σ_i p_i M[i, j] without one)
    r = Σ_i p_i M[i, ŷ]                     (expected clinical cost of the decision: the referral score)
    refer = unusable ∨ outside ∨ uncertain, with
        unusable:  the image holds nothing to assess (too small or blank; decided before any model runs)
        outside:   the guard's score(e) > τ_ood
        uncertain: r > τ̂                    (the hand-set :data:`DEFAULT_REFERRAL_THRESHOLD` without a calibration)

One refer policy for everyone: :func:`rcl_hf.predict`, the ``risk-aware-image-classification`` pipeline,
the Space, ``rcl-calibrate``, the checks and the cards all go through this object, so an image
outside what the model knows is referred, with the reason ``"outside"``, whichever way it came in.
:meth:`DecisionLayer.guarantees` holds the sentences that say what is certified (the risk certificate,
:meth:`~rcl_hf.calibration.RiskCalibration.certificate`, and the guard's,
:meth:`~rcl_hf.ood.OODGuard.guarantee`): every card, CLI, check and the Space print those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, List, Optional

import numpy as np

from .calibration.drift import DriftReport, check_drift
from .calibration.record import RISK_CALIBRATION_FILE, RiskCalibration
from .metrics.functional import bayes_risk_decision, expected_costs, softmax
from .metrics.operating_point import critical_mass
from .models import severity_for_model, severity_from_config
from .ood import OOD_GUARD_FILE, OODGuard
from .severity import SeverityMatrix

__all__ = ["DecisionLayer", "Prediction", "check_threshold", "DEFAULT_REFERRAL_THRESHOLD", "UNCERTIFIED_NOTE",
           "UNCERTIFIED_GUARANTEE", "OVERRIDE_NOTE", "NO_GUARD_NOTE", "REASONS"]

#: The referral threshold of a model without a risk calibration (hand-set: nothing is certified).
DEFAULT_REFERRAL_THRESHOLD = 0.1
UNCERTIFIED_NOTE = ("this model carries no risk calibration: the referral threshold is hand-set and nothing is "
                    "certified (calibrate it with rcl-calibrate)")
#: The risk sentence of :meth:`DecisionLayer.guarantees` for a model without a risk calibration.
UNCERTIFIED_GUARANTEE = ("Not certified: this model carries no risk calibration, so its referrals follow a hand-set "
                         "threshold and nothing is guaranteed.")
OVERRIDE_NOTE = "an explicit referral threshold overrides the certified one: the guarantee no longer holds"
NO_GUARD_NOTE = ("This model has no out-of-distribution guard: every image gets a diagnosis, even one unlike the "
                 "training images.")
#: Why a case was referred, in order of precedence.
REASONS = ("unusable", "outside", "uncertain")


def check_threshold(threshold: Any) -> float:
    """The referral threshold as a finite float >= 0, else a ``ValueError`` that says what was given."""
    if isinstance(threshold, bool):
        raise ValueError(f"The referral threshold must be a number, got {threshold!r}.")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"The referral threshold must be a number, got {threshold!r}.") from None
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"The referral threshold must be a finite number >= 0, got {threshold!r}.")
    return t


@dataclass
class Prediction:
    """The decision layer's answer for a batch of N cases (arrays have N rows)."""

    labels: List[str]
    probabilities: np.ndarray  # (N, K), calibrated (softmax(z / T)) when the layer carries a calibration
    argmax: np.ndarray  # (N,)
    bayes_decision: np.ndarray  # (N,)
    expected_cost: np.ndarray  # (N,) expected cost of the decision taken (the referral score)
    argmax_expected_cost: np.ndarray  # (N,) expected cost of the argmax decision
    critical_mass: np.ndarray  # (N,) probability of a class whose miss would be critical
    refer: np.ndarray  # (N,) bool: unusable, outside or uncertain
    threshold: float
    decision: np.ndarray  # (N,) the rule's decision (calibrated rule, else Bayes), also for referred cases
    reasons: List[Optional[str]]  # (N,) None, or why the case is referred: one of REASONS
    ood_score: Optional[np.ndarray] = None  # (N,) Mahalanobis score; None when the model has no OOD guard
    out_of_distribution: Optional[np.ndarray] = None  # (N,) bool; None when the model has no OOD guard
    ood_threshold: Optional[float] = None
    certified: bool = False  # the referral follows a certified threshold
    calibration: Optional[RiskCalibration] = None
    note: Optional[str] = None  # why the answer is not certified, when it is not
    drift: Optional[DriftReport] = None
    guarantees: Optional[List[str]] = None  # the layer's guarantee sentences (DecisionLayer.guarantees)

    def as_records(self) -> List[dict]:
        """One plain dict per case (JSON-ready)."""
        out = []
        for n in range(len(self.argmax)):
            out.append(
                {
                    "probabilities": {label: float(p) for label, p in zip(self.labels, self.probabilities[n])},
                    "decision": self.labels[int(self.decision[n])],
                    "argmax": self.labels[int(self.argmax[n])],
                    "bayes_decision": self.labels[int(self.bayes_decision[n])],
                    "expected_cost": float(self.expected_cost[n]),
                    "critical_mass": float(self.critical_mass[n]),
                    "refer": bool(self.refer[n]),
                    "reason": self.reasons[n],
                    "certified": bool(self.certified),
                    "ood_score": None if self.ood_score is None else float(self.ood_score[n]),
                    "out_of_distribution": None if self.out_of_distribution is None else bool(self.out_of_distribution[n]),
                }
            )
        return out


@dataclass(frozen=True)
class DecisionLayer:
    """Severity matrix + risk calibration + OOD guard, applied together (see the module docstring)."""

    severity: SeverityMatrix
    calibration: Optional[RiskCalibration] = None
    ood_guard: Optional[OODGuard] = None

    def __post_init__(self) -> None:
        if not isinstance(self.severity, SeverityMatrix):
            raise TypeError(f"severity must be a SeverityMatrix, got {type(self.severity).__name__}")
        if self.calibration is not None:
            self.calibration.check_severity(self.severity)

    # ---------------------------------------------------------------- building it
    @classmethod
    def from_model(cls, model: Any, severity: Optional[SeverityMatrix] = None,
                   calibration: Optional[RiskCalibration] = None, ood_guard: Optional[OODGuard] = None) -> "DecisionLayer":
        """The layer a model from :func:`rcl_hf.load_model` carries (``.severity``, ``.risk_calibration``,
        ``.ood_guard``); each argument given overrides the model's part."""
        sev = severity or getattr(model, "severity", None) or severity_from_config(model.config)
        cal = calibration if calibration is not None else getattr(model, "risk_calibration", None)
        guard = ood_guard if ood_guard is not None else getattr(model, "ood_guard", None)
        return cls(sev, cal, guard)

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: Any = None, severity: Any = None) -> "DecisionLayer":
        """The layer saved in a model folder, or for a Hub id in the local Hub cache (side files are never
        downloaded at run time beyond the model itself). ``config``: the model's config (read from the folder
        when ``None``); ``severity`` (a preset, JSON path or :class:`SeverityMatrix`, matched by label name) is for
        a model trained without rcl_hf, whose config carries none."""
        name = os.fspath(name_or_path)
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(name)
        if severity is not None:
            sev = severity_for_model([config.id2label[i] for i in range(config.num_labels)], severity)
        else:
            sev = severity_from_config(config)
        return cls(sev, _side_file(name, RISK_CALIBRATION_FILE, RiskCalibration.load),
                   _side_file(name, OOD_GUARD_FILE, OODGuard.load))

    def with_calibration(self, calibration: Optional[RiskCalibration]) -> "DecisionLayer":
        """The same layer with another risk calibration (e.g. the Space's calibration for another target risk)."""
        return replace(self, calibration=calibration)

    # ---------------------------------------------------------------- applying it
    @property
    def labels(self) -> List[str]:
        return list(self.severity.labels)

    @property
    def needs_embeddings(self) -> bool:
        """Whether :meth:`apply` needs the classifier's input embeddings (the layer has an OOD guard)."""
        return self.ood_guard is not None

    def probabilities(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` of logits (``softmax(z)`` without a calibration)."""
        z = self._logits(logits)
        return self.calibration.probabilities(z) if self.calibration is not None else softmax(z, axis=1)

    def apply(self, logits: Any, embeddings: Any = None, *, threshold: Optional[float] = None,
              unusable: Any = None, drift: bool = True, labels: Any = None) -> Prediction:
        """The answer for logits ``(N, K)`` (see the module docstring).

        Args:
            embeddings: ``(N, D)`` inputs of the classifier's last linear layer; required when the layer has an OOD
                guard (:attr:`needs_embeddings`), ignored otherwise.
            threshold: overrides the certified referral threshold (the answer is then not certified).
            unusable: ``(N,)`` bools: cases whose image holds nothing to assess (referred, reason ``"unusable"``).
            drift: test the batch for a harmful shift from the calibration data (:func:`rcl_hf.calibration.check_drift`,
                batches of at least 20 usable cases).
            labels: ``(N,)`` true class indices of a labelled batch (a local audit set): the drift check then also
                tests whether the batch's realised certified risk exceeds ``α``.
        """
        z = self._logits(logits)
        n, sev, cal = len(z), self.severity, self.calibration
        t = None if threshold is None else check_threshold(threshold)
        if cal is not None:
            p, decision, cost, uncertain = cal.decide(z, sev, t)
            certified = t is None and not cal.refers_everything
            note = OVERRIDE_NOTE if t is not None else (cal.notes[0] if cal.notes else None)
            t = cal.threshold if t is None else t
        else:
            p = softmax(z, axis=1)
            t = DEFAULT_REFERRAL_THRESHOLD if t is None else t
            decision, cost = bayes_risk_decision(p, sev)
            uncertain, certified, note = cost > t, False, UNCERTIFIED_NOTE
        bayes = decision if cal is None or cal.blend_weight == 1.0 else bayes_risk_decision(p, sev)[0]
        bad = np.zeros(n, dtype=bool) if unusable is None else np.asarray(unusable, dtype=bool).reshape(-1)
        if bad.shape != (n,):
            raise ValueError(f"unusable must hold one flag per case ({n}), got {bad.shape[0]}")
        guard = self.ood_guard
        ood_score = outside = None
        if guard is not None:
            if embeddings is None:
                raise ValueError("this decision layer has an OOD guard: pass the classifier's input embeddings")
            e = np.asarray(embeddings, dtype=np.float64).reshape(n, -1)
            ood_score = guard.score(e)
            outside = ood_score > guard.threshold
        out = outside if outside is not None else np.zeros(n, dtype=bool)
        reasons: List[Optional[str]] = ["unusable" if b else "outside" if o else "uncertain" if u else None
                                        for b, o, u in zip(bad, out, uncertain)]
        arg = p.argmax(1)
        report = None
        refer = bad | out | np.asarray(uncertain, dtype=bool)
        if drift and (cal is not None or guard is not None):
            ok = ~bad
            losses = None if labels is None or cal is None else _risk_losses(cal, sev, labels, decision, refer, ok)
            report = check_drift(cost[ok] if cal is not None else None, cal,
                                 outside[ok] if outside is not None else None,
                                 guard.false_alarm_rate if guard is not None else None,
                                 losses=losses, alpha=None if cal is None else cal.alpha,
                                 risk=RISK_NAMES[cal.risk_kind if cal is not None else "critical_miss"])
        return Prediction(
            labels=self.labels, probabilities=p, argmax=arg, bayes_decision=bayes,
            expected_cost=cost, argmax_expected_cost=expected_costs(p, sev)[np.arange(n), arg],
            critical_mass=critical_mass(p, sev), refer=refer,
            threshold=float(t), decision=decision, reasons=reasons, ood_score=ood_score, out_of_distribution=outside,
            ood_threshold=None if guard is None else float(guard.threshold), certified=certified, calibration=cal,
            note=note, drift=report, guarantees=self.guarantees(),
        )

    def _logits(self, logits: Any) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != self.severity.num_labels:
            raise ValueError(f"logits have {z.shape[-1] if z.ndim else 0} classes, the severity matrix "
                             f"{self.severity.num_labels}")
        if not np.all(np.isfinite(z)):
            raise ValueError("logits must be finite numbers")
        return z

    # ---------------------------------------------------------------- words
    def guarantees(self) -> List[str]:
        """What is certified, as sentences: the risk certificate (or that nothing is), then the OOD guard's
        guarantee (or that there is no guard)."""
        risk = self.calibration.certificate() if self.calibration is not None else UNCERTIFIED_GUARANTEE
        return [risk, self.ood_guard.guarantee() if self.ood_guard is not None else NO_GUARD_NOTE]


#: The certified risk's name in the drift report's sentence.
RISK_NAMES = {"critical_miss": "critical miss rate", "cer_accepted": "critical error rate among decided cases"}


def _risk_losses(cal: RiskCalibration, sev: SeverityMatrix, labels: Any, decision: np.ndarray, refer: np.ndarray,
                 ok: np.ndarray) -> np.ndarray:
    """One 0/1 loss per unit of the certified risk among the usable cases of a labelled batch: ``critical_miss``,
    the critical-capable cases (a loss: decided with a critical error); ``cer_accepted``, the decided cases (a loss:
    a critical error)."""
    y = np.asarray(labels).reshape(-1)
    if y.shape != decision.shape or not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0 \
            or y.max(initial=0) >= sev.num_labels:
        raise ValueError(f"labels must hold one class index in [0, {sev.num_labels}) per case ({len(decision)})")
    crit = sev.critical[y, decision]
    decided = ~refer
    if cal.risk_kind == "critical_miss":
        return (crit & decided)[ok & sev.positive_rows[y]]
    return crit[ok & decided]


def _side_file(name: str, filename: str, load: Any) -> Any:
    """A side file of a model folder, or of a Hub model from the local cache, loaded with ``load``; ``None`` when
    there is none."""
    if os.path.isdir(name):
        return load(name)
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(name, filename)
    except Exception:  # noqa: BLE001 - a malformed id simply has no such file
        return None
    return load(path) if isinstance(path, str) else None
