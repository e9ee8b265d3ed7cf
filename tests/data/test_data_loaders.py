"""Loaders on generated fixture trees for all four layouts; severity round trip; transforms; card; CLI."""

from __future__ import annotations

import json
import os
import runpy
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml

from data_fixtures import (
    BREAKHIS_TYPES,
    ISIC_LABELS,
    breakhis_path,
    isic_items,
    make_brain,
    make_breakhis,
    make_ham,
    make_isic_task3,
    make_sicap,
    write_image,
    write_sheet,
)
from rcl_hf import SeverityMatrix
from rcl_hf.data import (
    apply_transforms,
    available_datasets,
    build_dataset_card,
    build_transforms,
    cache_resized,
    dataset_metadata,
    load_dataset,
    severity_for,
)
from rcl_hf.data.breakhis import parse_filename
from rcl_hf.data.metadata import dataset_fingerprint
from rcl_hf.data.sicapv2 import wsi_of
from rcl_hf.data.splits import check_disjoint_groups
from rcl_hf.data.transforms import resolve_transform_config

KW = dict(progress=False, num_workers=2, cache_dir=False)
REPO = Path(__file__).resolve().parents[2]


def _no_straddle(dsd, column="group_id"):
    check_disjoint_groups({s: d[column] for s, d in dsd.items()})


def _labels(ds):
    names = ds.features["label"].names
    return Counter(names[v] for v in ds["label"])


# --------------------------------------------------------------------------- registry
def test_registry_and_argument_errors(tmp_path):
    assert set(available_datasets()) >= {"brain_tumor_mri", "isic2018", "breakhis", "sicapv2", "synthetic"}
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("brain_tumor_mri")
    with pytest.raises(ValueError, match="not a directory"):
        load_dataset("brain_tumor_mri", tmp_path / "nope", **KW)
    with pytest.raises(ValueError, match="no Training/ or Testing/"):
        load_dataset("brain_tumor_mri", tmp_path, **KW)
    root = make_brain(tmp_path / "b", n_train=3, testing=False)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("brain_tumor_mri", root, val_size=1.5, **KW)
    with pytest.raises(ValueError, match="below 1"):
        load_dataset("brain_tumor_mri", root, val_size=0.6, test_size=0.5, **KW)
    with pytest.raises(ValueError, match="no extra options"):
        load_dataset("brain_tumor_mri", root, fold=2, **KW)


def test_synthetic_needs_no_data_dir():
    pytest.importorskip("rcl_hf.data.synthetic")
    dsd = load_dataset("synthetic", seed=0, n_train=40, n_validation=12, n_test=12)
    assert "train" in dsd
    assert severity_for(dsd).labels == dsd["train"].features["label"].names
    with pytest.raises(ValueError, match="no data_dir"):
        load_dataset("synthetic", "/tmp")


def test_other_loaders_work_when_synthetic_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rcl_hf.data.synthetic", None)  # makes the import fail
    with pytest.raises(ValueError, match="synthetic dataset is unavailable"):
        load_dataset("synthetic")
    root = make_brain(tmp_path / "b", n_train=3, testing=False)
    assert sum(len(d) for d in load_dataset("brain_tumor_mri", root, **KW).values()) == 12


