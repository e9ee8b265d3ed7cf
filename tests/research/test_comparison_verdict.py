"""research.comparison.verdict: the CI -> verdict rule, its sentences, and the main job's headline paragraph,
each generated from the numbers it states."""

from __future__ import annotations

import pytest

from research.comparison.verdict import comparison_sentence, difference_verdict, headline_verdict

CER = {"ce + blend": 0.10, "rcl + blend": 0.07}
ACC = {"ce + blend": 0.70, "rcl + blend": 0.70}


def test_difference_verdict_reads_the_side_of_zero_the_ci_lies_on():
    assert difference_verdict((-0.03, -0.001)) == "lower"
    assert difference_verdict((0.001, 0.03)) == "higher"
    for ci in ((-0.01, 0.01), (-0.01, 0.0), (0.0, 0.01), (0.0, 0.0)):  # touching zero is not beyond noise
        assert difference_verdict(ci) == "no_difference", ci
    for bad in ((0.02, 0.01), (float("nan"), 0.1), (-float("inf"), 0.0)):
        with pytest.raises(ValueError, match="finite"):
            difference_verdict(bad)


def test_comparison_sentence_names_the_winner_from_the_ci_of_a_minus_b():
    assert comparison_sentence("rcl", "ce", (-0.02, -0.01), "n") == "**rcl beats ce** (n)."
    assert comparison_sentence("rcl", "ce", (0.01, 0.02), "n", where=" on ISIC") == "**rcl is worse than ce** on ISIC (n)."
    assert comparison_sentence("rcl", "ce", (-0.01, 0.02), "n") == "**no difference shown** between rcl and ce (n)."


def test_verdict_rcl_better_when_the_ci_lies_below_zero():
    label, text = headline_verdict(CER, ACC, (-0.05, -0.01), (-0.01, 0.01), 3, 4000)
    assert label == "rcl_better"
    assert "fewer critical errors than the post-hoc rule" in text and "7.00%" in text and "10.00%" in text
    assert "do not differ beyond noise" in text


def test_verdict_ce_better_when_the_ci_lies_above_zero():
    label, text = headline_verdict({"ce + blend": 0.05, "rcl + blend": 0.08}, ACC, (0.01, 0.05), (-0.01, 0.01), 3, 4000)
    assert label == "ce_better" and "post-hoc rule on cross-entropy makes fewer critical errors" in text


def test_verdict_no_difference_when_the_ci_contains_zero():
    label, text = headline_verdict(CER, ACC, (-0.04, 0.002), (-0.01, 0.01), 3, 4000)
    assert label == "no_difference" and "No difference beyond noise" in text


def test_verdict_flags_an_accuracy_trade_off():
    _, text = headline_verdict(CER, {"ce + blend": 0.70, "rcl + blend": 0.65}, (-0.05, -0.01), (-0.08, -0.02), 3, 4000)
    assert "less accurate beyond noise" in text
    _, text = headline_verdict(CER, ACC, (-0.05, -0.01), (-0.01, 0.01), 3, 4000, matched={"rcl + blend": False})
    assert "`rcl + blend` reached no operating point within the accuracy tolerance" in text
    _, text = headline_verdict(CER, ACC, (-0.05, -0.01), (-0.01, 0.01), 3, 4000, matched={"rcl + blend": True, "ce + blend": True})
    assert "Caution" not in text
    with pytest.raises(ValueError, match=r"finite \(low, high\) confidence interval"):
        headline_verdict(CER, ACC, (0.01, -0.01), (0, 0), 3, 10)
