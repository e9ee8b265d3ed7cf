"""Bad-file checks: the shared decoder, the cached validation pass, and every bad-file case in a loader."""

from __future__ import annotations

import ast
import io
import os
from pathlib import Path
from typing import Dict, List, Set

import numpy as np
import pytest
from PIL import Image

from data_fixtures import BAD_CASES, MODE_CASES, copy_file, make_brain, make_isic_task3, isic_items, write_bad, write_image
from rcl_hf.data import ImageLoadError, load_dataset, open_image_rgb
from rcl_hf.data import images as images_mod
from rcl_hf.data.images import inspect_image_bytes, to_rgb, validate_images

KW = dict(progress=False, num_workers=2)


# --------------------------------------------------------------------------- open_image_rgb
@pytest.mark.parametrize("case", MODE_CASES)
def test_open_image_rgb_converts_unusual_modes(tmp_path, case):
    path = write_bad(tmp_path / f"x.{'jpg' if case == 'cmyk' else 'png'}", case)
    img = open_image_rgb(path)
    assert img.mode == "RGB" and img.size == (8, 8)
    _, note = to_rgb(Image.open(path))
    assert note  # unusual modes are reported


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    path = write_bad(tmp_path / "x.png", "sixteen_bit")
    assert Image.open(path).mode.startswith("I")
    arr = np.asarray(open_image_rgb(path))[..., 0].astype(int)
    # v8 = round(255 * v / max): 0 -> 0, 63000 -> 255, strictly increasing along the ramp
    assert arr.min() == 0 and arr.max() == 255
    assert np.all(np.diff(arr.flatten()) >= 0) and len(np.unique(arr)) > 50


def test_grayscale_and_rgb_pass_silently():
    for mode in ("L", "RGB"):
        img = Image.new(mode, (4, 3))
        rgb, note = to_rgb(img)
        assert rgb.mode == "RGB" and note is None


@pytest.mark.parametrize(
    "case,kind",
    [("empty", "empty"), ("truncated_jpeg", "truncated"), ("truncated_png", "truncated"), ("not_image", "not_image")],
)
def test_open_image_rgb_rejects_bad_files(tmp_path, case, kind):
    ext = "png" if "png" in case else "jpg"
    path = write_bad(tmp_path / f"bad.{ext}", case)
    with pytest.raises(ImageLoadError) as info:
        open_image_rgb(path)
    assert info.value.kind in ({kind, "corrupt"} if case == "truncated_png" else {kind})
    assert isinstance(info.value, ValueError)  # documented: a ValueError subclass
    assert "bad." in str(info.value)


def test_open_image_rgb_sources_and_limits(tmp_path):
    path = write_image(tmp_path / "a.png", size=(20, 10))
    data = path.read_bytes()
    for source in (path, str(path), data, io.BytesIO(data), {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, Image.open(path)):
        assert open_image_rgb(source).size == (20, 10)
    with pytest.raises(ImageLoadError, match="too large") as info:
        open_image_rgb(path, max_pixels=100)
    assert info.value.kind == "too_large"
    with pytest.raises(ImageLoadError, match="not found"):
        open_image_rgb(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError):
        open_image_rgb(12345)


def test_open_image_rgb_draft_keeps_at_least_requested_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((400, 600, 3), np.uint8)).save(path)
    img = open_image_rgb(path, draft_size=(100, 100))
    assert img.size[0] >= 100 and img.size[1] >= 100 and img.size[0] < 600


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.new("RGB", (30, 10)).save(path, exif=exif)
    assert open_image_rgb(path).size == (10, 30)


def test_inspect_image_bytes_reports_stored_size_and_hash():
    data = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(data, format="JPEG")
    check = inspect_image_bytes(data.getvalue())
    assert check.ok and (check.width, check.height) == (300, 200) and len(check.sha1) == 40 and len(check.dhash) == 16


