"""The on-disk cache of per-file checks (SHA-1, size, dHash): hits, invalidation, corrupt files, same results."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from data_fixtures import make_brain, noise, write_image
from rcl_hf.data import load_dataset
from rcl_hf.data import images as images_mod
from rcl_hf.data.images import validate_images

KW = dict(progress=False, num_workers=1)


@pytest.fixture
def count_hashes(monkeypatch):
    """Count the dHash computations (one per decoded file) and the file reads of the check pass."""
    calls = {"dhash": 0, "read": 0}
    real_dhash, real_check = images_mod.dhash, images_mod._check_file

    def dhash(img, *a, **k):
        calls["dhash"] += 1
        return real_dhash(img, *a, **k)

    def check(path, max_pixels):
        calls["read"] += 1
        return real_check(path, max_pixels)

    monkeypatch.setattr(images_mod, "dhash", dhash)
    monkeypatch.setattr(images_mod, "_check_file", check)
    return calls


def _cache_file(cache: Path) -> Path:
    (found,) = (cache / "image_checks").glob("*.json")
    return found


def _bmp(path: Path, seed: int) -> Path:
    """An 8x8 BMP: every such file has the same byte size, whatever its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise((8, 8), seed=seed).save(path, format="BMP")
    return path


def test_second_run_reads_the_cache_instead_of_decoding(tmp_path, count_hashes):
    root = tmp_path / "data"
    paths = [write_image(root / f"{i}.jpg", size=(32, 24), seed=i) for i in range(5)]
    first = validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    assert count_hashes == {"dhash": 5, "read": 5}
    second = validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    assert count_hashes == {"dhash": 5, "read": 5}  # nothing decoded or read again
    assert second == first and all(c.ok and c.sha1 and c.dhash and c.width == 32 for c in second)
    blob = json.loads(_cache_file(tmp_path / "cache").read_text())
    assert set(blob["entries"]) == {f"{i}.jpg" for i in range(5)}


def test_same_size_new_content_and_new_mtime_invalidate_an_entry(tmp_path, count_hashes):
    root = tmp_path / "data"
    paths = [_bmp(root / "a.bmp", 0), _bmp(root / "b.bmp", 1)]
    first = validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    size, mtime = paths[0].stat().st_size, paths[0].stat().st_mtime_ns
    _bmp(paths[0], seed=7)  # other pixels, same byte size
    os.utime(paths[0], ns=(mtime + 5_000_000_000, mtime + 5_000_000_000))
    assert paths[0].stat().st_size == size
    second = validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    assert count_hashes["read"] == 3  # only the rewritten file
    assert second[0].sha1 != first[0].sha1 and second[0].dhash != first[0].dhash and second[1] == first[1]
    os.utime(paths[1], ns=(mtime - 10**9, mtime - 10**9))  # same bytes, other mtime: checked again
    third = validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    assert count_hashes["read"] == 4 and third == second


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"header": 1, "entries": []}', b"\xff\xfe\x00"],
    ids=["truncated", "list", "entries_not_object", "binary"],
)
def test_corrupt_cache_file_is_ignored_with_a_warning_and_rebuilt(tmp_path, count_hashes, caplog, content):
    root = tmp_path / "data"
    paths = [write_image(root / f"{i}.png", seed=i) for i in range(3)]
    clean = validate_images(paths, root=root, cache_dir=False, **KW)
    validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    _cache_file(tmp_path / "cache").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=images_mod.__name__):
        again = validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    assert again == clean and "Ignoring unreadable image-check cache" in caplog.text
    assert count_hashes["read"] == 9
    json.loads(_cache_file(tmp_path / "cache").read_text())  # rewritten whole
    validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    assert count_hashes["read"] == 9  # and used again


def test_malformed_entries_are_misses(tmp_path, count_hashes):
    root = tmp_path / "data"
    paths = [write_image(root / f"{i}.png", seed=i) for i in range(3)]
    first = validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW)
    cache = _cache_file(tmp_path / "cache")
    blob = json.loads(cache.read_text())
    blob["entries"]["0.png"] = 5
    blob["entries"]["1.png"][2] = {"no_such_field": 1}
    cache.write_text(json.dumps(blob))
    assert validate_images(paths, root=root, cache_dir=tmp_path / "cache", **KW) == first
    assert count_hashes["read"] == 5  # the two bad entries, not the good one


def test_load_gives_the_same_groups_with_and_without_the_cache(tmp_path, count_hashes):
    root = make_brain(tmp_path / "brain", n_train=6, n_test=2)
    smooth = noise((64, 64), seed=5).resize((8, 8)).resize((64, 64), Image.Resampling.BICUBIC)
    smooth.save(root / "Training" / "glioma" / "scan.png")
    smooth.save(root / "Training" / "glioma" / "scan_copy.jpg", quality=90)  # re-encoded: a perceptual copy
    dup = root / "Training" / "glioma" / "Tr-gl_0000.jpg"
    (root / "Training" / "glioma" / "exact_copy.jpg").write_bytes(dup.read_bytes())
    opts = dict(perceptual=True, max_distance=6, return_report=True, **KW)
    plain, plain_rep = load_dataset("brain_tumor_mri", root, cache_dir=False, **opts)
    cold, cold_rep = load_dataset("brain_tumor_mri", root, cache_dir=tmp_path / "c", **opts)
    reads = count_hashes["read"]
    warm, warm_rep = load_dataset("brain_tumor_mri", root, cache_dir=tmp_path / "c", **opts)
    assert count_hashes["read"] == reads  # the warm load decodes nothing
    for split in plain:
        for col in ("source_file", "group_id", "sha1", "label"):
            assert plain[split][col] == cold[split][col] == warm[split][col], (split, col)
    assert plain_rep.duplicates.to_dict() == cold_rep.duplicates.to_dict() == warm_rep.duplicates.to_dict()
    assert plain_rep.duplicates.of_kind("exact") and plain_rep.duplicates.of_kind("perceptual")
