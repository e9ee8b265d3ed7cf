"""Certified risk control on real data: does the guarantee hold, and which training keeps more coverage?

For every finished run of a grid (each training method × operating point × split seed × training seed),
the library's decision layer (:func:`rcl_hf.calibration.calibrate`: temperature, rule, Learn-then-Test
referral threshold) is fitted on the run's **validation** logits for each requested risk and ``α``
(``δ`` fixed), then scored **once on test**:

* **validity**: the share of runs whose realised test risk is ≤ ``α`` (LTT promises ≥ 1 − δ of them
  in expectation); beside it a *naive* threshold — same temperature and rule, the most lenient
  threshold whose empirical validation risk is ≤ ``α``, with no correction — to show what the
  guarantee buys;
* a stronger post-hoc control: cross-entropy calibrated with vector scaling (a scale and a bias per class,
  :func:`rcl_hf.decision.fit_vector_scaling`) instead of one temperature, as family ``ce_vector_scaling``;
* **coverage** (share of test cases the model decides itself) and **accuracy among the accepted**
  cases, per training family, beside the normalised partial AUROC of the critical-class score at
  sensitivity ≥ 90% (:func:`research.ranking.partial_auroc_high_sensitivity`: a training
  method can only buy coverage by ranking critical cases better). A family with a sweep (focal γ, label smoothing ε, RCL λ) is
  represented by the point of highest mean *validation* coverage at that ``(risk, α)``; the
  comparator is the non-RCL family chosen the same way. Differences are paired (same split seed,
  training seed and test images) with two bootstrap CIs: nested (split seeds, then training seeds
  within each) and split seeds only (the coarser, more conservative design).

    python -m research.risk_control_report research/configs/risk_control_frozen.yaml \\
        --out research/results/risk_control

writes ``README.md`` (tables, verdicts generated from the checks, the command), ``validity.csv``,
``coverage.csv``, ``summary.json`` and ``coverage_vs_alpha_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from rcl_hf.calibration import calibrate, evaluate_calibration
from rcl_hf.calibration.risk_control import risk_curve
from rcl_hf.formatting import pct, pct_ci
from rcl_hf.crash_safety import atomic_write_json, atomic_write_text
from rcl_hf.metrics.functional import softmax
from .grid import load_grid
from .ranking import partial_auroc_high_sensitivity
from .report import load_runs

__all__ = ["RISK_LEVELS", "evaluate_runs", "naive_threshold", "family_choice", "paired_ci", "write_report", "main"]

#: (risk kind, α) pairs of the report.
RISK_LEVELS = (("critical_miss", 0.05), ("critical_miss", 0.10), ("critical_miss", 0.20),
               ("cer_accepted", 0.01), ("cer_accepted", 0.02), ("cer_accepted", 0.05))
RCL_PREFIX = "rcl"
#: The family that is also calibrated with vector scaling (a stronger post-hoc rule on the cost-blind baseline).
VECTOR_SCALING_BASE = "ce"


def naive_threshold(cal: Any, logits: np.ndarray, labels: np.ndarray, severity: Any) -> float:
    """The most lenient grid threshold whose empirical risk on *all* validation cases is ≤ α (no correction)."""
    _, d, s, _ = cal.decide(softmax(logits), severity)
    curve = risk_curve(s, severity.critical[labels, d], severity.positive_rows[labels], cal.risk_kind)
    ok = np.flatnonzero(np.nan_to_num(curve.risk, nan=np.inf) <= cal.alpha)
    return float(curve.thresholds[ok].max()) if len(ok) else -1.0


def _significantly_above(test: Dict[str, Any], kind: str, alpha: float, level: float = 0.05) -> bool:
    """Is the realised test risk above α beyond the test split's own sampling noise? One-sided exact binomial
    test of ``k`` losses among the ``n`` cases the risk is averaged over (critical-capable, or accepted)."""
    from scipy.stats import binomtest

    n = test["n_critical_capable"] if kind == "critical_miss" else int(round(test["coverage"] * test["n"]))
    k = int(round(test[kind] * n))
    return bool(n > 0 and binomtest(k, n, alpha, alternative="greater").pvalue < level)


def evaluate_runs(runs: Sequence[Any], levels=RISK_LEVELS, delta: float = 0.1, progress: bool = True) -> pd.DataFrame:
    """One row per (run, risk kind, α): validation (certification part) and test figures, certified and naive."""
    from tqdm.auto import tqdm

    rows: List[Dict[str, Any]] = []
    for run in tqdm(runs, desc="calibrating runs", disable=not progress, file=sys.stderr):
        zv, yv, zt, yt = run.logits["val"], run.labels["val"], run.logits["test"], run.labels["test"]
        pauc = partial_auroc_high_sensitivity(zt, yt, run.severity, 0.9)
        # every run with temperature scaling; cross-entropy also with vector scaling (the stronger post-hoc control)
        variants = [(run.method, "temperature")] + ([(f"{run.method}_vector_scaling", "vector")]
                                                    if run.method == VECTOR_SCALING_BASE else [])
        for (method, scaling), (kind, alpha) in ((v, lv) for v in variants for lv in levels):
            base = {"dataset": f"{run.dataset} / {run.backbone}", "method": method, "point": run.point,
                    "split_seed": run.split_seed, "seed": run.seed, "risk_kind": kind, "alpha": alpha}
            try:
                cal = calibrate(zv, yv, run.severity, risk_kind=kind, alpha=alpha, delta=delta, seed=run.seed,
                                scaling=scaling)
            except ValueError as err:  # too small to certify this α: recorded, not hidden
                rows.append({**base, "error": str(err)})
                continue
            test = evaluate_calibration(cal, zt, yt, run.severity)
            naive = evaluate_calibration(replace(cal, threshold=naive_threshold(cal, zv, yv, run.severity)), zt, yt,
                                         run.severity)
            rows.append({**base, "error": "", "val_coverage": cal.calibration["coverage"], "threshold": cal.threshold,
                         "temperature": cal.temperature, "blend_weight": cal.blend_weight,
                         "test_coverage": test["coverage"], "test_risk": test[kind], "test_accuracy_accepted":
                         test["accuracy_accepted"], "test_accuracy": test["accuracy"], "held": test[kind] <= alpha,
                         "naive_test_coverage": naive["coverage"], "naive_test_risk": naive[kind],
                         "naive_held": naive[kind] <= alpha, "n_test": test["n"], "test_pauroc_tpr90": pauc,
                         "test_significantly_above": _significantly_above(test, kind, alpha)})
    return pd.DataFrame(rows)


def family_choice(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, risk, α, method): the operating point of highest mean validation coverage."""
    ok = frame[frame["error"] == ""]
    means = ok.groupby(["dataset", "risk_kind", "alpha", "method", "point"], sort=False)["val_coverage"].mean().reset_index()
    idx = means.groupby(["dataset", "risk_kind", "alpha", "method"], sort=False)["val_coverage"].idxmax()
    return means.loc[idx].reset_index(drop=True)


