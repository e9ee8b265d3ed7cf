"""Write a grid's matched-accuracy comparison (:func:`research.comparison.compare_pipelines`):
``results.csv`` / ``results.md`` and the plots of :mod:`research.comparison.figures`, from the finished cells of
a grid (:func:`load_runs`)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from rcl_hf.formatting import pct as _pct
from rcl_hf.formatting import pct_with_ci as _pct_ci
from rcl_hf.severity import SeverityMatrix

from .comparison import Comparison, Run
from .grid import DONE_FILE, Cell, Grid, is_done

logger = logging.getLogger(__name__)

__all__ = ["load_runs", "write_results", "results_table_rows", "at_the_floor"]


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


# ----------------------------------------------------------------------------- writing
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
        from .comparison.figures import plot_all

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
