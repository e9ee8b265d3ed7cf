"""The Hugging Face Hub: model cards, pushes with dry runs, and offline-safe access checks.

Three kinds of repository leave this module:

* **model** (:func:`push_model`): the checkpoint folder (safetensors weights, ``config.json``
  carrying ``rcl_severity``, ``preprocessor_config.json``), the training metrics JSON
  (``all_results.json``, ``test_results.json``, ``rcl_run.json``, ...), plots (``*.png``) and a
  ``README.md`` model card rendered from ``model_cards/model_card_template.md``
  (:func:`build_model_card`) whose ``model-index`` lists accuracy, CER, CMR and expected cost
  for every evaluated split;
* **dataset** (:func:`push_dataset`): a :class:`datasets.DatasetDict` as Parquet shards
  (``data/<split>-0000i-of-0000n.parquet``, the layout of ``DatasetDict.push_to_hub``) with its
  dataset card;
* **space** (:func:`push_space`): the Gradio demo folder (``spaces_demo/``) after its
  ``README.md`` front matter is checked.

Every push takes ``dry_run_dir``: the exact folder that would be uploaded is written there and
its card metadata is validated offline (:func:`validate_model_card` parses the YAML front
matter and the ``model-index`` with ``huggingface_hub``'s own parser; ``ModelCard.validate()``
would need the network). A real push first calls :func:`check_hub_access`, which turns a
missing token, ``HF_HUB_OFFLINE`` or an unreachable Hub into one
:class:`~rcl_hf.hub_errors.HubUnavailableError` line that says what to do. Tokens are never
printed, logged or written into a card; staged folders are scanned for them before upload.

Loading goes the other way and lives in :func:`rcl_hf.inference.load_model` (folder, Hub id,
or the local Hub cache with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .hub_errors import HubUnavailableError
from .severity import SeverityMatrix

__all__ = [
    "CardValidationError",
    "DEFAULT_LICENSE",
    "MODEL_CARD_METRICS",
    "PushArguments",
    "build_dataset_card",
    "build_model_card",
    "check_hub_access",
    "collect_results",
    "load_run_info",
    "main",
    "model_card_template_path",
    "prepare_dataset_folder",
    "prepare_model_folder",
    "prepare_space_folder",
    "push_dataset",
    "push_model",
    "push_space",
    "run_push",
    "usage_snippets",
    "validate_model_card",
    "validate_space_folder",
    "write_model_card",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_LICENSE = "apache-2.0"
PIPELINE_TAG = "image-classification"
LIBRARY_NAME = "transformers"
BASE_TAGS = ("image-classification", "medical-imaging", "rcl_hf", "risk-calibrated-learning", "critical-error-rate")

#: ``(metric key in the Trainer's results, model-index type, display name)``; the first four are
#: required for every evaluated split, the Bayes-risk ones are added when present.
MODEL_CARD_METRICS: Tuple[Tuple[str, str, str], ...] = (
    ("accuracy", "accuracy", "Accuracy"),
    ("cer", "cer", "Critical Error Rate"),
    ("critical_miss_rate", "critical_miss_rate", "Critical Miss Rate"),
    ("expected_cost", "expected_cost", "Expected Clinical Cost"),
)
_REQUIRED_METRIC_TYPES = tuple(t for _, t, _ in MODEL_CARD_METRICS)
_BAYES_METRICS = tuple((f"bayes_{k}", f"bayes_{t}", f"{n} (Bayes-risk decision)") for k, t, n in MODEL_CARD_METRICS)
_KNOWN_METRICS = {k for k, _, _ in MODEL_CARD_METRICS + _BAYES_METRICS} | {
    "balanced_accuracy", "macro_f1", "n_critical", "samples", "bayes_balanced_accuracy", "bayes_macro_f1",
}
#: Trainer metric prefixes and the split each one reports.
SPLIT_PREFIXES = {"eval": "validation", "validation": "validation", "val": "validation", "test": "test"}
_SPLIT_ORDER = ("validation", "test")

#: Result files the training script writes, merged in this order (later files win).
RESULT_FILES = ("all_results.json", "eval_results.json", "validation_results.json", "test_results.json")
RUN_FILE = "rcl_run.json"
#: Other JSON files of a training run that travel with the model.
EXTRA_JSON_FILES = ("train_results.json", "trainer_state.json", "severity.json")
_PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
_SPACE_IGNORE = ("__pycache__", "*.pyc", ".git", ".gradio", "flagged", ".ipynb_checkpoints", ".DS_Store",
                 "*.egg-info", ".venv", ".pytest_cache")
_SPACE_COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")

_DATASET_TITLES = {
    "brain_tumor_mri": "Brain Tumor MRI",
    "isic2018": "ISIC 2018 Task 3",
    "breakhis": "BreaKHis v1",
    "sicapv2": "SICAPv2",
    "synthetic": "rcl_hf synthetic lesions",
}
_RCL_LOSSES = ("rcl", "rcl_log", "rcl_focal")
_RECIPE_FIELDS = (
    ("backbone", "Backbone"),
    ("pretrained", "Initial weights"),
    ("loss", "Loss"),
    ("lam", "λ (risk weight)"),
    ("risk_form", "Risk term form"),
    ("gamma", "Focal γ"),
    ("label_smoothing", "Label smoothing"),
    ("severity", "Severity matrix"),
    ("dataset", "Dataset"),
    ("dataset_repo_id", "Dataset on the Hub"),
    ("grouping", "Split grouping"),
    ("image_size", "Image size"),
    ("epochs", "Epochs"),
    ("num_train_epochs", "Epochs"),
    ("learning_rate", "Learning rate"),
    ("batch_size", "Batch size"),
    ("per_device_train_batch_size", "Batch size per device"),
    ("seed", "Seed"),
    ("seeds", "Seeds"),
    ("split_seed", "Split seed"),
    ("split_sizes", "Split sizes"),
    ("freeze_backbone", "Frozen backbone (head only)"),
    ("world_size", "Processes"),
    ("metric_for_best_model", "Model selection"),
    ("wall_time_s", "Training time (s)"),
)
#: Recipe keys kept in rcl_run.json but not shown in the card (local paths, bulky or repeated data).
_RECIPE_HIDDEN = ("data_dir", "output_dir", "cache_dir", "risk", "base_model", "license", "dataset_title")
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")


class CardValidationError(ValueError):
    """A model card, dataset card or Space README whose metadata the Hub would reject or misread."""


# ============================================================================ helpers
def _redact(text: str, token: Optional[str] = None) -> str:
    """``text`` with ``token`` and anything shaped like a Hugging Face token replaced by ``***``."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_PATTERN.sub("hf_***", text)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, or as huggingface_hub read it at import."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        return False


def _endpoint(endpoint: Optional[str] = None) -> str:
    if endpoint:
        return endpoint.rstrip("/")
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _network_error_types() -> Tuple[type, ...]:
    """Exception classes that mean "the Hub could not be reached or refused" (HTTP libraries included)."""
    types: List[type] = [OSError]  # ConnectionError, TimeoutError, HfHubHTTPError, OfflineModeIsEnabled, requests
    for module, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException"),
                         ("huggingface_hub.errors", "HfHubHTTPError")):
        try:
            types.append(getattr(importlib.import_module(module), name))
        except Exception:
            continue
    return tuple(types)


