"""Certified risk control on real data: does the guarantee hold, and which training keeps more coverage?

For every finished run of a grid (each training method × operating point × split seed × training seed),
the library's decision layer (:func:`rcl_hf.calibration.calibrate`: temperature, rule, Learn-then-Test
referral threshold) is fitted on the run's **validation** logits for each requested risk and ``α``
(``δ`` fixed), then scored **once on test**, with two certificates:

* ``group`` (the library's default when group ids are given, and the report's main certificate): the
  run's validation and test group ids — the lesion on ISIC 2018, the cluster of near-copies on Brain
  Tumor MRI — are recovered from its ``cell.json`` (:mod:`research.risk_control_runs`); the tuning part
  is grouped apart from the certification part and the unit of the certificate is the group
  (Hoeffding–Bentkus p-values on per-group losses);
* ``image`` (the control): every image is a unit, exact binomial p-values, no groups — the certificate
  the study used before group ids were recovered.

For each run and certificate:

* **validity**: whether the realised test risk is ≤ ``α``, per image and averaged over groups (each group
  weighing the same: the quantity the group certificate bounds); LTT promises ≥ 1 − δ of calibration draws
  in expectation. Beside it a *naive* threshold — same temperature and rule, the most lenient threshold
  whose empirical validation risk (in the certificate's unit) is ≤ ``α``, with no correction — to show
  what the guarantee buys;
* a stronger post-hoc control: cross-entropy calibrated with vector scaling (a scale and a bias per class,
  :func:`rcl_hf.decision.fit_vector_scaling`) instead of one temperature, as family ``ce_vector_scaling``;
* **coverage** (share of test cases the model decides itself) and **accuracy among the accepted**
  cases, per training family (group certificate), beside the normalised partial AUROC of the critical-class
  score at sensitivity ≥ 90% (:func:`research.ranking.partial_auroc_high_sensitivity`). A family with a
  sweep (focal γ, label smoothing ε, RCL λ) is represented by the point of highest mean *validation*
  coverage at that ``(risk, α)``; the comparator is the non-RCL family chosen the same way. Differences are
  paired (same split seed, training seed and test images) with two bootstrap CIs: nested (split seeds, then
  training seeds within each) and split seeds only (the coarser, more conservative design);
* with ``--budget GRID.yaml``: the same training with a larger budget (more epochs), paired with the runs of
  the main grids of the same split seed and training seed (:func:`research.risk_control_tables.budget_check`).

    RCL_HF_CACHE=/tmp/rcl_cache_copy python -m research.risk_control_report \\
        research/configs/risk_control_frozen_isic.yaml research/configs/risk_control_frozen_brain_mri.yaml \\
        research/configs/risk_control_finetune_isic.yaml \\
        --budget research/configs/risk_control_finetune_isic_3epochs.yaml --out research/results/risk_control

(``RCL_HF_CACHE``: where the data loader's image-check cache is read and written; a copy keeps the shared one
untouched.) Writes ``README.md`` (tables, verdicts generated from the checks, the command), ``runs.csv``,
``validity.csv``, ``coverage.csv``, ``budget.csv``, ``summary.json`` and ``coverage_vs_alpha_<dataset>.png``
(:mod:`research.risk_control_tables`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from rcl_hf.calibration import calibrate
from rcl_hf.calibration.risk_control import group_risk_curve, risk_curve
from .ranking import partial_auroc_high_sensitivity
from .risk_control_runs import GroupedRun, load_grouped_runs, test_risks
from .risk_control_tables import family_choice, paired_ci, write_report

__all__ = ["RISK_LEVELS", "UNITS", "evaluate_runs", "naive_threshold", "family_choice", "paired_ci", "write_report",
           "main"]

#: (risk kind, α) pairs of the report.
RISK_LEVELS = (("critical_miss", 0.05), ("critical_miss", 0.10), ("critical_miss", 0.20),
               ("cer_accepted", 0.01), ("cer_accepted", 0.02), ("cer_accepted", 0.05))
#: The certificates: ``group`` (group ids given, the library's default unit then) and the ``image`` control.
UNITS = ("group", "image")
#: The family that is also calibrated with vector scaling (a stronger post-hoc rule on the cost-blind baseline).
VECTOR_SCALING_BASE = "ce"


def naive_threshold(cal: Any, logits: np.ndarray, labels: np.ndarray, severity: Any,
                    groups: Optional[Sequence[Any]] = None) -> float:
    """The most lenient grid threshold whose empirical risk on *all* validation cases is ≤ α (no correction):
    per image, or averaged over ``groups`` when the certificate's unit is the group."""
    _, d, s, _ = cal.decide(logits, severity)
    err, cap = severity.critical[labels, d], severity.positive_rows[labels]
    if getattr(cal, "unit", "image") == "group" and groups is not None:
        curve = group_risk_curve(s, err, cap, groups, cal.risk_kind)
    else:
        curve = risk_curve(s, err, cap, cal.risk_kind)
    ok = np.flatnonzero(np.nan_to_num(curve.risk, nan=np.inf) <= cal.alpha)
    return float(curve.thresholds[ok].max()) if len(ok) else -1.0


def _significantly_above(test: Dict[str, Any], kind: str, alpha: float, level: float = 0.05) -> bool:
    """Is the realised test risk above α beyond the test split's own sampling noise? One-sided exact binomial
    test of ``k`` losses among the ``n`` cases the risk is averaged over (critical-capable, or accepted);
    images are counted as independent, which overstates the evidence when a group holds several."""
    from scipy.stats import binomtest

    n = test["n_critical_capable"] if kind == "critical_miss" else int(round(test["coverage"] * test["n"]))
    k = int(round(test[kind] * n))
    return bool(n > 0 and binomtest(k, n, alpha, alternative="greater").pvalue < level)