# --------------------------------------------------------------------------- Brain Tumor MRI
def test_brain_official_splits_and_derived_validation(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=10, n_test=3)
    dsd, report = load_dataset("brain_tumor_mri", root, return_report=True, **KW)
    assert list(dsd) == ["train", "validation", "test"]
    feats = dsd["train"].features
    assert isinstance(feats["image"], datasets.Image) and feats["label"].names == ["glioma", "meningioma", "notumor", "pituitary"]
    assert set(feats) == {"image", "label", "group_id", "source_file", "sha1"}
    # official test = Testing/, untouched; validation carved from Training/
    assert sorted(dsd["test"]["source_file"]) == sorted(f"Testing/{c}/Te-{c[:2]}_{i:04d}.jpg" for c in feats["label"].names for i in range(3))
    assert all(f.startswith("Training/") for s in ("train", "validation") for f in dsd[s]["source_file"])
    assert len(dsd["train"]) + len(dsd["validation"]) == 40
    assert all(n >= 1 for n in _labels(dsd["validation"]).values()) and len(_labels(dsd["validation"])) == 4
    _no_straddle(dsd)
    # labels come from the class folder
    for row in dsd["train"]:
        assert row["source_file"].split("/")[1] == feats["label"].int2str(row["label"])
        assert row["image"].size == (12, 10)
    assert report.split_sources["test"].startswith("official") and "derived" in report.split_sources["validation"]
    # test_size is ignored (warned) when an official test split exists
    again, rep = load_dataset("brain_tumor_mri", root, test_size=0.3, return_report=True, **KW)
    assert len(again["test"]) == 12 and any("ignored" in n for n in rep.notes)


def test_brain_training_only_derives_test_and_is_seeded(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=10, testing=False)
    a = load_dataset("brain_tumor_mri", root, seed=0, **KW)
    b = load_dataset("brain_tumor_mri", root, seed=0, **KW)
    c = load_dataset("brain_tumor_mri", root, seed=3, **KW)
    assert list(a) == ["train", "validation", "test"]
    assert a["test"]["source_file"] == b["test"]["source_file"]
    assert a["test"]["source_file"] != c["test"]["source_file"]
    assert sum(len(d) for d in a.values()) == 40
    _no_straddle(a)
    # no validation when val_size=0; class folders directly under data_dir are a pool too
    nov = load_dataset("brain_tumor_mri", root / "Training", val_size=0, test_size=0.25, **KW)
    assert list(nov) == ["train", "test"] and len(nov["test"]) == 10


def test_brain_old_folder_names_and_resplit(tmp_path):
    root = tmp_path / "old"
    for old in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
        for i in range(5):
            write_image(root / "Training" / old / f"{i}.jpg")
            write_image(root / "Testing" / old / f"{i}.jpg")
    dsd = load_dataset("brain_tumor_mri", root, official_splits=False, **KW)
    assert sum(len(d) for d in dsd.values()) == 40
    assert set(_labels(dsd["train"])) == {"glioma", "meningioma", "notumor", "pituitary"}
    assert any(f.startswith("Testing/") for f in dsd["train"]["source_file"])  # pooled and re-split


# --------------------------------------------------------------------------- ISIC 2018
def test_isic_task3_lesion_grouping_and_labels(tmp_path):
    items = isic_items(6)
    root = make_isic_task3(tmp_path / "isic", items=items)
    dsd = load_dataset("isic2018", root, **KW)
    assert dsd["train"].features["label"].names == list(ISIC_LABELS)
    truth = {i: (l, les) for i, l, les in items}
    for split in dsd.values():
        for row in split.remove_columns("image"):
            label, lesion = truth[row["image_id"]]
            assert split.features["label"].int2str(row["label"]) == label
            assert row["lesion_id"] == lesion and row["group_id"] == lesion
            assert row["dx_type"] == "histopathology"
    _no_straddle(dsd, "lesion_id")
    assert sum(len(d) for d in dsd.values()) == len(items)
    # multi-image lesions exist and stay whole
    assert max(Counter(les for _, _, les in items).values()) == 3


def test_isic_official_validation_and_test(tmp_path):
    val = [(f"ISIC_0034{i:03d}", ISIC_LABELS[i % 7]) for i in range(7)]
    test = [(f"ISIC_0035{i:03d}", ISIC_LABELS[(i + 3) % 7]) for i in range(14)]
    root = make_isic_task3(tmp_path / "isic", extra_splits={"Validation": val, "Test": test})
    dsd, report = load_dataset("isic2018", root, return_report=True, **KW)
    assert sorted(dsd["validation"]["image_id"]) == sorted(i for i, _ in val)
    assert sorted(dsd["test"]["image_id"]) == sorted(i for i, _ in test)
    assert all(s.startswith("official") for s in report.split_sources.values())
    lab = {i: l for i, l in test}
    assert all(dsd["test"].features["label"].int2str(v) == lab[i] for i, v in zip(dsd["test"]["image_id"], dsd["test"]["label"]))
    assert dsd["test"]["lesion_id"] == [None] * 14  # no lesion ids for the official test images
    assert not report.skipped


