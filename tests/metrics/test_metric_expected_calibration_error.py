"""The expected-calibration-error `evaluate` module: loads from its folder, calls the library's one ECE, agrees with
a hand computation, gives 0 for a calibrated example and the planted gap for a miscalibrated one, refuses bad input."""

import ast
from pathlib import Path

import numpy as np
import pytest

from rcl_hf.metrics import ECE_METRIC_PATH
from rcl_hf.metrics.reliability import expected_calibration_error

FOLDER = Path(ECE_METRIC_PATH)


@pytest.fixture(scope="module")
def ece_metric():
    import evaluate

    return evaluate.load(ECE_METRIC_PATH)


def test_folder_layout_and_one_import_per_line():
    assert (FOLDER / f"{FOLDER.name}.py").is_file() and (FOLDER / "README.md").is_file()
    tree = ast.parse((FOLDER / f"{FOLDER.name}.py").read_text(encoding="utf-8"))
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(len(n.names) == 1 for n in imports), "evaluate reads one import per line"
    # the one ECE definition is called, not re-implemented
    assert any(isinstance(n, ast.ImportFrom) and n.module == "rcl_hf.metrics.reliability"
               and n.names[0].name == "expected_calibration_error" for n in imports)


def _hand_ece(probs, labels, n_bins):
    """Independent reference: an explicit loop over bins (i/n, (i+1)/n]."""
    total, n = 0.0, len(labels)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        rows = [i for i, p in enumerate(probs) if (lo < max(p) <= hi) or (b == 0 and max(p) == 0)]
        if rows:
            acc = sum(int(np.argmax(probs[i]) == labels[i]) for i in rows) / len(rows)
            conf = sum(max(probs[i]) for i in rows) / len(rows)
            total += len(rows) / n * abs(acc - conf)
    return total


def test_small_example_by_hand(ece_metric):
    probs = [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.4, 0.3, 0.3], [0.2, 0.35, 0.45]]
    labels = [0, 1, 0, 0]
    # bin (0.5, 1]: conf 0.7, acc 0.5 -> 2/4 * 0.2; bin (0, 0.5]: conf 0.425, acc 0.5 -> 2/4 * 0.075
    assert _hand_ece(probs, labels, 2) == pytest.approx(0.1375)
    out = ece_metric.compute(prediction_scores=probs, references=labels, n_bins=2)
    assert out["ece"] == pytest.approx(0.1375) and out["n_samples"] == 4


def test_matches_the_library_and_the_hand_loop_on_random_probabilities(ece_metric):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 5)) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = rng.integers(0, 5, 300)
    got = ece_metric.compute(prediction_scores=p.tolist(), references=y.tolist(), n_bins=10)["ece"]
    assert got == pytest.approx(expected_calibration_error(p, y, 10), abs=1e-12)
    assert got == pytest.approx(_hand_ece(p.tolist(), y.tolist(), 10), abs=1e-12)


def test_perfect_calibration_gives_zero(ece_metric):
    # 10 cases at confidence 0.8 with 8 right; 4 at confidence 0.5 (ties go to class 0) with 2 right
    probs = [[0.8, 0.2]] * 10 + [[0.5, 0.5]] * 4
    labels = [0] * 8 + [1] * 2 + [0, 0, 1, 1]
    assert ece_metric.compute(prediction_scores=probs, references=labels, n_bins=5)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_planted_miscalibration_gives_its_gap(ece_metric):
    # confidence 0.9 everywhere, 60% right: over-confident by 0.3
    probs = [[0.9, 0.05, 0.05]] * 10
    labels = [0] * 6 + [1, 2, 1, 2]
    assert ece_metric.compute(prediction_scores=probs, references=labels)["ece"] == pytest.approx(0.3)


@pytest.mark.parametrize("scores, refs, kw, message", [
    ([[2.0, -1.0], [0.5, 0.1]], [0, 1], {}, "logits"),                   # logits
    ([[0.5, 0.1], [0.6, 0.6]], [0, 1], {}, "sum to 1"),                  # unnormalised scores
    ([[0.9, 0.1], [0.2, 0.8]], [0.5, 1], {}, "integer class indices"),  # a score as a reference
    ([[0.9, 0.1], [0.2, 0.8]], [0, 2], {}, "outside"),                  # no class 2
    ([[1.0], [1.0]], [0, 0], {}, "K >= 2"),                              # one class
    ([[0.9, 0.1], [0.2, 0.8]], [0, 1], {"n_bins": 0}, "n_bins"),
])
def test_bad_input_is_a_clear_value_error(ece_metric, scores, refs, kw, message):
    with pytest.raises(ValueError, match=message):
        ece_metric.compute(prediction_scores=scores, references=refs, **kw)
