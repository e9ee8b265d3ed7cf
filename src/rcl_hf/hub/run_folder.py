"""What a training run folder holds, read for the Hub: metrics, recipe, severity, uploadable files.

``scripts/train.py`` (:mod:`rcl_hf.train_job`) leaves in its output folder the checkpoint
(safetensors weights, ``config.json`` carrying ``rcl_severity``, ``preprocessor_config.json``),
the Trainer's result files (``all_results.json``, ``test_results.json``, ...), the recipe
``rcl_run.json`` and plots. This module finds them; :mod:`rcl_hf.hub.cards` renders them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..run_files import CHECK_REPORT, CHECK_RESULTS, EXTRA_JSON_FILES, PREDICTIONS_SUFFIX, RESULT_FILES, RUN_FILE
from ..severity import SeverityMatrix

__all__ = [
    "MODEL_CARD_METRICS",
    "PLOT_SUFFIXES",
    "SPLIT_PREFIXES",
    "check_model_source",
    "collect_results",
    "list_files",
    "load_run_info",
    "model_files",
    "read_json",
    "severity_of",
]

PathLike = Union[str, "os.PathLike[str]"]

#: ``(metric key in the Trainer's results, model-index type, display name)``; the first four are
#: required for every evaluated split, the Bayes-risk ones are added when present.
MODEL_CARD_METRICS: Tuple[Tuple[str, str, str], ...] = (
    ("accuracy", "accuracy", "Accuracy"),
    ("cer", "cer", "Critical Error Rate"),
    ("critical_miss_rate", "critical_miss_rate", "Critical Miss Rate"),
    ("expected_cost", "expected_cost", "Expected Clinical Cost"),
)
BAYES_METRICS = tuple((f"bayes_{k}", f"bayes_{t}", f"{n} (Bayes-risk decision)") for k, t, n in MODEL_CARD_METRICS)
_KNOWN_METRICS = {k for k, _, _ in MODEL_CARD_METRICS + BAYES_METRICS} | {
    "balanced_accuracy", "macro_f1", "n_critical", "samples", "bayes_balanced_accuracy", "bayes_macro_f1",
}
#: Trainer metric prefixes and the split each one reports.
SPLIT_PREFIXES = {"eval": "validation", "validation": "validation", "val": "validation", "test": "test"}
_SPLIT_ORDER = ("validation", "test")
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
_MODEL_JSON = ("config.json", "preprocessor_config.json", "processor_config.json", "generation_config.json", RUN_FILE)


def list_files(folder: PathLike) -> List[str]:
    """Every file below ``folder`` as a sorted list of POSIX relative paths."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def read_json(path: Path) -> Optional[Any]:
    """The parsed JSON file, ``None`` when absent; ``ValueError`` naming the file when broken."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None


def load_run_info(folder: PathLike) -> Dict[str, Any]:
    """The training recipe ``rcl_run.json`` of a run folder (``{}`` when absent)."""
    data = read_json(Path(folder) / RUN_FILE)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{RUN_FILE} in {os.fspath(folder)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def collect_results(folder: PathLike) -> Dict[str, Dict[str, float]]:
    """Per-split metrics from the Trainer's result files in ``folder``.

    Reads :data:`rcl_hf.run_files.RESULT_FILES` (later files override earlier ones), keeps keys
    ``<prefix>_<metric>`` whose prefix names a split (``eval``/``validation`` -> validation,
    ``test`` -> test) and whose metric is a clinical one (accuracy, cer, critical_miss_rate,
    expected_cost, their ``bayes_`` versions, ...), and returns
    ``{"validation": {"cer": 0.01, ...}, "test": {...}}`` with finite floats only.
    """
    merged: Dict[str, Any] = {}
    for name in RESULT_FILES:
        data = read_json(Path(folder) / name)
        if isinstance(data, dict):
            merged.update(data)
    out: Dict[str, Dict[str, float]] = {}
    for key, value in merged.items():
        prefix, _, metric = key.partition("_")
        split = SPLIT_PREFIXES.get(prefix)
        if split is None or metric not in _KNOWN_METRICS or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.setdefault(split, {})[metric] = float(value)
    return {split: out[split] for split in sorted(out, key=lambda s: (_SPLIT_ORDER + (s,)).index(s))}


def severity_of(folder: PathLike) -> SeverityMatrix:
    """The ``rcl_severity`` of the folder's ``config.json``; errors name the folder."""
    from ..models import severity_from_config

    config = Path(folder) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no config.json: it is not a saved model folder")
    try:
        return severity_from_config(config)
    except ValueError as err:
        raise ValueError(f"{os.fspath(folder)!r}: {err}") from None


def model_files(folder: Path) -> List[str]:
    """Files of ``folder`` that belong on the Hub (relative paths), without README.md: weights,
    model / processor JSON, result and recipe JSON, plots (top level and ``plots/``), the per-risk
    calibrations the Space offers (``risk_calibrations/alpha-*.json``), the saved validation / test predictions
    (``*_predictions.npz``: logits, labels, groups; a user recalibrates from them) and the acceptance check
    (``check.md``, ``check.json``). Optimizer
    states, ``checkpoint-*``, ``training_args.bin`` and logs stay behind."""
    names = []
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        n = p.name
        if (n.endswith(".safetensors") or n == "model.safetensors.index.json" or n in _MODEL_JSON
                or n in RESULT_FILES or n in EXTRA_JSON_FILES or n.lower().endswith(PLOT_SUFFIXES)
                or n in (CHECK_REPORT, CHECK_RESULTS) or n.endswith(PREDICTIONS_SUFFIX)):
            names.append(n)
    plots_dir = folder / "plots"
    if plots_dir.is_dir():
        names += [f"plots/{p.relative_to(plots_dir).as_posix()}" for p in sorted(plots_dir.rglob("*"))
                  if p.is_file() and p.name.lower().endswith(PLOT_SUFFIXES)]
    cal_dir = folder / "risk_calibrations"
    if cal_dir.is_dir():
        names += [f"risk_calibrations/{p.name}" for p in sorted(cal_dir.glob("alpha-*.json")) if p.is_file()]
    return names


def check_model_source(folder: Path) -> SeverityMatrix:
    """Raise unless ``folder`` is a saved rcl_hf model that ``pipeline()`` can load; return its severity."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json: pass the folder written by save_pretrained / train.py")
    if not any(p.name.endswith(".safetensors") for p in folder.iterdir()):
        hint = " (it has pytorch_model.bin: re-save with model.save_pretrained(folder))" if (folder / "pytorch_model.bin").exists() else ""
        raise FileNotFoundError(f"{str(folder)!r} has no .safetensors weights{hint}")
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no preprocessor_config.json: save the image processor "
            "(rcl_hf.models.build_image_processor(model, data_config).save_pretrained(folder)) so pipeline() works"
        )
    return severity_of(folder)