def _hub_error(err: BaseException, action: str, endpoint: str, token: Optional[str] = None) -> HubUnavailableError:
    """One actionable line for an exception raised while talking to the Hub."""
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled
    except Exception:  # pragma: no cover
        OfflineModeIsEnabled = ()  # type: ignore[assignment]
    status = getattr(getattr(err, "response", None), "status_code", None)
    dry = "or write the folder offline with --dry_run_dir DIR"
    if isinstance(err, OfflineModeIsEnabled) or _is_offline():
        msg = f"Cannot {action}: HF_HUB_OFFLINE is set. Unset it on a machine with network access, {dry}."
    elif status == 401:
        msg = (f"Cannot {action}: the Hub at {endpoint} rejected the token (HTTP 401). Create a write token at "
               "https://huggingface.co/settings/tokens and run `hf auth login` (or set HF_TOKEN).")
    elif status == 403:
        msg = (f"Cannot {action}: the token has no write access to this repository (HTTP 403). Use a write token "
               "of an account or organisation that owns the namespace.")
    elif status == 404:
        msg = f"Cannot {action}: the repository or namespace was not found on {endpoint} (HTTP 404); check --repo_id."
    elif status is not None:
        msg = f"Cannot {action}: the Hub at {endpoint} answered HTTP {status}; try again later, {dry}."
    else:
        msg = (f"Cannot {action}: the Hugging Face Hub at {endpoint} is unreachable ({type(err).__name__}). "
               f"Check the network, proxy or HF_ENDPOINT, {dry}.")
    return HubUnavailableError(_one_line(_redact(msg, token)))


