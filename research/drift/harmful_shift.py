"""Harmful-shift check against the previous drift check, on a real model's saved predictions.

    python -m research.drift.harmful_shift /work/shipped_runs/brain_tumor_mri /work/shipped_runs/isic2018 \\
        --out research/results/harmful_shift

For each run folder (``validation_predictions.npz``, ``test_predictions.npz`` with logits, labels, groups;
``risk_calibration.json``; ``config.json`` with the severity matrix; a folder without test predictions is skipped
with a note), the model's decision layer is applied to the test images and ``--draws`` random batches of 20, 50
and 200 images are drawn (without replacement within a batch) under each condition:

* ``in-domain``: test images as they are (the false-warning rate; the goal is at most 5%);
* benign, the model *more* confident: logits ×1.5, and every referral score below 1e-6 multiplied by 100
  (tiny scores 1e-9 → 1e-7, a change of no consequence for misses);
* harmful, the model less confident: logits ÷ 2 and ÷ 4 (temperature ×2, ×4, applied before the calibration's own):
  the referral scores move toward the threshold, the unlabelled evidence the check is built to see (the argmax
  decisions, hence the realised misses, stay the same: the score shift is the warning sign, not a miss itself);
* ``OOD-like mix``: a fifth of each batch replaced by high-entropy cases (logits ~ N(0, 0.1²): near-uniform);
* ``label noise 30%`` / ``60%`` (labelled batches only): the label of 30% / 60% of the test images replaced by
  another class, so that the realised critical miss rate rises while the images, hence the scores, stay the same
  (the unlabelled checks cannot see it, by design).

Checks: ``old KS`` (the previous check: two-sided Kolmogorov–Smirnov of the batch's scores against the calibration's
101 quantiles at 1%); ``new`` (:func:`rcl_hf.calibration.check_drift`'s score-band test at 5%, with the band the
shipped file gives — it predates ``score_band``, so the band comes from its quantiles, the old-file path);
``new, stored band`` (the same with the band that :func:`rcl_hf.calibration.calibrate` stores, recalibrating on the
validation predictions with the library defaults and the run's group ids); ``new + labels`` (the shipped band
plus the labelled realised-risk test, Holm-corrected). No embeddings are saved, so the OOD-share test (unchanged,
exact under its assumption) is not part of this study. Rates carry 95% Clopper–Pearson intervals.

The p-values are computed for all batches at once from the library's own pieces (:func:`band_p_value`,
the exact binomial tail, Holm = Bonferroni for "any test rejects"); the first 30 batches of every cell are checked
against :func:`check_drift` itself. Writes ``README.md`` (command, tables, generated verdict), ``rates.csv``,
``summary.json`` and ``rates.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
from scipy.stats import binom, kstest

from rcl_hf.calibration import RiskCalibration, calibrate, check_drift
from rcl_hf.calibration.drift import DEFAULT_DRIFT_LEVEL, band_p_value, band_reference
from rcl_hf.models import severity_from_config

from ..comparison.stats import clopper_pearson

SIZES = (20, 50, 200)
OLD_LEVEL = 0.01  # the previous check's level
GOAL = 0.05
CHECKS = ("old KS", "new", "new, stored band", "new + labels")
COMMAND = ("python -m research.drift.harmful_shift /work/shipped_runs/brain_tumor_mri /work/shipped_runs/isic2018 "
           "--out research/results/harmful_shift")


def ks_p_values(scores: np.ndarray, quantiles: List[float]) -> np.ndarray:
    """The previous check's p-value for each batch (row): ``kstest`` against the interpolated quantiles."""
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, len(q))
    cdf = lambda x: np.interp(x, q, levels, left=0.0, right=1.0)  # noqa: E731
    return np.array([kstest(row, cdf).pvalue for row in scores])


