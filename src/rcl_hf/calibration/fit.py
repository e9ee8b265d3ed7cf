"""Fitting the decision layer on a held-out calibration split (validation by default).

:func:`calibrate` takes the calibration split's logits, labels and the severity matrix, and:

1. splits the cases (seeded, stratified by label, grouped when group ids are given) into a
   *tuning* part (one of ``round(1 / tune_fraction)`` stratified, grouped folds: a third of the split at
   the default ``tune_fraction=0.3``) and a *certification* part. Everything that is
   chosen from data — the temperature, the decision rule and, for the non-monotone
   ``cer_accepted`` risk, the order of the tested thresholds — is chosen on the tuning part only,
   so that the certification part stays untouched for the test and the guarantee holds;
2. fits temperature scaling (NLL, :func:`rcl_hf.decision.fit_temperature`);
3. chooses the decision rule (blend weight ``w``, 0 = argmax … 1 = Bayes) by the matched-accuracy
   selection the comparisons use (:func:`rcl_hf.selection.select_operating_points`): the lowest
   CER among the weights whose accuracy is within ``tolerance`` of the argmax's;
4. certifies the referral threshold ``τ`` on the certification part
   (:mod:`rcl_hf.calibration.risk_control`: Learn-then-Test, or conformal risk control). With
   group ids (lesions, patients) the unit of the certificate is the group by default
   (``unit="group"``: per-group losses, Hoeffding–Bentkus p-values, the effective sample size is
   the number of groups; :func:`rcl_hf.calibration.risk_control.group_risk_curve`), since images
   of one lesion are not independent; without them, or with ``unit="image"``, every image is a unit.
   With ``conditional="class"`` the threshold is certified for every critical-capable class at once
   as well as for the pool (:mod:`rcl_hf.calibration.per_class`: one shared threshold, an
   intersection–union test); a class too small for ``α`` is named, with the smallest ``α`` it could
   certify, and covered by the pooled certificate only.

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
from .drift import score_band
from .per_class import CONDITIONAL, certify_per_class, class_risk_curves, per_class_figures
from .record import RiskCalibration
from .risk_control import (
    METHODS,
    P_VALUES,
    REFER_ALL,
    RISK_KINDS,
    UNITS,
    crc_threshold,
    group_codes,
    group_risk_curve,
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
    _, d, s, refer = cal.decide(z, severity, threshold)
    return summarize_decisions(d, refer, y, severity)


def summarize_decisions(d: np.ndarray, refer: np.ndarray, y: np.ndarray, severity: SeverityMatrix) -> dict:
    """Coverage, ``critical_miss``, ``cer_accepted``, accuracy among accepted, accuracy and CER of decisions ``d``
    with referrals ``refer`` on true labels ``y`` (e.g. a :class:`rcl_hf.inference.Prediction`'s ``decision`` and
    ``refer``)."""
    d, refer, y = np.asarray(d), np.asarray(refer, dtype=bool), np.asarray(y)
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
    p_value: Optional[str] = None,
    unit: Optional[str] = None,
    conditional: Optional[str] = None,
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
        p_value: ``binomial`` (exact for 0/1 losses) or ``hoeffding_bentkus``; ``None``: binomial for
            ``unit="image"``, Hoeffding–Bentkus for ``unit="group"`` (the only valid one there: a group's
            loss is a share in [0, 1], not 0/1).
        unit: ``group`` (the default when ``groups`` are given): each group is one independent unit
            and its loss is the share of its images counted as a loss (:mod:`.risk_control`); ``image``
            (the default without groups): every image is a unit, which assumes independent images.
        conditional: ``None`` (the pooled certificate) or ``"class"``: ``critical_miss`` certified for each
            critical-capable class too (:mod:`.per_class`); the calibration lists which classes are certified and,
            for a class too small, the smallest ``α`` it could certify.
        rule: ``auto`` (chosen on the tuning part), ``argmax``, ``bayes`` or a blend weight.
        temperature: ``auto`` (fitted on the tuning part), or a fixed ``T > 0`` (1 = none).
        scaling: ``temperature`` (one parameter) or ``vector`` (a scale and a bias per class on the
            log-probabilities, fitted on the tuning part: a stronger post-hoc recalibration).
        tune_fraction: approximate share of the split for tuning: the tuning part is one of
            ``round(1 / tune_fraction)`` folds (0.3 → a third); 0 is allowed when nothing is tuned and
            the risk is ``critical_miss``.
        groups: group ids of the calibration cases (patients, lesions): the tuning part is
            grouped apart from the certification part, and they are the units of ``unit="group"``.
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
    if conditional not in CONDITIONAL:
        raise ValueError(f"conditional must be one of {CONDITIONAL}, got {conditional!r}")
    if conditional == "class" and risk_kind != "critical_miss":
        raise ValueError("per-class certificates (conditional='class') are for risk_kind='critical_miss': the share of "
                         "each disease's cases missed")
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
    unit, p_value = _resolve_unit(unit, p_value, groups, method)

    tune, cert = _split(y, groups, tune_fraction if tunes else 0.0, seed)
    cap = severity.positive_rows[y]
    g_codes = None if groups is None else group_codes(groups)[0]
    n_groups = None if g_codes is None else int(len(np.unique(g_codes[cert])))
    if unit == "group":
        n_risk = int(len(np.unique(g_codes[cert][cap[cert]]))) if risk_kind == "critical_miss" else n_groups
    else:
        n_risk = int(cap[cert].sum()) if risk_kind == "critical_miss" else len(cert)
    a_min = smallest_certifiable_alpha(n_risk, delta, method)
    if alpha < a_min:
        raise ValueError(_too_small_message(alpha, delta, a_min, n_risk, risk_kind, unit, n_groups, len(y), len(tune)))

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

    def curve_of(part: np.ndarray):
        if unit == "group":
            return group_risk_curve(s[part], err[part], cap[part], g_codes[part], risk_kind)
        return risk_curve(s[part], err[part], cap[part], risk_kind)

    curve = curve_of(cert)
    notes = []
    per_class = None
    if conditional == "class":
        curves = class_risk_curves(s[cert], err[cert], y[cert], severity, g_codes[cert] if unit == "group" else None)
        tau, certified = certify_per_class(curve, curves, alpha, delta, method=method, p_value=p_value)
        per_class = per_class_figures(curves, certified, tau, severity, alpha, delta, method)
    elif method == "crc":
        tau = crc_threshold(curve, alpha)
    else:
        ordering = curve_of(tune) if risk_kind == "cer_accepted" else None
        tau = ltt_threshold(curve, alpha, delta, p_value=p_value, ordering_curve=ordering, kind=risk_kind)[0]
    if tau <= REFER_ALL:
        notes.append("no referral threshold could be certified: every case is referred")
        logger.warning("risk calibration: no threshold certified for %s <= %g (δ = %g) on %d cases; every case is "
                       "referred", risk_kind, alpha, delta, len(cert))
    refer = s > tau
    on_cert = summarize_decisions(d[cert], refer[cert], y[cert], severity)
    quantiles = np.quantile(s[cert], np.linspace(0, 1, 101)).tolist()
    return RiskCalibration(
        risk_kind=risk_kind, alpha=float(alpha), delta=float(delta), method=method, p_value=p_value,
        temperature=float(T), blend_weight=float(w), threshold=float(tau), labels=list(severity.labels),
        n_calibration=int(len(y)), n_tune=int(len(tune)), n_certify=int(len(cert)), n_risk=n_risk,
        calibration={k: on_cert[k] for k in ("coverage", "critical_miss", "cer_accepted", "accuracy_accepted",
                                             "accuracy", "cer")},
        score_quantiles=[float(q) for q in quantiles], dataset=dataset, split=split, tolerance=float(tolerance),
        class_scale=None if scale is None else [float(x) for x in scale],
        class_bias=None if bias is None else [float(x) for x in bias], unit=unit, n_groups=n_groups, notes=notes,
        conditional=conditional, per_class=per_class, score_band=score_band(s[cert], tau),
    )


def _resolve_unit(unit: Optional[str], p_value: Optional[str], groups: Optional[Sequence[Any]],
                  method: str) -> Tuple[str, str]:
    """``(unit, p_value)`` with their defaults: the group unit and Hoeffding–Bentkus when groups are given."""
    if unit is None:
        unit = "image" if groups is None else "group"
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if unit == "group" and groups is None:
        raise ValueError("unit='group' needs the group ids of the calibration cases (groups=...)")
    if p_value is None:
        p_value = "hoeffding_bentkus" if unit == "group" else "binomial"
    if p_value not in P_VALUES:
        raise ValueError(f"p_value must be one of {P_VALUES}, got {p_value!r}")
    if unit == "group" and p_value == "binomial" and method == "ltt":
        raise ValueError("p_value='binomial' is exact only for 0/1 losses, but a group's loss is the share of its images "
                         "counted as a loss: use p_value='hoeffding_bentkus' with unit='group' (or unit='image', which "
                         "assumes independent images)")
    return unit, p_value


def _too_small_message(alpha: float, delta: float, a_min: float, n_risk: int, risk_kind: str, unit: str,
                       n_groups: Optional[int], n_images: int, n_tune: int) -> str:
    if unit == "group":
        who = ("groups with a critical-capable image" if risk_kind == "critical_miss" else "groups") + \
              f" (of {n_groups} groups in it)"
        why = ("; the certificate is group-level (unit='group': images of one group are not independent), so its "
               "sample size is the number of groups, not of images")
    else:
        who, why = ("critical-capable cases" if risk_kind == "critical_miss" else "cases"), ""
    return (f"the calibration split is too small to certify α = {alpha:g} at δ = {delta:g}: its certification part has "
            f"{n_risk} {who} (of {n_images} images, {n_tune} kept for tuning), and the smallest α that {n_risk} can "
            f"certify is {a_min:.3f}{why}; use a larger calibration split or α >= {a_min:.3f}")
