"""Grouped, stratified, seeded splits — no patient (lesion, slide, WSI) in two splits.

Images of one patient are correlated; a patient on both sides of a split makes
validation scores leak.  :func:`grouped_stratified_split` assigns whole groups
to splits so that every split's class distribution approaches the pool's.

Algorithm (greedy, in the spirit of scikit-learn's ``StratifiedGroupKFold``,
generalised to unequal split sizes).  With ``n[g, c]`` the count of class ``c``
in group ``g``, ``N[c] = sum_g n[g, c]`` and target fractions ``f[s]`` (summing
to 1), the target count is ``t[s, c] = f[s] * N[c]``.
Groups are visited in a seeded random order (not largest first: that would
send every multi-image patient to the largest split); each group goes to the
split ``s`` that least increases

    D = sum_s sum_c (x[s, c] - t[s, c])**2 / N[c]  +  sum_s (X[s] - f[s] * n)**2 / n

where ``x`` are the counts assigned so far, ``X[s] = sum_c x[s, c]`` and ``n``
the number of samples (dividing by ``N[c]`` makes a rare class weigh as much as
a frequent one; the second term keeps split sizes on target when per-class
rounding ties).  A split left empty while another holds
several groups then takes the group whose move costs least.  Same inputs and
seed, same split.

Why not scikit-learn's splitters (scikit-learn is a dependency, and the study's
cross-fitting uses ``StratifiedGroupKFold``): ``StratifiedGroupKFold`` makes ``k``
folds of equal size and nothing else.  A 70/15/15 train/validation/test split would
have to be pieced together from ``k = 20`` folds (3 + 3 + 14), a fraction such as
0.123 from ``k = 1000``, and ``k`` may not exceed the number of groups (it warns when
a class has fewer samples than ``k``): 12 patients cannot be split 70/15/15 that way
at all, while :func:`grouped_stratified_split` takes any positive fractions summing
to 1 in one pass and needs only as many groups as splits (every split gets at least
one).  ``GroupShuffleSplit`` takes a fraction but does not stratify by label.  The
test ``test_split_takes_fractions_that_stratified_group_kfold_cannot`` shows the
12-patient case.  Keeping this function also keeps every split seed's images, and
with them cached splits and reported results, as they were.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Set

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["SUBSET_MODES", "check_disjoint_groups", "group_overlaps", "grouped_stratified_split", "subsample"]

#: How :func:`subsample` picks rows.
SUBSET_MODES = ("stratified", "first")


def grouped_stratified_split(
    labels: Sequence[Hashable],
    groups: Sequence[Hashable],
    fractions: Mapping[str, float],
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """Split sample indices into named parts, whole groups at a time, stratified by label.

    Args:
        labels: class of each sample.
        groups: group id of each sample (patient, lesion, slide, WSI, content hash).
        fractions: ``{split_name: fraction}``, positive, summing to 1 (e.g.
            ``{"train": 0.7, "validation": 0.15, "test": 0.15}``).
        seed: the order in which groups are placed.

    Returns:
        ``{split_name: sorted int64 indices}``; every sample in exactly one split and
        every group in exactly one split.

    Raises:
        ValueError: mismatched lengths, bad fractions, or fewer groups than splits.
    """
    n = len(labels)
    if len(groups) != n:
        raise ValueError(f"grouped_stratified_split: {n} labels but {len(groups)} groups")
    names = list(fractions)
    f = np.array([float(fractions[s]) for s in names])
    if len(names) == 0:
        raise ValueError("grouped_stratified_split: no split fractions given")
    if np.any(~np.isfinite(f)) or np.any(f <= 0):
        raise ValueError(f"Split fractions must be positive and finite, got {dict(fractions)}")
    if abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"Split fractions must sum to 1, got {dict(fractions)} (sum {f.sum():g})")
    if n == 0:
        return {s: np.zeros(0, dtype=np.int64) for s in names}
    uniq_groups, g_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    uniq_labels, c_of = np.unique(np.asarray([str(l) for l in labels]), return_inverse=True)
    n_groups, n_classes, n_splits = len(uniq_groups), len(uniq_labels), len(names)
    if n_groups < n_splits:
        raise ValueError(
            f"Cannot split {n_groups} group(s) into {n_splits} splits {names}: every split needs a whole group"
        )
    counts = np.zeros((n_groups, n_classes), dtype=np.float64)
    np.add.at(counts, (g_of, c_of), 1.0)
    total = counts.sum(axis=0)
    target = f[:, None] * total[None, :]
    weight = 1.0 / total

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)

    sizes_target = f * n
    x = np.zeros((n_splits, n_classes))
    assign = np.empty(n_groups, dtype=np.int64)
    for g in order:
        row = counts[g]
        size = row.sum()
        tot = x.sum(axis=1)
        gain = (((x + row - target) ** 2 - (x - target) ** 2) * weight).sum(axis=1)
        gain += ((tot + size - sizes_target) ** 2 - (tot - sizes_target) ** 2) / n
        s = int(np.argmin(gain))
        assign[g] = s
        x[s] += row

    # No requested split may stay empty while another holds several groups.
    for s in range(n_splits):
        if np.any(assign == s):
            continue
        sizes = np.bincount(assign, minlength=n_splits)
        best = None
        for g in range(n_groups):
            src = assign[g]
            if sizes[src] < 2:
                continue
            row = counts[g]
            before = ((x - target) ** 2 * weight).sum()
            x2 = x.copy()
            x2[src] -= row
            x2[s] += row
            cost = ((x2 - target) ** 2 * weight).sum() - before
            if best is None or cost < best[0]:
                best = (cost, g)
        assert best is not None  # n_groups >= n_splits guarantees a donor
        g = best[1]
        x[assign[g]] -= counts[g]
        x[s] += counts[g]
        assign[g] = s

    sample_split = assign[g_of]
    out = {name: np.flatnonzero(sample_split == s).astype(np.int64) for s, name in enumerate(names)}
    check_disjoint_groups({name: [str(groups[i]) for i in idx] for name, idx in out.items()})
    return out


def group_overlaps(groups_by_split: Mapping[str, Iterable[Hashable]]) -> Dict[str, List[str]]:
    """``{"a|b": sorted groups found in both split a and split b}`` for every overlapping pair."""
    sets: Dict[str, Set[str]] = {s: {str(g) for g in gs} for s, gs in groups_by_split.items()}
    names = list(sets)
    out: Dict[str, List[str]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sets[a] & sets[b]
            if both:
                out[f"{a}|{b}"] = sorted(both)
    return out


def check_disjoint_groups(groups_by_split: Mapping[str, Iterable[Hashable]], what: str = "group") -> None:
    """Raise ``ValueError`` when any ``what`` (patient, lesion, ...) appears in two splits."""
    overlaps = group_overlaps(groups_by_split)
    if overlaps:
        pair, both = next(iter(overlaps.items()))
        a, b = pair.split("|")
        total = sum(len(v) for v in overlaps.values())
        raise ValueError(
            f"{total} {what} id(s) appear in two splits; e.g. {len(both)} in both {a!r} and {b!r}: {both[:5]}"
        )


def subsample(ds: Any, n: Optional[int], mode: str = "stratified", seed: int = 0, label_column: str = "label") -> Any:
    """``n`` rows of the ``datasets.Dataset`` ``ds`` (all of it when ``n`` is ``None`` or ``>= len(ds)``).

    ``mode``:

    * ``"stratified"`` (default): a seeded sample holding every class in proportion
      (``Dataset.train_test_split(train_size=n, stratify_by_column=label_column, seed=seed)``);
      when stratifying is impossible (a class with one row, or ``n`` below the number of
      classes) a seeded uniform sample, with a warning;
    * ``"first"``: the first ``n`` rows in the split's order.  Splits of folder-per-class
      layouts (Brain Tumor MRI, BreaKHis) are ordered by class, so this can leave whole
      classes out; kept to reproduce runs made that way.

    Raises:
        ValueError: ``n`` is not positive, or ``mode`` is unknown.
    """
    if mode not in SUBSET_MODES:
        raise ValueError(f"subset mode must be one of {SUBSET_MODES}, got {mode!r}")
    if n is None:
        return ds
    n = int(n)
    if n <= 0:
        raise ValueError(f"the number of rows to keep must be positive, got {n}")
    if n >= len(ds):
        return ds
    if mode == "first":
        return ds.select(range(n))
    try:
        return ds.train_test_split(train_size=n, stratify_by_column=label_column, seed=seed, keep_in_memory=True)["train"]
    except ValueError as err:
        logger.warning("No stratified %d-row sample of %d rows (%s): taking a uniform seeded sample instead", n, len(ds), err)
        return ds.shuffle(seed=seed, keep_in_memory=True).select(range(n))
