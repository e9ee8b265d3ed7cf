"""How numbers are written in every table and sentence the project generates (reports, the main job,
model cards, the training and calibration commands): one definition, so that a README row checked
against its report matches digit for digit.

Rates are fractions in the code and percentages in text: ``pct(0.1234) == "12.34"`` (no ``%`` sign;
tables put the unit in the header). A missing value (``None``, NaN, not a number) is written ``missing``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["RISK_TABLE_KEYS", "TABLE_KEYS", "format_risk_control", "format_table", "pct", "pct_ci", "pct_with_ci",
           "signed_points"]

#: The dash of a missing value.
MISSING = "–"


def _number(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def pct(x: Any, nd: int = 2, missing: str = MISSING, signed: bool = False) -> str:
    """``100·x`` with ``nd`` decimals (``+`` sign when ``signed``); ``missing`` for None / NaN / non-numbers."""
    v = _number(x)
    if v is None:
        return missing
    return f"{100 * v:+.{nd}f}" if signed else f"{100 * v:.{nd}f}"


def pct_ci(ci: Any, nd: int = 2, missing: str = "", signed: bool = False) -> str:
    """``"[lo, hi]"`` in percent for a ``(lo, hi)`` pair; ``missing`` when ``ci`` is not a pair."""
    if not isinstance(ci, (tuple, list)) or len(ci) != 2:
        return missing
    return f"[{pct(ci[0], nd, signed=signed)}, {pct(ci[1], nd, signed=signed)}]"


def pct_with_ci(mean: Any, ci: Any, nd: int = 2) -> str:
    """``"m [lo, hi]"`` in percent, or just ``m`` without a CI."""
    interval = pct_ci(ci, nd)
    return f"{pct(mean, nd)} {interval}" if interval else pct(mean, nd)


def signed_points(x: Any, nd: int = 2) -> str:
    """A difference of two rates in percentage points with its sign: ``+1.37``."""
    return pct(x, nd, signed=True)


# ----------------------------------------------------------------------------- the commands' tables
#: Columns of a run's metrics table (:func:`format_table`).
TABLE_KEYS = ("accuracy", "balanced_accuracy", "cer", "critical_miss_rate", "expected_cost", "n_critical")


def format_table(rows: Dict[str, Dict[str, float]], keys: Tuple[str, ...] = TABLE_KEYS) -> str:
    """A markdown table: one row per run, rates in percent."""
    head = "| run | " + " | ".join(k.replace("_", " ") + ("" if k.startswith("n_") else " %") for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]
    for name, m in rows.items():
        cells = [f"{int(m[k])}" if k.startswith("n_") else pct(m[k]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Columns of the certified decision layer's table (:func:`format_risk_control`, ``rcl-calibrate``).
RISK_TABLE_KEYS = ("coverage", "critical_miss", "cer_accepted", "accuracy_accepted", "accuracy", "cer")


def format_risk_control(risk_control: Dict[str, Any], guarantees: Optional[Sequence[str]] = None) -> str:
    """The certified decision layer on test beside the argmax (markdown), or why there is none; ``guarantees``: the
    saved decision layer's sentences (:meth:`rcl_hf.DecisionLayer.guarantees`), printed instead of the certificate
    alone."""
    if "error" in risk_control:
        return f"Risk calibration skipped: {risk_control['error']}"
    cal = risk_control["calibration"]
    lines = [*(guarantees or [cal["certificate"]]), f"(rule {cal['rule']}, temperature {cal['temperature']:.2f}, referral threshold "
                                 f"{cal['threshold']:.4g}; saved as risk_calibration.json)"]
    if "test" in risk_control:
        rows = {"argmax, no referral": risk_control["test_argmax"], "certified decision layer": risk_control["test"]}
        lines += ["", "On the test split:", format_table(rows, RISK_TABLE_KEYS),
                  f"{cal['risk_kind']} <= {cal['alpha']:.0%} on test: "
                  f"{'held' if risk_control['test']['guarantee_held'] else 'NOT held'}"]
    return "\n".join(lines)
