"""Write the symmetric comparison's report (:mod:`.symmetric_comparison`): ``README.md`` with every table and its command, CSV tables,
``summary.json`` and plots. ``python -m research.symmetric_comparison_report GRID.yaml --out DIR``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from rcl_hf.atomic_io import atomic_write_bytes
from rcl_hf.formatting import pct as _pct
from rcl_hf.formatting import pct_ci, pct_with_ci
from .symmetric_comparison import SymmetricComparison, analyse

__all__ = ["complete_cells", "write_symmetric_report", "main"]


def complete_cells(grid, splits: Optional[Sequence[int]] = None,
                   methods: Optional[Sequence[str]] = None) -> Tuple[list, List[str]]:
    """The cells to report: those of ``splits`` (default: every split seed of the grid) and of the operating
    points (method, point) done on every one of them, restricted to ``methods`` when given.
    Returns ``(cells, "method/point" left out because unfinished)``."""
    from .grid import is_done

    all_splits = sorted({c.split_seed for c in grid.cells if c.split_seed is not None})
    splits = list(splits) if splits else all_splits
    cells = [c for c in grid.cells if c.split_seed is None or c.split_seed in splits]
    if methods:
        unknown = sorted(set(methods) - {c.method for c in cells})
        if unknown:
            raise ValueError(f"methods {unknown} are not in the grid")
        cells = [c for c in cells if c.method in methods]
    keys = list(dict.fromkeys((c.method, c.point) for c in cells))
    keep = {k for k in keys if all(is_done(c) for c in cells if (c.method, c.point) == k)}
    return [c for c in cells if (c.method, c.point) in keep], [f"{m}/{p}" for m, p in keys if (m, p) not in keep]


def _table(df: pd.DataFrame, cols: Dict[str, Any]) -> List[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(f(r)) for f in cols.values()) + " |")
    return lines + [""]


def _ranking(result: SymmetricComparison, runs, n_boot: int) -> pd.DataFrame:
    """AUROC / AUPRC of the critical-class score for ce, focal and rcl at their validation-chosen points."""
    from .ranking import paired_ranking_bootstrap

    rows = []
    for (ds, bb), fam in result.families.groupby(["dataset", "backbone"], sort=False):
        pipes, labels, sev = {}, {}, None
        methods = ["rcl"] + [m for m in dict.fromkeys(fam["method"]) if m != "rcl"]  # every trained method, vs rcl
        for method in methods:
            f = fam[fam["family"] == method]
            if f.empty:
                continue
            point = f["point"].iloc[0]
            pipes[method] = {}
            for r in runs:
                if (r.dataset, r.backbone, r.method, r.point) == (ds, bb, method, point):
                    pipes[method].setdefault(int(r.split_seed if r.split_seed is not None else -1), []).append(r.logits["test"])
                    labels[int(r.split_seed if r.split_seed is not None else -1)] = r.labels["test"]
                    sev = r.severity
        if "rcl" not in pipes or len(pipes) < 2:
            continue
        out = paired_ranking_bootstrap(pipes, labels, sev, n_boot=n_boot)
        for name, v in out.items():
            point = fam[fam["family"] == name]["point"].iloc[0]
            rows.append({"dataset": ds, "backbone": bb, "method": name, "point": point, **v})
    return pd.DataFrame(rows)


def _fronts_plot(result: SymmetricComparison, out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .post_hoc_families import test_front

    paths = []
    for h in result.headlines:
        if not h["comparison"].startswith("best RCL pipeline vs best non-RCL"):
            continue
        group = (h["dataset"], h["backbone"])
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for fam, color in ((h["a_family"], "C3"), (h["b_family"], "C0")):
            rows = result.points[(result.points["dataset"] == group[0]) & (result.points["family"] == fam)]
            sel = result.families[(result.families["dataset"] == group[0]) & (result.families["family"] == fam)].iloc[0]
            r = rows[rows["point"] == sel["point"]].iloc[0]
            front = test_front(result.points, group, r["method"], r["method_point"])
            ax.plot(100 * front["test_accuracy"], 100 * front["test_cer"], "-o", ms=3, color=color,
                    label=f"{r['method']} ({r['method_point']}) + blend, test front")
            ax.plot(100 * sel["test_accuracy"], 100 * sel["test_cer"], "*", ms=14, color=color,
                    label=f"chosen on validation: {fam}")
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("test CER (%)")
        ax.set_title(f"{group[0]} / {group[1]}: mean over splits × seeds")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        path = os.path.join(out_dir, f"fronts_{group[0]}_{group[1]}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(os.path.basename(path))
    return paths


def write_symmetric_report(result: SymmetricComparison, runs, out_dir: str, command: str, title: str, n_boot_ranking: int = 300,
                 notes: Optional[str] = None, plots: bool = True) -> Dict[str, str]:
    """Write the tables, ``summary.json`` and ``README.md`` of the symmetric comparison report."""
    os.makedirs(out_dir, exist_ok=True)
    ranking = _ranking(result, runs, n_boot_ranking)
    files = {"operating_points.csv": result.points, "selection.csv": result.selection, "families.csv": result.families,
             "rule_vs_rule.csv": result.rule_vs_rule, "coverage.csv": result.coverage, "ranking.csv": ranking}
    for name, df in files.items():
        atomic_write_bytes(os.path.join(out_dir, name), df.to_csv(index=False, float_format="%.6g").encode())
    heads = [{k: v for k, v in h.items()} for h in result.headlines]
    atomic_write_bytes(os.path.join(out_dir, "summary.json"),
                       json.dumps({"headlines": heads}, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                  else str(o)).encode())
    run_cmd = f"```bash\n{command}\n```"
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    f = result.families
    n_splits = int(f["n_splits"].max()) if len(f) else 0
    lines += [f"Every number below: mean over {n_splits} grouped split seed(s) × the training seeds of each split; "
              "95% CIs from the paired bootstrap over splits × seeds × test images "
              "(`research.clustered`). Each family's point is chosen on validation only "
              "(lowest validation CER within 1 point of cross-entropy's validation accuracy); test is read once.",
              "", "All tables were written by this command:", "", run_cmd, ""]
    lines += ["## Verdict (generated from the checks)", ""]
    for h in result.headlines:
        lines.append(f"- **{h['dataset']} / {h['backbone']}, {h['comparison']}:** {h['verdict']}")
    lines += ["", "Checks per comparison (a win needs the first three):", ""]
    hd = pd.DataFrame([{**{k: h[k] for k in ("comparison", "a_family", "b_family")}, **h["checks"]}
                       for h in result.headlines])
    if len(hd):
        lines += _table(hd, {c: (lambda r, c=c: r[c]) for c in hd.columns})
    groups = list(dict.fromkeys(zip(f["dataset"], f["backbone"]))) if len(f) else []
    if len(groups) > 1:  # e.g. one dataset under two groupings: how accuracy and CER move between them
        lines += ["## Side by side", "", "Test accuracy / test CER of each family (chosen on validation in each "
                  "group; the groups are scored on their own test splits).", ""]
        wide = []
        for fam in dict.fromkeys(f["family"]):
            row = {"family": fam}
            for ds, bb in groups:
                g = f[(f["family"] == fam) & (f["dataset"] == ds) & (f["backbone"] == bb)]
                row[f"{ds} / {bb}"] = "" if g.empty else (f"{_pct(g['test_accuracy'].iloc[0])} / "
                                                           f"{_pct(g['test_cer'].iloc[0])}")
            wide.append(row)
        wide_df = pd.DataFrame(wide)
        lines += _table(wide_df, {c: (lambda r, c=c: r[c]) for c in wide_df.columns})
    lines += ["## Every family, chosen on validation (test: once)", "",
              "side: `rcl`; `baseline` = a loss that does not read M while training; `cost_training` = another loss "
              "that reads M. Critical errors: seed-mean count per split, summed over splits, out of the test images "
              "(Clopper–Pearson counts images).", ""]
    lead = {"dataset": lambda r: r["dataset"]} if len(groups) > 1 else {}
    lines += _table(f.sort_values(["dataset", "side", "test_cer"]), {
        **lead, "family": lambda r: r["family"], "side": lambda r: r["side"], "chosen point": lambda r: r["point"],
        "matched": lambda r: "yes" if r["matched"] else "**no**", "val. acc.": lambda r: _pct(r["val_accuracy"]),
        "val. CER": lambda r: _pct(r["val_cer"]), "test acc.": lambda r: _pct(r["test_accuracy"]),
        "test CER [95% CI]": lambda r: pct_with_ci(r["test_cer"], r["test_cer_ci"]),
        "critical / images [CP 95%]": lambda r: f"{r['critical_images']}/{r['test_images']} {pct_ci(r['cer_cp_images'])}".rstrip(),
    })
    lines += ["## Rule against rule: RCL losses against each cost-blind loss under the same rule", "",
              "Relative reduction = 1 − CER(rcl)/CER(baseline); positive favours RCL.", ""]
    if len(result.rule_vs_rule):
        lines += _table(result.rule_vs_rule, {
            "rule": lambda r: r["rule"], "rcl pipeline": lambda r: r["rcl"], "baseline pipeline": lambda r: r["baseline"],
            "CER rcl": lambda r: _pct(r["cer_rcl"]), "CER baseline": lambda r: _pct(r["cer_baseline"]),
            "rel. reduction [95% CI]": lambda r: pct_with_ci(r["relative_reduction"], r["relative_reduction_ci"], 1),
            "Δ accuracy [95% CI]": lambda r: pct_with_ci(r["accuracy_diff"], r["accuracy_diff_ci"]),
            "p (bootstrap)": lambda r: f"{r['p_value']:.3g}"})
    lines += ["## Ranking of the critical-class score (AUROC / AUPRC)", "",
              "Score = P(critical classes) (ISIC: MEL ∪ BCC ∪ AKIEC); each method at its validation-chosen point; "
              "sklearn.metrics; CIs from the clustered bootstrap; differences paired against `rcl`.", ""]
    if len(ranking):
        others = [c[len("auroc_diff_vs_"):] for c in ranking.columns if c.startswith("auroc_diff_vs_") and not c.endswith("_ci")]
        cols = {"method": lambda r: r["method"], "point": lambda r: r["point"],
                "AUROC [95% CI]": lambda r: f"{r['auroc']:.4f} [{r['auroc_ci'][0]:.4f}, {r['auroc_ci'][1]:.4f}]",
                "AUPRC [95% CI]": lambda r: f"{r['auprc']:.4f} [{r['auprc_ci'][0]:.4f}, {r['auprc_ci'][1]:.4f}]"}
        for o in others:
            cols[f"rcl − {o} AUROC [CI]"] = (lambda r, o=o: "" if r["method"] != "rcl" else
                                             f"{r[f'auroc_diff_vs_{o}']:+.4f} [{r[f'auroc_diff_vs_{o}_ci'][0]:+.4f}, "
                                             f"{r[f'auroc_diff_vs_{o}_ci'][1]:+.4f}]")
        lines += _table(ranking, cols)
    lines += ["## CER at fixed coverage (referral rule)", "",
              "The cases with the highest expected cost of their decision are referred; CER among the decided ones "
              "(mean over splits × seeds).", ""]
    if len(result.coverage):
        lines += _table(result.coverage.sort_values("cer_at_80"), {
            "pipeline": lambda r: r["family"], "point": lambda r: r["point"], "CER at 100%": lambda r: _pct(r["test_cer"]),
            "CER at 90%": lambda r: _pct(r["cer_at_90"]), "CER at 80%": lambda r: _pct(r["cer_at_80"])})
    if plots:
        figs = _fronts_plot(result, out_dir)
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in figs] + [""]
    atomic_write_bytes(os.path.join(out_dir, "README.md"), "\n".join(lines).encode())
    return {"README.md": os.path.join(out_dir, "README.md")}


def main(argv: Optional[Sequence[str]] = None) -> SymmetricComparison:
    """``python -m research.symmetric_comparison_report GRID.yaml --out DIR [--n_boot N]``."""
    from .grid import load_grid
    from .report import load_runs

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("grid")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n_boot", type=int, default=2000)
    ap.add_argument("--n_boot_ranking", type=int, default=300)
    ap.add_argument("--title", default="Symmetric comparison at validation-matched accuracy")
    ap.add_argument("--notes", default=None, help="A markdown file whose text goes under the title.")
    ap.add_argument("--splits", type=int, nargs="*", default=None, help="Split seeds (default: all of the grid's).")
    ap.add_argument("--methods", nargs="*", default=None,
                    help="Methods (default: every method done on all the split seeds).")
    args = ap.parse_args(argv)
    t0 = time.time()
    grid = load_grid(args.grid)
    cells, left_out = complete_cells(grid, args.splits, args.methods)
    splits = sorted({c.split_seed for c in cells})
    runs = load_runs(grid, cells)
    result = analyse(runs, grid.blend_weights, grid.reference, grid.tolerance, n_boot=args.n_boot)
    notes = open(args.notes, encoding="utf-8").read() if args.notes else ""
    notes += (f"\n\nSplit seeds: {splits}; methods: {sorted({c.method for c in cells})}"
              + (f"; left out (not finished on every split): {left_out}" if left_out else "") + ".")
    cmd = "python -m research.symmetric_comparison_report " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_symmetric_report(result, runs, args.out, cmd, args.title, args.n_boot_ranking, notes)
    print(f"symmetric comparison report: {args.out}/README.md (splits {splits}, {len(runs)} runs, {time.time() - t0:.0f} s)")
    return result


if __name__ == "__main__":
    main()
