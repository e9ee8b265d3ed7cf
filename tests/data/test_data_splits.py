"""Grouped stratified splits and the duplicate audit."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data_fixtures import copy_file, make_brain, noise
from rcl_hf.data import load_dataset
from rcl_hf.data import dataset_metadata
from rcl_hf.data.duplicates import (
    _perceptual_components,
    audit_duplicates,
    content_groups,
    cross_split_drop_indices,
    find_duplicates,
    merge_groups,
)
from rcl_hf.data.images import dhash, hamming
from rcl_hf.data.splits import check_disjoint_groups, group_overlaps, grouped_stratified_split

KW = dict(progress=False, num_workers=2, cache_dir=False)


def _toy(n_groups=200, seed=0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        size = int(rng.integers(1, 6))
        cls = int(rng.choice(4, p=[0.6, 0.2, 0.15, 0.05]))
        labels += [cls] * size
        groups += [f"p{g}"] * size
    return labels, groups


def test_split_is_grouped_stratified_complete_and_seeded():
    labels, groups = _toy()
    fr = {"train": 0.7, "validation": 0.15, "test": 0.15}
    parts = grouped_stratified_split(labels, groups, fr, seed=0)
    all_idx = np.concatenate(list(parts.values()))
    assert sorted(all_idx.tolist()) == list(range(len(labels)))  # every sample exactly once
    check_disjoint_groups({s: [groups[i] for i in idx] for s, idx in parts.items()})
    total = Counter(labels)
    for s, idx in parts.items():
        assert abs(len(idx) / len(labels) - fr[s]) < 0.03
        counts = Counter(labels[i] for i in idx)
        for c, n in total.items():  # each class close to its share
            assert abs(counts[c] - fr[s] * n) <= max(3, 0.1 * fr[s] * n), (s, c, counts[c], fr[s] * n)
    again = grouped_stratified_split(labels, groups, fr, seed=0)
    assert all(np.array_equal(parts[s], again[s]) for s in fr)
    other = grouped_stratified_split(labels, groups, fr, seed=1)
    assert not np.array_equal(parts["validation"], other["validation"])


def test_split_fills_every_split_with_few_groups():
    labels = [0] * 10 + [1] * 10 + [0] * 10
    groups = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    parts = grouped_stratified_split(labels, groups, {"train": 0.7, "validation": 0.15, "test": 0.15})
    assert all(len(v) == 10 for v in parts.values())


def test_split_takes_fractions_that_stratified_group_kfold_cannot():
    """Why the splitter is not scikit-learn's: ``StratifiedGroupKFold`` makes ``k`` equal folds, so 70/15/15
    has to be pieced together from k = 20 folds (3 + 3 + 14), and k may not exceed the number of groups: 12
    patients cannot be split that way at all. Ours takes the fractions as they are."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [f"p{i // 4}" for i in range(48)]  # 12 patients, 4 images each
    labels = [(i // 4) % 2 for i in range(48)]  # one class per patient, 6 patients per class
    fr = {"train": 0.7, "validation": 0.15, "test": 0.15}
    parts = grouped_stratified_split(labels, groups, fr, seed=0)
    assert {s: len(v) for s, v in parts.items()} == {"train": 32, "validation": 8, "test": 8}
    assert all(Counter(labels[i] for i in idx) == {0: len(idx) // 2, 1: len(idx) // 2} for idx in parts.values())
    check_disjoint_groups({s: [groups[i] for i in idx] for s, idx in parts.items()})
    with pytest.raises(ValueError, match="greater than the number of groups"):
        list(StratifiedGroupKFold(n_splits=20, shuffle=True, random_state=0).split(labels, labels, groups))


def test_split_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        grouped_stratified_split([0, 1], ["a", "b"], {"train": 0.5, "test": 0.2})
    with pytest.raises(ValueError, match="positive"):
        grouped_stratified_split([0, 1], ["a", "b"], {"train": 1.2, "test": -0.2})
    with pytest.raises(ValueError, match="2 group"):
        grouped_stratified_split([0, 1, 1], ["a", "b", "b"], {"train": 0.6, "validation": 0.2, "test": 0.2})
    with pytest.raises(ValueError, match="labels but"):
        grouped_stratified_split([0, 1], ["a"], {"train": 1.0})


def test_check_disjoint_groups():
    check_disjoint_groups({"train": ["a", "b"], "test": ["c"]})
    assert group_overlaps({"train": ["a", "b"], "validation": ["b"], "test": ["a"]}) == {
        "train|validation": ["b"],
        "train|test": ["a"],
    }
    with pytest.raises(ValueError, match="appear in two splits"):
        check_disjoint_groups({"train": ["a", "b"], "test": ["b"]}, what="patient")


# --------------------------------------------------------------------------- duplicates
def test_find_duplicates_and_drop_order():
    sha = ["x", "y", "x", "z", "x", "y"]
    splits = ["test", "train", "validation", "train", "train", "train"]
    labels = ["a", "a", "a", "b", "a", "b"]
    names = [f"f{i}" for i in range(6)]
    rep = find_duplicates(sha, splits, labels, names)
    assert len(rep.groups) == 2
    gx = next(g for g in rep.groups if g.key == "x")
    assert gx.cross_split and not gx.label_conflict and sorted(gx.indices) == [0, 2, 4]
    gy = next(g for g in rep.groups if g.key == "y")
    assert not gy.cross_split and gy.label_conflict
    assert cross_split_drop_indices(rep) == [0, 2]  # keep the train copy
    assert "2 group(s)" in rep.summary() and rep.to_dict()["exact"]["cross_split_groups"] == 1


def test_merge_groups_unions_ids_through_shared_content():
    groups = ["p1", "p2", None, None, "p3"]
    keys = ["h1", "h1", "h2", "h2", "h9"]
    merged = merge_groups(groups, keys)
    assert merged[0] == merged[1] == "p1"
    assert merged[2] == merged[3] == "sha1:h2"
    assert merged[4] == "p3"


def test_merge_groups_chains_through_ids_and_keys():
    # p1 ~ (key a) ~ p2 ~ (id p2) ~ row 3 ~ (key b) ~ p4: one component, named by its smallest id
    merged = merge_groups(["p4", "p2", "p1", "p2", "p9"], ["b", "a", "a", "b", None])
    assert merged == ["p1", "p1", "p1", "p1", "p9"]
    with pytest.raises(ValueError, match="2 groups but 1 keys"):
        merge_groups(["a", "b"], ["k"])


def test_perceptual_components_chain_and_content_groups_join_them():
    hashes = [0b0000, 0b0001, 0b0011, 0b1111_0000_0000, None, 0b0000]
    assert _perceptual_components(hashes, 0) == [[0, 5]]
    assert _perceptual_components(hashes, 1) == [[0, 1, 2, 5]]  # 0-1-2 chain at distance 1 each
    groups = content_groups([None] * 6, ["s0", "s1", "s2", "s3", "s4", "s0"], hashes, max_distance=1)
    assert len({groups[i] for i in (0, 1, 2, 5)}) == 1 and len(set(groups)) == 3
    assert content_groups([None] * 6, ["s0", "s1", "s2", "s3", "s4", "s0"]) == [
        "sha1:s0", "sha1:s1", "sha1:s2", "sha1:s3", "sha1:s4", "sha1:s0"]


def test_dhash_survives_resizing_not_content_change():
    img = noise((64, 64), seed=3).resize((64, 64))
    smooth = img.resize((8, 8)).resize((64, 64), Image.Resampling.BICUBIC)
    assert hamming(dhash(smooth), dhash(smooth.resize((50, 50), Image.Resampling.BICUBIC))) <= 6
    other = noise((64, 64), seed=4).resize((8, 8)).resize((64, 64), Image.Resampling.BICUBIC)
    assert hamming(dhash(smooth), dhash(other)) > 10


def _brain_with_duplicates(root):
    make_brain(root, n_train=8, n_test=3)
    tr = root / "Training" / "glioma"
    # within Training: three copies of one file -> one group, never straddling train/validation
    for k in range(2):
        copy_file(tr / "Tr-gl_0000.jpg", tr / f"Tr-gl_dup{k}.jpg")
    # across Training/Testing: the official test split holds a copy of a training image
    copy_file(root / "Training" / "pituitary" / "Tr-pi_0001.jpg", root / "Testing" / "pituitary" / "Te-pi_copy.jpg")
    return root


def test_brain_duplicates_grouped_audited_and_dropped(tmp_path):
    root = _brain_with_duplicates(tmp_path / "brain")
    dsd, report = load_dataset("brain_tumor_mri", root, return_report=True, val_size=0.3, **KW)
    dup = report.duplicates
    assert len(dup.of_kind("exact")) == 2
    assert [set(g.names) for g in dup.cross_split] == [{"Testing/pituitary/Te-pi_copy.jpg", "Training/pituitary/Tr-pi_0001.jpg"}]
    assert "test" in dup.cross_split[0].splits and len(set(dup.cross_split[0].splits)) == 2
    # the triple sits in one split with one group id
    where = {s: set(d["source_file"]) for s, d in dsd.items()}
    triple = {"Training/glioma/Tr-gl_0000.jpg", "Training/glioma/Tr-gl_dup0.jpg", "Training/glioma/Tr-gl_dup1.jpg"}
    assert sum(bool(triple & files) for files in where.values()) == 1
    gids = {g for s in dsd.values() for f, g in zip(s["source_file"], s["group_id"]) if f in triple}
    assert len(gids) == 1
    # train and validation (derived) never share a group; official test shares one (reported)
    check_disjoint_groups({s: dsd[s]["group_id"] for s in ("train", "validation")})
    assert any("test" in pair for pair in report.group_overlaps)
    # audit of a finished DatasetDict finds the same cross-split copy
    assert len(audit_duplicates(dsd, progress=False).cross_split) == 1

    dropped, rep2 = load_dataset(
        "brain_tumor_mri", root, return_report=True, val_size=0.3, drop_cross_split_duplicates=True, **KW
    )
    assert "Testing/pituitary/Te-pi_copy.jpg" not in dropped["test"]["source_file"]
    assert rep2.duplicates.dropped == ["Testing/pituitary/Te-pi_copy.jpg"]
    assert any(p.kind == "cross_split_duplicate" and p.action == "dropped" for p in rep2.problems)
    assert audit_duplicates(dropped, progress=False).cross_split == []
    assert rep2.group_overlaps == {}
    check_disjoint_groups({s: d["group_id"] for s, d in dropped.items()})


def test_perceptual_duplicates_are_found_and_grouped(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=4, testing=False)
    src = root / "Training" / "glioma" / "big.png"
    smooth = noise((64, 64), seed=5).resize((8, 8)).resize((64, 64), Image.Resampling.BICUBIC)
    smooth.save(src)
    smooth.resize((48, 48), Image.Resampling.BICUBIC).save(root / "Training" / "glioma" / "small.png")
    dsd, report = load_dataset("brain_tumor_mri", root, perceptual=True, max_distance=6, return_report=True, **KW)
    percept = report.duplicates.of_kind("perceptual")
    assert any({"Training/glioma/big.png", "Training/glioma/small.png"} <= set(g.names) for g in percept)
    gid = {f: g for s in dsd.values() for f, g in zip(s["source_file"], s["group_id"])}
    assert gid["Training/glioma/big.png"] == gid["Training/glioma/small.png"]
    audit = audit_duplicates(dsd, perceptual=True, max_distance=6, progress=False)
    assert any({"Training/glioma/big.png", "Training/glioma/small.png"} <= set(g.names) for g in audit.of_kind("perceptual"))


def test_brain_mri_groups_near_copies_by_default_and_the_flag_turns_it_off(tmp_path):
    import io

    root = make_brain(tmp_path / "brain", n_train=4, testing=False)
    smooth = noise((64, 64), seed=5).resize((8, 8)).resize((64, 64), Image.Resampling.BICUBIC)
    smooth.save(root / "Training" / "glioma" / "scan.png")
    buf = io.BytesIO()  # a one-level brighter, re-encoded copy: other bytes, nearly the same pixels
    Image.fromarray(np.clip(np.asarray(smooth, dtype=np.int16) + 1, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    (root / "Training" / "glioma" / "scan_copy.jpg").write_bytes(buf.getvalue())
    near = hamming(dhash(smooth), dhash(Image.open(io.BytesIO(buf.getvalue()))))
    assert near <= 2, near  # within the Brain MRI default distance

    def gid(dsd):
        by = {f: g for s in dsd.values() for f, g in zip(s["source_file"], s["group_id"])}
        return by["Training/glioma/scan.png"], by["Training/glioma/scan_copy.jpg"]

    dsd, report = load_dataset("brain_tumor_mri", root, return_report=True, **KW)
    a, b = gid(dsd)
    assert a == b
    assert dataset_metadata(dsd)["rcl_hf"]["perceptual_grouping"] == {"enabled": True, "max_distance": 2}
    assert any("perceptual grouping (dHash distance <= 2)" in n for n in report.notes)
    off = load_dataset("brain_tumor_mri", root, perceptual=False, **KW)
    a, b = gid(off)
    assert a != b
    assert dataset_metadata(off)["rcl_hf"]["perceptual_grouping"] == {"enabled": False, "max_distance": None}
    with pytest.raises(ValueError, match="max_distance must be an int in"):
        load_dataset("brain_tumor_mri", root, max_distance=-1, **KW)


def test_perceptual_grouping_is_off_by_default_for_datasets_with_patient_ids(tmp_path):
    from data_fixtures import isic_items, make_isic_task3

    make_isic_task3(tmp_path / "isic", items=isic_items(2))
    dsd = load_dataset("isic2018", tmp_path / "isic", **KW)
    assert dataset_metadata(dsd)["rcl_hf"]["perceptual_grouping"] == {"enabled": False, "max_distance": None}


# ---------------------------------------------------------------------------- subsets of a split
def _class_ordered(n_per_class=(100, 100, 100, 100)):
    """A Dataset whose rows are sorted by class, like a folder-per-class layout's split."""
    from datasets import ClassLabel, Dataset, Features, Value

    labels = [c for c, n in enumerate(n_per_class) for _ in range(n)]
    features = Features({"row": Value("int64"), "label": ClassLabel(names=[f"c{c}" for c in range(len(n_per_class))])})
    return Dataset.from_dict({"row": list(range(len(labels))), "label": labels}, features=features)


def test_subsample_stratified_keeps_every_class_in_proportion_and_is_seeded():
    from rcl_hf.data import subsample

    ds = _class_ordered((100, 100, 100, 100))
    first = subsample(ds, 100, "first")
    assert first["row"] == list(range(100)) and set(first["label"]) == {0}  # what the old truncation did
    a, b, c = (subsample(ds, 100, "stratified", seed=s) for s in (0, 0, 1))
    assert Counter(a["label"]) == {0: 25, 1: 25, 2: 25, 3: 25}
    assert len(set(a["row"])) == 100 and sorted(a["row"]) == sorted(b["row"]) and sorted(a["row"]) != sorted(c["row"])
    skewed = subsample(_class_ordered((600, 300, 90, 10)), 100, "stratified", seed=0)
    assert Counter(skewed["label"]) == {0: 60, 1: 30, 2: 9, 3: 1}


def test_subsample_edges_and_errors(caplog):
    from rcl_hf.data import subsample

    ds = _class_ordered((5, 5, 1))
    assert subsample(ds, None) is ds and subsample(ds, 11) is ds and subsample(ds, 50, "first") is ds
    with caplog.at_level("WARNING", logger="rcl_hf.data.splits"):
        uniform = subsample(ds, 6, "stratified", seed=0)  # a one-row class: datasets cannot stratify
    assert len(uniform) == 6 and len(set(uniform["row"])) == 6 and "uniform seeded sample" in caplog.text
    with pytest.raises(ValueError, match="positive"):
        subsample(ds, 0)
    with pytest.raises(ValueError, match="subset mode must be one of"):
        subsample(ds, 3, "random")
