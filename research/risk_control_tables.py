"""What the risk-control report writes (:mod:`research.risk_control_report` computes the rows): validity per
certificate unit, coverage per training family, the paired coverage comparisons, the budget check, the plots,
``README.md``, the CSV files and ``summary.json``."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from rcl_hf.atomic_io import atomic_write_json, atomic_write_text
from rcl_hf.formatting import pct, pct_ci

__all__ = ["family_choice", "paired_ci", "validity_table", "budget_check", "write_report", "RCL_PREFIX",
           "MAIN_UNIT"]

RCL_PREFIX = "rcl"
#: The certificate whose rows make the coverage tables and comparisons (the image rows are the control).
MAIN_UNIT = "group"
_KEYS = ["dataset", "risk_kind", "alpha"]
#: The budget check gives a verdict from this many paired split seeds on (its CI resamples split seeds).
MIN_SPLIT_SEEDS = 3


def _main_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The certified rows of the main certificate: group-level where a dataset has group ids, else image-level."""
    ok = frame[frame["error"] == ""]
    with_groups = set(ok.loc[ok["unit"] == MAIN_UNIT, "dataset"])
    return ok[(ok["unit"] == MAIN_UNIT) | ((ok["unit"] == "image") & ~ok["dataset"].isin(with_groups))]


def family_choice(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, risk, α, method): the operating point of highest mean validation coverage (main certificate)."""
    ok = _main_rows(frame)
    means = ok.groupby([*_KEYS, "method", "point"], sort=False)["val_coverage"].mean().reset_index()
    idx = means.groupby([*_KEYS, "method"], sort=False)["val_coverage"].idxmax()
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
    ok = _main_rows(frame)
    rows, verdicts = [], []
    for (ds, kind, alpha), ch in choice.groupby(_KEYS, sort=False):
        picked = {}
        for _, c in ch.iterrows():
            sel = ok[(ok["dataset"] == ds) & (ok["risk_kind"] == kind) & (ok["alpha"] == alpha)
                     & (ok["method"] == c["method"]) & (ok["point"] == c["point"])]
            picked[c["method"]] = sel
            rows.append({"dataset": ds, "risk_kind": kind, "alpha": alpha, "unit": sel["unit"].iloc[0],
                         "family": c["method"], "point": c["point"], "runs": len(sel),
                         "val_coverage": sel["val_coverage"].mean(), "test_coverage": sel["test_coverage"].mean(),
                         "test_risk": sel["test_risk"].mean(), "test_group_risk": sel["test_group_risk"].mean(),
                         "test_accuracy_accepted": sel["test_accuracy_accepted"].mean(),
                         "validity_image": sel["held_image"].mean(), "validity_group": sel["held_group"].mean(),
                         "test_pauroc_tpr90": sel["test_pauroc_tpr90"].mean()})
        rcl = {m: s for m, s in picked.items() if m.startswith(RCL_PREFIX)}
        base = {m: s for m, s in picked.items() if not m.startswith(RCL_PREFIX)}
        if not rcl or not base:
            continue
        best_r = max(rcl, key=lambda m: rcl[m]["val_coverage"].mean())
        best_b = max(base, key=lambda m: base[m]["val_coverage"].mean())
        keys = ["split_seed", "seed"]
        pair = rcl[best_r].set_index(keys)[["test_coverage"]].join(base[best_b].set_index(keys)[["test_coverage"]],
                                                                   rsuffix="_base", how="inner")
        d = pd.DataFrame({"split_seed": pair.index.get_level_values(0),
                          "d": (pair["test_coverage"] - pair["test_coverage_base"]).to_numpy()})
        nested, coarse = paired_ci(d, n_boot, nested=True), paired_ci(d, n_boot, nested=False)
        if coarse[0] > 0 and nested[0] > 0:
            word = f"`{best_r}` keeps more coverage than `{best_b}`"
        elif coarse[1] < 0 and nested[1] < 0:
            word = f"`{best_r}` keeps less coverage than `{best_b}`"
        else:
            word = "no coverage difference shown"
        verdicts.append({"dataset": ds, "risk_kind": kind, "alpha": alpha, "rcl": best_r, "comparator": best_b,
                         "pairs": len(d), "coverage_diff": float(d["d"].mean()), "ci_nested": nested,
                         "ci_split_seeds": coarse, "verdict": word})
    return pd.DataFrame(rows), verdicts


def validity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, risk, α, unit): the share of runs whose test risk stayed ≤ α per image, averaged over groups
    and on the risk the certificate bounds (``certified_validity``), the naive threshold's, the split seeds where
    most runs held, the certified and naive coverage, and the median number of certified units."""
    ok = frame[frame["error"] == ""]
    keys = [*_KEYS, "unit"]
    validity = ok.groupby(keys, sort=False).agg(
        runs=("held", "size"), certified_validity=("held", "mean"), held_image=("held_image", "mean"),
        held_group=("held_group", "mean"), naive_validity=("naive_held", "mean"),
        significantly_above=("test_significantly_above", "mean"), units=("n_units", "median"),
        certified_coverage=("test_coverage", "mean"), naive_coverage=("naive_test_coverage", "mean")).reset_index()
    per_split = ok.groupby([*keys, "split_seed"], sort=False)["held"].mean().reset_index()
    split_held = per_split.groupby(keys, sort=False)["held"].agg(
        splits_held=lambda h: int((h >= 0.5).sum()), splits="size").reset_index()
    order = {u: i for i, u in enumerate((MAIN_UNIT, "image"))}
    validity = validity.merge(split_held, on=keys)
    validity["_o"] = validity["unit"].map(order)
    first = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, validity[_KEYS].to_numpy().tolist())))}
    validity["_k"] = [first[tuple(k)] for k in validity[_KEYS].to_numpy().tolist()]
    return validity.sort_values(["_k", "_o"]).drop(columns=["_k", "_o"]).reset_index(drop=True)


