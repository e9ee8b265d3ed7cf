"""SeverityMatrix: the presets of docs/severity.md, constructors, serialisation, reorder, validation."""

import json
import math

import numpy as np
import pytest

from rcl_hf import SeverityMatrix
from rcl_hf.data.synthetic import SYNTHETIC_LABELS
from rcl_hf.severity import PRESETS

# docs/severity.md's presets, written out here independently of rcl_hf.severity.PRESETS.
DOC_PRESETS = {
    "brain_tumor_mri": (
        ["glioma", "meningioma", "notumor", "pituitary"],
        {"glioma", "meningioma", "pituitary"},
    ),
    "isic2018": (["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"], {"MEL", "BCC", "AKIEC"}),
    "breakhis": (
        [
            "adenosis",
            "fibroadenoma",
            "phyllodes_tumor",
            "tubular_adenoma",
            "ductal_carcinoma",
            "lobular_carcinoma",
            "mucinous_carcinoma",
            "papillary_carcinoma",
        ],
        {"ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"},
    ),
    "sicapv2": (["NC", "G3", "G4", "G5"], {"G3", "G4", "G5"}),
}


def _spec_cost(name, labels, positive, i, j):
    """Expected cost from the rules of docs/severity.md, cell by cell."""
    if i == j:
        return 0.0, False
    pi, pj = labels[i] in positive, labels[j] in positive
    if pi and not pj:
        return 1.0, True  # critical: a positive case called negative
    if pj and not pi:
        return 0.3, False  # over-call
    if name == "sicapv2" and pi:
        grades = ["G3", "G4", "G5"]
        return 0.1 * abs(grades.index(labels[i]) - grades.index(labels[j])), False
    return 0.1, False  # fine-grained


@pytest.mark.parametrize("name", sorted(DOC_PRESETS))
def test_presets_follow_spec_section_2(name):
    labels, positive = DOC_PRESETS[name]
    sev = SeverityMatrix.preset(name)
    assert sev.labels == labels
    assert sev.name == name
    k = len(labels)
    assert sev.matrix.shape == (k, k) and sev.matrix.dtype == np.float64
    assert sev.critical.shape == (k, k) and sev.critical.dtype == bool
    for i in range(k):
        for j in range(k):
            cost, crit = _spec_cost(name, labels, positive, i, j)
            assert sev.matrix[i, j] == pytest.approx(cost), (labels[i], labels[j])
            assert sev.critical[i, j] == crit, (labels[i], labels[j])
    assert list(sev.positive_rows) == [label in positive for label in labels]


def test_brain_tumor_and_sicapv2_presets_written_out():
    # Rows = truth, columns = prediction (docs/severity.md).
    brain = np.array(
        [
            [0.0, 0.1, 1.0, 0.1],  # glioma
            [0.1, 0.0, 1.0, 0.1],  # meningioma
            [0.3, 0.3, 0.0, 0.3],  # notumor
            [0.1, 0.1, 1.0, 0.0],  # pituitary
        ]
    )
    np.testing.assert_allclose(SeverityMatrix.preset("brain_tumor_mri").matrix, brain)
    np.testing.assert_array_equal(SeverityMatrix.preset("brain_tumor_mri").critical, brain == 1.0)
    sicap = np.array(
        [
            [0.0, 0.3, 0.3, 0.3],  # NC: over-calls
            [1.0, 0.0, 0.1, 0.2],  # G3
            [1.0, 0.1, 0.0, 0.1],  # G4
            [1.0, 0.2, 0.1, 0.0],  # G5
        ]
    )
    np.testing.assert_allclose(SeverityMatrix.preset("sicapv2").matrix, sicap, atol=1e-12)


def test_synthetic_preset_matches_embedded_dataset():
    sev = SeverityMatrix.preset("synthetic")
    assert sev.labels == SYNTHETIC_LABELS == ["normal", "lesion_round", "lesion_oval", "lesion_ring"]
    # Any lesion called "normal" is critical; nothing else.
    expected = np.zeros((4, 4), dtype=bool)
    expected[1:, 0] = True
    np.testing.assert_array_equal(sev.critical, expected)
    assert sev.cost("normal", "lesion_ring") == pytest.approx(0.3)
    assert sev.cost("lesion_oval", "lesion_round") == pytest.approx(0.1)


def test_every_preset_is_listed_and_valid():
    assert set(PRESETS) == set(DOC_PRESETS) | {"synthetic"}
    for name in PRESETS:
        sev = SeverityMatrix.preset(name)
        # Every critical cell has its row's largest cost (docs/severity.md).
        for i, j in zip(*np.nonzero(sev.critical)):
            assert sev.matrix[i, j] == sev.matrix[i].max()
        assert not np.diag(sev.critical).any()
        assert np.all(np.diag(sev.matrix) == 0)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown severity preset 'chest_xray'"):
        SeverityMatrix.preset("chest_xray")


