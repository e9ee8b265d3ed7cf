"""From finished grid cells to the matched-accuracy comparison: operating points, selection on
validation, one evaluation on test, statistics, ``results.csv`` / ``results.md`` and plots.

Pipeline families built from every trained method ``m`` (a loss, with its swept
operating points such as λ):

* ``m``: the argmax decision; operating points = the method's points;
* ``m + Bayes``: the Bayes-risk rule (blend weight ``w = 1``);
* ``m + blend``: the blend rule of :mod:`rcl_hf.decision`; operating
  points = (method point, ``w``) for every ``w`` of the grid.

Selection (:func:`rcl_hf.selection.select_operating_points`) reads
validation metrics only; the chosen point of each family is then scored once on
the test split, with the statistics of :mod:`rcl_hf.experiments.stats`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..metrics.functional import metrics_of_decisions
from ..severity import SeverityMatrix
from .grid import DONE_FILE, Cell, Grid, is_done
from ..decision import blend_decision
from ..metrics.functional import softmax
from ..selection import select_operating_points
from .rules import expected_calibration_error, risk_coverage
from .stats import (
    METRICS,
    PipelineSample,
    bootstrap_replicates,
    combined_mcnemar,
    exact_mcnemar,
    relative_improvement,
    summarize,
)

logger = logging.getLogger(__name__)

__all__ = ["Run", "load_runs", "operating_points", "Comparison", "compare", "write_results", "family_name"]

SPLITS = ("val", "test")
POINT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "cer", "critical_miss_rate", "expected_cost", "n_critical")


@dataclass
class Run:
    """One finished training run: identity, severity and the saved logits of both evaluation splits."""

    dataset: str
    backbone: str
    method: str
    point: str
    seed: int
    severity: SeverityMatrix
    logits: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray]
    loss: str = ""
    wall_time_s: float = float("nan")
    params: Dict[str, Any] = field(default_factory=dict)
    split_seed: Optional[int] = None

    def probs(self, split: str) -> np.ndarray:
        return softmax(self.logits[split])


def family_name(method: str, rule: str) -> str:
    """``m`` (argmax), ``m + Bayes`` or ``m + blend``."""
    return {"argmax": method, "bayes": f"{method} + Bayes", "blend": f"{method} + blend"}[rule]


def load_runs(grid: Grid, cells: Optional[Sequence[Cell]] = None) -> List[Run]:
    """Load every done cell of the grid (cells not done are listed in a warning and left out)."""
    runs, missing = [], []
    for cell in cells if cells is not None else grid.cells:
        if not is_done(cell):
            missing.append(cell.cell_id)
            continue
        with open(os.path.join(cell.output_dir, "rcl_run.json"), encoding="utf-8") as fh:
            recipe = json.load(fh)
        with open(os.path.join(cell.output_dir, DONE_FILE), encoding="utf-8") as fh:
            marker = json.load(fh)
        logits, labels = {}, {}
        for split, fname in (("val", "validation_predictions.npz"), ("test", "test_predictions.npz")):
            with np.load(os.path.join(cell.output_dir, fname)) as z:
                logits[split] = np.asarray(z["logits"], dtype=np.float64)
                labels[split] = np.asarray(z["labels"]).astype(np.int64)
        runs.append(Run(cell.dataset, cell.backbone, cell.method, cell.point, cell.seed,
                        SeverityMatrix.from_dict(recipe["severity"]), logits, labels, loss=cell.risk.get("loss", ""),
                        wall_time_s=float(marker.get("wall_time_s", float("nan"))), params=dict(cell.risk),
                        split_seed=getattr(cell, "split_seed", None)))
    if missing:
        logger.warning("%d cell(s) not done and left out of the report, e.g. %s", len(missing), missing[:3])
    return runs


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
            rsi = relative_improvement(np.mean(row["cer_seeds"]), np.mean(summary.loc[
                (summary["dataset"] == group[0]) & (summary["backbone"] == group[1]) &
                (summary["family"] == ref_family), "cer_seeds"].iloc[0]))
            extra[i][f"rsi_vs_{tag}"] = float(rsi)
            boot = relative_improvement(reps[key]["cer"], reps[ref_key]["cer"])
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
            v["beats_post_hoc"] = bool(best["cer"] < rule["cer"].iloc[0] and ci is not None and ci[1] < 0)
            v["mcnemar_vs_post_hoc"] = best.get(f"mcnemar_vs_{tag}")
        out[(ds, bb)] = v
    return out


# ----------------------------------------------------------------------------- writing
def _pct(x: Any, nd: int = 2) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(x) else f"{100 * x:.{nd}f}"


def _pct_ci(mean: Any, ci: Any, nd: int = 2) -> str:
    if ci is None or not isinstance(ci, (tuple, list)):
        return _pct(mean, nd)
    return f"{_pct(mean, nd)} [{_pct(ci[0], nd)}, {_pct(ci[1], nd)}]"


def _p(v: Any) -> str:
    if not v:
        return "–"
    b, c, p = v
    return f"{b}/{c}, p={p:.2g}"


def results_table_rows(runs: Sequence[Run], points: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """``results.csv``: one row per training run (argmax and Bayes-rule metrics, which families chose it)."""
    arg = points[points["rule"] == "argmax"].copy()
    bayes = points[points["rule"] == "bayes"][["dataset", "backbone", "method", "method_point", "seed",
                                               "val_accuracy", "val_cer", "test_accuracy", "test_cer", "test_n_critical"]]
    bayes = bayes.rename(columns={c: f"bayes_{c}" for c in ("val_accuracy", "val_cer", "test_accuracy", "test_cer",
                                                           "test_n_critical")})
    out = arg.merge(bayes, on=["dataset", "backbone", "method", "method_point", "seed"], how="left")
    chosen: Dict[Tuple, List[str]] = {}
    fam_points = points[["dataset", "backbone", "family", "point", "method", "method_point", "w"]].drop_duplicates()
    for _, s in selection.iterrows():
        hit = fam_points[(fam_points["dataset"] == s["dataset"]) & (fam_points["backbone"] == s["backbone"]) &
                         (fam_points["family"] == s["family"]) & (fam_points["point"] == s["point"])]
        for _, h in hit.iterrows():
            label = s["family"] + (f" (w={h['w']:g})" if "blend" in s["family"] else "")
            chosen.setdefault((h["dataset"], h["backbone"], h["method"], h["method_point"]), []).append(label)
    out["selected_for"] = [";".join(chosen.get((r.dataset, r.backbone, r.method, r.method_point), []))
                           for r in out.itertuples()]
    wall = {(r.dataset, r.backbone, r.method, r.point, r.seed): r.wall_time_s for r in runs}
    params = {(r.dataset, r.backbone, r.method, r.point, r.seed): json.dumps(r.params, sort_keys=True) for r in runs}
    out["wall_time_s"] = [wall.get((r.dataset, r.backbone, r.method, r.method_point, r.seed)) for r in out.itertuples()]
    out["risk_args"] = [params.get((r.dataset, r.backbone, r.method, r.method_point, r.seed)) for r in out.itertuples()]
    out = out.drop(columns=["family", "rule", "point", "w"]).rename(columns={"method_point": "point"})
    return out


def _md_group(g: pd.DataFrame, ds: str, bb: str, verdict: Dict[str, Any], baselines: Sequence[str], post_hoc: str,
              counts_first: bool) -> List[str]:
    n_test = int(g["n_test"].iloc[0])
    n_seeds = int(g["n_seeds"].max())
    ref_acc = float(g["reference_val_accuracy"].iloc[0])
    lines = [f"## {ds} — {bb}", "",
             f"Test split: {n_test} images; {n_seeds} seeds per pipeline. Reference (cross-entropy, argmax) validation "
             f"accuracy {_pct(ref_acc)}%: a point is *matched* when its validation accuracy is at least "
             f"{_pct(ref_acc - 0.01)}%. Values: mean over seeds [95% CI: seeds × test-image bootstrap], in percent.", ""]
    order = g.sort_values(["rule", "family"], key=lambda c: c.map({"argmax": 0, "blend": 1, "bayes": 2}) if c.name == "rule" else c)
    if counts_first:
        lines += ["Critical errors are at the floor here: read them as counts. *critical errors* = per-seed counts of "
                  f"{n_test}; *pooled* = all seeds' critical errors over {n_seeds}×{n_test} decisions with the exact "
                  "Clopper–Pearson 95% interval (seeds share their images, so this interval is narrower than an "
                  "image-level one).", ""]
    lines += ["| pipeline | chosen point | matched | val acc | val CER | test acc | bal. acc | macro-F1 | CER | CMR | exp. cost | ECE |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in order.iterrows():
        lines.append(
            f"| {r['family']} | {r['point']} | {'yes' if r['matched'] else '**no**'} | {_pct(r['val_accuracy'])} | "
            f"{_pct(r['val_cer'])} | {_pct_ci(r['accuracy'], r['accuracy_ci'])} | "
            f"{_pct_ci(r['balanced_accuracy'], r['balanced_accuracy_ci'])} | {_pct_ci(r['macro_f1'], r['macro_f1_ci'])} | "
            f"{_pct_ci(r['cer'], r['cer_ci'])} | {_pct_ci(r['critical_miss_rate'], r['critical_miss_rate_ci'])} | "
            f"{_pct_ci(r['expected_cost'], r['expected_cost_ci'])} | {_pct_ci(r['ece'], r['ece_ci'])} |")
    lines.append("")
    tags = [(b, b.replace(" + ", "_").replace(" ", "_")) for b in [*baselines, post_hoc]]
    head = "| pipeline | critical errors (per seed) | CER, seed-mean errors / images [Clopper–Pearson] | " + " | ".join(
        f"RSI vs {b} [CI] | ΔCER vs {b} [paired CI]" for b, _ in tags) + " | CER @90% cov. | CER @95% cov. |"
    lines += [head, "|---" * (5 + 2 * len(tags)) + "|"]
    for _, r in order.iterrows():
        cp = r["cer_pooled_cp"]
        cells = [r["family"], ", ".join(str(c) for c in r["n_critical_seeds"]),
                 f"{r['n_critical_images']}/{r['n_test']} = {_pct(r['n_critical_images'] / r['n_test'])} "
                 f"[{_pct(cp[0])}, {_pct(cp[1])}]"]
        for b, tag in tags:
            if f"rsi_vs_{tag}" not in r or r["family"] == b:
                cells += ["–", "–"]
                continue
            d = r.get(f"cer_diff_vs_{tag}_ci")
            cells += [_pct_ci(r[f"rsi_vs_{tag}"], r[f"rsi_vs_{tag}_ci"], 1),
                      f"[{_pct(d[0])}, {_pct(d[1])}]" if isinstance(d, (tuple, list)) else "–"]
        cells += [_pct(r["cer_at_90"]), _pct(r["cer_at_95"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += ["RSI = relative safety improvement (CER_ref − CER)/CER_ref in percent; ΔCER: 95% CI (points) of "
              "CER − CER_ref under the paired bootstrap over seeds and test images (images are the unit; the pooled "
              "McNemar over (seed, image) pairs is no longer quoted). CER @c% cov.: CER among the c% of images with the lowest expected cost of the decision "
              "taken (the rest referred).", ""]
    if verdict:
        v = verdict
        lines += ["**Targets** (best risk-calibrated pipeline chosen on validation only: "
                  f"`{v['best_rcl_family']}` at `{v['best_rcl_point']}`):", ""]
        if "rsi_vs_focal" in v:
            lines.append(f"- CER ≤ half of focal's: **{'met' if v['halves_focal_cer'] else 'not met'}** — test CER "
                         f"{_pct(v['best_rcl_test_cer'])}% vs focal {_pct(v['focal_test_cer'])}% "
                         f"(RSI {_pct_ci(v['rsi_vs_focal'], v['rsi_vs_focal_ci'], 1)}%).")
        if "accuracy_within_1pt" in v:
            lines.append(f"- accuracy within 1 point of the best baseline ({v['best_baseline']}, "
                         f"{_pct(v['best_baseline_test_accuracy'])}%): **{'met' if v['accuracy_within_1pt'] else 'not met'}** "
                         f"— {_pct(v['best_rcl_test_accuracy'])}%.")
        if "beats_post_hoc" in v:
            lines.append(f"- CER below the post-hoc rule (`{v['post_hoc_family']}`, test CER {_pct(v['post_hoc_test_cer'])}% "
                         f"at accuracy {_pct(v['post_hoc_test_accuracy'])}%): **{'met' if v['beats_post_hoc'] else 'not met'}** "
                         f"(paired bootstrap CI of the CER difference: {_pct_ci(None, v.get('cer_diff_vs_post_hoc_ci'))}).")
        lines.append("")
    return lines


def at_the_floor(group: pd.DataFrame, floor_count: float = 20.0) -> bool:
    """True when every argmax pipeline of one dataset × backbone averages <= ``floor_count`` critical errors per seed."""
    argmax = group[group["rule"] == "argmax"]
    rows = argmax if len(argmax) else group
    return all(float(np.mean(seeds)) <= floor_count for seeds in rows["n_critical_seeds"])


def write_results(comparison: Comparison, out_dir: str, grid: Optional[Grid] = None, title: Optional[str] = None,
                  baselines: Sequence[str] = ("focal", "ce"), post_hoc: str = "ce + blend",
                  floor_count: float = 20.0, plots: bool = True,
                  notes: Optional[str] = None) -> Dict[str, str]:
    """Write ``results.csv``, ``operating_points.csv``, ``selection.csv``, ``summary.json``, ``results.md`` and plots.

    A dataset × backbone whose argmax pipelines all average at most ``floor_count`` critical
    errors per seed is flagged "at the floor": its tables are to be read as counts.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    table = results_table_rows(comparison.runs, comparison.points, comparison.selection)
    paths["results.csv"] = os.path.join(out_dir, "results.csv")
    table.to_csv(paths["results.csv"], index=False, float_format="%.6g")
    paths["operating_points.csv"] = os.path.join(out_dir, "operating_points.csv")
    comparison.points.to_csv(paths["operating_points.csv"], index=False, float_format="%.6g")
    paths["selection.csv"] = os.path.join(out_dir, "selection.csv")
    comparison.selection.to_csv(paths["selection.csv"], index=False, float_format="%.6g")
    paths["summary.json"] = os.path.join(out_dir, "summary.json")
    with open(paths["summary.json"], "w", encoding="utf-8") as fh:
        json.dump({"summary": comparison.summary.to_dict(orient="records"),
                   "verdicts": {f"{k[0]}/{k[1]}": v for k, v in comparison.verdicts.items()}},
                  fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))

    lines = [f"# {title or (grid.name if grid else 'Experiment results')}", ""]
    if notes:
        lines += [notes, ""]
    wall = table.groupby(["dataset", "backbone"])["wall_time_s"].sum()
    lines += ["Selection on validation only: for each pipeline family, the operating point (λ for losses, blend weight "
              "w for decision rules, both for loss + rule) with the lowest validation CER among those whose validation "
              "accuracy is within 1 point of cross-entropy's; then one evaluation on test. Blend rule: "
              "ŷ = argmin_j (1−w)(1−p_j) + w Σ_i p_i M[i,j] (w = 0: argmax, w = 1: Bayes-risk rule).", "",
              "Training wall time (sum over cells): " + "; ".join(f"{d}/{b} {v / 60:.1f} min" for (d, b), v in wall.items()),
              ""]
    for (ds, bb), g in comparison.summary.groupby(["dataset", "backbone"], sort=False):
        lines += _md_group(g, ds, bb, comparison.verdicts.get((ds, bb), {}), baselines, post_hoc,
                           counts_first=at_the_floor(g, floor_count))
    if plots:
        from .figures import plot_all

        figs = plot_all(comparison, out_dir)
        paths.update(figs)
        lines += ["## Plots", ""]
        for name in sorted(figs):
            lines.append(f"- [{name}]({name})")
        lines.append("")
    paths["results.md"] = os.path.join(out_dir, "results.md")
    with open(paths["results.md"], "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return paths
