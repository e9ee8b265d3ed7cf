"""The subgroup validity report: lesion-level units, verdicts that can fail, the metadata join."""

import json
from pathlib import Path

import numpy as np
import pytest

from research.subgroup_validity import age_band, read_lesion_metadata, subgroup_row

ROOT = Path(__file__).resolve().parents[2]


def _sample(n_lesions, images_per_lesion, missed_lesions):
    groups = np.repeat([f"L{i}" for i in range(n_lesions)], images_per_lesion)
    miss = np.isin(groups, [f"L{i}" for i in range(missed_lesions)])
    return miss, np.ones(len(groups), bool), groups


def test_a_subgroup_built_to_fail_is_exceeded_and_a_clean_one_holds():
    miss, cap, groups = _sample(40, 2, 20)  # half the lesions missed: far above 10%
    row = subgroup_row(miss, cap, groups, alpha=0.1, min_lesions=10, n_boot=500, seed=0)
    assert row["critical_miss"] == pytest.approx(0.5) and row["verdict"] == "exceeded" and row["ci"][0] > 0.1
    miss, cap, groups = _sample(40, 2, 0)
    row = subgroup_row(miss, cap, groups, alpha=0.1, min_lesions=10, n_boot=500, seed=0)
    assert row["verdict"] == "held" and row["critical_miss"] == 0.0
    # the exact bound with 0 of 40 lesions: 1 - 0.05 ** (1 / 40)
    assert row["cp_upper"] == pytest.approx(1 - 0.05 ** (1 / 40), rel=1e-6)


def test_the_lesion_is_the_unit_not_the_image():
    miss, cap, groups = _sample(5, 30, 1)  # 150 images but 5 lesions: too few to say
    row = subgroup_row(miss, cap, groups, alpha=0.1, min_lesions=10, n_boot=200, seed=0)
    assert row["critical_lesions"] == 5 and row["critical_images"] == 150 and row["verdict"] == "not shown"
    miss, cap, groups = _sample(12, 1, 2)  # 2 of 12 misses = 16.7%, interval straddles 10%
    row = subgroup_row(miss, cap, groups, alpha=0.1, min_lesions=10, n_boot=500, seed=0)
    assert row["verdict"] == "above alpha, not significant" and row["ci"][0] <= 0.1 < row["critical_miss"]


def test_metadata_is_read_per_lesion_with_age_bands(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
                   "HAM_1,ISIC_1,mel,histo,50.0,male,back\nHAM_1,ISIC_2,mel,histo,50.0,male,back\n"
                   "HAM_2,ISIC_3,nv,follow_up,,female,\n")
    meta = read_lesion_metadata(csv)
    assert meta == {"HAM_1": {"dx_type": "histo", "sex": "male", "age_band": "45-64", "localization": "back"},
                    "HAM_2": {"dx_type": "follow_up", "sex": "female", "age_band": "unknown", "localization": "unknown"}}
    assert [age_band(v) for v in ("10", "44.9", "45", "64", "65", "x")] == ["< 45", "< 45", "45-64", "45-64", ">= 65", "unknown"]
    (tmp_path / "bad.csv").write_text("lesion_id,image_id\nHAM_1,ISIC_1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        read_lesion_metadata(tmp_path / "bad.csv")


METADATA = ROOT.parent / "shared" / "data" / "isic2018_task3" / "HAM10000_metadata.csv"


@pytest.mark.slow
@pytest.mark.skipif(not METADATA.is_file(), reason="needs the real HAM10000 metadata under ../shared/data")
def test_the_committed_report_is_what_the_shipped_predictions_give():
    from research.subgroup_validity import subgroup_report

    saved = json.loads((ROOT / "research" / "results" / "subgroup_validity" / "results.json").read_text())
    again = subgroup_report(ROOT / "models" / "isic2018-efficientnet-lite0", METADATA, saved["min_lesions"],
                            saved["n_boot"], saved["seed"])
    assert again["tables"] == saved["tables"] and again["verdicts"] == saved["verdicts"]
