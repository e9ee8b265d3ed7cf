"""The symmetric comparison: every family (a loss with its sweep, with or without each
post-hoc rule) is selected on validation the same way, then the best RCL pipeline faces the best
non-RCL pipeline chosen by the same rule, over split seeds × training seeds × test images.

Post-hoc rules applied to the saved logits of every run (``p = softmax(z)``):

* ``argmax``; ``Bayes`` (``argmin_j Σ_i p_i M[i, j]``); ``blend`` over ``w`` (:mod:`.rules`);
* ``LA``: post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
  ICLR 2021): ``argmax_j z_j - τ·log π_j``, ``τ`` swept, ``π`` the class frequencies of the
  validation split (a stratified grouped split: the training prior, without reading test);
* ``CRM``: temperature scaling fitted on validation (Guo et al. 2017), then the Bayes rule
  (Karthik et al., "No Cost Likelihood Manipulation at Test Time for Making Better Mistakes in
  Deep Networks", ICLR 2021).

Selection: :func:`.selection.select_operating_points` over the mean of all (split, seed) runs
of a point, validation columns only. The *side* of a family decides which pick it can be:
``rcl`` (an rcl loss), ``baseline`` (a loss that does not read ``M`` while training: ce, focal,
label smoothing, logit adjustment, mixup, weighted CE), or ``cost_training`` (another loss that
reads ``M``: severity margin on CE, soft labels from ``M``, AUC-margin on the critical score).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from rcl_hf.severity import SeverityMatrix
from rcl_hf.metrics.functional import metrics_of_decisions
from rcl_hf.decision import blend_decision, fit_temperature
from rcl_hf.metrics.functional import softmax
from rcl_hf.selection import select_operating_points

from .comparison import POINT_METRICS, Run

__all__ = ["DEFAULT_LA_TAUS", "side_of", "all_operating_points", "pick_best", "select_families"]

#: τ values of the post-hoc logit adjustment (0 = argmax).
DEFAULT_LA_TAUS: Tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
_COST_OPTIONS = ("severity_margin", "aucm_weight", "crossfit_weight")


def side_of(params: Dict[str, Any]) -> str:
    """``rcl``, ``baseline`` or ``cost_training`` (module docstring) from a run's risk arguments."""
    loss = str(params.get("loss", ""))
    if loss.startswith("rcl"):
        return "rcl"
    if loss == "soft_label" or any(float(params.get(k) or 0) > 0 for k in _COST_OPTIONS):
        return "cost_training"
    return "baseline"


def _decisions(run: Run, split: str, rule: str, value: float, temperature: float) -> np.ndarray:
    z = run.logits[split]
    if rule == "la":
        prior = np.bincount(run.labels["val"], minlength=z.shape[1]) + 1.0
        return (z - value * np.log(prior / prior.sum())).argmax(1)
    if rule == "crm":
        return blend_decision(softmax(z / temperature), run.severity, 1.0)
    return blend_decision(softmax(z), run.severity, value)


def all_operating_points(runs: Sequence[Run], blend_weights: Sequence[float],
                         la_taus: Sequence[float] = DEFAULT_LA_TAUS) -> pd.DataFrame:
    """One row per (run, family, point): ``val_*`` / ``test_*`` metrics, ``split_seed``, ``side``.

    Families per method ``m``: ``m`` (argmax), ``m + Bayes``, ``m + blend`` (w), ``m + LA`` (τ),
    ``m + CRM`` (one point: the temperature is fitted on that run's validation logits).
    """
    weights = sorted(set(float(w) for w in blend_weights) | {0.0, 1.0})
    rows: List[Dict[str, Any]] = []
    for run in runs:
        temperature = fit_temperature(run.logits["val"], run.labels["val"])
        rules: List[Tuple[str, str, float]] = [("argmax", run.method, 0.0), ("bayes", f"{run.method} + Bayes", 1.0)]
        rules += [("blend", f"{run.method} + blend", w) for w in weights]
        rules += [("la", f"{run.method} + LA", t) for t in la_taus]
        rules += [("crm", f"{run.method} + CRM", 1.0)]
        per_split = {}
        for split in ("val", "test"):
            dec = np.stack([_decisions(run, split, rule, v, temperature) for rule, _, v in rules])
            per_split[split] = metrics_of_decisions(dec, run.labels[split], run.severity)
        side = side_of(run.params)
        for i, (rule, family, v) in enumerate(rules):
            point = run.point if rule == "argmax" else (
                f"{run.point}|w={v:g}" if rule in ("blend", "bayes") else
                f"{run.point}|tau={v:g}" if rule == "la" else f"{run.point}|T=val")
            row = {"dataset": run.dataset, "backbone": run.backbone, "method": run.method, "loss": run.loss,
                   "side": side, "family": family, "rule": rule, "point": point, "method_point": run.point,
                   "w": v if rule in ("blend", "bayes", "argmax") else np.nan,
                   "tau": v if rule == "la" else np.nan, "temperature": temperature,
                   "split_seed": getattr(run, "split_seed", None), "seed": run.seed}
            for split in ("val", "test"):
                for key in POINT_METRICS:
                    val = per_split[split][key][i]
                    row[f"{split}_{key}"] = int(val) if key.startswith("n_") else float(val)
                row[f"{split}_n"] = int(len(run.labels[split]))
            rows.append(row)
    out = pd.DataFrame(rows)
    out["split_seed"] = out["split_seed"].fillna(-1).astype(int)
    return out


