"""How many labelled calibration units (groups or images) of each class does a certificate need?

Before anyone labels data: given a model's predictions on a labelled split it already has (validation), for each
critical-capable class ``c`` (and the pool) the planner estimates the class's miss rate ``r̂_c`` at the decision
layer's referral threshold ``τ`` (the share of its units' critical images given a critical decision and not
referred), then the smallest number of units ``n`` with which Learn then Test would certify ``critical_miss ≤ α``
at that threshold if the new data behaved like this split:

    n_c = min { n : p(round(r̂_c · n), n; α) ≤ δ }

with the certificate's own p-value ``p`` (exact binomial for images, Hoeffding–Bentkus for groups,
:mod:`.risk_control`). This is a plug-in (typical-case) estimate, not a guarantee: with exactly ``n_c`` units the
certificate passes about half the time when the true rate is ``r̂_c``, so plan a margin. ``n`` at no miss at all,
``⌈log δ / log(1 − α)⌉``, is the floor for any model. A class whose estimated rate is already ``≥ α`` at this
threshold cannot be certified by more data: refer more (a lower threshold) or a better model.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..severity import SeverityMatrix
from .risk_control import binomial_p_value, group_codes, hoeffding_bentkus_p_value, smallest_certifiable_alpha

__all__ = ["plan_calibration", "units_needed", "format_plan", "MAX_PLANNED_UNITS"]

#: The largest sample size the planner searches (a rate this close to α needs more: reported as not reachable).
MAX_PLANNED_UNITS = 200_000


def units_needed(miss_rate: float, alpha: float, delta: float, unit: str = "image") -> Optional[int]:
    """The smallest ``n`` whose p-value at ``round(miss_rate · n)`` losses is ``≤ δ`` (module docstring), or ``None``
    when the rate is ``≥ α`` or more than :data:`MAX_PLANNED_UNITS` would be needed."""
    if not 0 < alpha < 1 or not 0 < delta < 1:
        raise ValueError(f"alpha and delta must lie in (0, 1), got {alpha}, {delta}")
    if not 0 <= miss_rate < alpha:
        return None
    n = np.arange(1, MAX_PLANNED_UNITS + 1)
    losses = np.round(miss_rate * n)
    p = hoeffding_bentkus_p_value(losses, n, alpha) if unit == "group" else binomial_p_value(losses, n, alpha)
    ok = np.flatnonzero(p <= delta)
    return int(n[ok[0]]) if len(ok) else None


def plan_calibration(decisions: Any, refer: Any, labels: Any, severity: SeverityMatrix, alpha: float, delta: float,
                     groups: Optional[Sequence[Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Per critical-capable class and for the pool (key ``"all critical classes"``): ``units_now`` (units of the
    class in this split), ``miss_rate`` (estimated at the referral flags given), ``needed`` (units to certify
    ``α`` at ``δ``, or ``None``: not reachable at this threshold) and ``needed_if_no_miss`` (the floor).

    ``decisions`` and ``refer`` are the decision layer's on the split (e.g. :class:`rcl_hf.decision_layer.Prediction`
    ``decision`` and ``refer``, or :meth:`RiskCalibration.decide`); ``groups``: the split's group ids (lesions,
    patients), the unit of a group certificate.
    """
    d, r, y = np.asarray(decisions), np.asarray(refer, dtype=bool), np.asarray(labels)
    if not (d.shape == r.shape == y.shape) or d.ndim != 1:
        raise ValueError(f"decisions, refer and labels must be 1-D of one length, got {d.shape}, {r.shape}, {y.shape}")
    unit = "image" if groups is None else "group"
    g = np.arange(len(y)) if groups is None else group_codes(groups)[0]
    missed = severity.critical[y, d] & ~r
    floor = units_needed(0.0, alpha, delta, unit)  # no miss at all: (1 - α)^n <= δ
    classes: List[Any] = [(severity.labels[c], y == c) for c in np.flatnonzero(severity.positive_rows)]
    classes.append(("all critical classes", severity.positive_rows[y]))
    out = {}
    for name, mine in classes:
        if not mine.any():
            out[name] = {"units_now": 0, "miss_rate": None, "needed": None, "needed_if_no_miss": floor, "unit": unit}
            continue
        codes = g[mine]
        per_unit = np.bincount(codes, weights=missed[mine].astype(float)) / np.maximum(np.bincount(codes), 1)
        present = np.bincount(codes) > 0
        rate = float(per_unit[present].mean())  # each unit weighs the same, as in the certificate
        out[name] = {"units_now": int(present.sum()), "miss_rate": rate, "needed": units_needed(rate, alpha, delta, unit),
                     "needed_if_no_miss": floor, "unit": unit,
                     "smallest_alpha_now": float(smallest_certifiable_alpha(int(present.sum()), delta))}
    return out


def format_plan(plan: Dict[str, Dict[str, Any]], alpha: float, delta: float) -> str:
    """The plan as a markdown table with one line of reading."""
    unit = next(iter(plan.values()))["unit"] + "s" if plan else "units"
    lines = [f"Calibration units ({unit}) needed to certify critical_miss <= {alpha:.0%} at {1 - delta:.0%} confidence, "
             "if new data behave like this split (plug-in estimate: plan a margin):", "",
             f"| class | {unit} now | miss rate here | needed | needed with no miss |", "|---|---:|---:|---:|---:|"]
    for name, p in plan.items():
        rate = "-" if p["miss_rate"] is None else f"{p['miss_rate']:.2%}"
        needed = (f"{p['needed']:,}" if p["needed"] is not None else
                  "not reachable: refer more or a better model" if p["miss_rate"] is not None else "-")
        lines.append(f"| {name} | {p['units_now']:,} | {rate} | {needed} | {p['needed_if_no_miss']:,} |")
    return "\n".join(lines)