def new_warnings(scores: np.ndarray, band: Dict, losses: Optional[np.ndarray] = None,
                 units: Optional[np.ndarray] = None, alpha: Optional[float] = None,
                 level: float = DEFAULT_DRIFT_LEVEL) -> np.ndarray:
    """check_drift's verdict for each batch (row), vectorised: the band test, plus the realised-risk test when
    ``losses`` / ``units`` (per batch counts) are given; Holm's "any rejection" is Bonferroni's."""
    n = scores.shape[1]
    x = (scores > band["band_lower"]).sum(axis=1)
    p = [band_p_value(x, np.full(len(x), n), int(band["in_band"]), int(band["n"]))]
    if losses is not None:
        p_risk = np.where(units > 0, binom.sf(losses - 1, np.maximum(units, 1), alpha), np.inf)
        p.append(p_risk)
    p = np.stack(p)
    m = np.isfinite(p).sum(axis=0)
    return p.min(axis=0) <= level / np.maximum(m, 1)


def batches(rng: np.random.Generator, pool: int, n: int, draws: int) -> np.ndarray:
    """``(draws, n)`` indices of random batches without replacement within each."""
    return np.argsort(rng.random((draws, pool)), axis=1)[:, :n]


def study_run(folder: Path, draws: int, seed: int) -> Dict:
    sev = severity_from_config(folder)
    cal = RiskCalibration.load(folder)
    test, val = np.load(folder / "test_predictions.npz"), np.load(folder / "validation_predictions.npz")
    z, y = test["logits"].astype(np.float64), test["labels"].astype(np.int64)
    refit = calibrate(val["logits"], val["labels"], sev, risk_kind=cal.risk_kind, alpha=cal.alpha, delta=cal.delta,
                      method=cal.method, groups=list(val["groups"]) if "groups" in val.files else None,
                      conditional=cal.conditional, dataset=cal.dataset)
    band_file, band_stored = band_reference(cal), band_reference(refit)
    rng = np.random.default_rng(seed)

    def layer(logits):
        _, d, s, refer = cal.decide(logits, sev)
        return d, s, refer

    def per_image_losses(d, refer, labels):
        crit = sev.critical[labels, d]
        if cal.risk_kind == "critical_miss":
            return crit & ~refer & sev.positive_rows[labels], sev.positive_rows[labels]
        return crit & ~refer, ~refer

    d0, s0, r0 = layer(z)
    def noisy(share):
        out = y.copy()
        flip = rng.random(len(y)) < share
        out[flip] = (y[flip] + rng.integers(1, sev.num_labels, flip.sum())) % sev.num_labels
        return out
    he = rng.normal(0.0, 0.1, z.shape)
    _, s_he, _ = layer(he)
    conditions = {
        "in-domain": ("none", s0, y, d0, r0),
        "benign: logits x1.5": ("benign", *(lambda d, s, r: (s, y, d, r))(*layer(z * 1.5))),
        "benign: scores < 1e-6 x100": ("benign", np.where(s0 < 1e-6, s0 * 100, s0), y, d0, r0),
        "harmful: temperature x2": ("harmful", *(lambda d, s, r: (s, y, d, r))(*layer(z / 2))),
        "harmful: temperature x4": ("harmful", *(lambda d, s, r: (s, y, d, r))(*layer(z / 4))),
        "harmful: OOD-like mix 20%": ("harmful", s0, None, d0, r0),
        "harmful: label noise 30%": ("harmful (labels only)", s0, noisy(0.3), d0, r0),
        "harmful: label noise 60%": ("harmful (labels only)", s0, noisy(0.6), d0, r0),
    }
    rows, realised = [], {}
    for name, (kind, s, labels, d, refer) in conditions.items():
        if labels is not None:
            lo, un = per_image_losses(d, refer, labels)
            realised[name] = float(lo.sum() / max(un.sum(), 1))
        for n in SIZES:
            idx = batches(rng, len(s), n, draws)
            if name.startswith("harmful: OOD-like"):
                k = n // 5
                sb = np.concatenate([s[idx[:, : n - k]], s_he[batches(rng, len(s_he), k, draws)]], axis=1)
            else:
                sb = s[idx]
            loss = units = None
            if labels is not None:
                lo, un = per_image_losses(d, refer, labels)
                loss, units = lo[idx].sum(axis=1), un[idx].sum(axis=1)
            warned = {
                "old KS": ks_p_values(sb, cal.score_quantiles) < OLD_LEVEL,
                "new": new_warnings(sb, band_file),
                "new, stored band": new_warnings(sb, band_stored),
            }
            if labels is not None:
                warned["new + labels"] = new_warnings(sb, band_file, loss, units, cal.alpha)
                lo, un = per_image_losses(d, refer, labels)
                for j in range(30):  # the vectorised verdict is check_drift's
                    rep = check_drift(sb[j], band_file, losses=lo[idx[j]][un[idx[j]]], alpha=cal.alpha)
                    assert rep.drifted == bool(warned["new + labels"][j]), (name, n, j)
            for j in range(30):
                assert check_drift(sb[j], band_file).drifted == bool(warned["new"][j]), (name, n, j)
            for check, w in warned.items():
                k = int(w.sum())
                lo_ci, hi_ci = clopper_pearson(k, draws)
                rows.append({"model": folder.name, "condition": name, "kind": kind, "batch": n, "check": check,
                             "warnings": k, "draws": draws, "rate": k / draws, "ci_low": lo_ci, "ci_high": hi_ci})
    whole = {
        "n_test": int(len(y)), "test_accuracy": float((d0 == y).mean()),
        "test_referred": float(r0.mean()),
        "old_ks_p_all_test": float(ks_p_values(s0[None], cal.score_quantiles)[0]),
        "new_all_test": check_drift(s0, cal, losses=per_image_losses(d0, r0, y)[0][per_image_losses(d0, r0, y)[1]],
                                    alpha=cal.alpha).message(),
        "band_file": band_file, "band_stored": band_stored, "threshold": cal.threshold, "alpha": cal.alpha,
        "risk_kind": cal.risk_kind, "n_certify": cal.n_certify, "realised_risk_on_test": realised,
    }
    return {"rows": rows, "whole": whole}