def test_isic_ham10000_form_with_two_folders(tmp_path):
    items = isic_items(4)
    root = make_ham(tmp_path / "ham", items)
    dsd, report = load_dataset("isic2018", root, return_report=True, **KW)
    assert sum(len(d) for d in dsd.values()) == len(items) and not report.problems
    _no_straddle(dsd, "lesion_id")
    folders = {f.split("/")[0] for d in dsd.values() for f in d["source_file"]}
    assert folders == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_isic_lesion_ids_from_ham_metadata(tmp_path):
    items = isic_items(3)
    root = make_isic_task3(tmp_path / "isic", items=items, groupings=False, ham=True)
    dsd = load_dataset("isic2018", root, **KW)
    truth = {i: les for i, _, les in items}
    assert all(truth[i] == les for d in dsd.values() for i, les in zip(d["image_id"], d["lesion_id"]))
    _no_straddle(dsd, "lesion_id")


# --------------------------------------------------------------------------- BreaKHis
def test_breakhis_filename_parsing():
    info = parse_filename("SOB_B_A-14-22549AB-40-001.png")
    assert info["slide_id"] == "14-22549AB" and info["magnification"] == 40 and info["subtype"] == "adenosis"
    assert parse_filename("SOB_M_DC-14-2523-400-010.png")["subtype"] == "ductal_carcinoma"
    assert parse_filename("SOB_M_XX-14-2523-400-010.png") is None
    assert parse_filename("random.png") is None


def test_breakhis_grouped_by_patient_without_folds(tmp_path):
    by_slide = make_breakhis(tmp_path / "bk", patients_per_subtype=3)
    dsd = load_dataset("breakhis", tmp_path / "bk", **KW)
    assert dsd["train"].features["label"].names == list(BREAKHIS_TYPES)
    _no_straddle(dsd, "slide_id")
    _no_straddle(dsd)
    assert sum(len(d) for d in dsd.values()) == sum(len(v) for v in by_slide.values())
    for d in dsd.values():
        for row in d.remove_columns("image"):
            info = parse_filename(row["source_file"])
            assert d.features["label"].int2str(row["label"]) == info["subtype"]
            assert row["slide_id"] == info["slide_id"] and row["magnification"] == info["magnification"]
    # data_dir may be any folder above the subtype folders; magnification filter
    deeper = load_dataset("breakhis", tmp_path / "bk" / "BreaKHis_v1" / "histology_slides" / "breast", magnification=100, **KW)
    assert {m for d in deeper.values() for m in d["magnification"]} == {100}
    with pytest.raises(ValueError, match="magnification"):
        load_dataset("breakhis", tmp_path / "bk", magnification=50, **KW)


def test_breakhis_official_folds(tmp_path):
    make_breakhis(tmp_path / "bk", patients_per_subtype=3, folds=True)
    dsd, report = load_dataset("breakhis", tmp_path / "bk", fold=2, return_report=True, **KW)
    # fold 2: the second patient of each subtype is the test set
    assert {parse_filename(f)["slide_id"] for f in dsd["test"]["source_file"]} == {
        f"14-{1000 + 10 * s + 1}AB" for s in range(8)
    }
    assert "validation" in dsd and report.split_sources["test"].startswith("official")
    _no_straddle(dsd, "slide_id")
    with pytest.raises(ValueError, match="fold 7 not in"):
        load_dataset("breakhis", tmp_path / "bk", fold=7, **KW)


