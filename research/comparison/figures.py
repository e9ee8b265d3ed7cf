"""Figures of the comparison (matplotlib, Agg): CER–accuracy fronts, the λ sweep, confusion
matrices with the critical cells outlined, reliability diagrams and risk–coverage curves.

Every figure states its split, its number of seeds and what the error bars are,
so that a reader who has not seen the code can read it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from rcl_hf.plots import plot_confusion_matrix
from rcl_hf.metrics.reliability import calibration_bins, risk_coverage

__all__ = ["plot_all", "plot_fronts", "plot_lambda_sweep", "plot_confusions", "plot_reliability", "plot_risk_coverage"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()


def _group_points(points: pd.DataFrame, ds: str, bb: str) -> pd.DataFrame:
    return points[(points["dataset"] == ds) & (points["backbone"] == bb)]


def _mean_sd(df: pd.DataFrame, keys: List[str], cols: List[str]) -> pd.DataFrame:
    g = df.groupby(keys, sort=False)[cols]
    m = g.mean().add_suffix("_mean")
    s = g.std(ddof=1).fillna(0.0).add_suffix("_sd")
    return pd.concat([m, s], axis=1).reset_index()


def _highlight_families(summary: pd.DataFrame, verdict: Dict[str, Any], post_hoc: str) -> List[str]:
    fams = ["ce", "focal", post_hoc]
    if verdict.get("best_rcl_family"):
        fams.append(verdict["best_rcl_family"])
    present = set(summary["family"])
    out = []
    for f in fams:
        if f in present and f not in out:
            out.append(f)
    return out


def plot_fronts(comparison, ds: str, bb: str, path: str, post_hoc: str = "ce + blend") -> str:
    """CER vs accuracy on validation and test: every method's argmax points (λ sweep joined), the
    blend-rule curves of cross-entropy and of the best RCL method (at its chosen λ), chosen points starred.
    Error bars: ±1 SD over seeds (both axes)."""
    plt = _plt()
    pts = _group_points(comparison.points, ds, bb)
    summ = comparison.summary[(comparison.summary["dataset"] == ds) & (comparison.summary["backbone"] == bb)]
    verdict = comparison.verdicts.get((ds, bb), {})
    sel = comparison.selection[(comparison.selection["dataset"] == ds) & (comparison.selection["backbone"] == bb)]
    ref_acc = float(sel["reference_accuracy"].iloc[0])
    n_seeds = int(summ["n_seeds"].max())
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=False)
    methods = list(dict.fromkeys(pts["method"]))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    rule_methods = ["ce"]
    best = verdict.get("best_rcl_family", "")
    best_method = best.split(" + ")[0] if best else None
    if best_method and best_method not in rule_methods:
        rule_methods.append(best_method)
    for ax, split in zip(axes, ("val", "test")):
        cols = [f"{split}_accuracy", f"{split}_cer"]
        arg = _mean_sd(pts[pts["rule"] == "argmax"], ["method", "point"], cols)
        for m in methods:
            a = arg[arg["method"] == m]
            ax.errorbar(100 * a[f"{split}_accuracy_mean"], 100 * a[f"{split}_cer_mean"],
                        xerr=100 * a[f"{split}_accuracy_sd"], yerr=100 * a[f"{split}_cer_sd"],
                        fmt="o-", ms=5, lw=1.2, capsize=2, color=colors[m], label=f"{m} (argmax{', λ sweep' if len(a) > 1 else ''})")
        for m in rule_methods:
            fam = f"{m} + blend"
            row = sel[sel["family"] == fam]
            if row.empty:
                continue
            mp = row["point"].iloc[0].split("|")[0]
            b = pts[(pts["family"] == fam) & (pts["method_point"] == mp)]
            c = _mean_sd(b, ["w"], cols).sort_values("w")
            ax.errorbar(100 * c[f"{split}_accuracy_mean"], 100 * c[f"{split}_cer_mean"],
                        yerr=100 * c[f"{split}_cer_sd"], fmt="--", lw=1.2, capsize=1.5, alpha=0.85,
                        color=colors.get(m, "k"), label=f"{m} @ {mp} + blend rule (w = 0 → 1)")
        stars: Dict[Tuple[float, float], List[str]] = {}  # one label per position: coinciding points share it
        for _, s in summ.iterrows():
            if s["family"] not in _highlight_families(summ, verdict, post_hoc):
                continue
            p = pts[(pts["family"] == s["family"]) & (pts["point"] == s["point"])]
            xy = (100 * p[f"{split}_accuracy"].mean(), 100 * p[f"{split}_cer"].mean())
            ax.plot(*xy, marker="*", ms=15, mec="k", mfc=colors.get(s["method"], "k"), ls="none")
            stars.setdefault((round(xy[0], 3), round(xy[1], 3)), []).append(s["family"])
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        placed: List[Tuple[float, float]] = []
        for xy in sorted(stars):
            fx, fy = (xy[0] - x0) / ((x1 - x0) or 1), (xy[1] - y0) / ((y1 - y0) or 1)
            near = sum(abs(fx - px) < 0.12 and abs(fy - py) < 0.06 for px, py in placed)  # labels that would overlap
            placed.append((fx, fy))
            ax.annotate(" = ".join(stars[xy]), xy, textcoords="offset points", xytext=(6, 6 - 13 * near), fontsize=8)
        if split == "val":
            ax.axvspan(100 * (ref_acc - 0.01), ax.get_xlim()[1], color="green", alpha=0.07,
                       label="matched: ≥ CE val. accuracy − 1 pt")
            ax.axvline(100 * ref_acc, color="green", lw=0.8, ls=":")
        ax.set_xlabel("accuracy (%)  → better")
        ax.set_ylabel("critical error rate (%)  ↓ safer")
        ax.set_title(f"{'validation (selection)' if split == 'val' else 'test (chosen points evaluated once)'}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{ds} / {bb}: CER–accuracy fronts (mean of {n_seeds} seeds, bars ±1 SD over seeds; ★ chosen on validation)",
                 fontsize=11)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    """Lay out, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _parse_point(point: str) -> Dict[str, float]:
    out = {}
    for part in point.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def plot_lambda_sweep(comparison, ds: str, bb: str, path: str) -> Optional[str]:
    """Test and validation CER and accuracy against each swept parameter (argmax decision); CE and focal as lines.
    Bands: ±1 SD over seeds."""
    plt = _plt()
    pts = _group_points(comparison.points, ds, bb)
    arg = pts[pts["rule"] == "argmax"]
    series = []
    for m, g in arg.groupby("method", sort=False):
        pps = list(dict.fromkeys(g["point"]))
        if len(pps) < 2:
            continue
        parsed = [_parse_point(p) for p in pps]
        keys = [k for k in parsed[0] if len({d.get(k) for d in parsed}) > 1]
        if len(keys) != 1:
            continue
        series.append((m, keys[0], g.assign(x=g["point"].map(lambda p: _parse_point(p)[keys[0]]))))
    if not series:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex="col")
    params = list(dict.fromkeys(s[1] for s in series))
    for col, split in enumerate(("val", "test")):
        for row, metric in enumerate(("cer", "accuracy")):
            ax = axes[row, col]
            for m, key, g in series:
                c = _mean_sd(g, ["x"], [f"{split}_{metric}"]).sort_values("x")
                mean, sd = 100 * c[f"{split}_{metric}_mean"], 100 * c[f"{split}_{metric}_sd"]
                ax.plot(c["x"], mean, "o-", label=f"{m} (vs {key})")
                ax.fill_between(c["x"], mean - sd, mean + sd, alpha=0.15)
            for ref, ls in (("ce", ":"), ("focal", "--")):
                r = arg[arg["method"] == ref]
                if not r.empty:
                    ax.axhline(100 * r[f"{split}_{metric}"].mean(), color="k", ls=ls, lw=1, label=f"{ref} (argmax)")
            if all((g["x"] > 0).all() for _, _, g in series):
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                xs = sorted({float(v) for _, _, g in series for v in g["x"]})
                ax.set_xticks(xs, [f"{v:g}" for v in xs])
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel(("critical error rate" if metric == "cer" else "accuracy") + " (%)")
            ax.set_title(f"{'validation' if split == 'val' else 'test'}: {metric.upper() if metric == 'cer' else metric}")
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel(" / ".join(params) + " (swept parameter)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{ds} / {bb}: operating-point sweep of the risk-calibrated losses (argmax decision; bands ±1 SD over seeds)",
                 fontsize=11)
    return _save(fig, path)