def budget_check(frame: pd.DataFrame, budget: pd.DataFrame, n_boot: int, kind: str = "critical_miss",
                 alpha: float = 0.10) -> List[Dict[str, Any]]:
    """The larger-budget runs (``budget``) against the main grids' runs of the same dataset, method, point, split
    seed and training seed, per certificate unit and method (and both methods pooled per split seed): mean test
    coverage at certified ``kind`` ≤ ``alpha``, runs held, and a 95% bootstrap CI of the paired coverage
    difference over split seeds."""
    keys = ["dataset", "method", "point", "split_seed", "seed", "unit"]

    def sel(f: pd.DataFrame) -> pd.DataFrame:
        return f[(f["error"] == "") & (f["risk_kind"] == kind) & (f["alpha"] == alpha)]

    if budget is None or not len(budget):
        return []
    b = sel(budget)
    pair = sel(frame).merge(b, on=keys, suffixes=("_base", "_budget"))
    out = []
    for unit, u in pair.groupby("unit", sort=False):
        for method in [*sorted(u["method"].unique()), "all"]:
            m = u if method == "all" else u[u["method"] == method]
            d = m.assign(d=m["test_coverage_budget"] - m["test_coverage_base"]).groupby("split_seed")["d"].mean()
            ci = paired_ci(pd.DataFrame({"split_seed": d.index, "d": d.to_numpy()}), n_boot, nested=False)
            if len(d) < MIN_SPLIT_SEEDS:
                word = f"fewer than {MIN_SPLIT_SEEDS} split seeds: no verdict"
            elif ci[0] > 0:
                word = "the larger budget keeps more coverage"
            elif ci[1] < 0:
                word = "the larger budget keeps less coverage"
            else:
                word = "no coverage difference shown"
            out.append({"unit": unit, "method": "all methods" if method == "all" else method, "pairs": len(m),
                        "split_seeds": int(m["split_seed"].nunique()), "risk_kind": kind, "alpha": alpha,
                        "coverage_base": m["test_coverage_base"].mean(), "coverage_budget": m["test_coverage_budget"].mean(),
                        "coverage_diff": float(d.mean()), "ci_split_seeds": ci,
                        "held_base": int(m["held_base"].sum()), "held_budget": int(m["held_budget"].sum()),
                        "held_image_base": int(m["held_image_base"].sum()),
                        "held_image_budget": int(m["held_image_budget"].sum()),
                        "accuracy_base": m["test_accuracy_base"].mean(), "accuracy_budget": m["test_accuracy_budget"].mean(),
                        "verdict": word})
    return out


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
        fig.suptitle(f"{ds}: coverage bought at each certified risk level ({g['unit'].iloc[0]} certificate, δ = 0.1)")
        fig.tight_layout()
        path = os.path.join(out, f"coverage_vs_alpha_{ds.replace(' / ', '_')}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _validity_lines(validity: pd.DataFrame) -> List[str]:
    lines = ["| dataset | risk | α | certificate | runs | held: test risk per image ≤ α | held: group-averaged test risk "
             "≤ α | naive: held | certified: significantly above α (per image) | split seeds held | units certified "
             "(median) | certified coverage % | naive coverage % | check (held ≥ 90%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in validity.iterrows():
        check = "met" if r["certified_validity"] >= 0.9 else "not met"
        lines.append(f"| {r['dataset']} | {r['risk_kind']} | {r['alpha']:.0%} | {r['unit']} | {r['runs']} | "
                     f"{_pct(r['held_image'])}% | {_pct(r['held_group'])}% | {_pct(r['naive_validity'])}% | "
                     f"{_pct(r['significantly_above'])}% | {r['splits_held']} of {r['splits']} | {r['units']:.0f} | "
                     f"{_pct(r['certified_coverage'])} | {_pct(r['naive_coverage'])} | {check} |")
    return lines


def _budget_lines(checks: List[Dict[str, Any]], budget: Dict[str, Any]) -> List[str]:
    done, cells = budget["finished"], budget["cells"]
    lines = ["", f"## Budget check: `{budget['grid']}` against the same runs with the main grid's budget", "",
             f"`{budget['config']}`: {done} of {cells} cells finished"
             + ("." if done == cells else "; the check below is partial and is to be rerun when the grid has finished.")
             + " Each of its runs is paired with the main grid's run of the same dataset, method, split seed and "
               "training seed; coverage at certified `critical_miss` ≤ 10% (mean over pairs), runs held (on the "
               "risk the certificate bounds, and per image), and the paired coverage difference with a 95% "
               "bootstrap CI over split seeds (*all methods*: the methods' mean difference per split seed).", ""]
    if not checks:
        return lines + ["No pair yet.", ""]
    lines += ["| certificate | method | pairs | coverage % (main budget) | coverage % (larger budget) | coverage diff "
              "(points) | CI split seeds | held (main → larger) | held per image (main → larger) | test accuracy % "
              "(main → larger) | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['unit']} | {c['method']} | {c['pairs']} | {_pct(c['coverage_base'])} | "
                     f"{_pct(c['coverage_budget'])} | {100 * c['coverage_diff']:+.2f} | {_ci(c['ci_split_seeds'])} | "
                     f"{c['held_base']} → {c['held_budget']} of {c['pairs']} | {c['held_image_base']} → "
                     f"{c['held_image_budget']} of {c['pairs']} | {_pct(c['accuracy_base'])} → "
                     f"{_pct(c['accuracy_budget'])} | {c['verdict']} |")
    return lines + [""]


def write_report(frame: pd.DataFrame, out: str, command: str, title: str, n_boot: int = 2000,
                 notes: Optional[str] = None, budget: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write the report folder (module docstring); ``budget``: ``{"frame", "grid", "config", "cells", "finished"}``
    of a larger-budget grid (:func:`budget_check`), or ``None``."""
    os.makedirs(out, exist_ok=True)
    choice = family_choice(frame)
    table, verdicts = _coverage_tables(frame, choice, n_boot)
    validity = validity_table(frame)
    errors = frame[frame["error"] != ""]
    checks = budget_check(frame, budget["frame"], n_boot) if budget else []
    frame.to_csv(os.path.join(out, "runs.csv"), index=False)
    validity.to_csv(os.path.join(out, "validity.csv"), index=False)
    table.to_csv(os.path.join(out, "coverage.csv"), index=False)
    if budget:
        pd.DataFrame(checks).to_csv(os.path.join(out, "budget.csv"), index=False)
    plots = _plot(table, out)
    lines = [f"# {title}", "", f"Command: `{command}`", "", notes or "", "",
             "## Validity: share of runs whose realised test risk is ≤ α (δ = 0.1: LTT promises ≥ 90%)", "",
             "Two certificates per run: *group* — the unit is the group (a lesion on ISIC 2018, a cluster of "
             "near-copies on Brain Tumor MRI), with the tuning part grouped apart and Hoeffding–Bentkus p-values on "
             "per-group losses (the library's default when group ids are given); it bounds the *group-averaged* "
             "risk (each group weighing the same) — and *image*, the control: every image a unit, exact binomial "
             "p-values, no groups. *check* is on the risk the certificate bounds (group-averaged for *group*, per "
             "image for *image*); *naive* is the uncorrected threshold in the same unit. A run's test split is "
             "finite, so its realised risk scatters around the true risk; *significantly above* counts the runs "
             "whose per-image test risk exceeds α beyond that noise (one-sided exact binomial test over images, "
             "p < 0.05). Runs of one split seed share their validation and test images: the independent "
             "calibration draws are the split seeds (*split seeds held*: those where most runs held). *units "
             "certified*: critical-capable images, or groups with one, in the certification part (for "
             "`cer_accepted`: images, or groups).", ""]
    lines += _validity_lines(validity)
    if len(errors):
        lines += ["", f"{len(errors)} (run, certificate, α) triples could not be certified (split too small), e.g.: "
                      f"{errors['error'].iloc[0]}"]
    lines += ["", "## Coverage and accuracy among the accepted cases, per training family (test, mean over runs; "
                  "group certificate)", "",
              "| dataset | risk | α | family | point | runs | test coverage % | test risk % (per image) | "
              "accuracy among accepted % | held % (per image) | held % (group-averaged) | pAUROC, sensitivity ≥ 90% |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['dataset']} | {r['risk_kind']} | {r['alpha']:.0%} | {r['family']} | {r['point']} | "
                     f"{r['runs']} | {_pct(r['test_coverage'])} | {_pct(r['test_risk'])} | "
                     f"{_pct(r['test_accuracy_accepted'])} | {_pct(r['validity_image'])} | {_pct(r['validity_group'])} "
                     f"| {r['test_pauroc_tpr90']:.3f} |")
    lines += ["", "## Does a training-time method keep more coverage at the same certified α?", "",
              "Group certificate. Best RCL family against the best non-RCL family (each chosen by mean validation "
              "coverage), paired by split seed × training seed; coverage difference in points with 95% bootstrap "
              "CIs (nested: split seeds then seeds; split seeds only).", "",
              "| dataset | risk | α | RCL | comparator | pairs | coverage diff (points) | CI nested | CI split seeds | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['dataset']} | {v['risk_kind']} | {v['alpha']:.0%} | {v['rcl']} | {v['comparator']} | "
                     f"{v['pairs']} | {100 * v['coverage_diff']:+.2f} | {_ci(v['ci_nested'])} | "
                     f"{_ci(v['ci_split_seeds'])} | {v['verdict']} |")
    if budget:
        lines += _budget_lines(checks, budget)
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    atomic_write_text(os.path.join(out, "README.md"), "\n".join(lines))
    summary = {"command": command, "validity": validity.to_dict(orient="records"), "coverage": table.to_dict(orient="records"),
               "comparisons": verdicts, "n_runs": int(frame.groupby(["dataset", "grid", "method", "point", "split_seed",
                                                                    "seed"], dropna=False).ngroups),
               "n_uncertifiable": int(len(errors))}
    if budget:
        summary["budget"] = {"grid": budget["grid"], "config": budget["config"], "cells": budget["cells"],
                             "finished": budget["finished"], "checks": checks}
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary
