"""Image-level vs lesion-level (group-level) certificate on the saved runs of a study, without retraining.

The runs' ``validation_predictions.npz`` / ``test_predictions.npz`` were written before group ids were saved
beside the logits. Each run's ``cell.json`` holds its data spec (dataset, data_dir, split_seed, ...): the split
is rebuilt with the loader the training used (:func:`rcl_hf.train_data.load_data`, deterministic; nothing is
trained), and its ``group_id`` column is taken as the rows' lesion ids only when the rebuilt split's labels equal
the saved labels row for row (a run whose labels differ is refused, not guessed;
:func:`research.risk_control_runs.recover_group_ids`, which the risk-control report uses too). Then, for every run
and α:

* ``image (study)``: ``calibrate`` as the study's report calls it (no groups: image-level binomial LTT, tuning
  part not grouped apart from the certification part);
* ``image, grouped split``: the same image-level binomial certificate on a grouped tune / certify split;
* ``image HB, grouped split``: image-level Hoeffding–Bentkus (to separate HB's own conservatism from grouping);
* ``lesion``: the group-level certificate (``unit="group"``, Hoeffding–Bentkus on per-lesion losses).

``held``: the test split's image-level critical_miss ≤ α (the study's measure); ``held (lesion risk)``: the
test split's lesion-averaged critical_miss ≤ α (the quantity the lesion-level certificate targets).

    RCL_HF_CACHE=/tmp/rcl_cache_copy python -m research.group_certificate_check \\
        --study_dir /work/main/runs/experiments/risk_control_finetune_isic

(``RCL_HF_CACHE``: where the loader's image-check cache is read and written; a copy keeps the shared one
untouched.) Writes nothing unless ``--out`` names a CSV file.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd

from .risk_control_runs import recover_group_ids, test_risks

VARIANTS = {
    "image (study)": dict(groups=False),
    "image, grouped split": dict(groups=True, unit="image", p_value="binomial"),
    "image HB, grouped split": dict(groups=True, unit="image", p_value="hoeffding_bentkus"),
    "lesion": dict(groups=True, unit="group"),
}


def _load_run(folder: str, cache: Dict[str, Any]) -> Dict[str, Any]:
    from rcl_hf.severity import SeverityMatrix

    cell = json.load(open(os.path.join(folder, "cell.json"), encoding="utf-8"))
    recipe = json.load(open(os.path.join(folder, "rcl_run.json"), encoding="utf-8"))
    run = {"folder": folder, "split_seed": cell["spec"]["data"]["split_seed"], "seed": cell["spec"]["seed"],
           "method": cell["spec"]["risk"]["loss"], "severity": SeverityMatrix.from_dict(recipe["severity"])}
    saved = {}
    for split, short in (("validation", "val"), ("test", "test")):
        with np.load(os.path.join(folder, f"{split}_predictions.npz")) as z:
            saved[short] = (np.asarray(z["logits"], dtype=np.float64), np.asarray(z["labels"]).astype(np.int64))
    groups = recover_group_ids(folder, {short: labels for short, (_, labels) in saved.items()}, cache)
    for short, (logits, labels) in saved.items():
        run[short] = (logits, labels, groups[short])
    return run


def _test_risks(cal: Any, z: np.ndarray, y: np.ndarray, groups: np.ndarray, severity: Any) -> Tuple[float, float, float]:
    """``(coverage, image-level critical_miss, lesion-averaged critical_miss)`` on the test split."""
    r = test_risks(cal, z, y, severity, groups)
    return r["coverage"], r["critical_miss"], r["group_critical_miss"]


def evaluate(runs: List[Dict[str, Any]], alphas: List[float], delta: float) -> pd.DataFrame:
    from rcl_hf.calibration import calibrate

    rows = []
    for run in runs:
        zv, yv, gv = run["val"]
        zt, yt, gt = run["test"]
        for alpha in alphas:
            for name, v in VARIANTS.items():
                kw = {k: x for k, x in v.items() if k != "groups"}
                base = {"variant": name, "alpha": alpha, "split_seed": run["split_seed"], "seed": run["seed"],
                        "method": run["method"]}
                try:
                    cal = calibrate(zv, yv, run["severity"], risk_kind="critical_miss", alpha=alpha, delta=delta,
                                    seed=run["seed"], groups=gv if v["groups"] else None, **kw)
                except ValueError as err:
                    rows.append({**base, "error": str(err)})
                    continue
                cov, risk, lesion_risk = _test_risks(cal, zt, yt, gt, run["severity"])
                rows.append({**base, "error": "", "n_risk": cal.n_risk, "threshold": cal.threshold,
                             "test_coverage": cov, "test_risk": risk, "test_lesion_risk": lesion_risk,
                             "held": risk <= alpha, "held_lesion": lesion_risk <= alpha})
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame) -> str:
    ok = frame[frame["error"] == ""]
    agg = ok.groupby(["alpha", "variant"], sort=False).agg(
        runs=("held", "size"), held=("held", "sum"), held_lesion=("held_lesion", "sum"),
        coverage=("test_coverage", "mean"), test_risk=("test_risk", "mean"), n_units=("n_risk", "median"))
    errors = frame[frame["error"] != ""].groupby(["alpha", "variant"], sort=False).size()
    lines = ["| α | certificate | runs | held (test risk ≤ α) | held (lesion risk) | mean test coverage | "
             "mean test risk | units (median) |", "|---|---|---|---|---|---|---|---|"]
    for (alpha, variant), r in agg.iterrows():
        err = int(errors.get((alpha, variant), 0))
        n = int(r.runs)
        lines.append(f"| {alpha:.2f} | {variant} | {n}{f' (+{err} refused)' if err else ''} | "
                     f"{int(r.held)}/{n} ({r.held / n:.1%}) | {int(r.held_lesion)}/{n} ({r.held_lesion / n:.1%}) | "
                     f"{r.coverage:.1%} | {r.test_risk:.2%} | {r.n_units:.0f} |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study_dir", default="/work/main/runs/experiments/risk_control_finetune_isic")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.10, 0.20])
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--out", default=None, help="CSV file for the per-run rows (optional)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    folders = sorted(os.path.dirname(c) for c in glob.glob(os.path.join(args.study_dir, "**", "cell.json"), recursive=True))
    folders = [f for f in folders if os.path.isfile(os.path.join(f, "validation_predictions.npz"))]
    if not folders:
        print(f"no runs with cell.json and validation_predictions.npz under {args.study_dir}", file=sys.stderr)
        return 1
    cache: Dict[str, Any] = {}
    runs = [_load_run(f, cache) for f in folders]
    frame = evaluate(runs, args.alphas, args.delta)
    print(f"$ python -m research.group_certificate_check {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{len(runs)} runs under {args.study_dir} ({len(cache)} data splits rebuilt, labels matched row for row); "
          f"risk critical_miss, δ = {args.delta:g}\n")
    print(table(frame))
    print("\nunits: critical-capable images (image) or lesions with a critical-capable image (lesion) in the "
          "certification part. Runs of one split seed share their validation and test images, so the runs are "
          f"{frame['split_seed'].nunique()} independent data draws, not {len(runs)}; a held share moves by "
          f"{1 / len(runs):.1%} per run.")
    if args.out:
        frame.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
