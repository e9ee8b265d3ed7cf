"""Statistics of the comparison: point estimates over seeds, confidence intervals that combine
seeds with a bootstrap over test images, a paired test for CER, and exact binomial intervals.

Conventions (every run of a comparison is scored on the same test images, since
the grouped splits depend on ``split_seed`` only, not on the training seed):

* **Point estimate** of a metric for a pipeline: the mean over its S seeds of the
  metric on the full test set.
* **95% CI** (two-level percentile bootstrap; Davison & Hinkley 1997, section 3.8):
  each replicate draws S seeds with replacement *and* N test images with
  replacement (one image draw shared by all seeds, and by all pipelines that use
  the same ``bootstrap_seed``, so differences between pipelines are paired) and
  averages the metric over the drawn seeds. The interval therefore carries both
  the training-seed and the test-sampling variability. Image resampling is done
  through multinomial weights, so confusion matrices of all replicates come from
  one matrix product.
* **Paired test for CER**: exact McNemar test on the per-image critical-error
  indicators of two pipelines on the same seed (``b`` = images only A errs
  critically on, ``c`` = only B; two-sided binomial test of ``b`` in ``b + c``
  trials at 1/2). Seeds are combined as strata of a stratified McNemar test:
  under the null each discordant image is a fair coin whatever its stratum, so
  the summed ``b`` is tested in the summed ``b + c`` trials. Seeds share their
  test images, so the combined p-value treats (seed, image) pairs as the units and
  overstates: quote the paired bootstrap CI of the CER difference instead (the
  report does; the study's clustered bootstrap adds split seeds as a level).
* **Counts**: exact Clopper–Pearson intervals for a binomial proportion
  (Clopper & Pearson, Biometrika 1934): ``[B(α/2; k, n-k+1), B(1-α/2; k+1, n-k)]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from rcl_hf.metrics import metrics_from_confusion
from rcl_hf.severity import SeverityMatrix
from rcl_hf.metrics.operating_point import clopper_pearson  # noqa: F401 - one definition, re-exported for the study
from rcl_hf.metrics.reliability import calibration_bins

__all__ = [
    "METRICS",
    "clopper_pearson",
    "exact_mcnemar",
    "combined_mcnemar",
    "McNemarResult",
    "PipelineSample",
    "point_metrics",
    "bootstrap_replicates",
    "summarize",
]

#: Metrics summarised for every pipeline (fractions; ``ece`` from the model's probabilities).
METRICS: Tuple[str, ...] = (
    "accuracy", "balanced_accuracy", "macro_f1", "cer", "critical_miss_rate", "expected_cost", "ece",
)


@dataclass
class McNemarResult:
    """``b``: cases only A errs on; ``c``: only B; ``p_value``: exact two-sided."""

    b: int
    c: int
    p_value: float


def _binom_two_sided(b: int, n: int) -> float:
    from scipy.stats import binomtest

    return 1.0 if n == 0 else float(binomtest(b, n, 0.5, alternative="two-sided").pvalue)


def exact_mcnemar(errors_a: Sequence[bool], errors_b: Sequence[bool]) -> McNemarResult:
    """Exact McNemar test of two paired 0/1 error indicators over the same cases."""
    a = np.asarray(errors_a).astype(bool)
    b_ = np.asarray(errors_b).astype(bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise ValueError(f"paired indicators must be 1-D of equal length, got {a.shape} and {b_.shape}")
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    return McNemarResult(b, c, _binom_two_sided(b, b + c))


def combined_mcnemar(results: Sequence[McNemarResult]) -> McNemarResult:
    """Stratified exact McNemar over seeds: the summed ``b`` in the summed ``b + c`` trials."""
    if not results:
        raise ValueError("combined_mcnemar needs at least one per-seed result")
    b = sum(r.b for r in results)
    c = sum(r.c for r in results)
    return McNemarResult(b, c, _binom_two_sided(b, b + c))


@dataclass
class PipelineSample:
    """One pipeline's test decisions over seeds: ``decisions`` (S, N), ``probs`` (S, N, K), ``labels`` (N,)."""

    decisions: np.ndarray
    probs: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.decisions = np.asarray(self.decisions).astype(np.int64)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        self.labels = np.asarray(self.labels).astype(np.int64)
        if self.decisions.ndim != 2:
            raise ValueError(f"decisions must be (seeds, N), got shape {self.decisions.shape}")
        s, n = self.decisions.shape
        if self.probs.shape[:2] != (s, n) or self.probs.ndim != 3:
            raise ValueError(f"probs must be (seeds, N, K) = ({s}, {n}, K), got shape {self.probs.shape}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be (N,) = ({n},), got shape {self.labels.shape}")
        if s == 0 or n == 0:
            raise ValueError("a pipeline sample needs at least one seed and one case")

    @property
    def num_seeds(self) -> int:
        return self.decisions.shape[0]

    def critical_errors(self, severity: SeverityMatrix) -> np.ndarray:
        """(S, N) booleans: ``C[y_n, ŷ_n]`` per seed."""
        return severity.critical[self.labels[None, :], self.decisions]


