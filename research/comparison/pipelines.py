"""The matched-accuracy comparison of trained runs: operating points, selection on validation, one
evaluation on test, paired statistics and the checks a verdict is generated from.

Pipeline families built from every trained method ``m`` (a loss, with its swept
operating points such as λ):

* ``m``: the argmax decision; operating points = the method's points;
* ``m + Bayes``: the Bayes-risk rule (blend weight ``w = 1``);
* ``m + blend``: the blend rule of :mod:`rcl_hf.decision`; operating
  points = (method point, ``w``) for every ``w`` of the grid.

Selection (:func:`rcl_hf.selection.select_operating_points`) reads validation metrics only; the
chosen point of each family is then scored once on the test split, with the statistics of
:mod:`research.comparison.stats`. The main job (:mod:`research.main_job`) and the study's grid reports
both call :func:`compare_pipelines`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from rcl_hf.decision import blend_decision
from rcl_hf.metrics.functional import metrics_of_decisions, relative_safety_improvement
from rcl_hf.metrics.reliability import expected_calibration_error, risk_coverage
from rcl_hf.selection import select_operating_points
from rcl_hf.severity import SeverityMatrix
from .runs import POINT_METRICS, SPLITS, Run, family_name
from .verdict import difference_verdict
from .stats import PipelineSample, bootstrap_replicates, combined_mcnemar, exact_mcnemar, summarize

__all__ = ["operating_points", "Comparison", "compare_pipelines"]


def operating_points(runs: Sequence[Run], blend_weights: Sequence[float]) -> pd.DataFrame:
    """One row per (run, family, operating point) with ``val_*`` and ``test_*`` metrics.

    Families per method: argmax (``w = 0``), ``+ Bayes`` (``w = 1``), ``+ blend`` (every ``w``).
    """
    weights = sorted(set(float(w) for w in blend_weights) | {0.0, 1.0})
    rows: List[Dict[str, Any]] = []
    for run in runs:
        per_split: Dict[str, Dict[str, np.ndarray]] = {}
        ece: Dict[str, float] = {}
        for split in SPLITS:
            p = run.probs(split)
            dec = np.stack([blend_decision(p, run.severity, w) for w in weights])
            per_split[split] = metrics_of_decisions(dec, run.labels[split], run.severity)
            ece[split] = expected_calibration_error(p, run.labels[split])
        for i, w in enumerate(weights):
            metrics = {}
            for split in SPLITS:
                for key in POINT_METRICS:
                    v = per_split[split][key][i]
                    metrics[f"{split}_{key}"] = int(v) if key.startswith("n_") else float(v)
                metrics[f"{split}_ece"] = ece[split]
                metrics[f"{split}_n"] = int(len(run.labels[split]))
            rules = ["blend"] + (["argmax"] if w == 0.0 else []) + (["bayes"] if w == 1.0 else [])
            if w not in [float(x) for x in blend_weights] and w in (0.0, 1.0):
                rules = [r for r in rules if r != "blend"]
            for rule in rules:
                point = run.point if rule == "argmax" else f"{run.point}|w={w:g}"
                rows.append({"dataset": run.dataset, "backbone": run.backbone, "method": run.method, "loss": run.loss,
                             "family": family_name(run.method, rule), "rule": rule, "point": point,
                             "method_point": run.point, "w": w, "seed": run.seed, **metrics})
    return pd.DataFrame(rows)


@dataclass
class Comparison:
    """Everything the report needs: points, the selection, per-family test statistics."""

    points: pd.DataFrame
    selection: pd.DataFrame
    summary: pd.DataFrame
    samples: Dict[Tuple[str, str, str], PipelineSample]
    seeds: Dict[Tuple[str, str, str], List[int]]
    severities: Dict[Tuple[str, str], SeverityMatrix]
    runs: List[Run]
    verdicts: Dict[Tuple[str, str], Dict[str, Any]]


def _decisions_for(runs_by_key: Dict[Tuple, Run], group: Tuple[str, str], family_row: pd.Series,
                   points: pd.DataFrame) -> Tuple[List[int], PipelineSample]:
    sel = points[(points["dataset"] == group[0]) & (points["backbone"] == group[1]) &
                 (points["family"] == family_row["family"]) & (points["point"] == family_row["point"])]
    sel = sel.sort_values("seed")
    decisions, probs, seeds, labels = [], [], [], None
    for _, r in sel.iterrows():
        run = runs_by_key[(r["dataset"], r["backbone"], r["method"], r["method_point"], int(r["seed"]))]
        p = run.probs("test")
        decisions.append(blend_decision(p, run.severity, float(r["w"])))
        probs.append(p)
        seeds.append(int(r["seed"]))
        if labels is not None and not np.array_equal(labels, run.labels["test"]):
            raise ValueError(f"test labels differ across seeds of {family_row['family']} in {group}: "
                             "every run of a comparison must use the same split_seed")
        labels = run.labels["test"]
    return seeds, PipelineSample(np.stack(decisions), np.stack(probs), labels)


def _is_rcl(loss: str) -> bool:
    return str(loss).startswith("rcl")


def compare_pipelines(
    runs: Sequence[Run],
    blend_weights: Sequence[float],
    reference: str = "ce",
    tolerance: float = 0.01,
    n_boot: int = 1000,
    baselines: Sequence[str] = ("focal", "ce"),
    post_hoc: str = "ce + blend",
    bootstrap_seed: int = 0,
) -> Comparison:
    """Select each family's operating point on validation, then score it once on test."""
    if not runs:
        raise ValueError("compare needs at least one finished run")
    points = operating_points(runs, blend_weights)
    selection = select_operating_points(points, reference_family=reference, tolerance=tolerance)
    runs_by_key = {(r.dataset, r.backbone, r.method, r.point, r.seed): r for r in runs}
    loss_of = {f: l for f, l in zip(points["family"], points["loss"])}
    method_of = {f: m for f, m in zip(points["family"], points["method"])}
    rule_of = {f: r for f, r in zip(points["family"], points["rule"])}
    severities = {(r.dataset, r.backbone): r.severity for r in runs}
    samples: Dict[Tuple[str, str, str], PipelineSample] = {}
    seeds_of: Dict[Tuple[str, str, str], List[int]] = {}
    reps: Dict[Tuple[str, str, str], Dict[str, np.ndarray]] = {}
    rows: List[Dict[str, Any]] = []
    for _, s in selection.iterrows():
        group = (s["dataset"], s["backbone"])
        key = (*group, s["family"])
        seeds, sample = _decisions_for(runs_by_key, group, s, points)
        samples[key], seeds_of[key] = sample, seeds
        sev = severities[group]
        reps[key] = bootstrap_replicates(sample, sev, n_boot, bootstrap_seed)
        stats = summarize(sample, sev, n_boot, bootstrap_seed, replicates=reps[key])
        cov = [risk_coverage(sample.probs[i], sample.labels, sample.decisions[i], sev)["cer_at"]
               for i in range(sample.num_seeds)]
        rows.append({"dataset": group[0], "backbone": group[1], "family": s["family"], "method": method_of[s["family"]],
                     "loss": loss_of[s["family"]], "rule": rule_of[s["family"]], "point": s["point"],
                     "matched": bool(s["matched"]), "val_accuracy": s["val_accuracy"], "val_cer": s["val_cer"],
                     "reference_val_accuracy": s["reference_accuracy"], "seeds": seeds, **stats,
                     "cer_at_90": float(np.mean([c[0.9] for c in cov])),
                     "cer_at_95": float(np.mean([c[0.95] for c in cov]))})
    summary = pd.DataFrame(rows)

    # paired comparisons against the baselines and the post-hoc rule (same seeds, same images)
    extra: Dict[int, Dict[str, Any]] = {i: {} for i in range(len(summary))}
    for i, row in summary.iterrows():
        group = (row["dataset"], row["backbone"])
        key = (*group, row["family"])
        sev = severities[group]
        for ref_family in [*baselines, post_hoc]:
            ref_key = (*group, ref_family)
            tag = ref_family.replace(" + ", "_").replace(" ", "_")
            if ref_key not in samples:
                continue
            common = sorted(set(seeds_of[key]) & set(seeds_of[ref_key]))
            rsi = relative_safety_improvement(np.mean(row["cer_seeds"]), np.mean(summary.loc[
                (summary["dataset"] == group[0]) & (summary["backbone"] == group[1]) &
                (summary["family"] == ref_family), "cer_seeds"].iloc[0]))
            extra[i][f"rsi_vs_{tag}"] = float(rsi)
            boot = relative_safety_improvement(reps[key]["cer"], reps[ref_key]["cer"])
            boot = boot[np.isfinite(boot)]
            extra[i][f"rsi_vs_{tag}_ci"] = (tuple(float(q) for q in np.quantile(boot, [0.025, 0.975]))
                                            if boot.size else (float("nan"), float("nan")))
            diff = reps[key]["cer"] - reps[ref_key]["cer"]  # paired by image draws (same bootstrap_seed)
            extra[i][f"cer_diff_vs_{tag}_ci"] = tuple(float(q) for q in np.quantile(diff, [0.025, 0.975]))
            a_err = samples[key].critical_errors(sev)
            b_err = samples[ref_key].critical_errors(sev)
            per_seed = [exact_mcnemar(a_err[seeds_of[key].index(sd)], b_err[seeds_of[ref_key].index(sd)]) for sd in common]
            comb = combined_mcnemar(per_seed) if per_seed else None
            extra[i][f"mcnemar_vs_{tag}"] = (comb.b, comb.c, comb.p_value) if comb else None
            extra[i][f"mcnemar_vs_{tag}_seeds"] = [(r.b, r.c, r.p_value) for r in per_seed]
    for i, values in extra.items():
        for k, v in values.items():
            if k not in summary.columns:
                summary[k] = None
            summary.at[i, k] = v

    verdicts = _verdicts(summary, baselines, post_hoc, tolerance)
    return Comparison(points, selection, summary, samples, seeds_of, severities, list(runs), verdicts)


