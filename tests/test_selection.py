"""rcl_hf.selection: matched-accuracy operating-point selection, from validation metrics only."""

from __future__ import annotations

import pandas as pd
import pytest

from rcl_hf.selection import select_operating_points


def _rows(test_overrides=None):
    """Validation/test rows for families ce (1 point), focal (1 point), rcl (3 λ points), 2 seeds."""
    spec = {  # (family, point): (val_acc, val_cer)
        ("ce", "default"): (0.80, 0.10),
        ("focal", "default"): (0.795, 0.09),
        ("rcl", "lam=0.5"): (0.795, 0.07),   # matched (within 1 pt of 0.80)
        ("rcl", "lam=2"): (0.791, 0.05),     # matched, lowest CER -> chosen
        ("rcl", "lam=5"): (0.70, 0.01),      # lowest CER but not matched
    }
    rows = []
    for (fam, point), (acc, cer) in spec.items():
        for seed, jitter in ((0, -0.001), (1, 0.001)):
            rows.append({"dataset": "d", "backbone": "b", "family": fam, "point": point, "seed": seed,
                         "val_accuracy": acc + jitter, "val_cer": cer + jitter, "val_expected_cost": cer,
                         "test_accuracy": 0.5, "test_cer": 0.5})
    df = pd.DataFrame(rows)
    for (fam, point), values in (test_overrides or {}).items():
        m = (df["family"] == fam) & (df["point"] == point)
        for k, v in values.items():
            df.loc[m, k] = v
    return df


def test_selection_lowest_val_cer_within_one_point_of_ce():
    sel = select_operating_points(_rows()).set_index("family")
    assert sel.loc["rcl", "point"] == "lam=2"
    assert sel.loc["rcl", "matched"]
    assert sel.loc["rcl", "reference_accuracy"] == pytest.approx(0.80)
    assert sel.loc["ce", "point"] == "default" and sel.loc["focal", "matched"]
    # a tighter tolerance excludes lam=2 (0.791 < 0.80 - 0.005)
    tight = select_operating_points(_rows(), tolerance=0.005).set_index("family")
    assert tight.loc["rcl", "point"] == "lam=0.5"


def test_selection_never_reads_test_metrics():
    base = select_operating_points(_rows())
    # test metrics that would favour other points if they were read
    adversarial = _rows({("rcl", "lam=5"): {"test_accuracy": 0.99, "test_cer": 0.0},
                         ("rcl", "lam=2"): {"test_accuracy": 0.10, "test_cer": 0.9},
                         ("ce", "default"): {"test_accuracy": 0.2}})
    pd.testing.assert_frame_equal(select_operating_points(adversarial), base)
    no_test = _rows().drop(columns=["test_accuracy", "test_cer"])
    pd.testing.assert_frame_equal(select_operating_points(no_test), base)


def test_selection_unmatched_family_and_errors():
    rows = _rows()
    rows.loc[rows["family"] == "focal", "val_accuracy"] = 0.5
    sel = select_operating_points(rows).set_index("family")
    assert not sel.loc["focal", "matched"]
    with pytest.raises(ValueError, match="No reference family 'xx'"):
        select_operating_points(rows, reference_family="xx")
    with pytest.raises(ValueError, match="one operating point"):
        select_operating_points(rows, reference_family="rcl")
    with pytest.raises(ValueError, match="missing"):
        select_operating_points(rows.drop(columns=["val_cer"]))
    with pytest.raises(ValueError, match="tolerance"):
        select_operating_points(rows, tolerance=1.0)


def test_selection_averages_over_seeds_before_choosing():
    """A point that is best on one seed but not on average is not chosen: the choice reads seed means."""
    rows = pd.DataFrame([
        {"family": "ce", "point": "default", "seed": s, "val_accuracy": 0.80, "val_cer": 0.10} for s in (0, 1)
    ] + [
        {"family": "rcl", "point": "lucky", "seed": 0, "val_accuracy": 0.80, "val_cer": 0.01},
        {"family": "rcl", "point": "lucky", "seed": 1, "val_accuracy": 0.80, "val_cer": 0.19},   # mean 0.10
        {"family": "rcl", "point": "steady", "seed": 0, "val_accuracy": 0.80, "val_cer": 0.06},
        {"family": "rcl", "point": "steady", "seed": 1, "val_accuracy": 0.80, "val_cer": 0.06},  # mean 0.06
    ])
    sel = select_operating_points(rows).set_index("family")
    assert sel.loc["rcl", "point"] == "steady" and sel.loc["rcl", "n_seeds"] == 2
    assert sel.loc["rcl", "val_cer"] == pytest.approx(0.06)


def test_selection_groups_are_independent_and_ties_break_by_accuracy_then_cost_then_order():
    def row(ds, fam, point, acc, cer, cost=0.5):
        return {"dataset": ds, "family": fam, "point": point, "seed": 0, "val_accuracy": acc, "val_cer": cer,
                "val_expected_cost": cost}

    rows = pd.DataFrame([
        # group a: the same CER twice; the more accurate point wins
        row("a", "ce", "default", 0.80, 0.10),
        row("a", "rcl", "p1", 0.80, 0.05, cost=0.1),
        row("a", "rcl", "p2", 0.81, 0.05, cost=0.3),
        # group b (its own reference, 0.60): same CER and accuracy; the lower expected cost wins, then the first row
        row("b", "ce", "default", 0.60, 0.20),
        row("b", "rcl", "p1", 0.60, 0.05, cost=0.3),
        row("b", "rcl", "p2", 0.60, 0.05, cost=0.2),
        row("b", "rcl", "p3", 0.60, 0.05, cost=0.2),
        # matched against group b's reference (0.595 >= 0.60 - 0.01), whatever group a's reference
        row("b", "focal", "default", 0.595, 0.15),
    ])
    sel = select_operating_points(rows).set_index(["dataset", "family"])
    assert len(sel) == 5
    assert sel.loc[("a", "rcl"), "point"] == "p2"
    assert sel.loc[("b", "rcl"), "point"] == "p2"
    assert sel.loc[("a", "rcl"), "reference_accuracy"] == pytest.approx(0.80)
    assert sel.loc[("b", "rcl"), "reference_accuracy"] == pytest.approx(0.60)
    assert sel.loc[("b", "focal"), "matched"]