def test_from_groups_costs_and_options():
    sev = SeverityMatrix.from_groups(["benign", "in_situ", "invasive"], positive=["in_situ", "invasive"])
    np.testing.assert_allclose(sev.matrix, [[0, 0.3, 0.3], [1.0, 0, 0.1], [1.0, 0.1, 0]])
    np.testing.assert_array_equal(sev.critical, [[False] * 3, [True, False, False], [True, False, False]])
    custom = SeverityMatrix.from_groups(
        ["a", "b", "c", "d"], positive=["b", "c", "d"], fine=0.05, overcall=0.5, critical=0.9, ordinal=True
    )
    np.testing.assert_allclose(
        custom.matrix,
        [[0, 0.5, 0.5, 0.5], [0.9, 0, 0.05, 0.1], [0.9, 0.05, 0, 0.05], [0.9, 0.1, 0.05, 0]],
    )
    assert custom.critical[1:, 0].all() and custom.critical.sum() == 3


def test_from_groups_errors_name_the_label():
    with pytest.raises(ValueError, match="Unknown positive label 'tumour'"):
        SeverityMatrix.from_groups(["a", "b"], positive=["tumour"])
    with pytest.raises(ValueError, match="at least one positive"):
        SeverityMatrix.from_groups(["a", "b"], positive=[])
    with pytest.raises(ValueError, match="at least one negative"):
        SeverityMatrix.from_groups(["a", "b"], positive=["a", "b"])
    with pytest.raises(ValueError, match="Duplicate label 'a'"):
        SeverityMatrix.from_groups(["a", "b", "a"], positive=["b"])


