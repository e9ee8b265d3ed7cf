"""The ``imagefolder`` loader (your own ``<class>/*.png`` folders): labels from the folder names, content and
perceptual grouping or ``groups.csv``, and a clear error for each bad layout."""

from __future__ import annotations

import json

import pytest

from data_fixtures import make_scan_folder, write_bad, write_image
from rcl_hf.data import dataset_metadata, load_dataset
from rcl_hf.data.splits import check_disjoint_groups

KW = dict(progress=False, num_workers=2, cache_dir=False)


def test_labels_are_the_folder_names_and_splits_are_grouped(tmp_path):
    root = make_scan_folder(tmp_path / "scans", {"normal": 12, "cyst": 12, "tumour": 12}, size=16)
    (root / "tumour" / "tumour_000_copy.png").write_bytes((root / "tumour" / "tumour_000.png").read_bytes())
    dsd, report = load_dataset("imagefolder", root, return_report=True, **KW)
    assert set(dsd) == {"train", "validation", "test"}
    assert dsd["train"].features["label"].names == ["cyst", "normal", "tumour"]  # sorted, as datasets' imagefolder
    assert sum(len(d) for d in dsd.values()) == 37
    check_disjoint_groups({s: d["group_id"] for s, d in dsd.items()})
    rows = [(g, f) for d in dsd.values() for g, f in zip(d["group_id"], d["source_file"])]
    copies = {g for g, f in rows if f in ("tumour/tumour_000.png", "tumour/tumour_000_copy.png")}
    assert len(copies) == 1  # a byte-identical copy joins its original's group
    meta = dataset_metadata(dsd)
    assert meta["dataset"] == "imagefolder" and "rcl_severity" not in meta  # the run's --severity gives it
    assert meta["rcl_hf"]["perceptual_grouping"]["enabled"] is True
    assert report.counts["train"]["normal"] > 0


def test_groups_csv_keeps_a_patient_in_one_split(tmp_path):
    root = make_scan_folder(tmp_path / "scans", {"normal": 12, "tumour": 12}, size=16)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    (root / "groups.csv").write_text("file,group\n" + "".join(f"{f},patient{k // 3}\n" for k, f in enumerate(files)))
    dsd, report = load_dataset("imagefolder", root, return_report=True, **KW)
    split_of = {}
    for split, d in dsd.items():
        for f in d["source_file"]:
            split_of.setdefault(f"patient{files.index(f) // 3}", set()).add(split)
    assert all(len(s) == 1 for s in split_of.values())
    assert any("groups from groups.csv: 8 group(s)" in n for n in report.notes)


def test_a_corrupt_image_is_reported_and_skipped_like_in_every_loader(tmp_path):
    root = make_scan_folder(tmp_path / "scans", {"normal": 10, "tumour": 10}, size=16)
    write_bad(root / "tumour" / "broken.png", "truncated_png")
    write_image(root / "loose.png", (16, 16))
    (root / "normal" / "notes.docx").write_bytes(b"x")
    dsd, report = load_dataset("imagefolder", root, return_report=True, **KW)
    assert sum(len(d) for d in dsd.values()) == 20
    kinds = {p.path: p.kind for p in report.skipped}
    assert kinds == {"tumour/broken.png": "truncated", "loose.png": "wrong_place", "normal/notes.docx": "unsupported_file"}
    with pytest.raises(ValueError, match=r"(?s)strict mode: 3 problem\(s\).*broken.png"):
        load_dataset("imagefolder", root, strict=True, **KW)


@pytest.mark.parametrize("case, match", [
    ("missing", "is not a directory"),
    ("no_classes", "no class folder under"),
    ("one_class", r"only one class folder \('tumour'\).*at least two classes"),
    ("empty_class", r"class folder\(s\) \['cyst'\] .* hold no image"),
    ("all_corrupt", r"class\(es\) \['cyst'\] .* have no usable image"),
    ("bad_groups", "needs the columns file,group"),
])
def test_bad_layouts_are_one_clear_error(tmp_path, case, match):
    root = tmp_path / "scans"
    if case != "missing":
        root.mkdir()
    if case == "no_classes":
        write_image(root / "a.png", (16, 16))
    if case in ("one_class", "empty_class", "all_corrupt", "bad_groups"):
        make_scan_folder(root, {"tumour": 6, **({} if case == "one_class" else {"normal": 6})}, size=16)
    if case == "empty_class":
        (root / "cyst").mkdir()
        (root / "cyst" / "readme.txt").write_text("nothing yet")
    if case == "all_corrupt":
        write_bad(root / "cyst" / "a.png", "empty")
        write_bad(root / "cyst" / "b.png", "not_image")
    if case == "bad_groups":
        (root / "groups.csv").write_text("image,patient\ntumour/tumour_000.png,p1\n")
    with pytest.raises(ValueError, match=match):
        load_dataset("imagefolder", root, **KW)