def _held(risk: float, alpha: float) -> float:
    """1.0 / 0.0 whether ``risk`` ≤ α; NaN when the risk is unknown (no group ids)."""
    return float("nan") if not np.isfinite(risk) else float(risk <= alpha)


def evaluate_runs(runs: Sequence[Any], levels=RISK_LEVELS, delta: float = 0.1, progress: bool = True,
                  units: Sequence[str] = UNITS, vector_scaling: bool = True) -> pd.DataFrame:
    """One row per (run, calibration variant, certificate unit, risk kind, α): validation (certification part)
    and test figures, certified and naive. ``runs``: :class:`~research.risk_control_runs.GroupedRun` (or plain
    :class:`research.comparison.Run`, which has no group ids: image certificate only)."""
    from tqdm.auto import tqdm

    rows: List[Dict[str, Any]] = []
    for item in tqdm(runs, desc="calibrating runs", disable=not progress, file=sys.stderr):
        gr = item if isinstance(item, GroupedRun) else GroupedRun(item)
        run = gr.run
        zv, yv, zt, yt = run.logits["val"], run.labels["val"], run.logits["test"], run.labels["test"]
        gv, gt = (gr.groups["val"], gr.groups["test"]) if gr.groups is not None else (None, None)
        pauc = partial_auroc_high_sensitivity(zt, yt, run.severity, 0.9)
        # every run with temperature scaling; cross-entropy also with vector scaling (the stronger post-hoc control)
        variants = [(run.method, "temperature")] + ([(f"{run.method}_vector_scaling", "vector")]
                                                    if vector_scaling and run.method == VECTOR_SCALING_BASE else [])
        for (method, scaling), unit, (kind, alpha) in ((v, u, lv) for v in variants for u in units for lv in levels):
            if unit == "group" and gv is None:
                continue
            base = {"dataset": f"{run.dataset} / {run.backbone}", "grid": gr.grid, "method": method, "point": run.point,
                    "split_seed": run.split_seed, "seed": run.seed, "unit": unit, "risk_kind": kind, "alpha": alpha}
            cal_groups = gv if unit == "group" else None
            try:
                cal = calibrate(zv, yv, run.severity, risk_kind=kind, alpha=alpha, delta=delta, seed=run.seed,
                                scaling=scaling, groups=cal_groups)
            except ValueError as err:  # too small to certify this α: recorded, not hidden
                rows.append({**base, "error": str(err)})
                continue
            test = test_risks(cal, zt, yt, run.severity, gt)
            naive = test_risks(replace(cal, threshold=naive_threshold(cal, zv, yv, run.severity, cal_groups)), zt, yt,
                               run.severity, gt)
            target = f"group_{kind}" if unit == "group" else kind  # the risk this certificate bounds
            rows.append({**base, "error": "", "n_units": cal.n_risk, "val_coverage": cal.calibration["coverage"],
                         "threshold": cal.threshold, "temperature": cal.temperature, "blend_weight": cal.blend_weight,
                         "test_coverage": test["coverage"], "test_risk": test[kind],
                         "test_group_risk": test[f"group_{kind}"], "test_accuracy_accepted": test["accuracy_accepted"],
                         "test_accuracy": test["accuracy"], "held_image": _held(test[kind], alpha),
                         "held_group": _held(test[f"group_{kind}"], alpha), "held": _held(test[target], alpha),
                         "naive_test_coverage": naive["coverage"], "naive_test_risk": naive[target],
                         "naive_held": _held(naive[target], alpha), "n_test": test["n"], "test_pauroc_tpr90": pauc,
                         "test_significantly_above": _significantly_above(test, kind, alpha)})
    return pd.DataFrame(rows)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="grid YAML(s) whose finished cells are reported")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--budget", default=None, help="grid YAML of the same training with a larger budget, paired "
                                                       "with the main grids' runs of the same split seed and seed")
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--n_boot", type=int, default=2000)
    parser.add_argument("--title", default="Certified risk control on real data")
    parser.add_argument("--notes", default=None, help="a markdown file whose text goes under the command")
    args = parser.parse_args(argv)
    logging.getLogger("rcl_hf").setLevel(logging.ERROR)  # "every case is referred" notes: counted in the report
    t0 = time.time()
    cache: Dict[str, Any] = {}
    runs = [r for c in args.configs for r in load_grouped_runs(c, cache)]
    if not runs:
        raise SystemExit("no finished runs in the given grids")
    frame = evaluate_runs(runs, delta=args.delta)
    budget = None
    if args.budget:
        from .grid import load_grid

        grid = load_grid(args.budget)
        b_runs = load_grouped_runs(grid, cache)
        b_frame = evaluate_runs(b_runs, levels=(("critical_miss", 0.10),), delta=args.delta, vector_scaling=False) \
            if b_runs else pd.DataFrame()
        budget = {"frame": b_frame, "grid": grid.name, "cells": len(grid.cells), "finished": len(b_runs),
                  "config": args.budget}
    notes = open(args.notes, encoding="utf-8").read() if args.notes else None
    command = "python -m research.risk_control_report " + " ".join(shlex.quote(a) for a in
                                                                            (argv if argv is not None else sys.argv[1:]))
    summary = write_report(frame, args.out, command, args.title, args.n_boot, notes, budget=budget)
    print(open(os.path.join(args.out, "README.md"), encoding="utf-8").read())
    print(f"({len(runs)} runs in {time.time() - t0:.0f} s; {len(cache)} data splits rebuilt, labels matched row for "
          "row)")
    return summary


if __name__ == "__main__":
    main()