def pick_best(selection: pd.DataFrame, sides: Sequence[str]) -> Optional[pd.Series]:
    """The family of ``sides`` with the lowest validation CER among matched choices (ties: higher
    validation accuracy, then name); unmatched choices only when no family is matched."""
    cand = selection[selection["side"].isin(list(sides))]
    if cand.empty:
        return None
    matched = cand[cand["matched"]]
    pool = matched if not matched.empty else cand
    return pool.sort_values(["val_cer", "val_accuracy", "family"], ascending=[True, False, True],
                            kind="mergesort").iloc[0]


def select_families(points: pd.DataFrame, reference: str = "ce", tolerance: float = 0.01) -> pd.DataFrame:
    """:func:`select_operating_points` (validation only) plus each family's ``side``, ``method``, ``rule``."""
    sel = select_operating_points(points, reference_family=reference, tolerance=tolerance)
    info = points.drop_duplicates(["dataset", "backbone", "family"]).set_index(["dataset", "backbone", "family"])
    for col in ("side", "method", "rule", "loss"):
        sel[col] = [info.loc[(d, b, f), col] for d, b, f in zip(sel["dataset"], sel["backbone"], sel["family"])]
    return sel


def chosen_rows(points: pd.DataFrame, group: Tuple[str, str], family: str, point: str) -> pd.DataFrame:
    """The (split, seed) rows of one chosen family point (test columns for the single evaluation)."""
    sel = points[(points["dataset"] == group[0]) & (points["backbone"] == group[1]) &
                 (points["family"] == family) & (points["point"] == point)]
    return sel.sort_values(["split_seed", "seed"])


def test_front(points: pd.DataFrame, group: Tuple[str, str], method: str, method_point: str) -> pd.DataFrame:
    """Mean test accuracy and CER of ``method`` at ``method_point`` over every blend weight (the front
    along which a threshold rule can move that model), sorted by accuracy."""
    f = points[(points["dataset"] == group[0]) & (points["backbone"] == group[1]) & (points["method"] == method) &
               (points["method_point"] == method_point) & (points["rule"] == "blend")]
    m = f.groupby("w")[["test_accuracy", "test_cer"]].mean().reset_index()
    return m.sort_values("test_accuracy", kind="mergesort")


def cer_at_accuracy(front: pd.DataFrame, accuracy: float) -> float:
    """Linear interpolation of a front's CER at ``accuracy``; NaN outside the front's accuracy range."""
    if front.empty:
        return float("nan")
    acc, cer = front["test_accuracy"].to_numpy(), front["test_cer"].to_numpy()
    if accuracy < acc.min() - 1e-12 or accuracy > acc.max() + 1e-12:
        return float("nan")
    return float(np.interp(accuracy, acc, cer))


def split_samples(points_rows: pd.DataFrame, runs_by_key: Dict[Tuple, Run]) -> Dict[int, Dict[str, np.ndarray]]:
    """Per split seed: ``{"critical": (S, N) bool, "correct": (S, N) bool, "seeds": [...]}`` on test, recomputed
    from the logits of the chosen rows (same rule as the row)."""
    out: Dict[int, Dict[str, Any]] = {}
    for sp, g in points_rows.groupby("split_seed", sort=True):
        crit, corr, seeds = [], [], []
        labels = None
        for _, r in g.sort_values("seed").iterrows():
            run = runs_by_key[(r["dataset"], r["backbone"], r["method"], r["method_point"], int(r["split_seed"]),
                               int(r["seed"]))]
            value = {"la": r["tau"], "crm": 1.0}.get(r["rule"], r["w"])
            temperature = r["temperature"]
            d = _decisions(run, "test", r["rule"], float(value), float(temperature))
            y = run.labels["test"]
            if labels is not None and not np.array_equal(labels, y):
                raise ValueError(f"test labels differ across training seeds of split {sp}")
            labels = y
            crit.append(run.severity.critical[y, d])
            corr.append(d == y)
            seeds.append(int(r["seed"]))
        out[int(sp)] = {"critical": np.stack(crit), "correct": np.stack(corr), "seeds": seeds, "labels": labels}
    return out


def run_key(run: Run) -> Tuple:
    """The key of :func:`split_samples`'s ``runs_by_key`` (split seed -1 when the grid has none)."""
    split = getattr(run, "split_seed", None)
    return (run.dataset, run.backbone, run.method, run.point, -1 if split is None else int(split), run.seed)


def severity_of(runs: Sequence[Run], group: Tuple[str, str]) -> SeverityMatrix:
    for r in runs:
        if (r.dataset, r.backbone) == group:
            return r.severity
    raise ValueError(f"no run in group {group}")