def _check_repo_id(repo_id: str, what: str = "repo_id") -> str:
    """``owner/name`` with Hub-valid characters, else ``ValueError`` naming the rule."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"{what} must look like 'owner/name' (a user or organisation, then the repository), got {repo_id!r}"
            + (" (a bare name gets your user name only in a real push)" if what == "repo_id" else "")
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repository id: {_one_line(err)}") from None
    return repo_id


def _with_namespace(repo_id: str, user: str) -> str:
    """``user/repo_id`` for a bare name (what ``Trainer.hub_model_id`` may hold), else ``repo_id``; validated."""
    if isinstance(repo_id, str) and repo_id and "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    return _check_repo_id(repo_id)


def _prepare_output_dir(out_dir: PathLike, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"Dry-run folder {str(out)!r} exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise ValueError(f"Dry-run folder {str(out)!r} is not empty: choose a new folder or pass overwrite=True")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _list_files(folder: PathLike) -> List[str]:
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _scan_for_tokens(folder: PathLike, token: Optional[str]) -> None:
    """Raise if a staged text file contains ``token`` or a token-shaped string."""
    for rel in _list_files(folder):
        path = Path(folder) / rel
        if path.suffix.lower() not in (".md", ".json", ".txt", ".py", ".yaml", ".yml", ".cfg", ".toml", ".csv"):
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        if (token and token in text) or _TOKEN_PATTERN.search(text):
            raise ValueError(f"Refusing to upload {rel!r}: it contains a Hugging Face access token; remove it first")


def _read_json(path: Path) -> Optional[Any]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None


def _split_front_matter(text: str) -> Tuple[Dict[str, Any], str]:
    """``(metadata, body)`` of a README; ``CardValidationError`` when the YAML block is missing or broken."""
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        raise CardValidationError("The README has no YAML front matter (a block between '---' lines at the top)")
    try:
        data = yaml.safe_load(match.group(2)) or {}
    except yaml.YAMLError as err:
        raise CardValidationError(f"The README's YAML front matter does not parse: {_one_line(err)}") from None
    if not isinstance(data, dict):
        raise CardValidationError(f"The README's YAML front matter must be a mapping, got {type(data).__name__}")
    return data, text[match.end():]


# ===================================================================== run information
def load_run_info(folder: PathLike) -> Dict[str, Any]:
    """The training recipe ``rcl_run.json`` of a run folder (``{}`` when absent)."""
    data = _read_json(Path(folder) / RUN_FILE)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{RUN_FILE} in {os.fspath(folder)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def collect_results(folder: PathLike) -> Dict[str, Dict[str, float]]:
    """Per-split metrics from the Trainer's result files in ``folder``.

    Reads :data:`RESULT_FILES` (later files override earlier ones), keeps keys
    ``<prefix>_<metric>`` whose prefix names a split (``eval``/``validation`` -> validation,
    ``test`` -> test) and whose metric is a clinical one (accuracy, cer, critical_miss_rate,
    expected_cost, their ``bayes_`` versions, ...), and returns
    ``{"validation": {"cer": 0.01, ...}, "test": {...}}`` with finite floats only.
    """
    merged: Dict[str, Any] = {}
    for name in RESULT_FILES:
        data = _read_json(Path(folder) / name)
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


def _severity_of(folder: PathLike) -> SeverityMatrix:
    from .models import severity_from_config

    config = Path(folder) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no config.json: it is not a saved model folder")
    try:
        return severity_from_config(config)
    except ValueError as err:
        raise ValueError(f"{os.fspath(folder)!r}: {err}") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "`" + json.dumps(value, sort_keys=True) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _dataset_module(name: str) -> Any:
    """The rcl_hf.data module of a registered dataset (``PRETTY_NAME``, ``GROUPING``), or None."""
    if not name:
        return None
    try:
        from .data import dataset_module

        return dataset_module(name)
    except Exception:  # unknown name, or rcl_hf.data without that registry
        return None


def _normalize_run(run: Dict[str, Any]) -> Dict[str, Any]:
    """The recipe as the card shows it.

    Accepts the flat form (``loss``, ``lam``, ``risk_form`` at the top) and the one
    ``rcl_hf.train_job`` writes (``risk`` = the :class:`~rcl_hf.trainer.RiskArguments` dict,
    ``severity`` = the matrix dict, ``split_sizes``); fills ``grouping`` from the dataset's
    module when absent.
    """
    out = dict(run)
    risk = run.get("risk")
    if isinstance(risk, dict):
        for key in ("loss", "lam", "risk_form", "gamma", "label_smoothing"):
            if out.get(key) is None and risk.get(key) is not None:
                out[key] = risk[key]
        if isinstance(risk.get("severity"), str) and "severity" not in out:
            out["severity"] = risk["severity"]
    if out.get("loss") not in ("focal", "rcl_focal"):
        out.pop("gamma", None)
    severity = out.get("severity")
    if isinstance(severity, dict):
        out["severity"] = severity.get("name") or "custom (the matrix below)"
    sizes = out.get("split_sizes")
    if isinstance(sizes, dict):
        out["split_sizes"] = " · ".join(f"{k} {v}" for k, v in sizes.items())
    if not out.get("grouping"):
        grouping = getattr(_dataset_module(str(out.get("dataset") or "")), "GROUPING", None)
        if grouping:
            out["grouping"] = grouping
    return out


def _recipe_rows(run: Dict[str, Any]) -> List[Dict[str, str]]:
    rows, seen = [], set()
    for key, name in _RECIPE_FIELDS:
        if key in run and run[key] is not None and name not in seen:
            rows.append({"name": name, "value": _fmt(run[key])})
            seen.add(name)
    known = {k for k, _ in _RECIPE_FIELDS} | set(_RECIPE_HIDDEN)
    for key in sorted(run):
        if key in known or run[key] is None or "token" in key.lower() or _TOKEN_PATTERN.search(str(run[key])):
            continue
        rows.append({"name": f"`{key}`", "value": _fmt(run[key])})
    return rows


def _pct(metrics: Dict[str, float], key: str) -> str:
    return f"{100 * metrics[key]:.2f}%" if key in metrics else "—"


def _result_rows(results: Dict[str, Dict[str, float]], sizes: Optional[Dict[str, Any]] = None) -> List[Dict[str, str]]:
    rows = []
    for split, m in results.items():
        n = m.get("samples", (sizes or {}).get(split))
        for prefix, rule in (("", "argmax"), ("bayes_", "Bayes-risk")):
            if prefix and not any(k.startswith("bayes_") for k in m):
                continue
            rows.append({
                "split": split,
                "rule": rule,
                "accuracy": _pct(m, f"{prefix}accuracy"),
                "cer": _pct(m, f"{prefix}cer"),
                "cmr": _pct(m, f"{prefix}critical_miss_rate"),
                "expected_cost": f"{m[f'{prefix}expected_cost']:.4f}" if f"{prefix}expected_cost" in m else "—",
                "n": str(int(n)) if n is not None else "—",
            })
    return rows


def _critical_text(severity: SeverityMatrix) -> str:
    parts = []
    for i, truth in enumerate(severity.labels):
        targets = [severity.labels[j] for j in range(severity.num_labels) if severity.critical[i, j]]
        if targets:
            parts.append(f"{truth} → {', '.join(targets)}")
    return "; ".join(parts) if parts else "none (this matrix marks no cell as critical)"


def usage_snippets(repo_id: str, threshold: float = 0.1, image: str = "case.png") -> Dict[str, str]:
    """The two "how to use" code blocks of the card, as runnable Python.

    ``"rcl_hf"``: :func:`rcl_hf.load_model` + :func:`rcl_hf.predict` (Bayes-risk decision and
    referral). ``"transformers"``: plain ``pipeline("image-classification")`` and the Bayes-risk
    rule computed from ``config.rcl_severity`` with numpy, no rcl_hf needed. Both print one line.
    """
    rcl = (
        "from PIL import Image\n"
        "import rcl_hf\n"
        "\n"
        f"model = rcl_hf.load_model({repo_id!r})  # knows its labels and severity matrix\n"
        f"pred = rcl_hf.predict(model, Image.open({image!r}), threshold={threshold!r})\n"
        "record = pred.as_records()[0]\n"
        "print(record['argmax'], record['bayes_decision'], round(record['expected_cost'], 4), record['refer'])"
    )
    plain = (
        "import numpy as np\n"
        "from transformers import pipeline\n"
        "\n"
        f"clf = pipeline('image-classification', model={repo_id!r})\n"
        "severity = clf.model.config.rcl_severity  # {'labels', 'matrix', 'critical'}\n"
        "labels, M = severity['labels'], np.array(severity['matrix'])\n"
        f"scores = {{s['label']: s['score'] for s in clf({image!r}, top_k=len(labels))}}\n"
        "p = np.array([scores[label] for label in labels])\n"
        "risk = p @ M  # expected cost of deciding each class\n"
        "decision = labels[int(risk.argmin())]\n"
        f"refer = bool(risk.min() > {threshold!r})  # refer to a specialist\n"
        "print(labels[int(p.argmax())], decision, round(float(risk.min()), 4), refer)"
    )
    return {"rcl_hf": rcl, "transformers": plain}


# ========================================================================= model cards
def model_card_template_path() -> Path:
    """The model card template: the repository's ``model_cards/`` copy when running from a
    checkout, else the one packaged in ``rcl_hf/templates/``."""
    here = Path(__file__).resolve().parent
    candidates = (here.parents[1] / "model_cards" / "model_card_template.md",
                  here / "templates" / "model_card_template.md")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"No model card template found; looked in {[str(p) for p in candidates]}")


def _eval_results(results: Dict[str, Dict[str, float]], dataset_type: str, dataset_title: str) -> List[Any]:
    from huggingface_hub import EvalResult

    out = []
    for split, metrics in results.items():
        for key, mtype, mname in MODEL_CARD_METRICS + _BAYES_METRICS:
            if key in metrics:
                out.append(EvalResult(
                    task_type=PIPELINE_TAG, task_name="Image Classification",
                    dataset_type=dataset_type, dataset_name=dataset_title, dataset_split=split,
                    metric_type=mtype, metric_name=mname, metric_value=float(metrics[key]),
                ))
    return out


def build_model_card(
    folder: PathLike,
    repo_id: Optional[str] = None,
    *,
    license: str = DEFAULT_LICENSE,
    datasets: Optional[Union[str, Sequence[str]]] = None,
    base_model: Optional[str] = None,
    tags: Optional[Sequence[str]] = None,
    model_name: Optional[str] = None,
    threshold: Optional[float] = None,
    template_path: Optional[PathLike] = None,
    files: Optional[Sequence[str]] = None,
):
    """Render the model card of a checkpoint folder.

    Reads ``config.json`` (labels and ``rcl_severity``, required), the Trainer's result files
    (:func:`collect_results`), ``rcl_run.json`` (:func:`load_run_info`) and plots, each when
    present, and renders ``model_cards/model_card_template.md`` with
    ``huggingface_hub.ModelCard.from_template``.

    Args:
        folder: the saved model folder (``save_pretrained`` output, optionally a training run dir).
        repo_id: ``owner/name`` the card will live at (used in the usage snippets); defaults to
            ``rcl-hf/<folder name>`` for local rendering.
        license: a Hub license id.
        datasets: Hub dataset id(s) trained on; defaults to ``dataset_repo_id`` of ``rcl_run.json``.
        base_model: Hub id the weights were fine-tuned from; defaults to ``base_model`` of
            ``rcl_run.json`` or a backbone given as a Hub id.
        tags: extra tags, added to the rcl_hf ones.
        model_name: the ``model-index`` name; defaults to the repository name.
        threshold: referral threshold shown in the usage snippets (default
            :data:`rcl_hf.inference.DEFAULT_REFERRAL_THRESHOLD`).
        template_path: another Jinja template (default :func:`model_card_template_path`).
        files: file list shown in the card; defaults to the folder's uploadable files.

    Returns:
        A ``huggingface_hub.ModelCard`` (``str(card)`` is the README text).

    Raises:
        FileNotFoundError: no ``config.json``. ValueError: no ``rcl_severity`` in it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    severity = _severity_of(folder)
    raw_run = load_run_info(folder)
    run = _normalize_run(raw_run)
    sizes = raw_run.get("split_sizes") if isinstance(raw_run.get("split_sizes"), dict) else None
    results = collect_results(folder)
    if threshold is None:
        from .inference import DEFAULT_REFERRAL_THRESHOLD

        threshold = DEFAULT_REFERRAL_THRESHOLD
    if repo_id is None:
        repo_id = f"rcl-hf/{re.sub(r'[^A-Za-z0-9._-]', '-', folder.resolve().name) or 'model'}"
    _check_repo_id(repo_id)
    model_name = model_name or repo_id.split("/")[-1]

    dataset_key = str(run.get("dataset") or severity.name or "").strip()
    dataset_title = (run.get("dataset_title") or getattr(_dataset_module(dataset_key), "PRETTY_NAME", None)
                     or _DATASET_TITLES.get(dataset_key, dataset_key or "medical"))
    if datasets is None and run.get("dataset_repo_id"):
        datasets = run["dataset_repo_id"]
    dataset_ids = [datasets] if isinstance(datasets, str) else list(datasets or [])
    for d in dataset_ids:
        _check_repo_id(d, "dataset id")
    backbone = str(run.get("backbone") or "")
    if base_model is None:
        base_model = run.get("base_model")
        if base_model is None and backbone.count("/") == 1 and not backbone.startswith(("timm/", ".", "/")) \
                and not os.path.exists(backbone):
            base_model = backbone
    if base_model is not None:
        _check_repo_id(base_model, "base_model")
    dataset_type = dataset_ids[0] if dataset_ids else (dataset_key or "unknown")

    all_tags = list(BASE_TAGS)
    for t in [dataset_key, "timm" if backbone.startswith("timm/") else "", *(tags or [])]:
        if t and t not in all_tags:
            all_tags.append(t)
    card_data = ModelCardData(
        license=license,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=all_tags,
        datasets=dataset_ids or None,
        base_model=base_model,
        model_name=model_name,
        eval_results=_eval_results(results, dataset_type, dataset_title) or None,
    )

    loss = str(run.get("loss") or "")
    lam = run.get("lam")
    positive = [label for label, pos in zip(severity.labels, severity.positive_rows) if pos]
    is_rcl = loss in _RCL_LOSSES and (lam is None or float(lam) > 0)
    if is_rcl:
        how = (f"trained with **Risk-Calibrated Learning** (loss `{loss}`, λ = {_fmt(lam) if lam is not None else 'default'}): "
               "the clinical severity matrix below enters the training loss so that critical errors are "
               "suppressed far more than fine-grained ones")
    elif loss:
        how = (f"trained with the `{loss}` loss (no risk term; a baseline for Risk-Calibrated Learning). "
               "Its severity matrix still drives the evaluation and the Bayes-risk decision at inference")
    else:
        how = "saved by rcl_hf with a clinical severity matrix for evaluation and the Bayes-risk decision"
    arch = backbone or "image"
    summary = (f"A {arch} classifier of {dataset_title} images into {severity.num_labels} classes "
               f"({', '.join(severity.labels)}), {how}.")
    form = run.get("risk_form") or ("log" if loss == "rcl_log" else "expected")
    if is_rcl:
        term = ("R = Σⱼ M[y, j] · pⱼ (expected clinical cost)" if form == "expected"
                else "R = −Σⱼ M[y, j] · log(1 − pⱼ + ε) (a barrier against confident critical errors)")
        base = "focal loss" if loss == "rcl_focal" else "cross-entropy"
        loss_text = (f"Loss: L = B(z, y) + λ · R(p, y) with base term B = {base} and risk term {term}, "
                     "averaged over the batch (this project's definition).")
    else:
        loss_text = "Loss: the base term only (λ · R = 0); compare with a Risk-Calibrated Learning run of the same recipe."
    grouping = str(run.get("grouping") or "").strip().rstrip(".")
    if not grouping:
        grouping_text = ""
    elif " " in grouping:  # a sentence (a dataset module's GROUPING)
        grouping_text = f". Split grouping: {grouping[0].lower() + grouping[1:]}"
    else:  # a column name
        grouping_text = f"; splits were grouped by {grouping}, so no {grouping} appears in two splits"

    if files is None:
        files = sorted(set(_model_files(folder)) | {"README.md"})
    plots = [{"path": f, "title": Path(f).stem.replace("_", " ").capitalize()}
             for f in files if f.lower().endswith(_PLOT_SUFFIXES)]
    snippets = usage_snippets(repo_id, threshold)
    off_diag = severity.num_labels * (severity.num_labels - 1)
    template = Path(template_path) if template_path is not None else model_card_template_path()
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_title=model_name,
        repo_id=repo_id,
        summary=summary,
        results=_result_rows(results, sizes),
        positive_text=", ".join(positive) or "none",
        severity_table=severity.to_markdown(),
        n_critical=int(severity.critical.sum()),
        n_cells=off_diag,
        critical_text=_critical_text(severity),
        recipe=_recipe_rows(run),
        loss_text=loss_text,
        usage_rcl_hf=snippets["rcl_hf"],
        usage_transformers=snippets["transformers"],
        threshold=threshold,
        dataset_title=dataset_title,
        grouping_text=grouping_text,
        files=list(files),
        plots=plots,
    )
    return card


