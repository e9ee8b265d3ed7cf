"""Fitting the decision layer on a held-out calibration split (validation by default).

:func:`calibrate` takes the calibration split's logits, labels and the severity matrix, and:

1. splits the cases (seeded, stratified by label, grouped when group ids are given) into a
   *tuning* part (``tune_fraction``, default 30%) and a *certification* part. Everything that is
   chosen from data — the temperature, the decision rule and, for the non-monotone
   ``cer_accepted`` risk, the order of the tested thresholds — is chosen on the tuning part only,
   so that the certification part stays untouched for the test and the guarantee holds;
2. fits temperature scaling (NLL, :func:`rcl_hf.decision.fit_temperature`);
3. chooses the decision rule (blend weight ``w``, 0 = argmax … 1 = Bayes) by the matched-accuracy
   selection the comparisons use (:func:`rcl_hf.selection.select_operating_points`): the lowest
   CER among the weights whose accuracy is within ``tolerance`` of the argmax's;
4. certifies the referral threshold ``τ`` on the certification part
   (:mod:`rcl_hf.calibration.risk_control`: Learn-then-Test, or conformal risk control).

Bad input gets one ``ValueError`` before anything is written: logits / labels / severity that do
not match, a calibration split that shares groups with the training split, or a split too small
for the requested ``(α, δ)`` (the message says the smallest ``α`` its size can certify).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from ..decision import DEFAULT_BLEND_WEIGHTS, blend_decision, decision_scores, fit_temperature, fit_vector_scaling
from ..metrics.functional import metrics_of_decisions, softmax
from ..selection import select_operating_points
from ..severity import SeverityMatrix
from .record import RiskCalibration
from .risk_control import (
    METHODS,
    REFER_ALL,
    RISK_KINDS,
    crc_threshold,
    ltt_threshold,
    risk_curve,
    smallest_certifiable_alpha,
)

logger = logging.getLogger(__name__)

__all__ = ["calibrate", "check_calibration_groups", "evaluate_calibration", "DEFAULT_ALPHA", "DEFAULT_DELTA",
           "DEFAULT_RISK_KIND", "DEFAULT_TUNE_FRACTION"]

DEFAULT_RISK_KIND = "critical_miss"
DEFAULT_ALPHA = 0.10
DEFAULT_DELTA = 0.10
DEFAULT_TUNE_FRACTION = 0.3

RuleLike = Union[str, float, None]


def check_calibration_groups(calibration_groups: Sequence[Any], train_groups: Sequence[Any]) -> None:
    """``ValueError`` when the calibration split shares a group (patient, lesion, near-copy) with the
    training split: the model has seen those cases, so their scores are optimistic and nothing certified
    on them would hold for new patients."""
    shared = sorted(set(map(str, calibration_groups)) & set(map(str, train_groups)))
    if shared:
        raise ValueError(f"the calibration split shares {len(shared)} group(s) with the training split "
                         f"(e.g. {shared[:3]}): calibrate on a split grouped apart from training")


def _validate(logits: Any, labels: Any, severity: SeverityMatrix) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(severity, SeverityMatrix):
        severity = SeverityMatrix.resolve(severity)
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    k = severity.num_labels
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"calibration logits must be a non-empty (N, K) array, got shape {z.shape}")
    if z.shape[1] != k:
        raise ValueError(f"the logits have {z.shape[1]} classes but the severity matrix has {k} ({severity.labels}): "
                         "the severity does not match the model")
    if not np.all(np.isfinite(z)):
        raise ValueError("calibration logits contain NaN or infinite values")
    if y.shape != (z.shape[0],):
        raise ValueError(f"calibration labels must be (N,) = ({z.shape[0]},), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"calibration labels must be class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"calibration labels must lie in [0, {k - 1}] (the severity's classes {severity.labels}), "
                         f"got values in [{y.min()}, {y.max()}]")
    return z, y.astype(np.int64)


def _split(labels: np.ndarray, groups: Optional[Sequence[Any]], tune_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(tune indices, certify indices)``: stratified by label, grouped when groups are given
    (sklearn's ``StratifiedGroupKFold``; its first fold is the tuning part)."""
    n = len(labels)
    if tune_fraction == 0:
        return np.zeros(0, dtype=np.int64), np.arange(n)
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, int(round(1.0 / tune_fraction)))
    g = np.arange(n) if groups is None else pd.factorize(pd.Series(list(groups), dtype="string"))[0]
    counts = np.bincount(labels)
    if counts[counts > 0].min() < n_splits:  # a class rarer than the folds: plain grouped folds
        from sklearn.model_selection import GroupKFold

        folds = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(labels, labels, g)
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" notes
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(labels, labels, g)
    certify, tune = next(iter(folds))
    return np.sort(tune), np.sort(certify)