def test_breakhis_wrong_place_and_fold_mismatches(tmp_path):
    root = tmp_path / "bk"
    make_breakhis(root, patients_per_subtype=2, folds=True)
    # magnification folder contradicts the file name
    good = breakhis_path(root, "adenosis", "1000", 40, 1)
    bad_mag = good.parent.parent / "100X" / "SOB_B_A-14-1000-40-009.png"
    write_image(bad_mag)
    # subtype folder contradicts the type code
    bad_sub = breakhis_path(root, "fibroadenoma", "1010", 40, 1).parent / "SOB_B_A-14-1010-40-009.png"
    write_image(bad_sub)
    # unparseable name, and an image the Folds.csv does not list
    write_image(good.parent / "photo.png")
    write_image(good.parent / "SOB_B_A-14-1000-40-077.png")
    # a Folds.csv row without an image
    with open(root / "Folds.csv", "a") as fh:
        fh.write("1,40,train,BreaKHis_v1/histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-1000/40X/SOB_B_A-14-1000-40-099.png\n")
    dsd, report = load_dataset("breakhis", root, return_report=True, **KW)
    by = {p.path: p.kind for p in report.skipped}
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert by[rel(bad_mag)] == "wrong_place" and by[rel(bad_sub)] == "wrong_place"
    assert by[rel(good.parent / "photo.png")] == "wrong_place"
    assert by[rel(good.parent / "SOB_B_A-14-1000-40-077.png")] == "not_in_split"
    assert any(k == "missing_image" and "40-099" in p for p, k in by.items())
    files = {f for d in dsd.values() for f in d["source_file"]}
    assert not files & set(by)


# --------------------------------------------------------------------------- SICAPv2
def test_sicap_wsi_parsing():
    assert wsi_of("16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg") == "16B0001851"
    assert wsi_of("no_block_here.jpg") is None


def test_sicap_official_partitions(tmp_path):
    rows = make_sicap(tmp_path / "data")
    dsd, report = load_dataset("sicapv2", tmp_path / "data", return_report=True, **KW)  # parent of SICAPv2/
    assert dsd["train"].features["label"].names == ["NC", "G3", "G4", "G5"]
    assert sorted(dsd["test"]["source_file"]) == sorted(f"images/{r[0]}" for r in rows["test"])
    assert {wsi_of(f) for f in dsd["validation"]["source_file"]} == {"16B0000004", "16B0000005"}
    assert all(v.startswith("official") for v in report.split_sources.values())
    truth = {f"images/{n}": (l, c) for n, l, c in rows["all"]}
    for d in dsd.values():
        for row in d.remove_columns("image"):
            assert (d.features["label"].int2str(row["label"]), row["cribriform"]) == truth[row["source_file"]]
            assert row["wsi_id"] == wsi_of(row["source_file"])
    assert sum(d["cribriform"].count(True) for d in dsd.values()) == 3
    _no_straddle(dsd, "wsi_id")
    assert not report.problems
    fold2 = load_dataset("sicapv2", tmp_path / "data" / "SICAPv2", fold=2, **KW)
    assert {wsi_of(f) for f in fold2["validation"]["source_file"]} == {"16B0000006", "16B0000007"}


def test_sicap_without_validation_folds_derives_by_wsi(tmp_path):
    make_sicap(tmp_path / "data", n_wsi=16, val_folds=False)
    dsd, report = load_dataset("sicapv2", tmp_path / "data", return_report=True, **KW)
    assert list(dsd) == ["train", "validation", "test"] and "derived" in report.split_sources["validation"]
    _no_straddle(dsd, "wsi_id")
    with pytest.raises(ValueError, match="missing official partition"):
        os.remove(tmp_path / "data" / "SICAPv2" / "partition" / "Test" / "Test.xlsx")
        load_dataset("sicapv2", tmp_path / "data", **KW)