def plot_confusions(comparison, ds: str, bb: str, out_dir: str, post_hoc: str = "ce + blend") -> Dict[str, str]:
    """Test confusion matrices summed over seeds for CE, focal, the post-hoc rule and the best RCL pipeline."""
    summ = comparison.summary[(comparison.summary["dataset"] == ds) & (comparison.summary["backbone"] == bb)]
    verdict = comparison.verdicts.get((ds, bb), {})
    sev = comparison.severities[(ds, bb)]
    out = {}
    for fam in _highlight_families(summ, verdict, post_hoc):
        sample = comparison.samples[(ds, bb, fam)]
        k = sev.num_labels
        cm = np.zeros((k, k), dtype=np.int64)
        for s in range(sample.num_seeds):
            cm += np.bincount(sample.labels * k + sample.decisions[s], minlength=k * k).reshape(k, k)
        point = summ.loc[summ["family"] == fam, "point"].iloc[0]
        name = f"confusion_{_slug(ds)}_{_slug(bb)}_{_slug(fam)}.png"
        plot_confusion_matrix(cm, sev, os.path.join(out_dir, name),
                              title=f"{ds} / {bb}\n{fam} @ {point} — test, summed over {sample.num_seeds} seeds")
        out[name] = os.path.join(out_dir, name)
    return out


