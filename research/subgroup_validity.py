"""Subgroup validity: is the shipped decision layer's certificate met inside each patient subgroup?

    python -m research.subgroup_validity models/isic2018-efficientnet-lite0 \\
        --metadata ../shared/data/isic2018_task3/HAM10000_metadata.csv --out research/results/subgroup_validity

The decision layer certifies ``critical_miss`` <= alpha (the share of critical-capable cases given a critical
decision and not referred) on its validation split, pooled over patients. A certificate met on average can fail
inside a subgroup (a body site, an age band, a sex, a way the diagnosis was confirmed). This report applies the
model's saved decision layer (:meth:`rcl_hf.calibration.RiskCalibration.decide`, the one rule every answer uses)
to the model's saved test logits (``test_predictions.npz``: the original test images through the user's path),
joins each image's lesion to the HAM10000 metadata (``lesion_id``: ``dx_type``, ``age``, ``sex``,
``localization``), and gives, for every subgroup, the realised ``critical_miss`` with a 95% interval from a
bootstrap over lesions (``scipy.stats.bootstrap`` on per-lesion counts: the lesion, not the image, is the unit) and
a one-sided 95% Clopper-Pearson upper bound counting lesions with a miss among critical lesions (exact, lesion
level, conservative when a lesion has several images).

Verdict per subgroup: **not shown** when it has fewer than ``--min_lesions`` critical lesions (too few to say);
**exceeded** when the bootstrap interval lies wholly above alpha; **held** when the realised risk is <= alpha;
else **above alpha, not significant**. The OOD guard is not applied (its logits-only view is not saved): it only
adds referrals, so these realised misses are upper bounds of what the deployed model does.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats

from rcl_hf.atomic_io import atomic_write_json, atomic_write_text
from rcl_hf.calibration import RiskCalibration
from rcl_hf.metrics.operating_point import clopper_pearson

FIELDS = ("dx_type", "sex", "age_band", "localization")
AGE_BANDS = ((0, 45, "< 45"), (45, 65, "45-64"), (65, 200, ">= 65"))


def age_band(value: str) -> str:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return "unknown"
    return next((name for lo, hi, name in AGE_BANDS if lo <= age < hi), "unknown")


def read_lesion_metadata(path: Path) -> Dict[str, Dict[str, str]]:
    """``lesion_id -> {dx_type, sex, age_band, localization}`` from HAM10000_metadata.csv (first row of a lesion)."""
    out: Dict[str, Dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"lesion_id", "dx_type", "age", "sex", "localization"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the metadata lacks the columns {sorted(missing)}")
        for row in reader:
            out.setdefault(row["lesion_id"], {"dx_type": row["dx_type"] or "unknown", "sex": row["sex"] or "unknown",
                                              "age_band": age_band(row["age"]),
                                              "localization": row["localization"] or "unknown"})
    return out


def subgroup_row(miss: np.ndarray, cap: np.ndarray, groups: np.ndarray, alpha: float, min_lesions: int,
                 n_boot: int, seed: int) -> Dict[str, Any]:
    """Realised critical_miss of the critical-capable images ``cap`` of one subgroup, lesion-level intervals."""
    g = groups[cap]
    lesions, inv = np.unique(g, return_inverse=True)
    m = np.bincount(inv, weights=miss[cap].astype(float), minlength=len(lesions))  # misses per lesion
    n = np.bincount(inv, minlength=len(lesions)).astype(float)  # critical images per lesion
    row: Dict[str, Any] = {"critical_images": int(cap.sum()), "critical_lesions": int(len(lesions)),
                           "missed_images": int(m.sum()), "critical_miss": float(m.sum() / n.sum()) if n.sum() else None,
                           "ci": None, "cp_upper": None}
    if len(lesions) == 0:
        row["verdict"] = "not shown"
        return row
    hit = int((m > 0).sum())
    row["cp_upper"] = clopper_pearson(hit, len(lesions), 0.90)[1]  # the upper end of a 90% two-sided: one-sided 95%
    if len(lesions) < min_lesions:
        row["verdict"] = "not shown"
        return row
    if m.sum() == 0:
        row["ci"] = [0.0, 0.0]
    else:
        res = stats.bootstrap((m, n), lambda a, b, axis=-1: a.sum(axis) / b.sum(axis), paired=True, vectorized=True,
                              n_resamples=n_boot, confidence_level=0.95, method="percentile",
                              random_state=np.random.default_rng(seed))
        row["ci"] = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    if row["critical_miss"] <= alpha:
        row["verdict"] = "held"
    elif row["ci"][0] > alpha:
        row["verdict"] = "exceeded"
    else:
        row["verdict"] = "above alpha, not significant"
    return row


def subgroup_report(model_dir: Path, metadata: Path, min_lesions: int = 10, n_boot: int = 2000,
                    seed: int = 0) -> Dict[str, Any]:
    from rcl_hf.models import severity_from_config
    from transformers import AutoConfig

    cal = RiskCalibration.load(model_dir)
    severity = severity_from_config(AutoConfig.from_pretrained(model_dir))
    with np.load(model_dir / "test_predictions.npz") as z:
        logits, labels, groups = z["logits"], z["labels"], z["groups"].astype(str)
    _, decisions, _, refer = cal.decide(logits, severity)
    cap = severity.positive_rows[labels]
    miss = severity.critical[labels, decisions] & cap & ~refer
    meta = read_lesion_metadata(metadata)
    unknown = sorted(set(groups) - set(meta))
    if unknown:
        raise ValueError(f"{len(unknown)} test lesions are not in {metadata} (e.g. {unknown[:3]}): "
                         "is this the metadata of the model's dataset?")
    alpha = float(cal.alpha)
    tables: Dict[str, Dict[str, Dict[str, Any]]] = {}
    tables["all"] = {"all test images": subgroup_row(miss, cap, groups, alpha, min_lesions, n_boot, seed)}
    for field in FIELDS:
        values = np.array([meta[g][field] for g in groups])
        tables[field] = {v: subgroup_row(miss, cap & (values == v), groups, alpha, min_lesions, n_boot, seed)
                         for v in sorted(set(values))}
    counts: Dict[str, int] = defaultdict(int)
    for field in FIELDS:
        for row in tables[field].values():
            counts[row["verdict"]] += 1
    return {"model": model_dir.name, "risk_kind": cal.risk_kind, "alpha": alpha, "delta": float(cal.delta),
            "certificate": cal.certificate(), "min_lesions": min_lesions, "n_boot": n_boot, "seed": seed,
            "test_images": int(len(labels)), "tables": tables, "verdicts": dict(counts)}


def verdict_sentence(result: Dict[str, Any]) -> str:
    c, a = result["verdicts"], result["alpha"]
    shown = sum(v for k, v in c.items() if k != "not shown")
    return (f"of {shown + c.get('not shown', 0)} subgroups, {shown} have at least {result['min_lesions']} critical "
            f"lesions on test: the certified critical_miss <= {a:.0%} held in {c.get('held', 0)}, was exceeded "
            f"beyond noise in {c.get('exceeded', 0)} and was above {a:.0%} without significance in "
            f"{c.get('above alpha, not significant', 0)}; {c.get('not shown', 0)} are too small to say")


def markdown(result: Dict[str, Any], command: str) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [f"# Subgroup validity: {result['model']}", "", f"- command: `{command}`",
             f"- the certificate: {result['certificate']}",
             f"- test split: {result['test_images']} images; realised `{result['risk_kind']}` per subgroup with a 95% "
             f"bootstrap interval over lesions ({result['n_boot']} resamples) and a one-sided 95% Clopper-Pearson upper "
             "bound on the share of critical lesions with a miss; the OOD guard's referrals are not counted (upper bounds).",
             "", f"**Verdict:** {verdict_sentence(result)}.", "",
             "*held* says the realised risk on this subgroup's test cases is within alpha, not that the subgroup is "
             "certified: the Clopper-Pearson column says how high its risk could still be with 95% confidence.", ""]
    for field, rows in result["tables"].items():
        lines += [f"## {field}", "", "| subgroup | critical images | critical lesions | missed | critical_miss | 95% CI "
                  "(lesion bootstrap) | CP upper (lesions) | verdict |", "|---|---:|---:|---:|---:|---|---:|---|"]
        for name, r in rows.items():
            ci = "-" if r["ci"] is None else f"[{pct(r['ci'][0])}, {pct(r['ci'][1])}]"
            lines.append(f"| {name} | {r['critical_images']} | {r['critical_lesions']} | {r['missed_images']} | "
                         f"{pct(r['critical_miss'])} | {ci} | {pct(r['cp_upper'])} | {r['verdict']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a shipped model folder with test_predictions.npz (e.g. models/isic2018-efficientnet-lite0)")
    p.add_argument("--metadata", required=True, help="HAM10000_metadata.csv")
    p.add_argument("--out", default="research/results/subgroup_validity")
    p.add_argument("--min_lesions", type=int, default=10)
    p.add_argument("--n_boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = subgroup_report(Path(args.model), Path(args.metadata), args.min_lesions, args.n_boot, args.seed)
    command = "python -m research.subgroup_validity " + " ".join(sys.argv[1:] if argv is None else argv)
    result["command"] = command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", result)
    md = markdown(result, command)
    atomic_write_text(out / "README.md", md)
    print(md)
    return result


if __name__ == "__main__":
    main()
