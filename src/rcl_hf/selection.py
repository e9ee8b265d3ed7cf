"""Matched-accuracy operating-point selection, on validation only.

Every pipeline family (a loss with its λ values, a decision rule with its blend
weights, or both) is a set of operating points, each scored on every seed. For
one dataset × backbone:

1. average each point's validation accuracy and CER over its seeds;
2. the reference accuracy ``a_ref`` is the validation accuracy of the reference
   family (cross-entropy with the argmax decision), averaged over seeds;
3. a point is *matched* when its validation accuracy is at least
   ``a_ref - tolerance`` (tolerance 0.01 = one percentage point);
4. each family's choice is its matched point of lowest validation CER (ties: higher
   validation accuracy, then lower validation expected cost, then the order of the
   points); a family with no matched point gets its most accurate point, flagged
   ``matched=False``.

Only columns named ``val_*`` are read: test metrics may sit in the same frame (so
that the caller can evaluate the choice once afterwards) and are never looked at.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["select_operating_points", "VALIDATION_PREFIX", "KEY_COLUMNS"]

VALIDATION_PREFIX = "val_"
#: The columns that identify an operating point within a comparison group.
KEY_COLUMNS = ("family", "point")


def select_operating_points(
    points: pd.DataFrame,
    reference_family: str = "ce",
    tolerance: float = 0.01,
    group_columns: Sequence[str] = ("dataset", "backbone"),
) -> pd.DataFrame:
    """Choose one operating point per family and comparison group, from validation metrics only.

    Args:
        points: one row per (group..., family, point, seed) with at least
            ``val_accuracy`` and ``val_cer`` (``val_expected_cost`` breaks ties
            when present). Any other column (e.g. ``test_*``) is ignored.
        reference_family: the family whose mean validation accuracy sets the bar.
        tolerance: allowed accuracy drop below the reference (fraction; 0.01 = 1 point).
        group_columns: columns that delimit independent comparisons.

    Returns:
        One row per (group..., family): ``point``, ``val_accuracy``, ``val_cer``
        (seed means), ``n_seeds``, ``reference_accuracy``, ``matched``.

    Raises:
        ValueError: missing columns, a group without the reference family, or a
            reference family with more than one operating point.
    """
    group_columns = [c for c in group_columns if c in points.columns]
    needed = ["family", "point", "val_accuracy", "val_cer"]
    missing = [c for c in needed if c not in points.columns]
    if missing:
        raise ValueError(f"select_operating_points needs columns {needed}; missing {missing}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a fraction in [0, 1), got {tolerance}")
    val_cols = [c for c in points.columns if c.startswith(VALIDATION_PREFIX)]
    # Only keys and validation metrics go further: nothing else can influence the choice.
    view = points[[*group_columns, "family", "point", *val_cols]].copy()
    view["_order"] = np.arange(len(view))
    agg_spec = {c: "mean" for c in val_cols}
    agg_spec["_order"] = "min"
    keys = [*group_columns, "family", "point"]
    mean = view.groupby(keys, sort=False, dropna=False).agg(agg_spec)
    mean["n_seeds"] = view.groupby(keys, sort=False, dropna=False).size()
    mean = mean.reset_index()

    rows = []
    groups = mean.groupby(group_columns, sort=False, dropna=False) if group_columns else [((), mean)]
    for gkey, g in groups:
        ref = g[g["family"] == reference_family]
        label = dict(zip(group_columns, gkey if isinstance(gkey, tuple) else (gkey,)))
        if ref.empty:
            raise ValueError(f"No reference family {reference_family!r} in comparison group {label}; "
                             f"families: {sorted(g['family'].unique())}")
        if len(ref) > 1:
            raise ValueError(f"Reference family {reference_family!r} must have one operating point, "
                             f"has {len(ref)} in group {label}: {list(ref['point'])}")
        ref_acc = float(ref["val_accuracy"].iloc[0])
        for family, f in g.groupby("family", sort=False):
            ok = f["val_accuracy"] >= ref_acc - tolerance - 1e-12
            if ok.any():
                cand = f[ok]
                sort_cols = ["val_cer", "val_accuracy"] + (["val_expected_cost"] if "val_expected_cost" in f else []) + ["_order"]
                asc = [True, False] + ([True] if "val_expected_cost" in f else []) + [True]
                best = cand.sort_values(sort_cols, ascending=asc, kind="mergesort").iloc[0]
                matched = True
            else:
                best = f.sort_values(["val_accuracy", "_order"], ascending=[False, True], kind="mergesort").iloc[0]
                matched = False
            rows.append({**label, "family": family, "point": best["point"],
                         "val_accuracy": float(best["val_accuracy"]), "val_cer": float(best["val_cer"]),
                         "n_seeds": int(best["n_seeds"]), "reference_accuracy": ref_acc, "matched": matched})
    return pd.DataFrame(rows)
