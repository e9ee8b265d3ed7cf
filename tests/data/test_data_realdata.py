"""Smoke test on the real data in ``../shared/data`` (skipped when absent; run with ``-m realdata``).

Class counts are those of ``../shared/data/README.md``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from rcl_hf import SeverityMatrix
from rcl_hf.data import load_dataset, severity_for
from rcl_hf.data.splits import check_disjoint_groups

pytestmark = pytest.mark.realdata

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

# Brain MRI, split seed 0, measured on ../shared/data (Training/ only: every split derived) with
#   PYTHONPATH=src python -c "from rcl_hf.data import load_dataset as L; d = L('brain_tumor_mri',
#   '../shared/data/brain_tumor_mri'); print({s: len(v) for s, v in d.items()}, len({g for v in d.values() for g in v['group_id']}))"
# default (SHA-1 + perceptual dHash <= 2): 3995 / 862 / 855, 4311 groups, 461 perceptual duplicate groups;
# perceptual=False (SHA-1 only): 3998 / 856 / 858, 5516 groups.
BRAIN_SPLITS = {"train": 3995, "validation": 862, "test": 855}
BRAIN_SPLITS_SHA1_ONLY = {"train": 3998, "validation": 856, "test": 858}

EXPECTED = {
    "brain_tumor_mri": ("brain_tumor_mri", {"glioma": 1321, "meningioma": 1339, "notumor": 1595, "pituitary": 1457}),
    "isic2018": ("isic2018_task3", {"NV": 5404, "MEL": 884, "BKL": 873, "BCC": 405, "AKIEC": 251, "VASC": 117, "DF": 97}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dataset_counts_grouping_and_cache(name, tmp_path):
    folder, expected = EXPECTED[name]
    data_dir = DATA / folder
    if not data_dir.is_dir():
        pytest.skip(f"{data_dir} is absent")
    t0 = time.perf_counter()
    dsd, report = load_dataset(name, data_dir, cache_dir=tmp_path, progress=False, return_report=True)
    cold = time.perf_counter() - t0
    total = Counter()
    for split, ds in dsd.items():
        names = ds.features["label"].names
        counts = Counter(names[v] for v in ds["label"])
        total.update(counts)
        assert set(counts) == set(expected), f"{split} misses a class"
    assert dict(total) == expected
    assert not report.skipped, report.summary()
    assert list(dsd) == ["train", "validation", "test"]
    check_disjoint_groups({s: d["group_id"] for s, d in dsd.items()})
    if name == "isic2018":
        check_disjoint_groups({s: d["lesion_id"] for s, d in dsd.items()}, what="lesion")
    else:  # Brain MRI: byte-identical and near-identical copies exist, and never straddle derived splits
        assert len(report.duplicates.of_kind("exact")) == 149
        assert len(report.duplicates.of_kind("perceptual")) == 461
        assert report.duplicates.cross_split == []
        assert {s: len(d) for s, d in dsd.items()} == BRAIN_SPLITS
        assert len({g for d in dsd.values() for g in d["group_id"]}) == 4311
        sha1_only = load_dataset(name, data_dir, cache_dir=tmp_path, progress=False, perceptual=False)
        assert {s: len(d) for s, d in sha1_only.items()} == BRAIN_SPLITS_SHA1_ONLY
        assert len({g for d in sha1_only.values() for g in d["group_id"]}) == 5516
    assert severity_for(dsd) == SeverityMatrix.preset(name)
    row = dsd["test"][0]
    assert row["image"].size[0] > 0
    t1 = time.perf_counter()
    again = load_dataset(name, data_dir, cache_dir=tmp_path, progress=False)
    cached = time.perf_counter() - t1
    assert again["validation"]["source_file"] == dsd["validation"]["source_file"]
    assert cold < 60 and cached < cold