def plot_reliability(comparison, ds: str, bb: str, path: str, n_bins: int = 10) -> str:
    """Reliability diagrams (test, pooled over seeds) of the argmax models of CE, focal, label smoothing
    and the best RCL method: accuracy per confidence bin against the diagonal; ECE in each title."""
    plt = _plt()
    summ = comparison.summary[(comparison.summary["dataset"] == ds) & (comparison.summary["backbone"] == bb)]
    verdict = comparison.verdicts.get((ds, bb), {})
    fams = [f for f in ("ce", "focal", "label_smoothing", "weighted_ce") if f in set(summ["family"])]
    best = verdict.get("best_rcl_family")
    if best:
        bm = best.split(" + ")[0]
        if bm in set(summ["family"]) and bm not in fams:
            fams.append(bm)
    fig, axes = plt.subplots(1, len(fams), figsize=(3.3 * len(fams), 3.6), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        sample = comparison.samples[(ds, bb, fam)]
        conf, corr, bins = [], [], []
        for s in range(sample.num_seeds):
            c = calibration_bins(sample.probs[s], sample.labels, n_bins)
            conf.append(c["confidence"]), corr.append(c["correct"]), bins.append(c["bin"])
        conf, corr, bins = np.concatenate(conf), np.concatenate(corr), np.concatenate(bins)
        cnt = np.bincount(bins, minlength=n_bins)
        acc = np.divide(np.bincount(bins, corr, n_bins), cnt, out=np.full(n_bins, np.nan), where=cnt > 0)
        mconf = np.divide(np.bincount(bins, conf, n_bins), cnt, out=np.full(n_bins, np.nan), where=cnt > 0)
        centers = (np.arange(n_bins) + 0.5) / n_bins
        ax.bar(centers, np.nan_to_num(acc), width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot(mconf, acc, "r.", label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ece = float(summ.loc[summ["family"] == fam, "ece"].iloc[0])
        point = summ.loc[summ["family"] == fam, "point"].iloc[0]
        ax.set_title(f"{fam} @ {point}\nECE {100 * ece:.1f}%", fontsize=9)
        ax.set_xlabel("confidence (top class)")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("accuracy in bin")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{ds} / {bb}: reliability (test, pooled over seeds)", fontsize=10)
    return _save(fig, path)


def plot_risk_coverage(comparison, ds: str, bb: str, path: str, post_hoc: str = "ce + blend") -> str:
    """Selective CER vs coverage (test; mean over seeds): the riskiest cases by expected cost of the
    decision are referred. Dots mark 90% and 95% coverage."""
    plt = _plt()
    summ = comparison.summary[(comparison.summary["dataset"] == ds) & (comparison.summary["backbone"] == bb)]
    verdict = comparison.verdicts.get((ds, bb), {})
    sev = comparison.severities[(ds, bb)]
    fams = _highlight_families(summ, verdict, post_hoc)
    if "ce + Bayes" in set(summ["family"]) and "ce + Bayes" not in fams:
        fams.append("ce + Bayes")
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    for fam in fams:
        sample = comparison.samples[(ds, bb, fam)]
        curves = [risk_coverage(sample.probs[s], sample.labels, sample.decisions[s], sev) for s in range(sample.num_seeds)]
        cov = curves[0]["coverage"]
        cer = np.mean([c["cer"] for c in curves], axis=0)
        line, = ax.plot(100 * cov, 100 * cer, label=f"{fam} (CER@90% {100 * np.mean([c['cer_at'][0.9] for c in curves]):.2f}%, "
                                                    f"@95% {100 * np.mean([c['cer_at'][0.95] for c in curves]):.2f}%)")
        for c in (0.9, 0.95):
            ax.plot(100 * c, 100 * np.mean([cv["cer_at"][c] for cv in curves]), "o", color=line.get_color())
    ax.set_xlim(50, 100)
    ax.set_xlabel("coverage (%): share of images decided by the model, the rest referred")
    ax.set_ylabel("critical error rate among decided images (%)")
    ax.axvline(90, color="grey", lw=0.6, ls=":"), ax.axvline(95, color="grey", lw=0.6, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"{ds} / {bb}: risk–coverage (test, mean of seeds)\nreferral order: expected clinical cost of the decision",
                 fontsize=10)
    return _save(fig, path)


def plot_all(comparison, out_dir: str, post_hoc: str = "ce + blend") -> Dict[str, str]:
    """Every figure for every dataset × backbone; returns ``{file name: path}``."""
    os.makedirs(out_dir, exist_ok=True)
    out: Dict[str, str] = {}
    for ds, bb in comparison.summary[["dataset", "backbone"]].drop_duplicates().itertuples(index=False):
        tag = f"{_slug(ds)}_{_slug(bb)}"
        name = f"fronts_{tag}.png"
        out[name] = plot_fronts(comparison, ds, bb, os.path.join(out_dir, name), post_hoc)
        name = f"lambda_sweep_{tag}.png"
        p = plot_lambda_sweep(comparison, ds, bb, os.path.join(out_dir, name))
        if p:
            out[name] = p
        out.update(plot_confusions(comparison, ds, bb, out_dir, post_hoc))
        name = f"reliability_{tag}.png"
        out[name] = plot_reliability(comparison, ds, bb, os.path.join(out_dir, name))
        name = f"risk_coverage_{tag}.png"
        out[name] = plot_risk_coverage(comparison, ds, bb, os.path.join(out_dir, name), post_hoc)
    return out
