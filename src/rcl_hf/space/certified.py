"""The certified decision layer as the Space shows it: one calibration per target risk α, and plain words.

A model folder carries its default calibration (``risk_calibration.json``, written by training at
α = 10%) and, for the Space's risk control, one calibration per α in
``risk_calibrations/alpha-0.05.json``, ``alpha-0.10.json``, ``alpha-0.20.json`` (:func:`save_alpha_calibrations`,
computed from the run's ``validation_predictions.npz`` with :func:`rcl_hf.calibration.calibrate`, the defaults
of ``scripts/train.py``). Recalibrating on the fly is not possible without labels, so the Space offers exactly the
α values it finds (:func:`load_calibrations`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..calibration import DEFAULT_DELTA, DEFAULT_RISK_KIND, RiskCalibration, calibrate
from ..run_files import RUN_FILE, predictions_file

logger = logging.getLogger("rcl_hf.space")

__all__ = ["SPACE_ALPHAS", "CALIBRATIONS_DIR", "UNCERTIFIED_CHOICE", "alpha_file", "alpha_choice", "save_alpha_calibrations",
           "load_calibrations", "resolve_choice", "expected_images", "model_dataset", "pretty_label"]

#: The target risks the Space offers (share of critical cases missed).
SPACE_ALPHAS = (0.05, 0.10, 0.20)
CALIBRATIONS_DIR = "risk_calibrations"
#: The control's only value for a model without a calibration.
UNCERTIFIED_CHOICE = "not certified"


def alpha_file(folder: os.PathLike | str, alpha: float) -> Path:
    return Path(folder) / CALIBRATIONS_DIR / f"alpha-{alpha:.2f}.json"


def alpha_choice(alpha: float) -> str:
    """The control's label of a target risk: ``0.1`` -> ``"10%"``."""
    return f"{alpha * 100:.0f}%" if abs(alpha * 100 - round(alpha * 100)) < 1e-9 else f"{alpha * 100:.1f}%"


def save_alpha_calibrations(folder: str, severity: Any, alphas: Iterable[float] = SPACE_ALPHAS, *, risk_kind: str = DEFAULT_RISK_KIND,
                            delta: float = DEFAULT_DELTA, groups: Optional[Sequence[Any]] = None,
                            train_groups: Optional[Sequence[Any]] = None, dataset: Optional[str] = None,
                            seed: int = 0, **options: Any) -> Dict[float, Path]:
    """Calibrate the run in ``folder`` at each α on its saved validation logits; ``options`` go to
    :func:`rcl_hf.calibration.calibrate` (e.g. ``conditional="class"``: one certificate per critical disease, ``unit``,
    ``method``, ``p_value``: those of the run's own calibration keep the levels alike); an α the split is too small
    to certify is skipped with a warning. Returns ``{α: path}``."""
    with np.load(os.path.join(folder, predictions_file("validation"))) as z:
        logits, labels = np.asarray(z["logits"], dtype=np.float64), np.asarray(z["labels"]).astype(np.int64)
    out: Dict[float, Path] = {}
    for alpha in alphas:
        try:
            cal = calibrate(logits, labels, severity, risk_kind=risk_kind, alpha=alpha, delta=delta, groups=groups,
                            train_groups=train_groups, dataset=dataset, split="validation", seed=seed, **options)
        except ValueError as err:
            logger.warning("no calibration at α = %s: %s", alpha_choice(alpha), err)
            continue
        out[alpha] = cal.save(alpha_file(folder, alpha))
    return out