def write_model_card(folder: PathLike, repo_id: Optional[str] = None, **card_kwargs: Any) -> Path:
    """Render :func:`build_model_card` into ``folder/README.md``, validate it, return the path.

    This is what ``Trainer.create_model_card`` should call for rcl_hf runs, so that
    ``trainer.push_to_hub()`` and ``scripts/push_to_hub.py`` upload the same card.
    """
    card = build_model_card(folder, repo_id, **card_kwargs)
    path = Path(folder) / "README.md"
    text = str(card)
    validate_model_card(text)
    path.write_text(text, encoding="utf-8")
    return path


def validate_model_card(
    card: Any,
    *,
    expected_results: Optional[Dict[str, Dict[str, float]]] = None,
    require_datasets: bool = False,
    require_base_model: bool = False,
) -> Dict[str, Any]:
    """Check a model card's metadata offline, the way the Hub will read it.

    Parses the YAML front matter, checks ``license``, ``tags``, ``pipeline_tag``
    (image-classification) and ``library_name``, checks that ``datasets`` / ``base_model`` (when
    present, or when required) are valid Hub ids, and parses ``model-index`` with
    ``huggingface_hub.repocard_data.model_index_to_eval_results``: every evaluated split must
    report accuracy, CER, CMR and expected cost as finite numbers. With ``expected_results``
    (``{split: {metric key: value}}``, e.g. :func:`collect_results`), the values must match.

    Args:
        card: a ``ModelCard``, README text, or a path to a README.md.

    Returns:
        ``{"metadata": dict, "model_name": str | None, "eval_results": list[EvalResult]}``.

    Raises:
        CardValidationError: naming the first problem found.
    """
    from huggingface_hub.repocard_data import model_index_to_eval_results

    if isinstance(card, (os.PathLike,)) or (isinstance(card, str) and "\n" not in card and os.path.isfile(card)):
        text = Path(card).read_text(encoding="utf-8")
    else:
        text = str(card)
    meta, body = _split_front_matter(text)
    if _TOKEN_PATTERN.search(text):
        raise CardValidationError("The card contains a Hugging Face access token; never write tokens into cards")
    if not isinstance(meta.get("license"), str) or not meta["license"].strip():
        raise CardValidationError("Card metadata needs a 'license' (a Hub license id such as apache-2.0)")
    tags = meta.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
        raise CardValidationError(f"Card metadata needs 'tags' as a non-empty list of strings, got {tags!r}")
    if meta.get("pipeline_tag") != PIPELINE_TAG:
        raise CardValidationError(f"Card metadata 'pipeline_tag' must be {PIPELINE_TAG!r}, got {meta.get('pipeline_tag')!r}")
    if meta.get("library_name") != LIBRARY_NAME:
        raise CardValidationError(f"Card metadata 'library_name' must be {LIBRARY_NAME!r}, got {meta.get('library_name')!r}")
    for key, required in (("datasets", require_datasets), ("base_model", require_base_model)):
        value = meta.get(key)
        if value is None:
            if required:
                raise CardValidationError(f"Card metadata needs {key!r} (it is known for this model)")
            continue
        for repo in [value] if isinstance(value, str) else (value if isinstance(value, list) else [value]):
            try:
                _check_repo_id(repo, key)
            except ValueError as err:
                raise CardValidationError(f"Card metadata {key!r}: {err}") from None
    model_name, evals = None, []
    if "model-index" in meta:
        try:
            model_name, evals = model_index_to_eval_results(meta["model-index"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CardValidationError(f"Card 'model-index' does not parse: {type(err).__name__}: {_one_line(err)}") from None
        by_split: Dict[str, Dict[str, float]] = {}
        for r in evals:
            if r.task_type != PIPELINE_TAG:
                raise CardValidationError(f"model-index task {r.task_type!r} is not {PIPELINE_TAG!r}")
            if isinstance(r.metric_value, bool) or not isinstance(r.metric_value, (int, float)) \
                    or not math.isfinite(r.metric_value):
                raise CardValidationError(f"model-index metric {r.metric_type!r} ({r.dataset_split}) is not a finite number: {r.metric_value!r}")
            by_split.setdefault(r.dataset_split or "", {})[r.metric_type] = float(r.metric_value)
        for split, metrics in by_split.items():
            missing = [t for t in _REQUIRED_METRIC_TYPES if t not in metrics]
            if missing:
                raise CardValidationError(f"model-index split {split!r} lacks metric(s) {missing}")
        if expected_results is not None:
            _compare_results(by_split, expected_results)
    elif expected_results:
        raise CardValidationError(f"Card has no 'model-index' although results exist for {sorted(expected_results)}")
    if "| true \\ predicted |" not in body:
        raise CardValidationError("Card body has no severity matrix table (SeverityMatrix.to_markdown())")
    return {"metadata": meta, "model_name": model_name, "eval_results": evals}


def _compare_results(found: Dict[str, Dict[str, float]], expected: Dict[str, Dict[str, float]]) -> None:
    types = {k: t for k, t, _ in MODEL_CARD_METRICS + _BAYES_METRICS}
    for split, metrics in expected.items():
        for key, value in metrics.items():
            if key not in types:
                continue
            got = found.get(split, {}).get(types[key])
            if got is None:
                raise CardValidationError(f"model-index lacks {types[key]!r} for split {split!r}")
            if not math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-6):
                raise CardValidationError(f"model-index {types[key]!r} for split {split!r} is {got}, results say {value}")


# ========================================================================= model push
def _model_files(folder: Path) -> List[str]:
    """Files of ``folder`` that belong on the Hub (relative paths), without README.md."""
    names = []
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        n = p.name
        if n.endswith(".safetensors") or n == "model.safetensors.index.json":
            names.append(n)
        elif n in ("config.json", "preprocessor_config.json", "processor_config.json", "generation_config.json", RUN_FILE):
            names.append(n)
        elif n in RESULT_FILES or n in EXTRA_JSON_FILES:
            names.append(n)
        elif n.lower().endswith(_PLOT_SUFFIXES):
            names.append(n)
    plots_dir = folder / "plots"
    if plots_dir.is_dir():
        names += [f"plots/{p.relative_to(plots_dir).as_posix()}" for p in sorted(plots_dir.rglob("*"))
                  if p.is_file() and p.name.lower().endswith(_PLOT_SUFFIXES)]
    return names


def _check_model_source(folder: Path) -> None:
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
    _severity_of(folder)


def prepare_model_folder(
    folder: PathLike,
    out_dir: PathLike,
    repo_id: str,
    *,
    overwrite: bool = False,
    **card_kwargs: Any,
) -> Path:
    """Write into ``out_dir`` exactly the files :func:`push_model` uploads, and validate them.

    Copies the weights (``*.safetensors``), ``config.json`` (label maps ensured, severity
    checked), ``preprocessor_config.json``, result and recipe JSON, and plots (top level and
    ``plots/``); skips optimizer states, ``checkpoint-*``, ``training_args.bin`` and logs; renders
    ``README.md`` with :func:`build_model_card` and checks it with :func:`validate_model_card`
    against the copied results.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from .models import ensure_label_maps_in_config_file

    src = Path(folder)
    _check_repo_id(repo_id)
    _check_model_source(src)
    out = _prepare_output_dir(out_dir, overwrite)
    if out.resolve() == src.resolve():
        raise ValueError("The dry-run folder must differ from the model folder")
    files = _model_files(src)
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, out / rel)
    ensure_label_maps_in_config_file(str(out))
    card = build_model_card(out, repo_id, files=sorted(set(files) | {"README.md"}), **card_kwargs)
    text = str(card)
    (out / "README.md").write_text(text, encoding="utf-8")
    run = load_run_info(out)
    validate_model_card(
        text,
        expected_results=collect_results(out),
        require_datasets=bool(card_kwargs.get("datasets") or run.get("dataset_repo_id")),
        require_base_model=bool(card_kwargs.get("base_model") or run.get("base_model")),
    )
    _scan_for_tokens(out, None)
    return out


def push_model(
    folder: PathLike,
    repo_id: str,
    dry_run_dir: Optional[PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    *,
    commit_message: str = "Upload rcl_hf model",
    overwrite: bool = False,
    **card_kwargs: Any,
) -> str:
    """Upload a trained model folder with its model card to ``repo_id`` (a model repository).

    Args:
        folder: the model / training output folder.
        repo_id: ``owner/name``; a bare ``name`` (as ``TrainingArguments.hub_model_id`` may be) is
            completed with the token's user name in a real push.
        dry_run_dir: when given, write the upload folder there (:func:`prepare_model_folder`),
            validate it, and upload nothing; works offline.
        token: a write token; default ``huggingface_hub.get_token()`` (``HF_TOKEN`` or ``hf auth login``).
        private: create the repository as private.
        commit_message: message of the upload commit.
        overwrite: allow replacing a non-empty ``dry_run_dir``.
        **card_kwargs: ``license``, ``datasets``, ``base_model``, ``tags``, ``threshold`` for
            :func:`build_model_card`.

    Returns:
        The dry-run folder, or the URL of the commit on the Hub.

    Raises:
        HubUnavailableError: no token, offline, or the Hub unreachable / refusing (one line).
    """
    if dry_run_dir is not None:
        return str(prepare_model_folder(folder, dry_run_dir, repo_id, overwrite=overwrite, **card_kwargs))
    _with_namespace(repo_id, "user")
    _check_model_source(Path(folder))
    user, token = check_hub_access(token)
    repo_id = _with_namespace(repo_id, user)
    with tempfile.TemporaryDirectory(prefix="rcl_hf_push_") as tmp:
        staged = prepare_model_folder(folder, Path(tmp) / "upload", repo_id, **card_kwargs)
        _scan_for_tokens(staged, token)
        return _upload(staged, repo_id, "model", token, private, commit_message)


def _upload(staged: Path, repo_id: str, repo_type: str, token: str, private: bool, commit_message: str,
            space_sdk: Optional[str] = None) -> str:
    from huggingface_hub import HfApi

    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token, library_name="rcl_hf")
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(staged), repo_type=repo_type,
                                 commit_message=commit_message)
    except _network_error_types() as err:
        raise _hub_error(err, f"upload to the {repo_type} repository {repo_id!r}", endpoint, token) from None
    return str(getattr(info, "commit_url", None) or info)


# ========================================================================= Hub access
def check_hub_access(token: Optional[str] = None, endpoint: Optional[str] = None) -> Tuple[str, str]:
    """Make sure a push can work before doing anything expensive.

    Checks, in order: ``HF_HUB_OFFLINE`` is not set; a token exists (``token`` or
    ``huggingface_hub.get_token()``: ``HF_TOKEN`` or the ``hf auth login`` file); the Hub at
    ``endpoint`` (default ``HF_ENDPOINT`` / huggingface.co) answers ``whoami`` and accepts the
    token, which must not be read-only.

    Returns:
        ``(user name, token)``.

    Raises:
        HubUnavailableError: one line saying what to do; never the token, never an HTTP traceback.
    """
    from huggingface_hub import HfApi, get_token

    url = _endpoint(endpoint)
    dry = "or use --dry_run_dir DIR to write the folder that would be uploaded"
    if _is_offline():
        raise HubUnavailableError(
            f"HF_HUB_OFFLINE is set, so nothing can be pushed: unset it on a machine with network access, {dry}."
        )
    try:
        token = token or get_token()
    except Exception as err:  # e.g. a failing OIDC exchange
        raise HubUnavailableError(_one_line(f"Could not read a Hugging Face token ({type(err).__name__}): "
                                            "set HF_TOKEN or run `hf auth login`")) from None
    if not token:
        raise HubUnavailableError(
            f"No Hugging Face token found: run `hf auth login` or set HF_TOKEN to a write token "
            f"(https://huggingface.co/settings/tokens), {dry}."
        )
    try:
        info = HfApi(endpoint=url, token=token, library_name="rcl_hf").whoami(token=token)
    except _network_error_types() as err:
        raise _hub_error(err, "check the Hugging Face token", url, token) from None
    except Exception as err:  # anything else from deep inside an HTTP stack: still one line
        raise HubUnavailableError(_one_line(_redact(
            f"Cannot check the Hugging Face token at {url} ({type(err).__name__}); {dry}.", token))) from None
    role = (((info or {}).get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubUnavailableError("The Hugging Face token is read-only: create a write token at "
                                  "https://huggingface.co/settings/tokens and run `hf auth login`.")
    return str((info or {}).get("name") or "unknown"), token


# ======================================================================= dataset push
def _as_dataset_dict(dataset: Any):
    import datasets as hf_datasets

    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Dataset folder {path!r} does not exist")
        try:
            dataset = hf_datasets.load_from_disk(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{path!r} is not a dataset saved with save_to_disk: {_one_line(err)}") from None
    if isinstance(dataset, hf_datasets.Dataset):
        dataset = hf_datasets.DatasetDict({str(dataset.split or "train"): dataset})
    if not isinstance(dataset, hf_datasets.DatasetDict):
        raise TypeError(f"push_dataset needs a DatasetDict, a Dataset or a save_to_disk folder, got {type(dataset).__name__}")
    if not len(dataset):
        raise ValueError("The DatasetDict has no splits")
    for split in dataset:
        if not re.match(r"^\w+(\.\w+)*$", split):
            raise ValueError(f"Split name {split!r} is not valid on the Hub (letters, digits, '_' and '.')")
    return dataset


def _dataset_severity(dsd: Any) -> Optional[SeverityMatrix]:
    for ds in dsd.values():
        desc = getattr(ds.info, "description", None) or ""
        try:
            data = json.loads(desc)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("rcl_severity"), dict):
            try:
                return SeverityMatrix.from_dict(data["rcl_severity"])
            except ValueError:
                return None
    return None


def build_dataset_card(dataset: Any, repo_id: str, *, license: Optional[str] = None, card: Any = None):
    """The dataset card text for :func:`push_dataset`.

    ``card`` wins when given (a ``DatasetCard``, README text, or a path to a README). Otherwise
    ``rcl_hf.data.card.build_dataset_card(dataset_dict, repo_id=...)`` writes it for datasets
    loaded through :func:`rcl_hf.data.load_dataset`, and a short generic card (labels, split
    sizes, severity matrix when the splits carry one, "not for clinical use") covers the rest.
    ``license``, when given, is set on whichever card is built.

    Returns:
        A ``huggingface_hub.DatasetCard``.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    dsd = _as_dataset_dict(dataset)
    if card is not None:
        if isinstance(card, os.PathLike) or (isinstance(card, str) and "\n" not in card and os.path.isfile(card)):
            card = Path(card).read_text(encoding="utf-8")
        return card if isinstance(card, DatasetCard) else DatasetCard(str(card))
    try:
        module = importlib.import_module("rcl_hf.data.card")
    except ModuleNotFoundError as err:
        if err.name not in ("rcl_hf.data.card",):
            raise
        module = None
    builder = getattr(module, "build_dataset_card", None) if module is not None else None
    if builder is not None:
        params = inspect.signature(builder).parameters
        kwargs = {k: v for k, v in (("repo_id", repo_id), ("license", license)) if k in params and v is not None}
        try:
            made = builder(dsd, **kwargs)
        except ValueError as err:  # e.g. a DatasetDict not loaded through rcl_hf.data: generic card below
            logger.warning("rcl_hf.data.card could not describe this dataset (%s); writing a generic card", err)
        else:
            made = made if isinstance(made, DatasetCard) else DatasetCard(str(made))
            if license and "license" not in kwargs:
                made.data.license = license
            return made

    first = next(iter(dsd.values()))
    label_feature = first.features.get("label")
    names = list(getattr(label_feature, "names", None) or [])
    severity = _dataset_severity(dsd)
    data = DatasetCardData(license=license, task_categories=["image-classification"],
                           tags=["medical-imaging", "rcl_hf", "risk-calibrated-learning"])
    sizes = "\n".join(f"| {split} | {len(ds)} |" for split, ds in dsd.items())
    severity_md = (f"## Severity matrix\n\nCells marked ⚠ are critical errors.\n\n{severity.to_markdown()}\n"
                   if severity is not None else "")
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {repo_id.split('/')[-1]}\n\n"
        f"Image classification data prepared with rcl_hf ({len(names) or 'unknown number of'} classes"
        f"{': ' + ', '.join(names) if names else ''}).\n\n"
        f"| split | examples |\n|---|---|\n{sizes}\n\n{severity_md}\n"
        "## Use\n\n```python\nfrom datasets import load_dataset\n\n"
        f"ds = load_dataset({repo_id!r})\n```\n\n"
        "**Not for clinical use.** Research data; check the original dataset's license and terms before use.\n"
    )
    return DatasetCard(text)


