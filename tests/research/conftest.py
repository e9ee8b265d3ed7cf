"""Shared fixtures of the study's tests.

* :func:`fake_runs` — a factory ``make(test_flip=False)`` of tiny fake runs (:class:`research.comparison.Run`) for
  the comparison and its report.
"""

from __future__ import annotations

import numpy as np
import pytest

from rcl_hf.severity import SeverityMatrix
from research.comparison import Run

SEV = SeverityMatrix.preset("synthetic")  # normal, lesion_round, lesion_oval, lesion_ring; lesion -> normal critical


@pytest.fixture
def fake_runs():
    """``make(test_flip=False)``: ce, focal and rcl (2 λ) with 2 seeds on a 4-class problem; rcl shifts mass off
    'normal'. With ``test_flip`` the test logits are negated (they would change any test-driven choice)."""

    def make(test_flip=False):
        rng = np.random.default_rng(3)
        y = {"val": rng.integers(0, 4, 300), "test": rng.integers(0, 4, 300)}
        runs = []
        for method, points in (("ce", ["default"]), ("focal", ["default"]), ("rcl", ["lam=1", "lam=4"])):
            for point in points:
                shift = {"default": 0.0, "lam=1": 0.6, "lam=4": 2.5}[point]
                for seed in (0, 1):
                    logits = {}
                    for split in ("val", "test"):
                        z = 2.0 * np.eye(4)[y[split]] + rng.normal(0, 1.2, (300, 4))
                        z[:, 0] -= shift
                        if test_flip and split == "test":
                            z = -z  # test logits that would change any test-driven choice
                        logits[split] = z
                    runs.append(Run("d", "b", method, point, seed, SEV, logits, {k: v.copy() for k, v in y.items()},
                                    loss=method))
        return runs

    return make
