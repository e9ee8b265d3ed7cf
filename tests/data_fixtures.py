"""Generated fixture trees for the dataset loaders (tiny images, written under ``tmp_path``).

Every image is seeded noise, so no two files are byte-identical unless a test
makes them so on purpose.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

_RNG = np.random.default_rng(1234)


def noise(size: Tuple[int, int] = (8, 8), mode: str = "RGB", seed: Optional[int] = None) -> Image.Image:
    rng = np.random.default_rng(seed) if seed is not None else _RNG
    w, h = size
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def write_image(path: Path, size: Tuple[int, int] = (8, 8), mode: str = "RGB", seed: Optional[int] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    noise(size, mode, seed).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


# --------------------------------------------------------------------------- bad files
def jpeg_bytes(size=(64, 64), seed=0) -> bytes:
    buf = io.BytesIO()
    noise(size, seed=seed).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_bad(path: Path, case: str) -> Path:
    """Write one bad / unusual file: ``empty``, ``truncated_jpeg``, ``truncated_png``, ``not_image``,
    ``cmyk``, ``sixteen_bit``, ``palette``, ``rgba``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_jpeg":
        data = jpeg_bytes((64, 64), seed=7)
        path.write_bytes(data[: len(data) // 2])
    elif case == "truncated_png":
        data = png_bytes(noise((64, 64), seed=8))
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_image":
        path.write_text("this is not an image\n")
    elif case == "cmyk":
        Image.fromarray(np.random.default_rng(9).integers(0, 256, (8, 8, 4), dtype=np.uint8), mode="CMYK").save(path, format="JPEG")
    elif case == "sixteen_bit":
        arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
        Image.fromarray(arr).save(path, format="PNG")  # mode I;16, values up to 63000
    elif case == "palette":
        noise((8, 8), seed=10).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, format="PNG")
    elif case == "rgba":
        arr = np.random.default_rng(11).integers(0, 256, (8, 8, 4), dtype=np.uint8)
        Image.fromarray(arr, mode="RGBA").save(path, format="PNG")
    else:
        raise ValueError(case)
    return path


BAD_CASES = ("empty", "truncated_jpeg", "truncated_png", "not_image")
MODE_CASES = ("cmyk", "sixteen_bit", "palette", "rgba")


# --------------------------------------------------------------------------- Brain Tumor MRI
BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def make_brain(root: Path, n_train: int = 8, n_test: int = 3, testing: bool = True, mode: str = "L") -> Path:
    """``root/Training/<class>/Tr-xx_NNNN.jpg`` (+ ``Testing/``)."""
    for split, n, prefix in (("Training", n_train, "Tr"), ("Testing", n_test if testing else 0, "Te")):
        for cls in BRAIN_CLASSES:
            for i in range(n):
                write_image(root / split / cls / f"{prefix}-{cls[:2]}_{i:04d}.jpg", size=(12, 10), mode=mode)
    return root


# --------------------------------------------------------------------------- ISIC 2018
ISIC_LABELS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def _gt_rows(items: Sequence[Tuple[str, str]]) -> str:
    lines = ["image," + ",".join(ISIC_LABELS)]
    for image, label in items:
        lines.append(image + "," + ",".join("1.0" if l == label else "0.0" for l in ISIC_LABELS))
    return "\n".join(lines) + "\n"


def isic_items(n_lesions_per_class: int = 3, start: int = 24306) -> List[Tuple[str, str, str]]:
    """``(image_id, label, lesion_id)``; lesion k of each class has 1 + k % 3 images."""
    out = []
    idx = start
    for c, label in enumerate(ISIC_LABELS):
        for k in range(n_lesions_per_class):
            lesion = f"HAM_{c:03d}{k:04d}"
            for _ in range(1 + k % 3):
                out.append((f"ISIC_{idx:07d}", label, lesion))
                idx += 1
    return out


def make_isic_task3(
    root: Path,
    items: Optional[List[Tuple[str, str, str]]] = None,
    groupings: bool = True,
    ham: bool = False,
    extra_splits: Dict[str, List[Tuple[str, str]]] = None,
) -> Path:
    """Official Task 3 layout: Training (+ optional Validation/Test) input folders and ground truth."""
    items = items if items is not None else isic_items()
    inp = root / "ISIC2018_Task3_Training_Input"
    for image, _, _ in items:
        write_image(inp / f"{image}.jpg")
    (inp / "ATTRIBUTION.txt").write_text("attribution\n")
    gt = root / "ISIC2018_Task3_Training_GroundTruth"
    gt.mkdir(parents=True, exist_ok=True)
    (gt / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(_gt_rows([(i, l) for i, l, _ in items]))
    if groupings:
        rows = ["image,lesion_id,diagnosis_confirm_type"] + [f"{i},{les},histopathology" for i, _, les in items]
        (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text("\n".join(rows) + "\n")
    if ham:
        dx = {l: l.lower() for l in ISIC_LABELS}
        rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
        rows += [f"{les},{i},{dx[l]},histo,50.0,male,back" for i, l, les in items]
        (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    for split, split_items in (extra_splits or {}).items():
        sinp = root / f"ISIC2018_Task3_{split}_Input"
        for image, _ in split_items:
            write_image(sinp / f"{image}.jpg")
        sgt = root / f"ISIC2018_Task3_{split}_GroundTruth"
        sgt.mkdir(parents=True, exist_ok=True)
        (sgt / f"ISIC2018_Task3_{split}_GroundTruth.csv").write_text(_gt_rows(split_items))
    return root


def make_ham(root: Path, items: Optional[List[Tuple[str, str, str]]] = None) -> Path:
    """HAM10000 form: metadata CSV and images split over two part folders."""
    items = items if items is not None else isic_items()
    for k, (image, _, _) in enumerate(items):
        write_image(root / f"HAM10000_images_part_{1 + k % 2}" / f"{image}.jpg")
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    rows += [f"{les},{i},{l.lower()},histo,50.0,male,back" for i, l, les in items]
    (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    return root


# --------------------------------------------------------------------------- BreaKHis
BREAKHIS_TYPES = {
    "adenosis": "A",
    "fibroadenoma": "F",
    "phyllodes_tumor": "PT",
    "tubular_adenoma": "TA",
    "ductal_carcinoma": "DC",
    "lobular_carcinoma": "LC",
    "mucinous_carcinoma": "MC",
    "papillary_carcinoma": "PC",
}


def breakhis_path(base: Path, subtype: str, slide: str, mag: int, seq: int) -> Path:
    code = BREAKHIS_TYPES[subtype]
    cls = "B" if subtype in ("adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma") else "M"
    folder = "benign" if cls == "B" else "malignant"
    return (
        base / "BreaKHis_v1" / "histology_slides" / "breast" / folder / "SOB" / subtype
        / f"SOB_{cls}_{code}_14-{slide}" / f"{mag}X" / f"SOB_{cls}_{code}-14-{slide}-{mag}-{seq:03d}.png"
    )


def make_breakhis(
    root: Path, patients_per_subtype: int = 3, mags: Iterable[int] = (40, 100), per_mag: int = 2, folds: bool = False
) -> Dict[str, List[Path]]:
    """BreaKHis tree; returns ``{slide_id: [paths]}``.  With ``folds``, ``Folds.csv`` (fold 1: first
    patient of each subtype in test, fold 2: the second)."""
    by_slide: Dict[str, List[Path]] = {}
    rows = ["fold,mag,grp,filename"]
    for s_i, subtype in enumerate(BREAKHIS_TYPES):
        for p in range(patients_per_subtype):
            slide = f"{1000 + 10 * s_i + p}{'AB' if p % 2 else ''}"
            for mag in mags:
                for seq in range(1, per_mag + 1):
                    path = write_image(breakhis_path(root, subtype, slide, mag, seq), size=(10, 7))
                    by_slide.setdefault(f"14-{slide}", []).append(path)
                    rel = path.relative_to(root).as_posix()
                    for fold in (1, 2):
                        grp = "test" if p == fold - 1 else "train"
                        rows.append(f"{fold},{mag},{grp},{rel}")
    if folds:
        (root / "Folds.csv").write_text("\n".join(rows) + "\n")
    return by_slide


# --------------------------------------------------------------------------- SICAPv2
SICAP_LABELS = ("NC", "G3", "G4", "G5")


def sicap_name(wsi: str, k: int) -> str:
    return f"{wsi}_Block_Region_{k % 3}_{k}_0_xini_{100 * k}_yini_{200 * k}.jpg"


def write_sheet(path: Path, rows: List[Tuple[str, str, bool]]) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"image_name": [r[0] for r in rows]}
    for label in SICAP_LABELS:
        data[label] = [1 if r[1] == label else 0 for r in rows]
    data["G4C"] = [1 if r[2] else 0 for r in rows]
    pd.DataFrame(data).to_excel(path, index=False, engine="openpyxl")


def make_sicap(root: Path, n_wsi: int = 12, per_wsi: int = 3, val_folds: bool = True) -> Dict[str, List[Tuple[str, str, bool]]]:
    """``root/SICAPv2`` tree; WSI w has patches of class ``SICAP_LABELS[w % 4]`` (one cribriform G4).

    Partition: WSIs 0-3 test; train = the rest; Val1 validation = WSIs 4-5, Val2 = 6-7.
    Returns ``{"all": rows, "test": rows, "train": rows}``.
    """
    base = root / "SICAPv2"
    rows_by_wsi: Dict[int, List[Tuple[str, str, bool]]] = {}
    for w in range(n_wsi):
        wsi = f"16B{w:07d}"
        label = SICAP_LABELS[w % 4]
        rows = []
        for k in range(per_wsi):
            name = sicap_name(wsi, k)
            write_image(base / "images" / name, size=(9, 9))
            rows.append((name, label, label == "G4" and k == 0))
        rows_by_wsi[w] = rows
    (base / "masks").mkdir(parents=True, exist_ok=True)
    test = [r for w in range(4) for r in rows_by_wsi[w]]
    train = [r for w in range(4, n_wsi) for r in rows_by_wsi[w]]
    write_sheet(base / "partition" / "Test" / "Test.xlsx", test)
    write_sheet(base / "partition" / "Test" / "Train.xlsx", train)
    if val_folds:
        for fold in (1, 2):
            val_w = {4 + 2 * (fold - 1), 5 + 2 * (fold - 1)}
            val = [r for w in val_w for r in rows_by_wsi[w]]
            tr = [r for w in range(4, n_wsi) if w not in val_w for r in rows_by_wsi[w]]
            write_sheet(base / "partition" / "Validation" / f"Val{fold}" / "Test.xlsx", val)
            write_sheet(base / "partition" / "Validation" / f"Val{fold}" / "Train.xlsx", tr)
    return {"all": [r for rs in rows_by_wsi.values() for r in rs], "test": test, "train": train}


def copy_file(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


# --------------------------------------------------------------------------- your own class folders (imagefolder)
SCAN_CLASSES = ("normal", "cyst", "tumour")


def make_scan_folder(root: Path, counts: Optional[Dict[str, int]] = None, size: int = 32, seed: int = 0) -> Path:
    """``root/<class>/*.png``: grey noise (``normal``), a bright ring (``cyst``) or a bright disc (``tumour``) at a
    random place, so a frozen backbone tells them apart and no two images are perceptual near-copies."""
    counts = counts or {c: 40 for c in SCAN_CLASSES}
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img = rng.normal(90, 25, (size, size))
            cy, cx = rng.uniform(0.3, 0.7, 2) * size
            r = np.hypot(yy - cy, xx - cx) * 32 / size
            if cls == "cyst":
                img[(r > 5) & (r < 8)] += 120
            elif cls == "tumour":
                img[r < 7] += 140
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / f"{cls}_{k:03d}.png")
    return root