def _per_seed_from_weights(sample: PipelineSample, severity: SeverityMatrix, weights: np.ndarray,
                           n_bins: int) -> Dict[str, np.ndarray]:
    """Metrics (S, B) of each seed under case weights ``weights`` (B, N)."""
    k = severity.num_labels
    w = weights.astype(np.float64)
    out: Dict[str, List[np.ndarray]] = {m: [] for m in METRICS}
    for s in range(sample.num_seeds):
        cell = sample.labels * k + sample.decisions[s]
        onehot = np.zeros((len(cell), k * k))
        onehot[np.arange(len(cell)), cell] = 1.0
        cms = (w @ onehot).reshape(-1, k, k)
        m = metrics_from_confusion(cms, severity.matrix, severity.critical)
        for key in METRICS:
            if key != "ece":
                out[key].append(np.asarray(m[key], dtype=np.float64))
        cal = calibration_bins(sample.probs[s], sample.labels, n_bins)
        gaps = np.zeros((len(cell), n_bins))
        gaps[np.arange(len(cell)), cal["bin"]] = cal["confidence"] - cal["correct"]
        out["ece"].append(np.abs(w @ gaps).sum(1) / w.sum(1))
    return {key: np.stack(v) for key, v in out.items()}


def point_metrics(sample: PipelineSample, severity: SeverityMatrix, n_bins: int = 15) -> Dict[str, np.ndarray]:
    """Per-seed metrics (arrays of length S) on the full test set, plus ``n_critical`` counts."""
    ones = np.ones((1, sample.labels.shape[0]))
    per = {k: v[:, 0] for k, v in _per_seed_from_weights(sample, severity, ones, n_bins).items()}
    per["n_critical"] = sample.critical_errors(severity).sum(1).astype(np.int64)
    return per


def bootstrap_replicates(
    sample: PipelineSample,
    severity: SeverityMatrix,
    n_boot: int = 1000,
    bootstrap_seed: int = 0,
    n_bins: int = 15,
) -> Dict[str, np.ndarray]:
    """``{metric: (n_boot,)}`` seed-mean metric under the two-level bootstrap (module docstring).

    The same ``bootstrap_seed``, number of cases and number of seeds give the same
    image and seed draws, so replicates of two pipelines are paired.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(bootstrap_seed)
    n = sample.labels.shape[0]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    seeds = rng.integers(0, sample.num_seeds, size=(n_boot, sample.num_seeds))
    per = _per_seed_from_weights(sample, severity, weights, n_bins)  # (S, B)
    cols = np.arange(n_boot)[:, None]
    return {key: v[seeds, cols].mean(1) for key, v in per.items()}


def _ci(values: np.ndarray, confidence: float) -> Tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - confidence) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


def summarize(
    sample: PipelineSample,
    severity: SeverityMatrix,
    n_boot: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    n_bins: int = 15,
    replicates: Optional[Dict[str, np.ndarray]] = None,
) -> Dict[str, object]:
    """Seed-mean metrics with two-level bootstrap CIs, per-seed values and critical-error counts.

    Returns ``{metric: mean, metric_ci: (lo, hi), metric_seeds: [...], "n_critical_seeds": [...],
    "n_critical_total", "n_cases_total", "cer_pooled_cp": (lo, hi), "n_seeds", "n_test"}`` where
    ``cer_pooled_cp`` is the Clopper–Pearson interval of the seed-mean critical-error count
    (rounded) out of the ``N`` test images: the images are the trials, not the ``S·N`` (seed, image)
    decisions, which share their images.
    """
    per = point_metrics(sample, severity, n_bins)
    reps = replicates if replicates is not None else bootstrap_replicates(sample, severity, n_boot, bootstrap_seed, n_bins)
    out: Dict[str, object] = {"n_seeds": sample.num_seeds, "n_test": int(sample.labels.shape[0])}
    for key in METRICS:
        out[key] = float(np.mean(per[key]))
        out[f"{key}_ci"] = _ci(reps[key], confidence)
        out[f"{key}_seeds"] = [float(v) for v in per[key]]
    counts = [int(v) for v in per["n_critical"]]
    total_n = sample.num_seeds * int(sample.labels.shape[0])
    out["n_critical_seeds"] = counts
    out["n_critical_total"] = int(sum(counts))
    out["n_cases_total"] = total_n
    out["n_critical_images"] = int(round(sum(counts) / sample.num_seeds))
    out["cer_pooled_cp"] = clopper_pearson(out["n_critical_images"], int(sample.labels.shape[0]), confidence)
    return out
