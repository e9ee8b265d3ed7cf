"""CER metric speed: the ``evaluate`` module vs the functional core on 1M predictions.

Both compute the same figures (``accuracy``, ``balanced_accuracy``, ``cer``,
``critical_miss_rate``, ``expected_cost``, ...) for ISIC 2018's 7-class severity
preset on 1,000,000 random (prediction, reference) pairs:

* ``core``: :func:`rcl_hf.metrics.critical_error_rate` on int64 numpy arrays (one
  ``np.bincount`` into the 7 x 7 confusion matrix); target < 1 s;
* ``evaluate module``: ``evaluate.load(rcl_hf.metrics.METRIC_PATH).compute(...)``
  with the severity matrix and critical mask (the module writes the predictions
  to an Arrow cache and reads them back before calling the same core);
* ``core + 1000 bootstrap``: the core with ``n_bootstrap=1000`` confidence intervals.

Every call's results are checked equal between the module and the core.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

TARGET_CORE_S = 1.0


def run(quick: bool = False, real: bool = False, repeats: Optional[int] = None, **_: Any) -> Dict[str, Any]:
    import evaluate
    import numpy as np

    from benchmarks import interleave, make_ratio, stats
    from rcl_hf.metrics import METRIC_PATH, critical_error_rate
    from rcl_hf.severity import SeverityMatrix

    n = 10_000 if quick else 1_000_000
    repeats = repeats or (2 if quick else 5)
    severity = SeverityMatrix.preset("isic2018")
    rng = np.random.default_rng(0)
    refs = rng.integers(0, severity.num_labels, size=n)
    # A plausible classifier: 70% correct, the rest uniform.
    preds = np.where(rng.random(n) < 0.7, refs, rng.integers(0, severity.num_labels, size=n))
    metric = evaluate.load(METRIC_PATH)
    matrix, critical = severity.matrix.tolist(), severity.critical.tolist()
    out: Dict[str, Any] = {}

    def core() -> None:
        out["core"] = critical_error_rate(preds, refs, severity)

    def module() -> None:
        out["module"] = metric.compute(predictions=preds, references=refs, severity_matrix=matrix, critical_mask=critical)

    def core_bootstrap() -> None:
        out["boot"] = critical_error_rate(preds, refs, severity, n_bootstrap=1000, seed=0)

    times = interleave({"core": core, "evaluate module": module, "core + 1000 bootstrap": core_bootstrap},
                       repeats=repeats, warmup=1)
    keys = ("accuracy", "balanced_accuracy", "cer", "critical_miss_rate", "expected_cost", "n_critical")
    mismatch = [k for k in keys if not np.isclose(out["core"][k], out["module"][k], rtol=0, atol=1e-12)]
    if mismatch:
        raise AssertionError(f"evaluate module and core disagree on {mismatch}")
    s = {k: stats(v) for k, v in times.items()}
    ratios = [
        make_ratio(f"core time on {n:,} predictions vs the 1 s budget", "core s", "1 s", s["core"]["median"],
                   TARGET_CORE_S, 1.0, "<=", "s"),
        make_ratio("evaluate module vs functional core", "module s", "core s", s["evaluate module"]["median"],
                   s["core"]["median"], None, "<=", "s"),
    ]
    rows = [[name, v["median"] * 1e3, v["p10"] * 1e3, v["p90"] * 1e3, v["n"], n / v["median"] / 1e6]
            for name, v in s.items()]
    findings = [
        f"core: {s['core']['median'] * 1e3:.1f} ms for {n:,} predictions; the evaluate module takes "
        f"{s['evaluate module']['median'] / s['core']['median']:.0f}x longer (Arrow writing and reading of the inputs), "
        "with identical results (checked).",
        f"CER {out['core']['cer']:.4f}, accuracy {out['core']['accuracy']:.4f}; bootstrap CI of CER "
        f"{tuple(round(v, 4) for v in out['boot']['cer_ci'])}.",
    ]
    return {
        "benchmark": "metric_speed",
        "title": f"CER metric: evaluate module vs functional core, {n:,} predictions, 7 classes (ISIC 2018 preset)",
        "config": {"predictions": n, "classes": severity.num_labels, "repeats": repeats, "quick": quick},
        "ratios": ratios,
        "table": {"columns": ["implementation", "median ms", "p10 ms", "p90 ms", "n", "M predictions/s"], "rows": rows},
        "findings": findings,
        "raw": {"seconds": times, "core_result": out["core"]},
    }