def _num_shards(ds: Any, max_shard_size: Optional[Union[int, str]]) -> int:
    from datasets import config as ds_config
    from datasets.utils.py_utils import convert_file_size_to_int

    estimate = getattr(ds, "_estimate_nbytes", None)
    nbytes = estimate() if callable(estimate) else ds.data.nbytes
    return int(nbytes / convert_file_size_to_int(max_shard_size or ds_config.MAX_SHARD_SIZE)) + 1


def prepare_dataset_folder(
    dataset: Any,
    out_dir: PathLike,
    repo_id: str,
    *,
    card: Any = None,
    license: Optional[str] = None,
    max_shard_size: Optional[Union[int, str]] = None,
    overwrite: bool = False,
) -> Path:
    """Write the repository ``DatasetDict.push_to_hub`` would produce, into ``out_dir``.

    Layout: ``data/<split>-<i:05d>-of-<n:05d>.parquet`` shards with external image files
    embedded as bytes (``embed_table_storage``, like ``push_to_hub``), and ``README.md`` = the
    dataset card (:func:`build_dataset_card`) whose YAML carries ``dataset_info`` (features,
    splits) and ``configs`` (the data file patterns), so ``load_dataset(out_dir)`` reads it back
    with its ``ClassLabel`` names.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.table import embed_table_storage
    from datasets.utils.metadata import MetadataConfigs

    _check_repo_id(repo_id)
    dsd = _as_dataset_dict(dataset)
    dataset_card = build_dataset_card(dsd, repo_id, license=license, card=card)
    out = _prepare_output_dir(out_dir, overwrite)
    (out / "data").mkdir()
    first = next(iter(dsd.values()))
    info = DatasetInfo(config_name="default", features=first.features, splits=SplitDict(), download_size=0, dataset_size=0)
    for split, ds in dsd.items():
        if ds.features != first.features:
            raise ValueError(f"Split {split!r} has other features than the first split; all splits must share them")
        n = _num_shards(ds, max_shard_size)
        for i in range(n):
            shard = ds.shard(num_shards=n, index=i, contiguous=True).with_format("arrow")
            shard = shard.map(embed_table_storage, batched=True, keep_in_memory=True)
            path = out / "data" / f"{split}-{i:05d}-of-{n:05d}.parquet"
            shard.to_parquet(str(path))
            info.download_size += path.stat().st_size
        nbytes = ds.data.nbytes
        info.splits.add(SplitInfo(name=split, num_bytes=nbytes, num_examples=len(ds)))
        info.dataset_size += nbytes
    info.size_in_bytes = info.download_size + info.dataset_size
    card_data = dataset_card.data
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs({"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in dsd]}}).to_dataset_card_data(card_data)
    dataset_card.data = card_data
    text = str(dataset_card)
    _split_front_matter(text)
    (out / "README.md").write_text(text, encoding="utf-8")
    _scan_for_tokens(out, None)
    return out


def push_dataset(
    dataset: Any,
    repo_id: str,
    dry_run_dir: Optional[PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    *,
    card: Any = None,
    license: Optional[str] = None,
    max_shard_size: Optional[Union[int, str]] = None,
    commit_message: str = "Upload rcl_hf dataset",
    overwrite: bool = False,
) -> str:
    """Upload a :class:`datasets.DatasetDict` (or a ``save_to_disk`` folder) with its dataset card.

    The real push creates the dataset repository, uploads the card, then calls
    ``DatasetDict.push_to_hub`` with the shard counts of the dry run, which adds the Parquet
    shards and merges ``dataset_info`` / ``configs`` into the card: the result is the folder
    :func:`prepare_dataset_folder` writes for ``dry_run_dir``.

    Args:
        dataset: a ``DatasetDict``, a ``Dataset`` (pushed as its split, default ``train``) or a folder.
        repo_id: ``owner/name`` of the dataset repository.
        dry_run_dir: write the upload folder there and upload nothing (works offline).
        token, private: as for :func:`push_model`.
        card: a ``DatasetCard``, README text or path (default: :func:`build_dataset_card`).
        license: Hub license id for a generated card.
        max_shard_size: Parquet shard size (default: datasets' 500MB).

    Returns:
        The dry-run folder, or the URL of the dataset commit.
    """
    if dry_run_dir is not None:
        return str(prepare_dataset_folder(dataset, dry_run_dir, repo_id, card=card, license=license,
                                          max_shard_size=max_shard_size, overwrite=overwrite))
    from huggingface_hub import HfApi

    _with_namespace(repo_id, "user")
    dsd = _as_dataset_dict(dataset)
    user, token = check_hub_access(token)
    repo_id = _with_namespace(repo_id, user)
    dataset_card = build_dataset_card(dsd, repo_id, license=license, card=card)
    text = str(dataset_card)
    if token in text or _TOKEN_PATTERN.search(text):
        raise ValueError("Refusing to upload a dataset card that contains a Hugging Face access token")
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token, library_name="rcl_hf")
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_file(path_or_fileobj=text.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                        repo_type="dataset", commit_message=f"{commit_message} (card)")
        info = dsd.push_to_hub(repo_id, token=token, private=private, commit_message=commit_message,
                               num_shards={s: _num_shards(ds, max_shard_size) for s, ds in dsd.items()})
    except _network_error_types() as err:
        raise _hub_error(err, f"upload to the dataset repository {repo_id!r}", endpoint, token) from None
    return str(getattr(info, "commit_url", None) or f"{endpoint}/datasets/{repo_id}")


# ========================================================================= Space push
def validate_space_folder(space_dir: PathLike) -> Dict[str, Any]:
    """Check a Gradio Space folder before upload and return its README front matter.

    Requires ``README.md`` with YAML front matter declaring ``sdk: gradio`` and a ``title``;
    the ``app_file`` (default ``app.py``) must exist and compile; ``requirements.txt`` must
    exist. Optional keys are checked when present: ``colorFrom``/``colorTo`` (Hub colours),
    ``short_description`` (at most 60 characters), ``models``/``datasets`` (Hub ids),
    ``sdk_version`` (a version string).

    Raises:
        FileNotFoundError: a required file is missing. CardValidationError: bad front matter.
    """
    root = Path(space_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Space folder {str(root)!r} does not exist")
    readme = root / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(f"{str(root)!r} has no README.md (the Space configuration lives in its front matter)")
    meta, _ = _split_front_matter(readme.read_text(encoding="utf-8"))
    if meta.get("sdk") != "gradio":
        raise CardValidationError(f"Space README front matter must declare 'sdk: gradio', got {meta.get('sdk')!r}")
    if not isinstance(meta.get("title"), str) or not meta["title"].strip():
        raise CardValidationError("Space README front matter needs a 'title'")
    app_file = meta.get("app_file", "app.py")
    if not isinstance(app_file, str) or not (root / app_file).is_file():
        raise FileNotFoundError(f"Space app_file {app_file!r} does not exist in {str(root)!r}")
    try:
        compile((root / app_file).read_text(encoding="utf-8"), str(root / app_file), "exec")
    except SyntaxError as err:
        raise CardValidationError(f"Space app_file {app_file!r} does not compile: line {err.lineno}: {err.msg}") from None
    if not (root / "requirements.txt").is_file():
        raise FileNotFoundError(f"{str(root)!r} has no requirements.txt (the Space installs its dependencies from it)")
    for key in ("colorFrom", "colorTo"):
        if key in meta and meta[key] not in _SPACE_COLORS:
            raise CardValidationError(f"Space {key} must be one of {list(_SPACE_COLORS)}, got {meta[key]!r}")
    if "short_description" in meta and len(str(meta["short_description"])) > 60:
        raise CardValidationError(f"Space short_description has {len(str(meta['short_description']))} characters; the Hub allows 60")
    if "sdk_version" in meta and not re.match(r"^\d+(\.\d+){0,2}([a-z]+\d*)?$", str(meta["sdk_version"])):
        raise CardValidationError(f"Space sdk_version {meta['sdk_version']!r} is not a version like 5.9.1")
    for key in ("models", "datasets"):
        values = meta.get(key) or []
        if not isinstance(values, list):
            raise CardValidationError(f"Space {key} must be a list of Hub ids, got {values!r}")
        for value in values:
            try:
                _check_repo_id(value, f"Space {key} entry")
            except ValueError as err:
                raise CardValidationError(str(err)) from None
    return meta


def prepare_space_folder(space_dir: PathLike, out_dir: PathLike, *, overwrite: bool = False) -> Path:
    """Validate ``space_dir`` (:func:`validate_space_folder`) and copy what :func:`push_space`
    uploads into ``out_dir`` (caches, ``__pycache__``, ``.git``, ``flagged/`` left out)."""
    src = Path(space_dir)
    validate_space_folder(src)
    out = _prepare_output_dir(out_dir, overwrite)
    if out.resolve() == src.resolve():
        raise ValueError("The dry-run folder must differ from the Space folder")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(*_SPACE_IGNORE), dirs_exist_ok=True)
    _scan_for_tokens(out, None)
    return out


def push_space(
    space_dir: PathLike = "spaces_demo",
    repo_id: Optional[str] = None,
    dry_run_dir: Optional[PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    *,
    commit_message: str = "Upload rcl_hf demo Space",
    overwrite: bool = False,
) -> str:
    """Upload the Gradio demo folder as a Space (``repo_type="space"``, ``space_sdk="gradio"``).

    Args:
        space_dir: folder with ``app.py``, ``requirements.txt`` and ``README.md`` front matter.
        repo_id: ``owner/name`` of the Space.
        dry_run_dir: write the upload folder there and upload nothing (works offline).
        token, private, commit_message, overwrite: as for :func:`push_model`.

    Returns:
        The dry-run folder, or the URL of the Space commit.
    """
    if repo_id is None:
        raise ValueError("push_space needs repo_id ('owner/name' of the Space)")
    if dry_run_dir is not None:
        _check_repo_id(repo_id)
        return str(prepare_space_folder(space_dir, dry_run_dir, overwrite=overwrite))
    _with_namespace(repo_id, "user")
    validate_space_folder(space_dir)
    user, token = check_hub_access(token)
    repo_id = _with_namespace(repo_id, user)
    with tempfile.TemporaryDirectory(prefix="rcl_hf_space_") as tmp:
        staged = prepare_space_folder(space_dir, Path(tmp) / "upload")
        _scan_for_tokens(staged, token)
        return _upload(staged, repo_id, "space", token, private, commit_message, space_sdk="gradio")


# ================================================================================ CLI
@dataclass
class PushArguments:
    """Arguments of ``scripts/push_to_hub.py`` (``HfArgumentParser``). The token comes from
    ``HF_TOKEN`` or ``hf auth login``, never from the command line."""

    repo_id: str = field(metadata={"help": "Target repository, 'owner/name'."})
    kind: str = field(default="model", metadata={"help": "What to push: model, dataset or space."})
    model_dir: Optional[str] = field(default=None, metadata={"help": "Model / training output folder (kind=model)."})
    dataset_dir: Optional[str] = field(default=None, metadata={"help": "save_to_disk folder of a DatasetDict (kind=dataset)."})
    space_dir: str = field(default="spaces_demo", metadata={"help": "Gradio Space folder (kind=space)."})
    dry_run_dir: Optional[str] = field(default=None, metadata={"help": "Write the folder that would be uploaded here; upload nothing."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    license: Optional[str] = field(default=None, metadata={"help": f"Hub license id (models default to {DEFAULT_LICENSE})."})
    dataset_repo_id: Optional[str] = field(default=None, metadata={"help": "Hub dataset id for the model card's 'datasets'."})
    base_model: Optional[str] = field(default=None, metadata={"help": "Hub id the model was fine-tuned from."})
    dataset_card: Optional[str] = field(default=None, metadata={"help": "README.md to use as the dataset card (kind=dataset)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --dry_run_dir."})

    def __post_init__(self) -> None:
        if self.kind not in ("model", "dataset", "space"):
            raise ValueError(f"--kind must be model, dataset or space, got {self.kind!r}")


def run_push(args: PushArguments) -> str:
    """Do what ``args`` asks; returns the dry-run folder or the Hub URL."""
    if args.kind == "model":
        if not args.model_dir:
            raise ValueError("--kind model needs --model_dir")
        kwargs: Dict[str, Any] = {}
        if args.license:
            kwargs["license"] = args.license
        if args.dataset_repo_id:
            kwargs["datasets"] = args.dataset_repo_id
        if args.base_model:
            kwargs["base_model"] = args.base_model
        return push_model(args.model_dir, args.repo_id, args.dry_run_dir, private=args.private,
                          overwrite=args.overwrite, **kwargs)
    if args.kind == "dataset":
        source = args.dataset_dir or args.model_dir
        if not source:
            raise ValueError("--kind dataset needs --dataset_dir (a DatasetDict saved with save_to_disk)")
        return push_dataset(source, args.repo_id, args.dry_run_dir, private=args.private, card=args.dataset_card,
                            license=args.license, overwrite=args.overwrite)
    return push_space(args.space_dir, args.repo_id, args.dry_run_dir, private=args.private, overwrite=args.overwrite)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: parse :class:`PushArguments`, push, print the result.

    Returns 0 on success; on a known failure prints ``error: <one line>`` to stderr and returns 2.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PushArguments)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
        result = run_push(args)
    except (HubUnavailableError, CardValidationError, ValueError, OSError) as err:
        print(f"error: {_one_line(_redact(str(err)))}", file=sys.stderr)
        return 2
    if args.dry_run_dir:
        files = _list_files(result)
        print(f"Dry run: wrote {len(files)} files to {result} (metadata checked); nothing was uploaded.")
        for rel in files:
            print(f"  {rel}")
    else:
        print(f"Pushed {args.kind} to {result}")
    return 0
