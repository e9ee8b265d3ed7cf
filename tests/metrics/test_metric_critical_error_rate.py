"""The `evaluate` module folder on its own: no rcl_hf import, its preset copy equal to rcl_hf's,
its numbers equal to rcl_hf.metrics.functional on random inputs (in a process where rcl_hf cannot
be imported), float predictions refused, class names accepted; and the canonical softmax."""

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rcl_hf import SeverityMatrix
from rcl_hf.metrics import METRIC_PATH, bayes_risk_decision, critical_error_rate, expected_costs, softmax
from rcl_hf.metrics.critical_error_rate.clinical_scores import PRESET_GROUPS, preset_severity
from rcl_hf.severity import PRESETS

FOLDER = Path(METRIC_PATH)


def test_folder_and_module_share_a_name_and_import_no_rcl_hf():
    assert (FOLDER / f"{FOLDER.name}.py").is_file() and (FOLDER / "README.md").is_file()
    for path in FOLDER.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert len(node.names) == 1, f"{path.name}:{node.lineno}: one import per line (evaluate reads lines)"
                assert not node.names[0].name.startswith("rcl_hf"), f"{path.name} imports rcl_hf"
            elif isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("rcl_hf"), f"{path.name} imports rcl_hf"
                if node.level:
                    assert len(node.names) == 1, f"{path.name}:{node.lineno}: one name per relative import line"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_copy_equals_rcl_hf_presets(name):
    assert set(PRESET_GROUPS) == set(PRESETS)
    matrix, critical, labels = preset_severity(name)
    sev = SeverityMatrix.preset(name)
    assert labels == sev.labels
    np.testing.assert_array_equal(matrix, sev.matrix)
    np.testing.assert_array_equal(critical, sev.critical)


_ISOLATED = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoRclHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "rcl_hf" or name.startswith("rcl_hf."):
                raise ImportError(f"rcl_hf is blocked in this process ({name})")
            return None

    sys.meta_path.insert(0, NoRclHf())
    try:
        import rcl_hf
        raise SystemExit("rcl_hf imported although blocked")
    except ImportError:
        pass
    import evaluate
    import numpy as np

    cases = json.loads(sys.argv[2])
    metric = evaluate.load(sys.argv[1])
    out = []
    for case in cases:
        out.append(metric.compute(**case))
    try:
        metric.compute(predictions=[0.5, 1], references=[0, 1], severity="brain_tumor_mri")
        out.append("accepted 0.5")
    except ValueError as err:
        out.append(str(err))
    assert not [m for m in sys.modules if m.startswith("rcl_hf")]
    print("RESULT " + json.dumps(out))
    """
)


def _random_case(k, n, seed):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, size=n)
    preds = np.where(rng.random(n) < 0.6, refs, rng.integers(0, k, size=n))
    return preds.tolist(), refs.tolist()


def test_evaluate_load_without_rcl_hf_matches_functional(tmp_path):
    folder = tmp_path / "critical_error_rate"
    folder.mkdir()
    for name in ("critical_error_rate.py", "clinical_scores.py", "README.md"):
        shutil.copy2(FOLDER / name, folder / name)
    cases, expected = [], []
    for i, name in enumerate(("brain_tumor_mri", "isic2018", "sicapv2", "breakhis")):
        sev = SeverityMatrix.preset(name)
        preds, refs = _random_case(sev.num_labels, 200 + 37 * i, seed=i)
        kw = dict(per_class=True, return_confusion=True, n_bootstrap=100, seed=i)
        if i % 2:  # class names and the matrix as a dict
            case = dict(predictions=[sev.labels[p] for p in preds], references=[sev.labels[r] for r in refs],
                        severity=sev.to_dict(), **kw)
        else:
            case = dict(predictions=preds, references=refs, severity=name, **kw)
        cases.append(case)
        expected.append(critical_error_rate(preds, refs, sev, **kw))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, str(folder), json.dumps(cases)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for out, want in zip(got[:-1], expected):
        want = json.loads(json.dumps(want))  # tuples -> lists, as JSON carries them
        assert out == want
    assert "integer class indices, got 0.5" in got[-1]


def test_float_predictions_are_refused_not_truncated(cer_metric):
    for preds in ([0.5, 1], [1.0, float("nan")], [0.0, 2.7]):
        with pytest.raises(ValueError, match="integer class indices"):
            cer_metric.compute(predictions=preds, references=[0, 1], severity="brain_tumor_mri")
    whole = cer_metric.compute(predictions=[0.0, 1.0], references=[0, 1], severity="brain_tumor_mri")
    assert whole["accuracy"] == 1.0  # integral floats are indices


def test_class_names_with_a_labelled_severity(cer_metric):
    out = cer_metric.compute(predictions=["notumor", "glioma"], references=["glioma", "glioma"], severity="brain_tumor_mri")
    assert out["cer"] == 0.5 and out["accuracy"] == 0.5
    mixed = cer_metric.compute(predictions=["notumor", "glioma"], references=[0, 0], severity="brain_tumor_mri")
    assert mixed == out
    with pytest.raises(ValueError, match=r"unknown class name\(s\) \['tumour'\]"):
        cer_metric.compute(predictions=["tumour", "glioma"], references=["glioma", "glioma"], severity="brain_tumor_mri")
    sev = SeverityMatrix.preset("brain_tumor_mri")
    with pytest.raises(ValueError, match="class names\\? pass a severity with labels"):
        cer_metric.compute(predictions=["notumor"], references=["glioma"], severity_matrix=sev.matrix.tolist())
    named = cer_metric.compute(predictions=["notumor"], references=["glioma"], severity_matrix=sev.matrix.tolist(),
                               labels=sev.labels)
    assert named["cer"] == 1.0
    with pytest.raises(ValueError, match="Unknown severity preset"):
        cer_metric.compute(predictions=[0], references=[0], severity="mnist")


def test_softmax_and_expected_costs_are_the_canonical_ones():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4)) * 3
    p = softmax(z)
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-12)
    big = softmax(np.array([[1e4, 0.0, -1e4, 5.0]]))
    assert np.all(np.isfinite(big)) and big[0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(softmax(z.T, axis=0), p.T)
    sev = SeverityMatrix.preset("brain_tumor_mri")
    risk = expected_costs(p, sev)
    np.testing.assert_allclose(risk, p @ sev.matrix)
    decisions, chosen = bayes_risk_decision(p, sev)
    np.testing.assert_array_equal(decisions, risk.argmin(1))
    np.testing.assert_allclose(chosen, risk.min(1))
