"""The symmetric matched-accuracy comparison: the symmetric comparator, rule against rule,
paired split × seed × image bootstrap CIs, the automatic equal-accuracy check and the verdict that
follows from them, the ranking analysis and CER at fixed coverage.

    python -m research.symmetric_comparison_report research/configs/symmetric_comparison_frozen_isic.yaml \\
        --out research/results/symmetric_comparison_frozen_isic

Everything is chosen on validation (:func:`.post_hoc_families.select_families`); the test split of each
chosen point is read once, to score it. The verdict text is generated from the checks of
:func:`headline_checks`, never written by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from .clustered import images_clopper_pearson, paired_clustered_bootstrap
from .comparison import Run
from .comparison.verdict import difference_verdict
from rcl_hf.metrics.functional import expected_costs, softmax
from .post_hoc_families import (
    DEFAULT_LA_TAUS,
    _decisions,
    all_operating_points,
    cer_at_accuracy,
    chosen_rows,
    pick_best,
    run_key,
    select_families,
    split_samples,
    test_front,
)

__all__ = ["SymmetricComparison", "analyse", "headline_checks", "verdict_text", "coverage_cer"]

#: The headline pairs: (name, side of the method, sides of the comparator).
HEADLINES: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    ("best RCL pipeline vs best non-RCL pipeline", ("rcl",), ("baseline", "cost_training")),
    ("best RCL pipeline vs best pipeline on a cost-blind loss", ("rcl",), ("baseline",)),
    ("best cost-aware training (RCL or other) vs best pipeline on a cost-blind loss", ("rcl", "cost_training"),
     ("baseline",)),
)


@dataclass
class SymmetricComparison:
    """Everything the symmetric comparison report shows (see :func:`analyse`)."""

    points: pd.DataFrame
    selection: pd.DataFrame
    families: pd.DataFrame
    headlines: List[Dict[str, Any]]
    rule_vs_rule: pd.DataFrame
    coverage: pd.DataFrame
    samples: Dict[Tuple[str, str, str], Dict[int, Dict[str, Any]]]


def coverage_cer(rows: pd.DataFrame, runs_by_key: Dict[Tuple, Run], coverages: Sequence[float] = (0.9, 0.8)) -> Dict[float, float]:
    """Selective CER: refer the cases whose decision has the highest expected cost ``Σ_i p_i M[i, ŷ]`` (the
    referral rule), decide the lowest-risk ``ceil(c·N)``; mean over the (split, seed) runs of the point."""
    out: Dict[float, List[float]] = {c: [] for c in coverages}
    for _, r in rows.iterrows():
        run = runs_by_key[(r["dataset"], r["backbone"], r["method"], r["method_point"], int(r["split_seed"]), int(r["seed"]))]
        z = run.logits["test"]
        value = {"la": r["tau"], "crm": 1.0}.get(r["rule"], r["w"])
        d = _decisions(run, "test", r["rule"], float(value), float(r["temperature"]))
        p = softmax(z / float(r["temperature"])) if r["rule"] == "crm" else softmax(z)
        risk = expected_costs(p, run.severity)[np.arange(len(d)), d]
        crit = run.severity.critical[run.labels["test"], d][np.argsort(risk, kind="stable")]
        for c in coverages:
            k = int(np.ceil(c * len(d) - 1e-9))
            out[c].append(float(crit[:k].mean()))
    return {c: float(np.mean(v)) for c, v in out.items()}


def headline_checks(cmp: Dict[str, Any], acc_a_test: float, acc_b_test: float, eq_cer_b: float, cer_a: float,
                    tolerance: float, goal: float) -> Dict[str, Any]:
    """The checks a win needs; the verdict is their conjunction."""
    word = difference_verdict(cmp["cer_diff_ci"])
    return {
        "ci_excludes_0": word == "lower",
        "ci_excludes_0_against": word == "higher",
        "accuracy_within_tolerance": bool(acc_a_test >= acc_b_test - tolerance - 1e-12),
        "equal_accuracy_available": bool(np.isfinite(eq_cer_b)),
        "lower_at_equal_accuracy": bool(np.isfinite(eq_cer_b) and cer_a < eq_cer_b),
        "goal_met": bool(np.isfinite(cmp["relative_reduction"]) and cmp["relative_reduction"] >= goal
                         and word == "lower" and acc_a_test >= acc_b_test - tolerance - 1e-12),
    }


def verdict_text(h: Dict[str, Any], tolerance: float, goal: float) -> str:
    """One sentence from the checks of :func:`headline_checks` (no hand-written claims)."""
    c = h["checks"]
    a, b = f"`{h['a_family']}` ({h['a_point']})", f"`{h['b_family']}` ({h['b_point']})"
    rel = h["cmp"]["relative_reduction"]
    rel_ci = h["cmp"]["relative_reduction_ci"]
    stats = (f"CER {100 * h['cmp']['cer_a']:.2f}% vs {100 * h['cmp']['cer_b']:.2f}%, relative reduction "
             f"{100 * rel:.1f}% [{100 * rel_ci[0]:.1f}, {100 * rel_ci[1]:.1f}], difference CI "
             f"[{100 * h['cmp']['cer_diff_ci'][0]:.2f}, {100 * h['cmp']['cer_diff_ci'][1]:.2f}] points, test accuracy "
             f"{100 * h['acc_a']:.2f}% vs {100 * h['acc_b']:.2f}%")
    eq = (f"at {a}'s test accuracy the comparator's rule front has {100 * h['eq_cer_b']:.2f}% CER"
          if c["equal_accuracy_available"] else "the comparator's rule front does not reach that accuracy")
    if c["ci_excludes_0"] and c["accuracy_within_tolerance"] and c["lower_at_equal_accuracy"]:
        head = f"**{a} beats {b}**"
        if c["goal_met"]:
            head += f", and meets the ≥ {100 * goal:.0f}% goal"
        else:
            head += f", but not by the ≥ {100 * goal:.0f}% goal"
    elif c["ci_excludes_0_against"]:
        head = f"**{b} beats {a}** (the CI of the difference lies above 0)"
    else:
        reasons = []
        if not c["ci_excludes_0"]:
            reasons.append("the 95% CI of the CER difference includes 0")
        if not c["accuracy_within_tolerance"]:
            reasons.append(f"test accuracy is more than {100 * tolerance:.0f} point below the comparator's")
        if not c["lower_at_equal_accuracy"]:
            reasons.append("it is not lower than the comparator's front at equal test accuracy")
        head = f"**no win shown** for {a} over {b}: " + "; ".join(reasons)
    return f"{head} ({stats}; {eq})."


def analyse(runs: Sequence[Run], blend_weights: Sequence[float], reference: str = "ce", tolerance: float = 0.01,
            n_boot: int = 2000, la_taus: Sequence[float] = DEFAULT_LA_TAUS, goal: float = 0.30,
            bootstrap_seed: int = 0) -> SymmetricComparison:
    """Select on validation, score the choices once on test, compare (module docstring)."""
    if not runs:
        raise ValueError("analyse needs at least one finished run")
    points = all_operating_points(runs, blend_weights, la_taus)
    selection = select_families(points, reference, tolerance)
    by_key = {run_key(r): r for r in runs}
    samples: Dict[Tuple[str, str, str], Dict[int, Dict[str, Any]]] = {}
    fam_rows, rows_of = [], {}
    for _, s in selection.iterrows():
        group = (s["dataset"], s["backbone"])
        rows = chosen_rows(points, group, s["family"], s["point"])
        rows_of[(*group, s["family"])] = rows
        smp = split_samples(rows, by_key)
        samples[(*group, s["family"])] = smp
        boot = paired_clustered_bootstrap(smp, smp, n_boot=n_boot, seed=bootstrap_seed)
        k, n, cp = images_clopper_pearson(smp)
        fam_rows.append({**s.to_dict(), "test_accuracy": float(rows["test_accuracy"].mean()),
                         "test_cer": float(rows["test_cer"].mean()), "test_cer_ci": boot["cer_a_ci"],
                         "critical_images": k, "test_images": n, "cer_cp_images": cp,
                         "n_runs": int(len(rows)), "n_splits": int(rows["split_seed"].nunique())})
    families = pd.DataFrame(fam_rows)

    headlines: List[Dict[str, Any]] = []
    for (ds, bb), sel in selection.groupby(["dataset", "backbone"], sort=False):
        group = (ds, bb)
        for name, sides_a, sides_b in HEADLINES:
            a, b = pick_best(sel, sides_a), pick_best(sel, sides_b)
            if a is None or b is None:
                continue
            cmp = paired_clustered_bootstrap(samples[(*group, a["family"])], samples[(*group, b["family"])],
                                             n_boot=n_boot, seed=bootstrap_seed)
            ra, rb = rows_of[(*group, a["family"])], rows_of[(*group, b["family"])]
            front_b = test_front(points, group, str(rb["method"].iloc[0]), str(rb["method_point"].iloc[0]))
            acc_a, acc_b = float(ra["test_accuracy"].mean()), float(rb["test_accuracy"].mean())
            eq = cer_at_accuracy(front_b, acc_a)
            h = {"dataset": ds, "backbone": bb, "comparison": name, "a_family": a["family"], "a_point": a["point"],
                 "a_matched": bool(a["matched"]), "b_family": b["family"], "b_point": b["point"],
                 "b_matched": bool(b["matched"]), "acc_a": acc_a, "acc_b": acc_b, "eq_cer_b": eq, "cmp": cmp}
            h["checks"] = headline_checks(cmp, acc_a, acc_b, eq, cmp["cer_a"], tolerance, goal)
            h["verdict"] = verdict_text(h, tolerance, goal)
            headlines.append(h)

    # rule against rule: each loss with and without each rule; rcl (+ rule) against each baseline (+ the same rule)
    rvr = []
    for (ds, bb), fam in families.groupby(["dataset", "backbone"], sort=False):
        group = (ds, bb)
        methods = list(dict.fromkeys(fam["method"]))
        rcl_methods = [m for m in methods if fam[fam["method"] == m]["side"].iloc[0] == "rcl"]
        base_methods = [m for m in methods if fam[fam["method"] == m]["side"].iloc[0] == "baseline"]
        for suffix in ("", " + blend", " + LA", " + CRM", " + Bayes"):
            for rm in rcl_methods:
                for bm in base_methods:
                    fa, fb = rm + suffix, bm + suffix
                    if (*group, fa) not in samples or (*group, fb) not in samples:
                        continue
                    c = paired_clustered_bootstrap(samples[(*group, fa)], samples[(*group, fb)], n_boot=n_boot,
                                                   seed=bootstrap_seed)
                    rvr.append({"dataset": ds, "backbone": bb, "rule": suffix.strip(" +") or "argmax", "rcl": fa,
                                "baseline": fb, "cer_rcl": c["cer_a"], "cer_baseline": c["cer_b"],
                                "relative_reduction": c["relative_reduction"],
                                "relative_reduction_ci": c["relative_reduction_ci"], "cer_diff_ci": c["cer_diff_ci"],
                                "accuracy_diff": c["accuracy_diff"], "accuracy_diff_ci": c["accuracy_diff_ci"],
                                "p_value": c["p_value"]})
    cov = []
    for _, f in families.iterrows():
        if f["rule"] in ("argmax", "blend", "crm", "bayes"):  # every trained method under each referral-ready rule
            group = (f["dataset"], f["backbone"])
            c = coverage_cer(rows_of[(*group, f["family"])], by_key)
            cov.append({"dataset": f["dataset"], "backbone": f["backbone"], "family": f["family"], "point": f["point"],
                        "test_cer": f["test_cer"], "cer_at_90": c[0.9], "cer_at_80": c[0.8]})
    return SymmetricComparison(points, selection, families, headlines, pd.DataFrame(rvr), pd.DataFrame(cov), samples)