def pct(r: float) -> str:
    return f"{100 * r:.1f}%"


def verdict(df: pd.DataFrame, model: str) -> str:
    ind = df[(df.model == model) & (df.condition == "in-domain")]
    parts = []
    for check in ("old KS", "new"):
        sub = ind[ind.check == check].sort_values("batch")
        rates = ", ".join(f"{pct(r.rate)} [{pct(r.ci_low)}, {pct(r.ci_high)}]" for r in sub.itertuples())
        worst = sub.rate.max()
        parts.append(f"the {check} check warns on {rates} of in-domain batches of {', '.join(map(str, SIZES))} "
                     f"({'within' if worst <= GOAL else 'above'} the {pct(GOAL)} goal"
                     + ("" if worst <= GOAL or sub.ci_low.max() > GOAL else ", not distinguishable from it") + ")")
    harm = df[(df.model == model) & (df.condition.str.startswith("harmful: temperature x2")) & (df.batch == 200)]
    det = {r.check: r.rate for r in harm.itertuples()}
    benign = df[(df.model == model) & (df.kind == "benign") & (df.batch == 200)]
    ben = ", ".join(f"{r.condition.split(': ')[1]} {pct(r.rate)} (old KS)" if r.check == "old KS" else
                    f"{pct(r.rate)} (new)" for r in benign[benign.check.isin(["old KS", "new"])].itertuples())
    return (f"**{model}**: " + "; ".join(parts) + f". On a benign shift (the model more confident), batches of 200 "
            f"warn: {ben}. At temperature ×2 (a model made less confident), batches of 200 "
            f"warn {pct(det.get('new', float('nan')))} of the time with the new check and "
            f"{pct(det.get('old KS', float('nan')))} with the old.")


