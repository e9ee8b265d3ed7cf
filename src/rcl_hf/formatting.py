"""How numbers are written in every table and sentence the project generates (reports, the main job,
model cards): one definition, so that a README row checked against its report matches digit for digit.

Rates are fractions in the code and percentages in text: ``pct(0.1234) == "12.34"`` (no ``%`` sign;
tables put the unit in the header). A missing value (``None``, NaN, not a number) is written ``missing``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["pct", "pct_ci", "pct_with_ci", "signed_points"]

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