def paired_ci(diff: pd.DataFrame, n_boot: int = 2000, seed: int = 0, nested: bool = True) -> tuple:
    """95% bootstrap CI of the mean of ``diff['d']`` (one value per split seed × seed): resample split seeds,
    then (``nested``) training seeds within each."""
    rng = np.random.default_rng(seed)
    groups = [g["d"].to_numpy() for _, g in diff.groupby("split_seed")]
    if not groups:
        return (float("nan"), float("nan"))
    stats = np.empty(n_boot)
    for b in range(n_boot):
        picked = [groups[i] for i in rng.integers(0, len(groups), len(groups))]
        stats[b] = np.mean([g[rng.integers(0, len(g), len(g))].mean() if nested else g.mean() for g in picked])
    return tuple(float(q) for q in np.quantile(stats, [0.025, 0.975]))


def _pct(x: float) -> str:
    return pct(x, 1, missing="—")


def _ci(ci: tuple) -> str:
    return pct_ci(ci, 1, signed=True)


def _coverage_tables(frame: pd.DataFrame, choice: pd.DataFrame, n_boot: int):
    """Per (dataset, risk, α): each family at its chosen point, and the paired coverage difference of the best
    RCL family against the best non-RCL family (each the family of highest mean validation coverage)."""
    ok = frame[frame["error"] == ""]
    rows, verdicts = [], []
    for (ds, kind, alpha), ch in choice.groupby(["dataset", "risk_kind", "alpha"], sort=False):
        picked = {}
        for _, c in ch.iterrows():
            sel = ok[(ok["dataset"] == ds) & (ok["risk_kind"] == kind) & (ok["alpha"] == alpha)
                     & (ok["method"] == c["method"]) & (ok["point"] == c["point"])]
            picked[c["method"]] = sel
            rows.append({"dataset": ds, "risk_kind": kind, "alpha": alpha, "family": c["method"], "point": c["point"],
                         "runs": len(sel), "val_coverage": sel["val_coverage"].mean(),
                         "test_coverage": sel["test_coverage"].mean(), "test_risk": sel["test_risk"].mean(),
                         "test_accuracy_accepted": sel["test_accuracy_accepted"].mean(),
                         "validity": sel["held"].mean(), "test_pauroc_tpr90": sel["test_pauroc_tpr90"].mean()})
        rcl = {m: s for m, s in picked.items() if m.startswith(RCL_PREFIX)}
        base = {m: s for m, s in picked.items() if not m.startswith(RCL_PREFIX)}
        if not rcl or not base:
            continue
        best_r = max(rcl, key=lambda m: rcl[m]["val_coverage"].mean())
        best_b = max(base, key=lambda m: base[m]["val_coverage"].mean())
        keys = ["split_seed", "seed"]
        pair = rcl[best_r].set_index(keys)[["test_coverage", "test_accuracy_accepted"]].join(
            base[best_b].set_index(keys)[["test_coverage", "test_accuracy_accepted"]], rsuffix="_base", how="inner")
        d = pd.DataFrame({"split_seed": pair.index.get_level_values(0),
                          "d": (pair["test_coverage"] - pair["test_coverage_base"]).to_numpy()})
        nested, coarse = paired_ci(d, n_boot, nested=True), paired_ci(d, n_boot, nested=False)
        mean = float(d["d"].mean())
        if coarse[0] > 0 and nested[0] > 0:
            word = f"`{best_r}` keeps more coverage than `{best_b}`"
        elif coarse[1] < 0 and nested[1] < 0:
            word = f"`{best_r}` keeps less coverage than `{best_b}`"
        else:
            word = "no coverage difference shown"
        verdicts.append({"dataset": ds, "risk_kind": kind, "alpha": alpha, "rcl": best_r, "comparator": best_b,
                         "pairs": len(d), "coverage_diff": mean, "ci_nested": nested, "ci_split_seeds": coarse,
                         "verdict": word})
    return pd.DataFrame(rows), verdicts