def table(df: pd.DataFrame, model: str) -> str:
    sub = df[df.model == model]
    lines = ["| condition | batch | " + " | ".join(CHECKS) + " |", "|---|---:|" + "---:|" * len(CHECKS)]
    for (cond, n), g in sub.groupby(["condition", "batch"], sort=False):
        cell = {r.check: f"{pct(r.rate)} [{pct(r.ci_low)}, {pct(r.ci_high)}]" for r in g.itertuples()}
        lines.append(f"| {cond} | {n} | " + " | ".join(cell.get(c, "–") for c in CHECKS) + " |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, out: Path) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = list(dict.fromkeys(df.model))
    conds = list(dict.fromkeys(df.condition))
    fig, axes = plt.subplots(len(models), len(conds), figsize=(2.6 * len(conds), 2.6 * len(models)), squeeze=False,
                             sharey=True)
    for i, m in enumerate(models):
        for j, c in enumerate(conds):
            ax = axes[i][j]
            for check in CHECKS:
                g = df[(df.model == m) & (df.condition == c) & (df.check == check)].sort_values("batch")
                if len(g):
                    ax.errorbar(g.batch.astype(str), g.rate, yerr=[g.rate - g.ci_low, g.ci_high - g.rate], marker="o",
                                capsize=2, label=check)
            ax.axhline(GOAL, color="grey", ls=":", lw=1)
            ax.set_title(c.replace(": ", ":\n"), fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            if j == 0:
                ax.set_ylabel(f"{m}\nwarning rate")
            ax.set_xlabel("batch size", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "rates.png", dpi=110)
    plt.close(fig)
    return "rates.png"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("research/results/harmful_shift"))
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.time()
    rows, whole, skipped = [], {}, []
    for folder in args.runs:
        if not (folder / "test_predictions.npz").is_file():
            skipped.append(f"{folder.name}: no test_predictions.npz (not trained yet)")
            continue
        res = study_run(folder, args.draws, args.seed)
        rows += res["rows"]
        whole[folder.name] = res["whole"]
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "rates.csv", index=False)
    figure = plot(df, args.out)
    models = list(whole)
    verdicts = [verdict(df, m) for m in models]
    (args.out / "summary.json").write_text(json.dumps({"models": whole, "verdicts": verdicts, "skipped": skipped,
                                                       "draws": args.draws, "seed": args.seed}, indent=2))
    md = ["# Harmful shift: false warnings on in-domain batches and detection on shifted ones", "",
          f"Command: `{COMMAND}` ({time.time() - start:.0f} s on 2 CPU cores)", "",
          __doc__.split("\n\n", 2)[2].strip(), "", "## Verdict", "", *[f"- {v}" for v in verdicts], ""]
    for m in models:
        w = whole[m]
        md += [f"## {m}", "",
               f"{w['n_test']} test images, test accuracy {pct(w['test_accuracy'])}, {pct(w['test_referred'])} referred "
               f"(certified: {w['risk_kind']} ≤ {w['alpha']:g}, threshold {w['threshold']:.3g}, {w['n_certify']} "
               f"certification images). Band from the file's quantiles: scores above {w['band_file']['band_lower']:.3g}, "
               f"{w['band_file']['in_band']} of {w['band_file']['n']}; stored by recalibration: above "
               f"{w['band_stored']['band_lower']:.3g}, {w['band_stored']['in_band']} of {w['band_stored']['n']}.", "",
               f"All {w['n_test']} test images as one batch: old KS p = {w['old_ks_p_all_test']:.2g} "
               f"({'warns' if w['old_ks_p_all_test'] < OLD_LEVEL else 'no warning'}); new check with labels: "
               f"\"{w['new_all_test']}\"", "",
               "Realised certified risk on all test images (labelled conditions): " + ", ".join(
                   f"{c} {pct(r)}" for c, r in w["realised_risk_on_test"].items()) + f" (α = {w['alpha']:g}).", "",
               f"Warning rate over {args.draws} batches per cell [95% Clopper–Pearson]:", "", table(df, m), ""]
    if skipped:
        md += ["## Not included", "", *[f"- {s}" for s in skipped], ""]
    if figure:
        md += [f"![warning rates]({figure})", ""]
    (args.out / "README.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
