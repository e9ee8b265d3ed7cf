"""Statistics that respect the design of the grid: split seeds × training seeds × test images.

Every training seed of a split is scored on the *same* test images, so (seed, image) decisions
are not independent, and the split itself is a draw. The paired, clustered percentile bootstrap
(Davison & Hinkley 1997, sections 3.8 and 3.2.3) resamples the three levels in turn: split seeds
with replacement, then within each drawn split its training seeds and its test images (multinomial
image weights). The same draws serve both pipelines, so the interval of the CER *difference* is
paired by image; the image is the unit, never the (seed, image) pair.

Clopper–Pearson intervals (:func:`images_clopper_pearson`) count images too: per split the
seed-mean number of critical errors (rounded) out of the split's N test images, summed over splits
(test sets of different split seeds overlap, so the pooled n still overstates independence
across splits: quote the bootstrap interval).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from rcl_hf.metrics.functional import relative_safety_improvement

__all__ = ["paired_clustered_bootstrap", "images_clopper_pearson", "image_weights"]

Sample = Mapping[int, Mapping[str, Any]]  # split seed -> {"critical": (S, N) bool, "correct": (S, N) bool}


def image_weights(splits: Sample, n_boot: int, rng: np.random.Generator) -> Dict[int, np.ndarray]:
    """Per split, ``(n_boot, N)`` multinomial image counts (one bootstrap sample of the test images)."""
    out = {}
    for sp in sorted(splits):
        n = np.asarray(splits[sp]["critical"]).shape[1]
        out[sp] = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    return out


def _level_means(per_split: Dict[int, np.ndarray], seed_idx: Dict[int, np.ndarray], split_idx: np.ndarray,
                 keys: list) -> np.ndarray:
    """(n_boot,) mean over drawn splits of the mean over drawn seeds of a per-seed replicate (S, n_boot)."""
    n_boot = split_idx.shape[0]
    cols = np.arange(n_boot)[:, None]
    per = np.stack([per_split[k][seed_idx[k], cols].mean(1) for k in keys], axis=1)  # (n_boot, K)
    return per[cols, split_idx].mean(1)


def paired_clustered_bootstrap(a: Sample, b: Sample, n_boot: int = 2000, seed: int = 0,
                               confidence: float = 0.95) -> Dict[str, Any]:
    """CER and accuracy of pipelines ``a`` and ``b`` with the paired three-level bootstrap (module docstring).

    ``a`` and ``b`` map each split seed to ``{"critical": (S, N), "correct": (S, N)}`` booleans over the
    same N test images of that split (the training seeds of ``a`` and ``b`` are drawn with the same
    indices). Returns point estimates (mean over splits of the seed mean), the difference
    ``cer_a - cer_b``, the relative reduction ``1 - cer_a / cer_b``, their CIs and the two-sided
    bootstrap p-value of the CER difference (twice the smaller tail share of replicates beyond 0).
    """
    keys = sorted(a)
    if sorted(b) != keys or not keys:
        raise ValueError(f"both pipelines need the same non-empty split seeds, got {sorted(a)} and {sorted(b)}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    for k in keys:
        na, nb = np.asarray(a[k]["critical"]).shape, np.asarray(b[k]["critical"]).shape
        if na[1] != nb[1]:
            raise ValueError(f"split {k}: pipelines scored on different test sets ({na[1]} vs {nb[1]} images)")
    rng = np.random.default_rng(seed)
    w = image_weights(a, n_boot, rng)
    split_idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    s_max = {k: max(np.asarray(a[k]["critical"]).shape[0], np.asarray(b[k]["critical"]).shape[0]) for k in keys}
    raw_idx = {k: rng.integers(0, 1 << 30, size=(n_boot, s_max[k])) for k in keys}
    out: Dict[str, Any] = {"n_splits": len(keys), "n_boot": n_boot}
    reps: Dict[str, Dict[str, np.ndarray]] = {}
    for name, sample in (("a", a), ("b", b)):
        reps[name] = {}
        for metric in ("critical", "correct"):
            per_split, seed_idx = {}, {}
            point = []
            for k in keys:
                x = np.asarray(sample[k][metric], dtype=np.float64)  # (S, N)
                s, n = x.shape
                per_split[k] = (x @ w[k].T) / n  # (S, n_boot)
                seed_idx[k] = raw_idx[k][:, :s] % s
                point.append(x.mean())
            reps[name][metric] = _level_means(per_split, seed_idx, split_idx, keys)
            out[f"{'cer' if metric == 'critical' else 'accuracy'}_{name}"] = float(np.mean(point))
    alpha = (1.0 - confidence) / 2
    q = lambda v: tuple(float(x) for x in np.quantile(v[np.isfinite(v)], [alpha, 1 - alpha]))  # noqa: E731
    diff = reps["a"]["critical"] - reps["b"]["critical"]
    rel = relative_safety_improvement(reps["a"]["critical"], reps["b"]["critical"])
    out["cer_a_ci"], out["cer_b_ci"] = q(reps["a"]["critical"]), q(reps["b"]["critical"])
    out["cer_diff"] = out["cer_a"] - out["cer_b"]
    out["cer_diff_ci"] = q(diff)
    out["relative_reduction"] = relative_safety_improvement(out["cer_a"], out["cer_b"])
    out["relative_reduction_ci"] = q(rel) if np.isfinite(rel).any() else (float("nan"), float("nan"))
    out["accuracy_diff"] = out["accuracy_a"] - out["accuracy_b"]
    out["accuracy_diff_ci"] = q(reps["a"]["correct"] - reps["b"]["correct"])
    out["p_value"] = float(min(1.0, 2 * min(np.mean(diff >= 0), np.mean(diff <= 0))))
    return out


def images_clopper_pearson(sample: Sample, confidence: float = 0.95) -> Tuple[int, int, Tuple[float, float]]:
    """``(k, n, (lo, hi))``: seed-mean critical errors per split (rounded) out of its images, summed over splits,
    with the exact interval of :func:`rcl_hf.metrics.operating_point.clopper_pearson`."""
    from rcl_hf.metrics.operating_point import clopper_pearson

    k = n = 0
    for sp in sorted(sample):
        x = np.asarray(sample[sp]["critical"])
        k += int(round(float(x.sum(1).mean())))
        n += int(x.shape[1])
    if n == 0:
        raise ValueError("images_clopper_pearson needs at least one test image")
    return k, n, clopper_pearson(k, n, confidence)