def test_sicap_bad_rows(tmp_path):
    rows = make_sicap(tmp_path / "data", val_folds=False)
    base = tmp_path / "data" / "SICAPv2"
    import pandas as pd

    sheet = base / "partition" / "Test" / "Train.xlsx"
    df = pd.read_excel(sheet)
    df.loc[0, ["NC", "G3"]] = 1  # ambiguous: two classes
    df.loc[1, "G4C"] = 1  # cribriform flag on a non-G4 patch (WSI 4 is NC)
    df.loc[len(df)] = ["16B0000999_Block_Region_0_0_0_xini_0_yini_0.jpg", 0, 1, 0, 0, 0]  # no image
    df.to_excel(sheet, index=False)
    write_image(base / "images" / "16B0000777_Block_Region_0_0_0_xini_0_yini_0.jpg")  # no label
    dsd, report = load_dataset("sicapv2", tmp_path / "data", return_report=True, **KW)
    kinds = Counter(p.kind for p in report.skipped)
    assert kinds == {"ambiguous_label": 2, "missing_image": 1, "missing_label": 1}
    files = {f for d in dsd.values() for f in d["source_file"]}
    assert f"images/{df.loc[0, 'image_name']}" not in files and f"images/{df.loc[1, 'image_name']}" not in files
    with pytest.raises(ValueError, match="strict mode: 4 problem"):
        load_dataset("sicapv2", tmp_path / "data", strict=True, **KW)


# --------------------------------------------------------------------------- severity travels with the data
def test_severity_round_trip_through_save_to_disk(tmp_path):
    make_breakhis(tmp_path / "bk", patients_per_subtype=3, mags=(40,), per_mag=1)
    dsd = load_dataset("breakhis", tmp_path / "bk", **KW)
    sev = severity_for(dsd)
    assert sev == SeverityMatrix.preset("breakhis") and sev.name == "breakhis"
    dsd.save_to_disk(str(tmp_path / "saved"))
    back = datasets.load_from_disk(str(tmp_path / "saved"))
    assert severity_for(back) == sev and severity_for(back["test"]) == sev
    meta = dataset_metadata(back)
    assert meta["dataset"] == "breakhis" and meta["rcl_hf"]["group_column"] == "slide_id"
    assert back["train"].info.license == "other" and "Spanhol" in back["train"].info.citation
    # images were embedded: the saved copy no longer needs the source tree
    row = back["train"][0]
    assert row["image"].size == (10, 7)
    # derived datasets keep it; a dataset without metadata falls back to the preset by label names
    assert severity_for(back["train"].filter(lambda ex: ex["label"] == 0)) == sev
    bare = datasets.Dataset.from_dict(
        {"label": [0, 1]}, features=datasets.Features({"label": datasets.ClassLabel(names=["notumor", "glioma", "meningioma", "pituitary"])})
    )
    fb = severity_for(bare)
    assert fb.labels == ["notumor", "glioma", "meningioma", "pituitary"] and fb.is_critical("glioma", "notumor")
    with pytest.raises(ValueError, match="no preset"):
        severity_for(datasets.Dataset.from_dict({"label": [0]}, features=datasets.Features({"label": datasets.ClassLabel(names=["a", "b"])})))