def _verdicts(summary: pd.DataFrame, baselines: Sequence[str], post_hoc: str, tolerance: float) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """The issue's targets, per dataset × backbone: best RCL pipeline (chosen on validation) vs focal and the rule."""
    out: Dict[Tuple[str, str], Dict[str, Any]] = {}
    base_losses = ("ce", "weighted_ce", "effective_ce", "label_smoothing", "focal")
    for (ds, bb), g in summary.groupby(["dataset", "backbone"], sort=False):
        rcl = g[g["loss"].map(_is_rcl) & g["matched"]]
        if rcl.empty:
            rcl = g[g["loss"].map(_is_rcl)]
        if rcl.empty:
            continue
        best = rcl.sort_values(["val_cer", "val_accuracy"], ascending=[True, False]).iloc[0]
        baseline_rows = g[(g["rule"] == "argmax") & g["loss"].isin(base_losses)]
        focal = g[g["family"] == "focal"]
        rule = g[g["family"] == post_hoc]
        v: Dict[str, Any] = {"best_rcl_family": best["family"], "best_rcl_point": best["point"],
                             "best_rcl_test_cer": best["cer"], "best_rcl_test_accuracy": best["accuracy"]}
        if not baseline_rows.empty:
            top = baseline_rows.sort_values("accuracy", ascending=False).iloc[0]
            v["best_baseline"] = top["family"]
            v["best_baseline_test_accuracy"] = top["accuracy"]
            v["accuracy_within_1pt"] = bool(best["accuracy"] >= top["accuracy"] - tolerance - 1e-12)
        if not focal.empty:
            v["focal_test_cer"] = float(focal["cer"].iloc[0])
            v["rsi_vs_focal"] = best.get("rsi_vs_focal")
            v["rsi_vs_focal_ci"] = best.get("rsi_vs_focal_ci")
            v["halves_focal_cer"] = bool(np.isfinite(best.get("rsi_vs_focal", np.nan)) and best["rsi_vs_focal"] >= 0.5)
        if not rule.empty:
            tag = post_hoc.replace(" + ", "_").replace(" ", "_")
            v["post_hoc_family"] = post_hoc
            v["post_hoc_test_cer"] = float(rule["cer"].iloc[0])
            v["post_hoc_test_accuracy"] = float(rule["accuracy"].iloc[0])
            ci = best.get(f"cer_diff_vs_{tag}_ci")
            v["cer_diff_vs_post_hoc_ci"] = ci
            # a win needs the paired (image-clustered) bootstrap CI of the CER difference to exclude 0
            v["beats_post_hoc"] = bool(best["cer"] < rule["cer"].iloc[0] and ci is not None
                                       and np.all(np.isfinite(ci)) and difference_verdict(ci) == "lower")
            v["mcnemar_vs_post_hoc"] = best.get(f"mcnemar_vs_{tag}")
        out[(ds, bb)] = v
    return out

