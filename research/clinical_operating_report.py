"""The clinical operating report of each shipped model, from the predictions saved in its folder.

    python -m research.clinical_operating_report models/brain-tumor-mri-efficientnet-lite0 \\
        models/isic2018-efficientnet-lite0 --out research/results/clinical_operating

For each model folder (``validation_predictions.npz`` and ``test_predictions.npz`` with logits, labels, groups;
``config.json`` with the severity matrix; ``risk_calibration.json``, the decision layer's saved calibration), the
decision layer (:class:`rcl_hf.DecisionLayer`, the folder's own) turns the logits into calibrated probabilities,
decisions and referrals, and :func:`rcl_hf.metrics.operating_point.operating_report` computes on test:

* sensitivity for critical disease at specificity >= 97%, the threshold on the critical score chosen on validation;
* the NPV of the cases the model clears itself (decided non-critical, not referred);
* the share referred to a specialist;
* the expected calibration error, with a reliability diagram.

Intervals: 95% percentile bootstrap over the test split's groups (lesions / patients / near-copy clusters, the
unit of independence) and exact Clopper–Pearson intervals (images taken as independent). No image embeddings are
saved with the predictions, so the out-of-distribution guard cannot run here: referrals are those of the risk rule
only (the acceptance check, ``check.json``, runs the guard on the images and is quoted beside them). Writes
``report.md``, ``results.json`` and ``reliability_<model>.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from rcl_hf.decision_layer import DecisionLayer
from rcl_hf.metrics.operating_point import DEFAULT_MIN_SPECIFICITY, operating_report
from rcl_hf.plots import plot_reliability_diagram

PROGRAM = "python -m research.clinical_operating_report"


def model_report(folder: str, out: Path, min_specificity: float = DEFAULT_MIN_SPECIFICITY, n_bins: int = 15,
                 n_boot: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """The operating figures of one model folder (and its reliability diagram, written to ``out``)."""
    path = Path(folder)
    saved = DecisionLayer.from_pretrained(str(path))
    layer = DecisionLayer(saved.severity, saved.calibration)  # no embeddings saved: the OOD guard cannot run
    val, test = (np.load(path / f"{s}_predictions.npz", allow_pickle=False) for s in ("validation", "test"))
    pred = layer.apply(test["logits"], drift=False)
    rep = operating_report(layer.probabilities(val["logits"]), val["labels"], pred.probabilities, test["labels"],
                           pred.decision, pred.refer, layer.severity, test_groups=test["groups"],
                           min_specificity=min_specificity, n_bins=n_bins, n_boot=n_boot, seed=seed)
    cal = layer.calibration
    name = path.name
    png = out / f"reliability_{name}.png"
    t = rep["test"]
    plot_reliability_diagram(pred.probabilities, test["labels"], str(png), n_bins,
                             title=f"{name}: test, calibrated (T = {cal.temperature:.3f})\n"
                                   f"ECE {100 * t['ece']:.2f}% [{100 * t['ece_ci'][0]:.2f}, {100 * t['ece_ci'][1]:.2f}]")
    check_path = path / "check.json"
    check = json.loads(check_path.read_text(encoding="utf-8")) if check_path.is_file() else {}
    rep.update(model=name, folder=str(folder), dataset=cal.dataset, rule=cal.rule, temperature=cal.temperature,
               referral_threshold=cal.threshold, certificate=cal.certificate(), reliability_diagram=png.name,
               check_coverage_with_ood_guard=(check.get("decision_layer") or {}).get("coverage"),
               check_ood_flagged_on_test=(check.get("ood") or {}).get("test_false_alarms"))
    return rep


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ci(pair: Optional[Sequence[float]]) -> str:
    return "-" if pair is None else f"[{100 * pair[0]:.2f}, {100 * pair[1]:.2f}]"


def markdown(results: List[Dict[str, Any]], command: str) -> str:
    """The report page: command, one table per model, the notes that say what each figure is."""
    lines = ["# Clinical operating report of the shipped models", "", f"- command: `{command}`",
             "- data: the predictions saved in each model folder (no image, no training); "
             "figures on the test split, thresholds chosen on validation", ""]
    for r in results:
        t, v = r["test"], r["validation"]
        lines += [f"## {r['model']} ({r['dataset']})", "",
                  f"Critical disease: {', '.join(r['critical_classes'])} (classes whose row of the critical mask "
                  f"holds a critical cell). Test: {r['n_test']} images in {r['n_test_groups']} groups, "
                  f"{t['n_positive']} with critical disease. Decision layer: rule {r['rule']}, temperature "
                  f"{r['temperature']:.4f}, referral threshold {r['referral_threshold']:.4g}.", "",
                  f"| figure (test) | value | 95% CI, group bootstrap ({r['n_boot']}) | 95% CI, exact (Clopper–Pearson) |",
                  "|---|---:|---:|---:|",
                  f"| sensitivity for critical disease at specificity ≥ {100 * r['min_specificity']:g}% | "
                  f"{_pct(t['sensitivity'])} ({t['tp']}/{t['tp'] + t['fn']}) | {_ci(t['sensitivity_ci'])} | "
                  f"{_ci(t['sensitivity_exact_ci'])} |",
                  f"| specificity achieved at that threshold | {_pct(t['specificity'])} ({t['tn']}/{t['tn'] + t['fp']}) | "
                  f"{_ci(t['specificity_ci'])} | {_ci(t['specificity_exact_ci'])} |",
                  f"| NPV of the cases the model clears itself | {_pct(t['npv'])} "
                  f"({t['n_cleared_non_critical']}/{t['n_cleared']}) | {_ci(t['npv_ci'])} | {_ci(t['npv_exact_ci'])} |",
                  f"| share referred to a specialist | {_pct(t['referral_share'])} ({t['n_referred']}/{r['n_test']}) | "
                  f"{_ci(t['referral_share_ci'])} | {_ci(t['referral_share_exact_ci'])} |",
                  f"| expected calibration error ({r['n_bins']} bins) | {_pct(t['ece'])} | {_ci(t['ece_ci'])} | - |",
                  "",
                  f"Threshold on the critical score (the calibrated probability of critical disease): "
                  f"{v['threshold']:.6g}, chosen on validation ({v['n']} images, {v['n_positive']} with critical "
                  f"disease) as the largest-sensitivity threshold with specificity ≥ {100 * r['min_specificity']:g}%: "
                  f"validation sensitivity {_pct(v['sensitivity'])}, specificity {_pct(v['specificity'])}.", "",
                  f"Referrals here are the risk rule's only (no embeddings are saved, so the OOD guard cannot run); "
                  f"the acceptance check (`check.md`), through `rcl_hf.predict` on the images with the guard, decides "
                  f"{_pct(r['check_coverage_with_ood_guard'])} of test images itself and flags "
                  f"{_pct(r['check_ood_flagged_on_test'])} as outside.", "",
                  f"What the decision layer certifies: {r['certificate']}", "",
                  f"![reliability diagram]({r['reliability_diagram']})", ""]
        undefined = {k: n for k, n in r["bootstrap_undefined"].items() if n}
        if undefined:
            lines += [f"Bootstrap replicates where a figure is undefined (left out of its interval): {undefined}.", ""]
    lines += ["## How to read it", "",
              "- Sensitivity / specificity: a case is flagged as critical disease when its calibrated probability of "
              "a critical class is at least the threshold; the threshold is fixed on validation and applied "
              "unchanged to test, so the test specificity may fall below the target.",
              "- NPV: among the cases the decision layer neither refers nor diagnoses as a critical disease, the "
              "share that truly has no critical disease.",
              "- Group-bootstrap intervals resample the test split's groups (a lesion, a patient, near-copies of one "
              "image) with the validation threshold held fixed: they cover test sampling, not the choice of the "
              "threshold. Exact intervals take images as independent (they ignore that a group's images are "
              "correlated) and keep a width where the bootstrap collapses to a point, as at 0% or 100%.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="model folders with saved validation and test predictions")
    parser.add_argument("--out", default="research/results/clinical_operating")
    parser.add_argument("--min_specificity", type=float, default=DEFAULT_MIN_SPECIFICITY)
    parser.add_argument("--n_bins", type=int, default=15)
    parser.add_argument("--n_boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [model_report(f, out, args.min_specificity, args.n_bins, args.n_boot, args.seed) for f in args.folders]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(results, " ".join([PROGRAM, *argv])), encoding="utf-8")
    print(f"wrote {out / 'report.md'}")
    return results


if __name__ == "__main__":
    main()