# --------------------------------------------------------------------------- transforms
def test_transforms_lazy_train_and_eval(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=6, n_test=2)
    write_image(root / "Training" / "glioma" / "wide.jpg", size=(60, 20), mode="RGB")
    dsd = load_dataset("brain_tumor_mri", root, **KW)
    out = apply_transforms(dsd, image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    row = out["train"][0]
    assert set(row) == {"pixel_values", "labels"}
    assert row["pixel_values"].shape == (3, 16, 16) and row["pixel_values"].dtype == torch.float32
    assert isinstance(row["labels"], int) and row["labels"] == dsd["train"][0]["label"]
    batch = out["test"][:4]
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and len(batch["labels"]) == 4
    # eval is deterministic, train is random
    assert torch.equal(out["test"][0]["pixel_values"], out["test"][0]["pixel_values"])
    # the untransformed DatasetDict is left alone; metadata survives
    assert "image" in dsd["train"][0] and severity_for(out) == severity_for(dsd)
    # Trainer collation works
    from transformers import default_data_collator

    collated = default_data_collator([out["validation"][i] for i in range(2)])
    assert collated["pixel_values"].shape == (2, 3, 16, 16) and collated["labels"].dtype == torch.long


def test_build_transforms_and_config_sources():
    from PIL import Image

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    ev = build_transforms(8, mean=(0, 0, 0), std=(1, 1, 1), train=False)
    x = ev(img)
    assert x.shape == (3, 8, 8) and torch.allclose(x[0], torch.ones(8, 8)) and x[1].abs().max() == 0
    crop = build_transforms((8, 12), train=False, crop_pct=0.875)
    assert crop(img).shape == (3, 8, 12)
    tr = build_transforms(8, train=True, hflip=0.5, vflip=0.5)
    assert tr(img).shape == (3, 8, 8)
    cfg = resolve_transform_config({"input_size": (3, 160, 160), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5), "crop_pct": 0.9, "interpolation": "bilinear"})
    assert cfg.image_size == (160, 160) and cfg.crop_pct == 0.9 and cfg.mean == (0.1, 0.2, 0.3) and cfg.interpolation == "bilinear"
    from transformers import ViTImageProcessor

    proc = ViTImageProcessor(size={"height": 96, "width": 96}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    cfg = resolve_transform_config(proc, image_size=None)
    assert cfg.image_size == (96, 96) and cfg.mean == (0.5, 0.5, 0.5) and cfg.crop_pct is None
    assert resolve_transform_config(proc, image_size=32).image_size == (32, 32)
    with pytest.raises(ValueError, match="std"):
        resolve_transform_config(None, std=(0, 1, 1))
    with pytest.raises(ValueError, match="Cannot read"):
        resolve_transform_config(42)


def test_cache_resized_is_reused(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=3, n_test=1)
    for i in range(2):
        write_image(root / "Training" / "glioma" / f"big{i}.jpg", size=(300, 200), mode="RGB")
    dsd = load_dataset("brain_tumor_mri", root, **KW)
    small = cache_resized(dsd, 32, tmp_path / "resized")
    big_rows = [r for s in small.values() for r in s if r["source_file"].endswith(("big0.jpg", "big1.jpg"))]
    assert len(big_rows) == 2 and all(min(r["image"].size) == 32 and r["image"].size[0] == 48 for r in big_rows)
    small_rows = [r for s in small.values() for r in s if "Tr-gl" in r["source_file"]]
    assert all(r["image"].size == (12, 10) for r in small_rows)  # never upscaled
    assert severity_for(small) == severity_for(dsd)
    entries = sorted(p.name for p in (tmp_path / "resized").iterdir())
    again = cache_resized(dsd, 32, tmp_path / "resized")
    assert sorted(p.name for p in (tmp_path / "resized").iterdir()) == entries
    assert again["train"].cache_files and again["train"]["source_file"] == small["train"]["source_file"]
    out = apply_transforms(again, image_size=16)
    assert out["train"][0]["pixel_values"].shape == (3, 16, 16)


# --------------------------------------------------------------------------- card and CLI
def test_dataset_card(tmp_path):
    make_isic_task3(tmp_path / "isic", items=isic_items(3))
    dsd, report = load_dataset("isic2018", tmp_path / "isic", return_report=True, **KW)
    card = build_dataset_card(dsd, repo_id="me/isic", report=report)
    header = yaml.safe_load(str(card).split("---")[1])
    assert header["license"] == "cc-by-nc-4.0" and header["task_categories"] == ["image-classification"]
    text = card.text
    for needle in ("## Severity matrix", "**1 ⚠**", "| MEL (positive) |", "lesion_id", "## Citation", "Tschandl", "CC BY-NC 4.0", "me/isic", "| train |"):
        assert needle in text, needle


def _run_script(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["build_dataset.py", *argv])
    mod = runpy.run_path(str(REPO / "scripts" / "build_dataset.py"), run_name="build_dataset_test")
    return mod


def test_build_dataset_script_writes_disk_parquet_and_card(tmp_path, monkeypatch, capsys):
    make_sicap(tmp_path / "data")
    mod = _run_script([], monkeypatch)
    out = tmp_path / "out"
    code = mod["main"](
        ["--name", "sicapv2", "--data_dir", str(tmp_path / "data"), "--output_dir", str(out), "--parquet", "--cache_dir", str(tmp_path / "c")]
    )
    assert code == 0
    for f in ("README.md", "severity.json", "load_report.json", "dataset_dict.json", "data/train-00000-of-00001.parquet"):
        assert (out / f).exists(), f
    back = datasets.load_from_disk(str(out))
    assert severity_for(back) == SeverityMatrix.preset("sicapv2")
    pq = datasets.Dataset.from_parquet(str(out / "data" / "test-00000-of-00001.parquet"))
    assert pq[0]["image"].size == (9, 9) and len(pq) == len(back["test"])  # bytes embedded
    assert SeverityMatrix.from_json(out / "severity.json") == SeverityMatrix.preset("sicapv2")
    assert json.loads((out / "load_report.json").read_text())["dataset"] == "sicapv2"


def test_build_dataset_script_hub_errors_are_one_line(tmp_path, monkeypatch, capsys):
    make_brain(tmp_path / "brain", n_train=3, testing=False)
    mod = _run_script([], monkeypatch)
    argv = ["--name", "brain_tumor_mri", "--data_dir", str(tmp_path / "brain"), "--output_dir", str(tmp_path / "o"), "--push_to_hub", "me/x"]
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert mod["main"](argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "token" in err and "\n" not in err  # checked before any work

    import httpx

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")

    def refuse(*a, **k):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", refuse)
    assert mod["main"](argv) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: push to me/x failed:") and "ConnectError" in err

    bad = mod["main"](["--name", "brain_tumor_mri", "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o2")])
    assert bad == 1 and "not a directory" in capsys.readouterr().err


def test_fingerprint_follows_image_content_so_cached_embeddings_are_not_reused(tmp_path):
    """The frozen-backbone embedding cache is keyed by the split's fingerprint: it must change when an
    image's bytes change under the same file name (the ``sha1`` column is part of the table), and only then."""
    from data_fixtures import write_image

    root = make_brain(tmp_path / "brain", n_train=6, n_test=2)
    first = load_dataset("brain_tumor_mri", root, **KW)
    again = load_dataset("brain_tumor_mri", root, **KW)
    assert {s: dataset_fingerprint(d) for s, d in first.items()} == {s: dataset_fingerprint(d) for s, d in again.items()}
    target = next((root / "Testing").rglob("*.jpg"))
    write_image(target, size=(12, 10), mode="L", seed=12345)
    changed = load_dataset("brain_tumor_mri", root, **KW)
    assert dataset_fingerprint(changed["test"]) != dataset_fingerprint(first["test"])
    assert dataset_fingerprint(changed["train"]) == dataset_fingerprint(first["train"])


def test_the_datasets_fingerprint_is_still_where_the_caches_read_it():
    """``datasets`` has no public fingerprint accessor: rcl_hf.data.metadata.dataset_fingerprint reads the private
    ``Dataset._fingerprint``. If a datasets release drops or renames it, this fails (the caches would otherwise
    lose their key)."""
    ds = datasets.Dataset.from_dict({"x": [1, 2, 3]})
    assert isinstance(ds._fingerprint, str) and dataset_fingerprint(ds) == ds._fingerprint
    assert dataset_fingerprint(ds.select([0, 1])) == dataset_fingerprint(ds.select([0, 1]))  # deterministic
    assert dataset_fingerprint(ds.select([0, 1])) != dataset_fingerprint(ds.select([1, 2]))
    with pytest.raises(TypeError, match="no datasets fingerprint"):
        dataset_fingerprint({"x": [1, 2, 3]})
