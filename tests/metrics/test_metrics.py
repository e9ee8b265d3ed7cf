"""Clinical metrics: hand-computed cases, a naive reference, sklearn, the `evaluate`
module, bootstrap intervals, the Bayes-risk decision and the Trainer's compute_metrics."""


import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from transformers import EvalPrediction

from rcl_hf import SeverityMatrix
from rcl_hf.metrics import (
    bayes_risk_decision,
    confusion_matrix,
    critical_error_rate,
    make_compute_metrics,
    relative_safety_improvement,
)
from rcl_hf.severity import PRESETS

BRAIN = SeverityMatrix.preset("brain_tumor_mri")  # glioma 0, meningioma 1, notumor 2, pituitary 3


# ------------------------------------------------------------------- by hand
def test_hand_computed_case():
    refs = [0, 0, 0, 1, 1, 2, 2, 3]
    preds = [0, 2, 1, 1, 2, 2, 0, 3]
    out = critical_error_rate(preds, refs, BRAIN, per_class=True, return_confusion=True)
    # Correct: cases 0, 3, 5, 7.
    assert out["accuracy"] == pytest.approx(4 / 8)
    # Critical: glioma -> notumor (case 1), meningioma -> notumor (case 4).
    assert out["n_critical"] == 2
    assert out["cer"] == pytest.approx(2 / 8)
    # Positive cases (tumours): 3 glioma + 2 meningioma + 1 pituitary.
    assert out["n_positive"] == 6
    assert out["critical_miss_rate"] == pytest.approx(2 / 6)
    # Costs: 1 (case 1) + 0.1 (glioma -> meningioma) + 1 (case 4) + 0.3 (notumor -> glioma).
    assert out["expected_cost"] == pytest.approx(2.4 / 8)
    # Recall: glioma 1/3, meningioma 1/2, notumor 1/2, pituitary 1.
    assert out["per_class_recall"] == pytest.approx({"glioma": 1 / 3, "meningioma": 0.5, "notumor": 0.5, "pituitary": 1.0})
    assert out["balanced_accuracy"] == pytest.approx((1 / 3 + 0.5 + 0.5 + 1.0) / 4)
    # Precision: glioma 1/2, meningioma 1/2, notumor 1/3, pituitary 1 -> F1 0.4, 0.5, 0.4, 1.
    assert out["macro_f1"] == pytest.approx((0.4 + 0.5 + 0.4 + 1.0) / 4)
    assert out["confusion_matrix"] == [[1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    assert out["labels"] == BRAIN.labels
    assert out["n_samples"] == 8
    assert isinstance(out["n_critical"], int) and isinstance(out["cer"], float)


def test_no_positive_cases():
    # Only "notumor" cases: no tumour can be missed, CMR is 0 (defined), not NaN.
    out = critical_error_rate([2, 0, 2], [2, 2, 2], BRAIN)
    assert out["n_positive"] == 0
    assert out["critical_miss_rate"] == 0.0
    assert out["cer"] == 0.0
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["expected_cost"] == pytest.approx(0.3 / 3)
    assert out["balanced_accuracy"] == pytest.approx(2 / 3)
    assert all(np.isfinite(v) for v in out.values())


def test_classes_missing_from_predictions():
    # Pituitary is never predicted; notumor never occurs in the references.
    refs = [0, 1, 3, 3]
    preds = [0, 1, 2, 0]
    out = critical_error_rate(preds, refs, BRAIN, per_class=True)
    assert out["per_class_recall"] == {"glioma": 1.0, "meningioma": 1.0, "notumor": None, "pituitary": 0.0}
    assert out["balanced_accuracy"] == pytest.approx((1 + 1 + 0) / 3)
    # pituitary -> notumor critical; pituitary -> glioma fine-grained (0.1).
    assert out["cer"] == pytest.approx(1 / 4)
    assert out["critical_miss_rate"] == pytest.approx(1 / 4)
    assert out["expected_cost"] == pytest.approx(1.1 / 4)
    # F1: glioma P 1/2 R 1 -> 2/3; meningioma 1; pituitary 0.
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_classes_missing_from_references():
    # Only glioma and notumor occur; balanced accuracy averages over those two.
    refs = [0, 0, 2, 2]
    preds = [0, 2, 2, 3]
    out = critical_error_rate(preds, refs, BRAIN, per_class=True, return_confusion=True)
    assert out["balanced_accuracy"] == pytest.approx(0.5)
    assert out["per_class_recall"]["meningioma"] is None and out["per_class_recall"]["pituitary"] is None
    assert out["cer"] == pytest.approx(0.25)
    assert out["critical_miss_rate"] == pytest.approx(0.5)
    assert out["expected_cost"] == pytest.approx(1.3 / 4)
    # glioma: P 1, R 1/2 -> 2/3; notumor: P 1/2, R 1/2 -> 1/2.
    assert out["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert out["confusion_matrix"] == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]


def test_severity_forms_and_custom_labels():
    refs, preds = [1, 2, 0, 1], [0, 1, 2, 1]
    by_preset = critical_error_rate(preds, refs, "brain_tumor_mri")
    assert critical_error_rate(preds, refs, BRAIN) == by_preset
    assert critical_error_rate(preds, refs, BRAIN.matrix, BRAIN.critical) == by_preset
    assert critical_error_rate(preds, refs, (BRAIN.matrix.tolist(), BRAIN.critical.tolist())) == by_preset
    # Without a mask, cells of cost 1.0 are critical: same as the preset.
    assert critical_error_rate(preds, refs, BRAIN.matrix) == by_preset
    # A mask that marks nothing: no critical error.
    none = critical_error_rate(preds, refs, BRAIN.matrix, np.zeros((4, 4), bool))
    assert none["cer"] == 0.0 and none["n_positive"] == 0
    named = critical_error_rate(preds, refs, BRAIN.matrix, BRAIN.critical, labels=list("abcd"), per_class=True)
    assert list(named["per_class_recall"]) == list("abcd")
    float_labels = critical_error_rate(np.array(preds, float), np.array(refs, float), BRAIN)
    assert float_labels == by_preset


def test_relative_safety_improvement():
    assert relative_safety_improvement(0.05, 0.2) == pytest.approx(0.75)
    assert relative_safety_improvement(0.3, 0.2) == pytest.approx(-0.5)
    assert np.isnan(relative_safety_improvement(0.1, 0.0))
    assert isinstance(relative_safety_improvement(0.05, 0.2), float)
    # bootstrap replicates: elementwise, NaN where the reference is 0
    out = relative_safety_improvement(np.array([0.05, 0.3, 0.1]), np.array([0.2, 0.2, 0.0]))
    np.testing.assert_allclose(out[:2], [0.75, -0.5])
    assert np.isnan(out[2])


# ---------------------------------------------------------------- naive reference
def naive_metrics(preds, refs, matrix, critical):
    """The docs/metrics.md definitions with python loops, case by case."""
    n = len(refs)
    k = len(matrix)
    correct = sum(1 for p, r in zip(preds, refs) if p == r)
    present = sorted(set(refs))
    recalls, f1s = [], []
    for c in present:
        tp = sum(1 for p, r in zip(preds, refs) if p == c and r == c)
        fn = sum(1 for p, r in zip(preds, refs) if p != c and r == c)
        fp = sum(1 for p, r in zip(preds, refs) if p == c and r != c)
        rec = tp / (tp + fn)
        prec = tp / (tp + fp) if tp + fp else 0.0
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    n_crit = sum(1 for p, r in zip(preds, refs) if critical[r][p])
    n_pos = sum(1 for r in refs if any(critical[r][j] for j in range(k)))
    return {
        "accuracy": correct / n,
        "balanced_accuracy": sum(recalls) / len(recalls),
        "macro_f1": sum(f1s) / len(f1s),
        "cer": n_crit / n,
        "critical_miss_rate": n_crit / n_pos if n_pos else 0.0,
        "expected_cost": sum(matrix[r][p] for p, r in zip(preds, refs)) / n,
        "n_critical": n_crit,
        "n_positive": n_pos,
        "n_samples": n,
    }


def _random_case(k, n, seed, drop_class=None):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, size=n)
    if drop_class is not None:
        refs[refs == drop_class] = (drop_class + 1) % k
    noise = rng.integers(0, k, size=n)
    preds = np.where(rng.random(n) < 0.6, refs, noise)
    return preds, refs


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("drop_class", [None, 0])
def test_matches_naive_reference_and_sklearn(name, drop_class):
    sev = SeverityMatrix.preset(name)
    k = sev.num_labels
    preds, refs = _random_case(k, 301, seed=len(name) + (drop_class or 0), drop_class=drop_class)
    out = critical_error_rate(preds, refs, sev, return_confusion=True)
    ref = naive_metrics(preds.tolist(), refs.tolist(), sev.matrix.tolist(), sev.critical.tolist())
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    present = sorted(set(refs.tolist()))
    assert out["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(refs, preds))
    assert out["macro_f1"] == pytest.approx(f1_score(refs, preds, labels=present, average="macro", zero_division=0))
    np.testing.assert_array_equal(out["confusion_matrix"], sk_confusion_matrix(refs, preds, labels=list(range(k))))


def test_confusion_matrix_function():
    cm = confusion_matrix([1, 1, 0, 2], [0, 1, 0, 2], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])


def test_hundred_thousand_predictions():
    sev = SeverityMatrix.preset("isic2018")
    preds, refs = _random_case(7, 100_000, seed=1)
    out = critical_error_rate(preds, refs, sev)
    assert out["n_samples"] == 100_000
    assert out["cer"] == pytest.approx(sev.critical[refs, preds].mean())
    assert out["expected_cost"] == pytest.approx(sev.matrix[refs, preds].mean())
    # speed is measured, not asserted here: benchmarks/metric_speed.py (results in benchmarks/results/)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "preds, refs, match",
    [
        ([0, 4], [0, 1], r"predictions hold class index 4, outside \[0, 3\]"),
        ([0, -1], [0, 1], r"predictions hold class index -1"),
        ([0, 1], [0, 7], r"references hold class index 7"),
        ([0, 1, 2], [0, 1], r"predictions \(3\) and references \(2\) differ in length"),
        ([], [], "at least one prediction"),
        ([[0, 1]], [[0, 1]], "must be a 1-D sequence"),
        ([0.5, 1.0], [0, 1], "integer class indices"),
        ([float("nan"), 1.0], [0, 1], "integer class indices"),
        ([1e30, 0.0], [0, 1], r"class index 1e\+30, outside"),
        (["glioma", "notumor"], [0, 1], "got dtype <U7 .class names"),
        ([None, 1], [0, 1], "got dtype object"),
    ],
)
def test_invalid_inputs(preds, refs, match):
    with pytest.raises(ValueError, match=match):
        critical_error_rate(preds, refs, BRAIN)


def test_invalid_severity_and_options():
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(4, 4\)|shape"):
        critical_error_rate([0], [0], np.zeros((3, 4)))
    with pytest.raises(ValueError, match="above the maximum of 1"):
        critical_error_rate([0], [0], [[0, 2.0], [0.3, 0]])
    with pytest.raises(ValueError, match="3 labels given for 4 classes"):
        critical_error_rate([0], [0], BRAIN, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="n_bootstrap must be >= 0"):
        critical_error_rate([0], [0], BRAIN, n_bootstrap=-5)
    with pytest.raises(ValueError, match="confidence"):
        critical_error_rate([0], [0], BRAIN, n_bootstrap=10, confidence=1.5)


# ------------------------------------------------------------------- bootstrap
def _bootstrap_case():
    return _random_case(4, 400, seed=3)


def test_bootstrap_intervals_contain_point_and_are_seeded():
    preds, refs = _bootstrap_case()
    a = critical_error_rate(preds, refs, BRAIN, n_bootstrap=1000, seed=7)
    for key in ("cer", "accuracy", "balanced_accuracy", "critical_miss_rate", "expected_cost"):
        lo, hi = a[f"{key}_ci"]
        assert lo <= a[key] <= hi, key
        assert hi - lo > 0, key
    assert critical_error_rate(preds, refs, BRAIN, n_bootstrap=1000, seed=7) == a
    b = critical_error_rate(preds, refs, BRAIN, n_bootstrap=1000, seed=8)
    assert b["cer_ci"] != a["cer_ci"] and b["accuracy_ci"] != a["accuracy_ci"]
    # Point estimates do not depend on the bootstrap.
    assert b["cer"] == a["cer"] == critical_error_rate(preds, refs, BRAIN)["cer"]
    narrow = critical_error_rate(preds, refs, BRAIN, n_bootstrap=1000, seed=7, confidence=0.5)
    assert narrow["cer_ci"][0] >= a["cer_ci"][0] and narrow["cer_ci"][1] <= a["cer_ci"][1]


def test_bootstrap_matches_a_case_resampling_bootstrap():
    # The multinomial draw over confusion cells is a case resample: compare with a
    # plain index-resampling bootstrap (different random streams, same distribution).
    preds, refs = _bootstrap_case()
    out = critical_error_rate(preds, refs, BRAIN, n_bootstrap=4000, seed=0)
    rng = np.random.default_rng(123)
    crit = BRAIN.critical[refs, preds].astype(float)
    hit = (preds == refs).astype(float)
    idx = rng.integers(0, len(refs), size=(4000, len(refs)))
    for key, per_case in (("cer", crit), ("accuracy", hit)):
        lo, hi = np.quantile(per_case[idx].mean(1), [0.025, 0.975])
        assert out[f"{key}_ci"][0] == pytest.approx(lo, abs=0.006), key
        assert out[f"{key}_ci"][1] == pytest.approx(hi, abs=0.006), key


# ------------------------------------------------------------------ Bayes decision
def test_bayes_risk_decision_by_hand():
    # 60 % notumor, 40 % glioma: argmax says notumor, but deciding notumor costs
    # 0.4 * 1.0 = 0.4 while deciding glioma costs 0.6 * 0.3 = 0.18.
    probs = np.array([[0.4, 0.0, 0.6, 0.0], [0.0, 0.0, 1.0, 0.0]])
    decisions, risks = bayes_risk_decision(probs, BRAIN)
    assert decisions.tolist() == [0, 2]
    np.testing.assert_allclose(risks, [0.18, 0.0])


@pytest.mark.parametrize("name", ["brain_tumor_mri", "isic2018", "sicapv2"])
def test_bayes_risk_decision_brute_force(name):
    sev = SeverityMatrix.preset(name)
    k = sev.num_labels
    probs = np.random.default_rng(0).dirichlet(np.full(k, 0.5), size=200)
    decisions, risks = bayes_risk_decision(probs, sev)
    for n, p in enumerate(probs):
        costs = [sum(p[i] * sev.matrix[i, j] for i in range(k)) for j in range(k)]
        best = min(range(k), key=lambda j: costs[j])
        assert decisions[n] == best
        assert risks[n] == pytest.approx(costs[best])
    # Same answer from raw arrays.
    d2, _ = bayes_risk_decision(probs, sev.matrix, sev.critical)
    np.testing.assert_array_equal(d2, decisions)
    with pytest.raises(ValueError, match=rf"probs must be \(N, {k}\)"):
        bayes_risk_decision(probs[:, :2], sev)


# ------------------------------------------------------------- evaluate module
@pytest.mark.parametrize("name", ["brain_tumor_mri", "isic2018", "sicapv2"])
def test_evaluate_module_agrees_with_functional_core(cer_metric, name):
    sev = SeverityMatrix.preset(name)
    preds, refs = _random_case(sev.num_labels, 250, seed=5)
    core = critical_error_rate(preds, refs, sev, per_class=True, return_confusion=True)
    by_arrays = cer_metric.compute(
        predictions=preds.tolist(),
        references=refs.tolist(),
        severity_matrix=sev.matrix.tolist(),
        critical_mask=sev.critical.tolist(),
        labels=sev.labels,
        per_class=True,
        return_confusion=True,
    )
    assert by_arrays == core
    by_name = cer_metric.compute(
        predictions=preds, references=refs, severity=name, per_class=True, return_confusion=True
    )
    assert by_name == core
    boot = cer_metric.compute(predictions=preds, references=refs, severity=name, n_bootstrap=200, seed=3)
    assert boot["cer_ci"] == critical_error_rate(preds, refs, sev, n_bootstrap=200, seed=3)["cer_ci"]


def test_evaluate_module_batches_and_errors(cer_metric):
    refs = [0, 0, 0, 1, 1, 2, 2, 3]
    preds = [0, 2, 1, 1, 2, 2, 0, 3]
    for p, r in zip(preds, refs):
        cer_metric.add_batch(predictions=[p], references=[r])
    out = cer_metric.compute(severity="brain_tumor_mri")
    assert out["cer"] == pytest.approx(0.25) and out["n_samples"] == 8
    with pytest.raises(ValueError, match="severity_matrix"):
        cer_metric.compute(predictions=[0], references=[0])
    with pytest.raises(ValueError, match="class index 9"):
        cer_metric.compute(predictions=[9], references=[0], severity="brain_tumor_mri")
    assert "Critical Error Rate" in cer_metric.description


# ----------------------------------------------------------- Trainer compute_metrics
def test_make_compute_metrics():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(120, 4)) * 2
    labels = rng.integers(0, 4, size=120)
    fn = make_compute_metrics(BRAIN)
    out = fn(EvalPrediction(predictions=logits, label_ids=labels))
    core = critical_error_rate(logits.argmax(1), labels, BRAIN)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "cer", "critical_miss_rate", "expected_cost", "n_critical"):
        assert out[key] == pytest.approx(core[key])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    bayes = critical_error_rate(bayes_risk_decision(probs, BRAIN)[0], labels, BRAIN)
    assert out["bayes_cer"] == pytest.approx(bayes["cer"])
    assert out["bayes_cer"] <= out["cer"]  # Bayes rule trades over-calls for fewer critical misses
    assert all(isinstance(v, float) for v in out.values())
    # Models returning (logits, hidden) tuples.
    tup = fn(EvalPrediction(predictions=(logits, rng.normal(size=(120, 3))), label_ids=labels))
    assert tup == out
    assert "bayes_cer" not in make_compute_metrics(BRAIN, bayes_rule=False)(EvalPrediction(logits, labels))