def _choose_rule(probs: np.ndarray, labels: np.ndarray, severity: SeverityMatrix, tolerance: float,
                 weights: Sequence[float]) -> float:
    """The blend weight of lowest CER among those within ``tolerance`` of the argmax's accuracy
    (the comparisons' selection, :func:`rcl_hf.selection.select_operating_points`)."""
    ws = sorted(set(map(float, weights)) | {0.0})
    m = metrics_of_decisions(np.stack([blend_decision(probs, severity, w) for w in ws]), labels, severity)
    rows = [{"family": "blend", "point": w, "val_accuracy": m["accuracy"][i], "val_cer": m["cer"][i],
             "val_expected_cost": m["expected_cost"][i]} for i, w in enumerate(ws)]
    ref = {**rows[ws.index(0.0)], "family": "argmax"}
    chosen = select_operating_points(pd.DataFrame([ref, *rows]), reference_family="argmax", tolerance=tolerance,
                                     group_columns=())
    return float(chosen.set_index("family").loc["blend", "point"])


def _rule_weight(rule: RuleLike) -> Optional[float]:
    if rule is None or rule == "auto":
        return None
    named = {"argmax": 0.0, "bayes": 1.0}
    if isinstance(rule, str) and rule in named:
        return named[rule]
    try:
        w = float(rule)
    except (TypeError, ValueError):
        raise ValueError(f"rule must be 'auto', 'argmax', 'bayes' or a blend weight in [0, 1], got {rule!r}") from None
    if not 0 <= w <= 1:
        raise ValueError(f"a blend weight must lie in [0, 1], got {w}")
    return w


def evaluate_calibration(cal: RiskCalibration, logits: Any, labels: Any, severity: SeverityMatrix,
                         threshold: Optional[float] = None) -> dict:
    """What the calibrated decision layer does on labelled cases (e.g. the test split): coverage, the
    realised risk of each kind, accuracy among the accepted cases, and accuracy / CER of the decisions."""
    z, y = _validate(logits, labels, severity)
    _, d, s, refer = cal.decide(softmax(z), severity, threshold)
    return _summary(d, s, refer, y, severity)


def _summary(d: np.ndarray, s: np.ndarray, refer: np.ndarray, y: np.ndarray, severity: SeverityMatrix) -> dict:
    crit = severity.critical[y, d]
    cap = severity.positive_rows[y]
    acc = ~refer
    n_acc = int(acc.sum())
    return {
        "n": int(len(y)), "coverage": float(acc.mean()) if len(y) else float("nan"),
        "critical_miss": float((crit & cap & acc).sum() / cap.sum()) if cap.any() else float("nan"),
        "cer_accepted": float((crit & acc).sum() / n_acc) if n_acc else 0.0,
        "accuracy_accepted": float((d == y)[acc].mean()) if n_acc else float("nan"),
        "accuracy": float((d == y).mean()), "cer": float(crit.mean()), "n_critical_capable": int(cap.sum()),
    }