# --------------------------------------------------------------------------- the cached validation pass
def test_validate_images_caches_by_size_and_mtime(tmp_path, monkeypatch):
    root = tmp_path / "data"
    paths = [write_image(root / f"{i}.png") for i in range(4)]
    calls = []
    real = images_mod._check_file
    monkeypatch.setattr(images_mod, "_check_file", lambda p, m: calls.append(p) or real(p, m))
    first = validate_images(paths, root=root, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 4 and all(c.ok for c in first)
    second = validate_images(paths, root=root, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 4 and [c.sha1 for c in second] == [c.sha1 for c in first]
    write_bad(paths[1], "empty")  # content (size, mtime) changed -> checked again
    third = validate_images(paths, root=root, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 5 and not third[1].ok and third[1].kind == "empty"
    validate_images(paths, root=root, cache_dir=False, progress=False)
    assert len(calls) == 9  # no cache


# --------------------------------------------------------------------------- bad files through a loader
def _brain_with_bad_files(root):
    make_brain(root, n_train=4, n_test=0, testing=False)
    for case in BAD_CASES:
        write_bad(root / "Training" / "glioma" / f"bad_{case}.{'png' if 'png' in case else 'jpg'}", case)
    for case in MODE_CASES:
        write_bad(root / "Training" / "meningioma" / f"mode_{case}.{'jpg' if case == 'cmyk' else 'png'}", case)
    write_image(root / "Training" / "stray.jpg")  # not in a class folder
    write_image(root / "Training" / "unknown_class" / "x.jpg")  # unknown class folder
    write_image(root / "Training" / "glioma" / "sub" / "nested.jpg")  # nested below the class
    (root / "Training" / "glioma" / "scan.dcm").write_bytes(b"DICM")  # unsupported file
    (root / "Training" / "glioma" / "notes.txt").write_text("ignored")
    (root / "Training" / "glioma" / ".DS_Store").write_bytes(b"\0")
    return root


def test_loader_skips_and_reports_every_bad_file(tmp_path):
    root = _brain_with_bad_files(tmp_path / "brain")
    dsd, report = load_dataset("brain_tumor_mri", root, cache_dir=tmp_path / "c", return_report=True, **KW)
    by_path = {p.path: p for p in report.problems}
    assert by_path["Training/glioma/bad_empty.jpg"].kind == "empty"
    assert by_path["Training/glioma/bad_truncated_jpeg.jpg"].kind == "truncated"
    assert by_path["Training/glioma/bad_truncated_png.png"].kind in ("truncated", "corrupt")
    assert by_path["Training/glioma/bad_not_image.jpg"].kind == "not_image"
    assert by_path["Training/stray.jpg"].kind == "wrong_place"
    assert by_path["Training/unknown_class/x.jpg"].kind == "wrong_place"
    assert by_path["Training/glioma/sub/nested.jpg"].kind == "wrong_place"
    assert by_path["Training/glioma/scan.dcm"].kind == "unsupported_file"
    assert not any("notes.txt" in p or "DS_Store" in p for p in by_path)
    for case in MODE_CASES:
        p = by_path[f"Training/meningioma/mode_{case}.{'jpg' if case == 'cmyk' else 'png'}"]
        assert (p.kind, p.action) == ("mode", "converted")
    assert all(p.action == "skipped" for p in report.skipped) and len(report.skipped) == 8
    files = [f for split in dsd.values() for f in split["source_file"]]
    assert len(files) == 16 + 4  # good files + the four converted ones
    assert not any("bad_" in f or "stray" in f or "nested" in f for f in files)
    # converted files decode to RGB through the shared decoder
    for split in dsd.values():
        for row in split:
            if row["source_file"].startswith("Training/meningioma/mode_"):
                assert open_image_rgb(row["image"]).mode == "RGB"


def test_strict_mode_raises_listing_the_files(tmp_path):
    root = _brain_with_bad_files(tmp_path / "brain")
    with pytest.raises(ValueError, match="strict mode: 8 problem") as info:
        load_dataset("brain_tumor_mri", root, strict=True, cache_dir=tmp_path / "c", **KW)
    msg = str(info.value)
    for name in ("bad_empty.jpg", "bad_truncated_jpeg.jpg", "bad_not_image.jpg", "stray.jpg", "nested.jpg", "scan.dcm"):
        assert name in msg


def test_strict_mode_passes_on_clean_data_with_converted_modes(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=4, testing=False)
    write_bad(root / "Training" / "glioma" / "cmyk.jpg", "cmyk")
    dsd = load_dataset("brain_tumor_mri", root, strict=True, cache_dir=tmp_path / "c", **KW)
    assert sum(len(s) for s in dsd.values()) == 17


def test_convert_modes_false_skips_unusual_modes(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=4, testing=False)
    for case in MODE_CASES:
        write_bad(root / "Training" / "glioma" / f"{case}.{'jpg' if case == 'cmyk' else 'png'}", case)
    _, report = load_dataset("brain_tumor_mri", root, convert_modes=False, return_report=True, cache_dir=False, **KW)
    assert sorted(p.kind for p in report.skipped) == ["mode"] * 4
    with pytest.raises(ValueError, match="unusual pixel mode"):
        load_dataset("brain_tumor_mri", root, convert_modes=False, strict=True, cache_dir=False, **KW)


def test_identical_bytes_with_two_labels_are_never_kept(tmp_path):
    root = make_brain(tmp_path / "brain", n_train=4, testing=False)
    src = root / "Training" / "glioma" / "Tr-gl_0000.jpg"
    copy_file(src, root / "Training" / "notumor" / "copy.jpg")
    dsd, report = load_dataset("brain_tumor_mri", root, return_report=True, cache_dir=False, **KW)
    conflicts = {p.path for p in report.skipped if p.kind == "label_conflict"}
    assert conflicts == {"Training/glioma/Tr-gl_0000.jpg", "Training/notumor/copy.jpg"}
    files = {f for s in dsd.values() for f in s["source_file"]}
    assert not files & conflicts


def test_isic_label_rows_and_images_mismatch(tmp_path):
    items = isic_items(2)
    root = make_isic_task3(tmp_path / "isic", items=items, ham=True)
    inp = root / "ISIC2018_Task3_Training_Input"
    gt = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    os.remove(inp / f"{items[0][0]}.jpg")  # a CSV row without its image
    write_image(inp / "ISIC_9999999.jpg")  # an image without a row
    lines = gt.read_text().splitlines()
    # an ambiguous one-hot row (two classes) and a row whose label contradicts HAM10000_metadata.csv
    amb = lines[2].split(",")
    amb[1:] = ["1.0", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0"]
    lines[2] = ",".join(amb)
    con = lines[3].split(",")
    true_label = items[2][1]
    wrong = "NV" if true_label != "NV" else "MEL"
    con[1:] = ["1.0" if l == wrong else "0.0" for l in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")]
    lines[3] = ",".join(con)
    gt.write_text("\n".join(lines) + "\n")
    dsd, report = load_dataset("isic2018", root, return_report=True, cache_dir=False, **KW)
    kinds = {p.kind for p in report.skipped}
    assert {"missing_image", "missing_label", "ambiguous_label", "label_conflict"} <= kinds
    conflict = next(p for p in report.skipped if p.kind == "label_conflict")
    assert items[2][0] in conflict.path and "HAM10000" in conflict.reason
    ids = {i for s in dsd.values() for i in s["image_id"]}
    assert items[0][0] not in ids and items[1][0] not in ids and items[2][0] not in ids and "ISIC_9999999" not in ids
    with pytest.raises(ValueError, match="strict mode"):
        load_dataset("isic2018", root, strict=True, cache_dir=False, **KW)


def test_isic_split_folder_without_ground_truth(tmp_path):
    root = make_isic_task3(tmp_path / "isic")
    for i in range(3):
        write_image(root / "ISIC2018_Task3_Test_Input" / f"ISIC_88{i:05d}.jpg")
    dsd, report = load_dataset("isic2018", root, return_report=True, cache_dir=False, **KW)
    p = next(p for p in report.skipped if p.kind == "missing_label")
    assert p.path == "ISIC2018_Task3_Test_Input/" and "3 image(s)" in p.reason
    assert "test" in dsd and not any(s.startswith("ISIC_88") for s in dsd["test"]["image_id"])


# --------------------------------------------------------------------------- module structure
SRC = Path(__file__).resolve().parents[2] / "src" / "rcl_hf"


def _import_graph(package_dir: Path) -> Dict[str, Set[str]]:
    """``module -> modules of the package it imports``, from the AST: every ``import`` / ``from ... import``
    anywhere in the file (function-level ones included), relative imports resolved."""
    root = package_dir.parent
    modules: Dict[str, Path] = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from . import x` may name a module
            else:
                continue
            for target in targets:
                parts = target.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts and ".".join(parts) != name:
                    graph[name].add(".".join(parts))
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package_even_through_function_level_imports():
    graph = _import_graph(SRC)
    assert "rcl_hf.data.images" in graph and "rcl_hf.data.records" in graph
    assert _cycles(graph) == []
    # the checker sees cycles, including one closed by an import inside a function
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    fake = {**graph, "rcl_hf.data.images": graph["rcl_hf.data.images"] | {"rcl_hf.data.duplicates"}}
    assert ["rcl_hf.data.duplicates", "rcl_hf.data.images"] in _cycles(fake)


def test_function_level_imports_are_in_the_graph(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n    return g\n")
    (pkg / "b.py").write_text("def g():\n    from .sub import a\n    return a\n")
    graph = _import_graph(pkg)
    assert "pkg.b" in graph["pkg.sub.a"] and "pkg.sub.a" in graph["pkg.b"]
    assert _cycles(graph) == [["pkg.b", "pkg.sub", "pkg.sub.a"]]


def test_images_module_is_the_only_image_decoder():
    """Every image the data package and models decode goes through rcl_hf.data.images.open_image_rgb."""
    offenders = []
    for path in [*(SRC / "data").glob("*.py"), SRC / "models.py"]:
        if path.name != "images.py" and "Image.open(" in path.read_text(encoding="utf-8"):
            offenders.append(path.name)
    assert offenders == []
