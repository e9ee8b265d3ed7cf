"""research.comparison.pipelines: every family's operating point chosen on validation the same way, then scored
once on test (fake runs: tests/research/conftest.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from research.comparison import compare_pipelines, operating_points


def test_compare_selects_on_validation_and_scores_test_once(fake_runs):
    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    a = compare_pipelines(fake_runs(), weights, n_boot=50)
    b = compare_pipelines(fake_runs(test_flip=True), weights, n_boot=50)
    pd.testing.assert_frame_equal(a.selection, b.selection)  # test logits never touch the choice
    assert not np.allclose(a.summary["accuracy"], b.summary["accuracy"])  # ... but they are what gets scored
    fams = set(a.summary["family"])
    assert {"ce", "ce + blend", "ce + Bayes", "rcl", "rcl + blend", "focal"} <= fams
    pts = operating_points(fake_runs(), weights)
    assert len(pts) == 8 * (1 + 1 + len(weights))  # runs x (argmax + Bayes + blend points)
    row = a.summary.set_index("family").loc["rcl"]
    assert "rsi_vs_focal" in row and row["mcnemar_vs_focal"] is not None
    assert (("d", "b") in a.verdicts) and a.verdicts[("d", "b")]["best_rcl_family"].startswith("rcl")
