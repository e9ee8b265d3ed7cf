"""rcl_hf.formatting: how every generated table and sentence writes a rate, its interval and a difference."""

from __future__ import annotations

import numpy as np
import pytest

from rcl_hf.formatting import MISSING, pct, pct_ci, pct_with_ci, signed_points


def test_pct_writes_a_fraction_as_a_percentage_with_fixed_decimals():
    assert pct(0.1234) == "12.34"
    assert pct(0.12345, nd=3) == "12.345"
    assert pct(0.1234, nd=1) == "12.3"
    assert pct(0.5, nd=0) == "50"
    assert pct(1) == "100.00" and pct(0) == "0.00"
    assert pct(np.float32(0.25)) == "25.00" and pct(np.int64(1)) == "100.00"
    assert pct(0.0137, signed=True) == "+1.37" and pct(-0.0137, signed=True) == "-1.37"
    assert pct(0.0, signed=True) == "+0.00"


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), -float("inf"), "n/a", object(), [0.1]])
def test_a_missing_value_is_written_as_the_dash(value):
    assert MISSING == "–"
    assert pct(value) == MISSING
    assert pct(value, missing="?") == "?"
    assert signed_points(value) == MISSING


def test_pct_ci_writes_a_pair_in_brackets_and_nothing_for_anything_else():
    assert pct_ci((0.1, 0.2)) == "[10.00, 20.00]"
    assert pct_ci([0.1, 0.2], nd=1) == "[10.0, 20.0]"
    assert pct_ci((-0.01, 0.02), signed=True) == "[-1.00, +2.00]"
    assert pct_ci((float("nan"), 0.2)) == f"[{MISSING}, 20.00]"  # a pair with a missing end keeps its shape
    for not_a_pair in (None, 0.1, (0.1,), (0.1, 0.2, 0.3), "ab", np.array([0.1, 0.2])):
        assert pct_ci(not_a_pair) == ""
    assert pct_ci(None, missing="no CI") == "no CI"


def test_pct_with_ci_is_the_estimate_then_its_interval():
    assert pct_with_ci(0.5, (0.4, 0.6)) == "50.00 [40.00, 60.00]"
    assert pct_with_ci(0.5, (0.4, 0.6), nd=1) == "50.0 [40.0, 60.0]"
    assert pct_with_ci(0.5, None) == "50.00"
    assert pct_with_ci(None, None) == MISSING


def test_signed_points_is_a_difference_in_percentage_points_with_its_sign():
    assert signed_points(0.0137) == "+1.37"
    assert signed_points(-0.02) == "-2.00"
    assert signed_points(0.00249, nd=3) == "+0.249"
    # the same digits as the unsigned rate, so that a sentence and its table agree
    for x in (0.123456, 0.5, 0.0001):
        assert signed_points(x) == "+" + pct(x)