def test_default_critical_mask_is_cost_one():
    m = [[0, 0.1, 1.0], [0.3, 0, 0.3], [1.0, 0.2, 0]]
    sev = SeverityMatrix(["x", "y", "z"], m)
    np.testing.assert_array_equal(sev.critical, [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    assert sev.is_critical("z", "x") and not sev.is_critical("y", "x")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_and_json_round_trip(name, tmp_path):
    sev = SeverityMatrix.preset(name)
    again = SeverityMatrix.from_dict(json.loads(json.dumps(sev.to_dict())))
    assert again == sev and again.name == name
    path = tmp_path / f"{name}.json"
    sev.to_json(path)
    loaded = SeverityMatrix.from_json(path)
    assert loaded == sev
    assert loaded.matrix.dtype == np.float64 and loaded.critical.dtype == bool
    assert not (tmp_path / f"{name}.json.tmp").exists()
    assert SeverityMatrix.resolve(str(path)) == sev


def test_json_round_trip_keeps_a_custom_mask(tmp_path):
    # A mask that differs from "cost == 1": a 0.8 cell marked critical, a row without 1.0.
    m = [[0, 0.8, 0.2], [0.1, 0, 0.1], [0.5, 0.5, 0]]
    c = [[False, True, False], [False, False, False], [True, True, False]]
    sev = SeverityMatrix(["a", "b", "c"], m, c)
    sev.to_json(tmp_path / "s.json")
    loaded = SeverityMatrix.from_json(tmp_path / "s.json")
    np.testing.assert_array_equal(loaded.critical, c)
    np.testing.assert_array_equal(loaded.matrix, m)


def test_reorder_moves_costs_with_labels():
    sev = SeverityMatrix.preset("isic2018")
    order = ["VASC", "DF", "BKL", "AKIEC", "BCC", "NV", "MEL"]
    re = sev.reorder(order)
    assert re.labels == order
    for a in order:
        for b in order:
            assert re.cost(a, b) == sev.cost(a, b)
            assert re.is_critical(a, b) == sev.is_critical(a, b)
    assert re.reorder(sev.labels) == sev
    # The matrix itself moved: MEL -> NV is critical, at new position (6, 5).
    assert re.critical[6, 5] and re.matrix[6, 5] == 1.0


@pytest.mark.parametrize(
    "labels, match",
    [
        (["glioma", "meningioma", "notumor", "tumor"], r"missing \['pituitary'\], unknown \['tumor'\]"),
        (["glioma", "meningioma", "notumor"], r"missing \['pituitary'\]"),
        (["glioma", "glioma", "notumor", "pituitary"], r"missing \['meningioma'\]"),
        (["glioma", "meningioma", "notumor", "pituitary", "extra"], r"unknown \['extra'\]"),
    ],
)
def test_reorder_rejects_non_permutations(labels, match):
    with pytest.raises(ValueError, match=match):
        SeverityMatrix.preset("brain_tumor_mri").reorder(labels)


def test_check_labels_and_index():
    sev = SeverityMatrix.preset("brain_tumor_mri")
    sev.check_labels(["glioma", "meningioma", "notumor", "pituitary"])
    with pytest.raises(ValueError, match=r"other order: use \.reorder"):
        sev.check_labels(["notumor", "glioma", "meningioma", "pituitary"])
    with pytest.raises(ValueError, match="Unknown label 'cat'"):
        sev.cost("cat", "glioma")


def _valid():
    return [[0.0, 0.3, 0.3], [1.0, 0.0, 0.1], [1.0, 0.1, 0.0]]


def _with(i, j, value):
    m = _valid()
    m[i][j] = value
    return m


@pytest.mark.parametrize(
    "labels, matrix, critical, match",
    [
        (["n", "a", "b"], np.zeros((3, 2)), None, r"shape \(3, 2\), expected \(3, 3\)"),
        (["n", "a", "b"], np.zeros((2, 2)), None, r"shape \(2, 2\), expected \(3, 3\)"),
        (["n", "a", "b"], _valid(), np.zeros((2, 2), bool), r"Critical mask has shape \(2, 2\)"),
        (["n", "a", "b"], _with(0, 1, -0.1), None, r"\['n' -> 'a'\] \(0, 1\) is negative"),
        (["n", "a", "b"], _with(2, 1, math.nan), None, r"\['b' -> 'a'\] \(2, 1\) is not finite"),
        (["n", "a", "b"], _with(1, 2, math.inf), None, r"\['a' -> 'b'\] \(1, 2\) is not finite"),
        (["n", "a", "b"], _with(1, 1, 0.2), None, r"diagonal cell \['a' -> 'a'\] must be 0"),
        (["n", "a", "b"], _with(0, 2, 1.5), None, r"\['n' -> 'b'\] \(0, 2\) is 1.5, above the maximum of 1"),
        (["n", "a", "n"], _valid(), None, "Duplicate label 'n'"),
        (["n"], [[0.0]], None, "at least 2 labels"),
        (["n", "a", "b"], [["x", 0, 0], [0, 0, 0], [0, 0, 0]], None, "not numeric"),
        (
            ["n", "a", "b"],
            _valid(),
            [[False, False, False], [False, False, True], [True, False, False]],
            r"Critical cell \['a' -> 'b'\] has cost 0.1, below its row's maximum 1.0",
        ),
        (
            ["n", "a", "b"],
            _valid(),
            [[True, False, False], [True, False, False], [True, False, False]],
            r"Critical mask diagonal cell \['n' -> 'n'\] must be False",
        ),
        (
            ["n", "a", "b"],
            np.zeros((3, 3)),
            [[False, False, False], [True, False, False], [False, False, False]],
            r"Critical cell \['a' -> 'n'\] has zero cost",
        ),
        (["n", "a", "b"], _valid(), [[0, 0, 0], [2, 0, 0], [1, 0, 0]], "booleans"),
    ],
)
def test_invalid_input_names_the_cell_or_label(labels, matrix, critical, match):
    with pytest.raises(ValueError, match=match):
        SeverityMatrix(labels, matrix, critical)


def test_matrix_is_read_only():
    sev = SeverityMatrix.preset("sicapv2")
    with pytest.raises(ValueError):
        sev.matrix[1, 0] = 0.0
    with pytest.raises(ValueError):
        sev.critical[1, 0] = False


def test_invalid_json_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"labels": ["a", "b"], "matrix": [[0, 1], [0.3, 0]', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json' is not valid JSON"):
        SeverityMatrix.from_json(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="must be a JSON object"):
        SeverityMatrix.from_json(listed)
    missing = tmp_path / "missing.json"
    missing.write_text('{"labels": ["a", "b"]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['matrix'\]"):
        SeverityMatrix.from_json(missing)
    invalid_cell = tmp_path / "cell.json"
    invalid_cell.write_text('{"labels": ["a", "b"], "matrix": [[0, 2], [0.3, 0]]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['a' -> 'b'\] \(0, 1\) is 2.0, above"):
        SeverityMatrix.from_json(invalid_cell)


def test_resolve_forms(tmp_path):
    sev = SeverityMatrix.preset("breakhis")
    assert SeverityMatrix.resolve("breakhis") == sev
    assert SeverityMatrix.resolve(sev) is sev
    assert SeverityMatrix.resolve(sev.to_dict()) == sev
    assert SeverityMatrix.resolve(None, default="breakhis") == sev
    with pytest.raises(ValueError, match="neither a severity preset"):
        SeverityMatrix.resolve(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="No severity matrix given"):
        SeverityMatrix.resolve(None)


def test_markdown_marks_critical_cells():
    md = SeverityMatrix.preset("brain_tumor_mri").to_markdown()
    lines = md.splitlines()
    assert lines[0] == "| true \\ predicted | glioma | meningioma | notumor | pituitary |"
    assert lines[2] == "| **glioma** | 0 | 0.1 | **1 ⚠** | 0.1 |"
    assert md.count("⚠") == 3
