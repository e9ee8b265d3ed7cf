"""Verdicts generated from checks, never written by hand: the one rule that turns the confidence interval
of a difference into a word, and the sentences built on it.

For a difference ``A − B`` of a rate where lower is better (CER, selective CER), with a two-sided 95% CI
``[lo, hi]``: ``hi < 0`` → A is lower (A better); ``lo > 0`` → A is higher (B better); otherwise no
difference is shown. The main job's headline, the study's reports and the abstention report all call
:func:`difference_verdict`.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from rcl_hf.formatting import signed_points

__all__ = ["difference_verdict", "comparison_sentence", "headline_verdict"]


def difference_verdict(ci: Sequence[float]) -> str:
    """``"lower"``, ``"higher"`` or ``"no_difference"`` for the CI ``(lo, hi)`` of ``A − B``."""
    lo, hi = (float(x) for x in ci)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise ValueError(f"a verdict needs a finite (low, high) confidence interval, got {tuple(ci)}")
    if hi < 0:
        return "lower"
    if lo > 0:
        return "higher"
    return "no_difference"


def comparison_sentence(a: str, b: str, ci: Sequence[float], numbers: str, where: str = "") -> str:
    """``**a beats b** where (numbers).`` / ``**a is worse than b** …`` / ``**no difference shown** between a and b …``
    from the CI of ``A − B`` (lower is better)."""
    word = difference_verdict(ci)
    if word == "lower":
        return f"**{a} beats {b}**{where} ({numbers})."
    if word == "higher":
        return f"**{a} is worse than {b}**{where} ({numbers})."
    return f"**no difference shown** between {a} and {b}{where} ({numbers})."


def headline_verdict(cer: Dict[str, float], accuracy: Dict[str, float], cer_diff_ci: Tuple[float, float],
                     acc_diff_ci: Tuple[float, float], n_seeds: int, n_test: int,
                     pipelines: Tuple[str, str] = ("ce + blend", "rcl + blend"),
                     matched: Optional[Dict[str, bool]] = None) -> Tuple[str, str]:
    """The main job's headline: ``(label, paragraph)`` for ``second − first`` of ``pipelines``.

    ``cer_diff_ci`` / ``acc_diff_ci``: 95% CIs of ``second − first`` (fractions). ``label`` is
    ``"rcl_better"`` when the CER CI lies below 0, ``"ce_better"`` when above, else ``"no_difference"``
    (:func:`difference_verdict`). The paragraph adds whether accuracy differs beyond noise, since a lower CER
    bought with lower accuracy is the trade-off any rule can make. ``matched`` (pipeline -> whether its point
    is within the tolerance; default all) adds a caution for a pipeline that reached no matched point.
    """
    base, rcl = pipelines
    word = difference_verdict(cer_diff_ci)
    lo, hi = (float(x) for x in cer_diff_ci)
    alo, ahi = (float(x) for x in acc_diff_ci)
    d = cer[rcl] - cer[base]
    pts = signed_points
    setup = (f"Over {n_seeds} training seed{'s' if n_seeds != 1 else ''} and {n_test} test images, with each pipeline's "
             f"operating point chosen on validation only (within the accuracy tolerance of cross-entropy), ")
    nums = (f"`{rcl}` has a test CER of {100 * cer[rcl]:.2f}% against {100 * cer[base]:.2f}% for `{base}` "
            f"(difference {pts(d)} points, 95% CI [{pts(lo)}, {pts(hi)}]) at accuracy {100 * accuracy[rcl]:.2f}% "
            f"vs {100 * accuracy[base]:.2f}% (difference {pts(accuracy[rcl] - accuracy[base])} points, "
            f"95% CI [{pts(alo)}, {pts(ahi)}]). ")
    if word == "lower":
        label = "rcl_better"
        head = ("Training with the risk-calibrated loss makes fewer critical errors than the post-hoc rule on "
                "cross-entropy: the CI of the difference lies below zero.")
    elif word == "higher":
        label = "ce_better"
        head = ("The post-hoc rule on cross-entropy makes fewer critical errors than training with the "
                "risk-calibrated loss: the CI of the difference lies above zero.")
    else:
        label = "no_difference"
        head = ("No difference beyond noise: the CI of the CER difference contains zero, so on this data the "
                "risk-calibrated loss does not beat the post-hoc rule on cross-entropy (nor lose to it).")
    acc_word = difference_verdict(acc_diff_ci)
    if acc_word == "lower":
        acc = f" Note that `{rcl}` is also less accurate beyond noise, so part of any CER gap is the accuracy trade-off."
    elif acc_word == "higher":
        acc = f" Note that `{rcl}` is also more accurate beyond noise."
    else:
        acc = " Their accuracies do not differ beyond noise."
    unmatched = [p for p in pipelines if matched is not None and not matched.get(p, True)]
    if unmatched:
        acc += (" Caution: " + " and ".join(f"`{p}`" for p in unmatched) + " reached no operating point within the "
                "accuracy tolerance on validation, so its most accurate point is used and this is not a comparison "
                "at matched accuracy.")
    return label, setup + nums + head + acc