def calibrate(
    logits: Any,
    labels: Any,
    severity: SeverityMatrix,
    *,
    risk_kind: str = DEFAULT_RISK_KIND,
    alpha: float = DEFAULT_ALPHA,
    delta: float = DEFAULT_DELTA,
    method: str = "ltt",
    p_value: str = "binomial",
    rule: RuleLike = "auto",
    temperature: Union[str, float, None] = "auto",
    scaling: str = "temperature",
    tune_fraction: float = DEFAULT_TUNE_FRACTION,
    tolerance: float = 0.01,
    blend_weights: Sequence[float] = DEFAULT_BLEND_WEIGHTS,
    groups: Optional[Sequence[Any]] = None,
    train_groups: Optional[Sequence[Any]] = None,
    seed: int = 0,
    dataset: Optional[str] = None,
    split: str = "validation",
) -> RiskCalibration:
    """Calibrate and certify the decision layer on one calibration split (see the module docstring).

    Args:
        logits, labels: the calibration split's logits ``(N, K)`` and class indices ``(N,)``.
        severity: the model's :class:`SeverityMatrix` (its labels must match the model's classes).
        risk_kind: ``critical_miss`` or ``cer_accepted`` (:mod:`.risk_control`).
        alpha, delta: certify ``P(risk > α) ≤ δ`` (LTT) or ``E[risk] ≤ α`` (``method="crc"``).
        method: ``ltt`` (Learn then Test, fixed sequence) or ``crc`` (conformal risk control;
            ``critical_miss`` only).
        p_value: ``binomial`` (exact for 0/1 losses) or ``hoeffding_bentkus``.
        rule: ``auto`` (chosen on the tuning part), ``argmax``, ``bayes`` or a blend weight.
        temperature: ``auto`` (fitted on the tuning part), or a fixed ``T > 0`` (1 = none).
        scaling: ``temperature`` (one parameter) or ``vector`` (a scale and a bias per class on the
            log-probabilities, fitted on the tuning part: a stronger post-hoc recalibration).
        tune_fraction: share of the split for tuning; 0 is allowed when nothing is tuned and the
            risk is ``critical_miss``.
        groups: group ids of the calibration cases (patients, lesions): the tuning part is
            grouped apart from the certification part.
        train_groups: group ids of the training split: a shared group is an error.
    """
    if not isinstance(severity, SeverityMatrix):
        severity = SeverityMatrix.resolve(severity)
    z, y = _validate(logits, labels, severity)
    if risk_kind not in RISK_KINDS:
        raise ValueError(f"risk_kind must be one of {RISK_KINDS}, got {risk_kind!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "crc" and risk_kind != "critical_miss":
        raise ValueError("conformal risk control needs a risk monotone in the threshold: use risk_kind='critical_miss' "
                         "or method='ltt'")
    for name, v in (("alpha", alpha), ("delta", delta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"{name} must be a number in (0, 1), got {v!r}")
    if not 0 <= tune_fraction < 1:
        raise ValueError(f"tune_fraction must be in [0, 1), got {tune_fraction}")
    w_fixed = _rule_weight(rule)
    t_fixed = None if temperature in (None, "auto") else float(temperature)
    if t_fixed is not None and not (np.isfinite(t_fixed) and t_fixed > 0):
        raise ValueError(f"temperature must be 'auto' or a finite number > 0, got {temperature!r}")
    if scaling not in ("temperature", "vector"):
        raise ValueError(f"scaling must be 'temperature' or 'vector', got {scaling!r}")
    tunes = w_fixed is None or t_fixed is None or risk_kind == "cer_accepted" or scaling == "vector"
    if tune_fraction == 0 and tunes:
        raise ValueError("tune_fraction=0 leaves no data to fit the temperature / rule (or to order the thresholds of "
                         "cer_accepted): give rule and temperature explicitly, or a tune_fraction > 0")
    if groups is not None and len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} calibration cases")
    if groups is not None and train_groups is not None:
        check_calibration_groups(groups, train_groups)

    tune, cert = _split(y, groups, tune_fraction if tunes else 0.0, seed)
    cap = severity.positive_rows[y]
    n_risk = int(cap[cert].sum()) if risk_kind == "critical_miss" else len(cert)
    a_min = smallest_certifiable_alpha(n_risk, delta, method)
    if alpha < a_min:
        who = "critical-capable cases" if risk_kind == "critical_miss" else "cases"
        raise ValueError(f"the calibration split is too small to certify α = {alpha:g} at δ = {delta:g}: its certification "
                         f"part has {n_risk} {who} (of {len(y)} images, {len(tune)} kept for tuning), and the smallest "
                         f"α that {n_risk} can certify is {a_min:.3f}; use a larger calibration split or α >= {a_min:.3f}")

    scale = bias = None
    if scaling == "vector":
        scale, bias = fit_vector_scaling(z[tune], y[tune])
        T = 1.0
        p = softmax(log_softmax(z, axis=1) * scale + bias)
    else:
        T = t_fixed if t_fixed is not None else fit_temperature(z[tune], y[tune])
        p = softmax(z / T)
    w = w_fixed if w_fixed is not None else _choose_rule(p[tune], y[tune], severity, tolerance, blend_weights)
    d = blend_decision(p, severity, w)
    s = decision_scores(p, d, severity)
    err = severity.critical[y, d]
    curve = risk_curve(s[cert], err[cert], cap[cert], risk_kind)
    notes = []
    if method == "crc":
        tau = crc_threshold(curve, alpha)
    else:
        ordering = risk_curve(s[tune], err[tune], cap[tune], risk_kind) if risk_kind == "cer_accepted" else None
        tau = ltt_threshold(curve, alpha, delta, p_value=p_value, ordering_curve=ordering, kind=risk_kind)[0]
    if tau <= REFER_ALL:
        notes.append("no referral threshold could be certified: every case is referred")
        logger.warning("risk calibration: no threshold certified for %s <= %g (δ = %g) on %d cases; every case is "
                       "referred", risk_kind, alpha, delta, len(cert))
    refer = s > tau
    on_cert = _summary(d[cert], s[cert], refer[cert], y[cert], severity)
    quantiles = np.quantile(s[cert], np.linspace(0, 1, 101)).tolist()
    return RiskCalibration(
        risk_kind=risk_kind, alpha=float(alpha), delta=float(delta), method=method, p_value=p_value,
        temperature=float(T), blend_weight=float(w), threshold=float(tau), labels=list(severity.labels),
        n_calibration=int(len(y)), n_tune=int(len(tune)), n_certify=int(len(cert)), n_risk=n_risk,
        calibration={k: on_cert[k] for k in ("coverage", "critical_miss", "cer_accepted", "accuracy_accepted",
                                             "accuracy", "cer")},
        score_quantiles=[float(q) for q in quantiles], dataset=dataset, split=split, tolerance=float(tolerance),
        class_scale=None if scale is None else [float(x) for x in scale],
        class_bias=None if bias is None else [float(x) for x in bias], notes=notes,
    )