def _plot(table: pd.DataFrame, out: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ds, g in table.groupby("dataset", sort=False):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, kind in zip(axes, ("critical_miss", "cer_accepted")):
            k = g[g["risk_kind"] == kind]
            for fam, f in k.groupby("family", sort=False):
                ax.plot(100 * f["alpha"], 100 * f["test_coverage"], marker="o", label=fam,
                        linestyle="-" if fam.startswith(RCL_PREFIX) else "--")
            ax.set_xlabel(f"certified α ({kind}, %)")
            ax.set_ylabel("test coverage (% decided by the model)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{ds}: coverage bought at each certified risk level (δ = 0.1)")
        fig.tight_layout()
        path = os.path.join(out, f"coverage_vs_alpha_{ds.replace(' / ', '_')}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(frame: pd.DataFrame, out: str, command: str, title: str, n_boot: int = 2000,
                 notes: Optional[str] = None) -> Dict[str, Any]:
    os.makedirs(out, exist_ok=True)
    choice = family_choice(frame)
    table, verdicts = _coverage_tables(frame, choice, n_boot)
    ok = frame[frame["error"] == ""]
    validity = ok.groupby(["dataset", "risk_kind", "alpha"], sort=False).agg(
        runs=("held", "size"), certified_validity=("held", "mean"), naive_validity=("naive_held", "mean"),
        significantly_above=("test_significantly_above", "mean"),
        certified_coverage=("test_coverage", "mean"), naive_coverage=("naive_test_coverage", "mean")).reset_index()
    per_split = ok.groupby(["dataset", "risk_kind", "alpha", "split_seed"], sort=False)["held"].mean().reset_index()
    split_held = per_split.groupby(["dataset", "risk_kind", "alpha"], sort=False)["held"].agg(
        splits_held=lambda h: int((h >= 0.5).sum()), splits="size").reset_index()
    validity = validity.merge(split_held, on=["dataset", "risk_kind", "alpha"])
    errors = frame[frame["error"] != ""]
    frame.to_csv(os.path.join(out, "runs.csv"), index=False)
    validity.to_csv(os.path.join(out, "validity.csv"), index=False)
    table.to_csv(os.path.join(out, "coverage.csv"), index=False)
    plots = _plot(table, out)
    lines = [f"# {title}", "", f"Command: `{command}`", "", notes or "", "",
             "## Validity: share of runs whose realised test risk is ≤ α (δ = 0.1: LTT promises ≥ 90%)", "",
             "A run's test split is finite, so its realised risk scatters around the true risk; *significantly above* "
             "counts the runs whose test risk exceeds α beyond that noise (one-sided exact binomial test, p < 0.05). "
             "Runs of one split seed share their validation and test images: the independent calibration draws are the "
             "split seeds (*split seeds held*: those where most runs held).", "",
             "| dataset | risk | α | runs | certified: held | naive: held | certified: significantly above α | "
             "split seeds held | certified coverage % | naive coverage % | check (held ≥ 90%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in validity.iterrows():
        check = "met" if r["certified_validity"] >= 0.9 else "not met"
        lines.append(f"| {r['dataset']} | {r['risk_kind']} | {r['alpha']:.0%} | {r['runs']} | {_pct(r['certified_validity'])}% | "
                     f"{_pct(r['naive_validity'])}% | {_pct(r['significantly_above'])}% | {r['splits_held']} of {r['splits']} | "
                     f"{_pct(r['certified_coverage'])} | {_pct(r['naive_coverage'])} | {check} |")
    if len(errors):
        lines += ["", f"{len(errors)} (run, α) pairs could not be certified (split too small), e.g.: {errors['error'].iloc[0]}"]
    lines += ["", "## Coverage and accuracy among the accepted cases, per training family (test, mean over runs)", "",
              "| dataset | risk | α | family | point | runs | test coverage % | test risk % | accuracy among accepted % | held % "
              "| pAUROC, sensitivity ≥ 90% |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['dataset']} | {r['risk_kind']} | {r['alpha']:.0%} | {r['family']} | {r['point']} | {r['runs']} | "
                     f"{_pct(r['test_coverage'])} | {_pct(r['test_risk'])} | {_pct(r['test_accuracy_accepted'])} | "
                     f"{_pct(r['validity'])} | {r['test_pauroc_tpr90']:.3f} |")
    lines += ["", "## Does a training-time method keep more coverage at the same certified α?", "",
              "Best RCL family against the best non-RCL family (each chosen by mean validation coverage), paired by "
              "split seed × training seed; coverage difference in points with 95% bootstrap CIs (nested: split seeds "
              "then seeds; split seeds only).", "",
              "| dataset | risk | α | RCL | comparator | pairs | coverage diff (points) | CI nested | CI split seeds | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['dataset']} | {v['risk_kind']} | {v['alpha']:.0%} | {v['rcl']} | {v['comparator']} | {v['pairs']} | "
                     f"{100 * v['coverage_diff']:+.2f} | {_ci(v['ci_nested'])} | {_ci(v['ci_split_seeds'])} | {v['verdict']} |")
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    atomic_write_text(os.path.join(out, "README.md"), "\n".join(lines))
    summary = {"command": command, "validity": validity.to_dict(orient="records"), "coverage": table.to_dict(orient="records"),
               "comparisons": verdicts, "n_runs": int(frame.groupby(["dataset", "method", "point", "split_seed", "seed"]).ngroups),
               "n_uncertifiable": int(len(errors))}
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="grid YAML(s) whose finished cells are reported")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--n_boot", type=int, default=2000)
    parser.add_argument("--title", default="Certified risk control on real data")
    parser.add_argument("--notes", default=None, help="a markdown file whose text goes under the command")
    args = parser.parse_args(argv)
    t0 = time.time()
    runs = [r for c in args.configs for r in load_runs(load_grid(c))]
    if not runs:
        raise SystemExit("no finished runs in the given grids")
    frame = evaluate_runs(runs, delta=args.delta)
    notes = open(args.notes, encoding="utf-8").read() if args.notes else None
    command = "python -m research.risk_control_report " + " ".join(shlex.quote(a) for a in
                                                                            (argv if argv is not None else sys.argv[1:]))
    summary = write_report(frame, args.out, command, args.title, args.n_boot, notes)
    print(open(os.path.join(args.out, "README.md"), encoding="utf-8").read())
    print(f"({len(runs)} runs in {time.time() - t0:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