def load_calibrations(folder: Optional[str], default: Optional[RiskCalibration]) -> Dict[str, RiskCalibration]:
    """``{"5%": calibration, "10%": ..., ...}`` ordered by α: the folder's per-α files and its default one."""
    found: Dict[float, RiskCalibration] = {}
    if default is not None:
        found[float(default.alpha)] = default
    cal_dir = Path(folder) / CALIBRATIONS_DIR if folder and os.path.isdir(folder) else None
    if cal_dir is not None and cal_dir.is_dir():
        for path in sorted(cal_dir.glob("alpha-*.json")):
            cal = RiskCalibration.load(path)
            if cal is not None and (default is None or cal.labels == default.labels):
                found.setdefault(float(cal.alpha), cal)
    return {alpha_choice(a): found[a] for a in sorted(found)}


def resolve_choice(choice: Any, calibrations: Dict[str, RiskCalibration]) -> Optional[str]:
    """The control's value (``"10%"``, or an α such as ``0.1``) as a key of ``calibrations``; ``None`` when the
    model has none. An unknown value is a ``ValueError`` that lists the offered ones."""
    if not calibrations:
        return None
    if choice is None or choice == "" or choice == UNCERTIFIED_CHOICE:
        return alpha_choice(0.10) if alpha_choice(0.10) in calibrations else next(iter(calibrations))
    if isinstance(choice, (int, float)) and not isinstance(choice, bool):
        key = alpha_choice(float(choice))
    else:
        key = str(choice).strip()
    if key not in calibrations:
        raise ValueError(f"No calibration for a target of {key} critical cases missed: this model offers "
                         f"{', '.join(calibrations)}.")
    return key


# ------------------------------------------------------------------------------ plain words
#: What the images of each registered dataset are, for "This model expects ...".
DATASET_IMAGES = {
    "brain_tumor_mri": "brain MRI slices",
    "isic2018": "dermoscopy photographs of skin lesions",
    "breakhis": "breast tissue microscopy (histopathology) images",
    "sicapv2": "prostate biopsy microscopy patches",
    "synthetic": "rcl_hf's synthetic test scans, not real patients",
}
LABEL_WORDS = {
    "notumor": "no tumour", "pituitary": "pituitary tumour", "glioma": "glioma", "meningioma": "meningioma",
    "MEL": "melanoma", "NV": "melanocytic naevus (mole)", "BCC": "basal cell carcinoma",
    "AKIEC": "actinic keratosis / intraepithelial carcinoma", "BKL": "benign keratosis", "DF": "dermatofibroma",
    "VASC": "vascular lesion", "NC": "no cancer", "G3": "Gleason pattern 3", "G4": "Gleason pattern 4",
    "G5": "Gleason pattern 5", "normal": "normal", "lesion_round": "round lesion", "lesion_oval": "oval lesion",
    "lesion_ring": "ring lesion",
}


def pretty_label(label: str) -> str:
    return LABEL_WORDS.get(label, str(label).replace("_", " "))


def model_dataset(folder: Optional[str], labels: Sequence[str], calibration: Optional[RiskCalibration] = None) -> Optional[str]:
    """The dataset a model was trained on: ``rcl_run.json``, else its calibration, else the preset with its labels."""
    if folder and os.path.isfile(os.path.join(folder, RUN_FILE)):
        try:
            run = json.loads(Path(folder, RUN_FILE).read_text(encoding="utf-8"))
            name = run.get("dataset_name") or run.get("dataset")
            if isinstance(name, str) and name in DATASET_IMAGES:
                return name
        except (OSError, ValueError):
            pass
    if calibration is not None and calibration.dataset in DATASET_IMAGES:
        return calibration.dataset
    from ..severity import PRESETS, SeverityMatrix

    for name in PRESETS:
        if name in DATASET_IMAGES and list(SeverityMatrix.preset(name).labels) == list(labels):
            return name
    return None


def expected_images(dataset: Optional[str], labels: Sequence[str]) -> str:
    """``"brain MRI slices (glioma, meningioma, no tumour, pituitary tumour)"``."""
    kinds: List[str] = [pretty_label(x) for x in labels]
    what = DATASET_IMAGES.get(dataset or "", "images like its training images")
    return f"{what} ({', '.join(kinds)})"
