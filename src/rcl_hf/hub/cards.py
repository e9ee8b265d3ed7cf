"""Model cards: render ``templates/model_card_template.md`` with ``huggingface_hub.ModelCard``.

:func:`build_model_card` reads a run folder (:mod:`rcl_hf.hub.run_folder`) and fills
``ModelCardData`` (license, tags, datasets, base_model, ``model-index`` with accuracy, CER, CMR
and expected cost per evaluated split) and the Jinja template (summary, results table, severity
matrix, recipe, usage snippets, limitations). :func:`write_model_card` is what the Trainer's
``create_model_card`` calls; checks live in :mod:`rcl_hf.hub.card_checks`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..run_files import CHECK_REPORT, RESULTS_FILE
from ..severity import SeverityMatrix
from .card_checks import LIBRARY_NAME, PIPELINE_TAG, check_repo_id, validate_model_card
from .errors import TOKEN_PATTERN
from .run_folder import (BAYES_METRICS, MODEL_CARD_METRICS, PLOT_SUFFIXES, collect_results, load_run_info, model_files,
                         read_json, severity_of)

__all__ = ["BASE_TAGS", "DEFAULT_LICENSE", "build_model_card", "model_card_template_path", "usage_snippets", "write_model_card"]

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_LICENSE = "apache-2.0"
BASE_TAGS = ("image-classification", "medical-imaging", "rcl_hf", "risk-calibrated-learning", "critical-error-rate")
_RCL_LOSSES = ("rcl", "rcl_log", "rcl_focal")
_RECIPE_FIELDS = (
    ("backbone", "Backbone"), ("pretrained", "Initial weights"), ("loss", "Loss"), ("lam", "λ (risk weight)"),
    ("risk_form", "Risk term form"), ("gamma", "Focal γ"), ("label_smoothing", "Label smoothing"),
    ("severity", "Severity matrix"), ("dataset", "Dataset"), ("dataset_repo_id", "Dataset on the Hub"),
    ("grouping", "Split grouping"), ("image_size", "Image size"), ("epochs", "Epochs"), ("num_train_epochs", "Epochs"),
    ("learning_rate", "Learning rate"), ("batch_size", "Batch size"),
    ("per_device_train_batch_size", "Batch size per device"), ("seed", "Seed"), ("seeds", "Seeds"),
    ("split_seed", "Split seed"), ("split_sizes", "Split sizes"), ("freeze_backbone", "Frozen backbone (head only)"),
    ("world_size", "Processes"), ("metric_for_best_model", "Model selection"), ("wall_time_s", "Training time (s)"),
)
#: Recipe keys kept in rcl_run.json but not shown in the card (local paths, bulky or repeated data).
_RECIPE_HIDDEN = ("data_dir", "output_dir", "cache_dir", "risk", "base_model", "license", "dataset_title")


def model_card_template_path() -> Path:
    """The model card template packaged with rcl_hf (``rcl_hf/templates/model_card_template.md``)."""
    return Path(__file__).resolve().parents[1] / "templates" / "model_card_template.md"


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
    from ..data import dataset_module

    try:
        return dataset_module(name) if name else None
    except ValueError:  # not a registered dataset name (a folder, a Hub id)
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
    if isinstance(out.get("severity"), dict):
        out["severity"] = out["severity"].get("name") or "custom (the matrix below)"
    if isinstance(out.get("split_sizes"), dict):
        out["split_sizes"] = " · ".join(f"{k} {v}" for k, v in out["split_sizes"].items())
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
        if key in known or run[key] is None or "token" in key.lower() or TOKEN_PATTERN.search(str(run[key])):
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
            cost = m.get(f"{prefix}expected_cost")
            rows.append({
                "split": split, "rule": rule, "accuracy": _pct(m, f"{prefix}accuracy"), "cer": _pct(m, f"{prefix}cer"),
                "cmr": _pct(m, f"{prefix}critical_miss_rate"), "expected_cost": "—" if cost is None else f"{cost:.4f}",
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
        "from PIL import Image\nimport rcl_hf\n\n"
        f"model = rcl_hf.load_model({repo_id!r})  # knows its labels and severity matrix\n"
        f"pred = rcl_hf.predict(model, Image.open({image!r}))  # the certified decision layer, when the model has one\n"
        "record = pred.as_records()[0]\n"
        "print(record['decision'], record['refer'], record['certified'], round(record['expected_cost'], 4))"
    )
    plain = (
        "import numpy as np\nfrom transformers import pipeline\n\n"
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


def _risk_control(folder: Path) -> Optional[Dict[str, Any]]:
    """The card's "Risk control" section from ``risk_calibration.json`` (and the test figures that
    ``rcl_results.json`` recorded after it), or ``None`` when the folder has no calibration."""
    from ..calibration import RISK_DESCRIPTIONS, RiskCalibration

    cal = RiskCalibration.load(folder)
    if cal is None:
        return None
    rows = [("risk controlled", f"`{cal.risk_kind}`: {RISK_DESCRIPTIONS[cal.risk_kind]}"),
            ("target α / δ", f"{cal.alpha:.0%} / {cal.delta:.0%}" if cal.method == "ltt" else f"{cal.alpha:.0%} (in expectation)"),
            ("method", {"ltt": "Learn then Test, fixed-sequence testing", "crc": "conformal risk control"}[cal.method]
             + (f", {cal.p_value.replace('_', '–')} p-values" if cal.method == "ltt" else "")),
            ("calibration split", f"{cal.split} of {cal.dataset or 'the training data'}: {cal.n_calibration:,} images "
                                  f"({cal.n_tune:,} to tune, {cal.n_certify:,} to certify)"),
            ("temperature", f"{cal.temperature:.3f}"), ("decision rule", cal.rule),
            ("referral threshold (expected cost)", "refer every case" if cal.refers_everything else f"{cal.threshold:.4g}"),
            ("on the certification part", f"coverage {_pct(cal.calibration, 'coverage')}, "
                                          f"{cal.risk_kind} {_pct(cal.calibration, cal.risk_kind)}")]
    test = None
    results = read_json(folder / RESULTS_FILE) or {}
    rc = results.get("risk_control") if isinstance(results, dict) else None
    if isinstance(rc, dict) and isinstance(rc.get("test"), dict) and rc.get("calibration", {}).get("threshold") == cal.threshold:
        t, a = rc["test"], rc.get("test_argmax", {})
        test = (f"coverage {_pct(t, 'coverage')}, {cal.risk_kind} {_pct(t, cal.risk_kind)} (target ≤ {cal.alpha:.0%}: "
                f"{'held' if t[cal.risk_kind] <= cal.alpha else 'not held'}), accuracy among the accepted cases "
                f"{_pct(t, 'accuracy_accepted')}; the argmax without referral: accuracy {_pct(a, 'accuracy')}, "
                f"{cal.risk_kind} {_pct(a, cal.risk_kind)} ({t['n']:,} test images).")
    return {"certificate": cal.certificate(), "rows": [{"name": n, "value": v} for n, v in rows], "test": test}


def _check_report(folder: Path) -> Optional[str]:
    """The body of ``check.md`` (``scripts/check_model.py``: the acceptance check through ``rcl_hf.predict`` on the
    grouped test split, per class), without its title; ``None`` when the folder has none."""
    path = folder / CHECK_REPORT
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip() or None


def _ood_guard(folder: Path) -> Optional[str]:
    """The card's sentence on the out-of-distribution guard (``ood_guard.safetensors``), or ``None`` without one."""
    from ..ood import OODGuard

    guard = OODGuard.load(folder)
    if guard is None:
        return None
    m = guard.meta

    def count(key: str, words: str) -> str:  # a guard saved without its provenance (meta) still gets a card
        return f" {words.format(f'{m[key]:,}')}" if isinstance(m.get(key), int) else ""

    flagged, placed = m.get("validation_flagged"), count("n_calibration", "on {} validation images")
    return (f"An image is flagged as outside what the model knows when its Mahalanobis score on the classifier's input "
            f"embedding (class means and a Ledoit–Wolf covariance{count('n_fit', 'from {} training images')}) exceeds "
            f"{guard.threshold:.6g}" + (f", a threshold set{placed}" if placed else "")
            + (f" ({flagged:.2%} of the validation images lie above it)" if isinstance(flagged, float) else "")
            + f". {guard.guarantee()}")


def _eval_results(results: Dict[str, Dict[str, float]], dataset_type: str, dataset_title: str) -> List[Any]:
    from huggingface_hub import EvalResult

    return [
        EvalResult(task_type=PIPELINE_TAG, task_name="Image Classification", dataset_type=dataset_type,
                   dataset_name=dataset_title, dataset_split=split, metric_type=mtype, metric_name=mname,
                   metric_value=float(metrics[key]))
        for split, metrics in results.items() for key, mtype, mname in MODEL_CARD_METRICS + BAYES_METRICS
        if key in metrics
    ]


def _summary(run: Dict[str, Any], severity: SeverityMatrix, dataset_title: str) -> Dict[str, str]:
    """The card's prose that depends on the recipe: summary, loss and grouping sentences."""
    loss, lam = str(run.get("loss") or ""), run.get("lam")
    is_rcl = loss in _RCL_LOSSES and (lam is None or float(lam) > 0)
    if is_rcl:
        how = (f"trained with **Risk-Calibrated Learning** (loss `{loss}`, λ = {_fmt(lam) if lam is not None else 'default'}): "
               "the clinical severity matrix below enters the training loss so that critical errors are "
               "suppressed far more than fine-grained ones")
        term = ("R = Σⱼ M[y, j] · pⱼ (expected clinical cost)"
                if (run.get("risk_form") or ("log" if loss == "rcl_log" else "expected")) == "expected"
                else "R = −Σⱼ M[y, j] · log(1 − pⱼ + ε) (a barrier against confident critical errors)")
        base = "focal loss" if loss == "rcl_focal" else "cross-entropy"
        loss_text = (f"Loss: L = B(z, y) + λ · R(p, y) with base term B = {base} and risk term {term}, "
                     "averaged over the batch (this project's definition).")
    else:
        how = (f"trained with the `{loss}` loss (no risk term; a baseline for Risk-Calibrated Learning). "
               "Its severity matrix still drives the evaluation and the Bayes-risk decision at inference"
               if loss else "saved by rcl_hf with a clinical severity matrix for evaluation and the Bayes-risk decision")
        loss_text = "Loss: the base term only (λ · R = 0); compare with a Risk-Calibrated Learning run of the same recipe."
    summary = (f"A {run.get('backbone') or 'image'} classifier of {dataset_title} images into {severity.num_labels} "
               f"classes ({', '.join(severity.labels)}), {how}.")
    grouping = str(run.get("grouping") or "").strip().rstrip(".")
    if not grouping:
        grouping_text = ""
    elif " " in grouping:  # a sentence (a dataset module's GROUPING)
        grouping_text = f". Split grouping: {grouping[0].lower() + grouping[1:]}"
    else:  # a column name
        grouping_text = f"; splits were grouped by {grouping}, so no {grouping} appears in two splits"
    return {"summary": summary, "loss_text": loss_text, "grouping_text": grouping_text}


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
    """Render the model card of a checkpoint folder with ``huggingface_hub.ModelCard.from_template``.

    Reads ``config.json`` (labels and ``rcl_severity``, required), the Trainer's result files
    (:func:`~rcl_hf.hub.collect_results`), ``rcl_run.json`` and plots, each when present.

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
            :data:`rcl_hf.decision_layer.DEFAULT_REFERRAL_THRESHOLD`).
        template_path: another Jinja template (default :func:`model_card_template_path`).
        files: file list shown in the card; defaults to the folder's uploadable files.

    Returns:
        A ``huggingface_hub.ModelCard`` (``str(card)`` is the README text).

    Raises:
        FileNotFoundError: no ``config.json``. ValueError: no ``rcl_severity`` in it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from ..decision_layer import DEFAULT_REFERRAL_THRESHOLD

    folder = Path(folder)
    severity = severity_of(folder)
    raw_run = load_run_info(folder)
    run = _normalize_run(raw_run)
    results = collect_results(folder)
    threshold = DEFAULT_REFERRAL_THRESHOLD if threshold is None else threshold
    if repo_id is None:
        repo_id = f"rcl-hf/{re.sub(r'[^A-Za-z0-9._-]', '-', folder.resolve().name) or 'model'}"
    check_repo_id(repo_id)
    model_name = model_name or repo_id.split("/")[-1]

    dataset_key = str(run.get("dataset_name") or run.get("dataset") or severity.name or "").strip()
    dataset_title = (run.get("dataset_title") or getattr(_dataset_module(dataset_key), "PRETTY_NAME", None)
                     or dataset_key or "medical")
    if datasets is None and run.get("dataset_repo_id"):
        datasets = run["dataset_repo_id"]
    dataset_ids = [datasets] if isinstance(datasets, str) else list(datasets or [])
    for d in dataset_ids:
        check_repo_id(d, "dataset id")
    backbone = str(run.get("backbone") or "")
    if base_model is None:
        base_model = run.get("base_model")
        if base_model is None and backbone.count("/") == 1 and not backbone.startswith(("timm/", ".", "/")) \
                and not os.path.exists(backbone):
            base_model = backbone
    if base_model is not None:
        check_repo_id(base_model, "base_model")

    all_tags = list(BASE_TAGS)
    for t in [dataset_key, "timm" if backbone.startswith("timm/") else "", *(tags or [])]:
        if t and t not in all_tags:
            all_tags.append(t)
    card_data = ModelCardData(
        license=license, library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAG, tags=all_tags,
        datasets=dataset_ids or None, base_model=base_model, model_name=model_name,
        eval_results=_eval_results(results, dataset_ids[0] if dataset_ids else (dataset_key or "unknown"),
                                   dataset_title) or None,
    )
    if files is None:
        files = sorted(set(model_files(folder)) | {"README.md"})
    snippets = usage_snippets(repo_id, threshold)
    sizes = raw_run.get("split_sizes") if isinstance(raw_run.get("split_sizes"), dict) else None
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path if template_path is not None else model_card_template_path()),
        model_title=model_name,
        repo_id=repo_id,
        results=_result_rows(results, sizes),
        positive_text=", ".join(label for label, pos in zip(severity.labels, severity.positive_rows) if pos) or "none",
        severity_table=severity.to_markdown(),
        n_critical=int(severity.critical.sum()),
        n_cells=severity.num_labels * (severity.num_labels - 1),
        critical_text=_critical_text(severity),
        recipe=_recipe_rows(run),
        usage_rcl_hf=snippets["rcl_hf"],
        usage_transformers=snippets["transformers"],
        threshold=threshold,
        dataset_title=dataset_title,
        files=list(files),
        risk_control=_risk_control(folder),
        ood_guard=_ood_guard(folder),
        check=_check_report(folder),
        plots=[{"path": f, "title": Path(f).stem.replace("_", " ").capitalize()}
               for f in files if f.lower().endswith(PLOT_SUFFIXES)],
        **_summary(run, severity, dataset_title),
    )


def write_model_card(folder: PathLike, repo_id: Optional[str] = None, **card_kwargs: Any) -> Path:
    """Render :func:`build_model_card` into ``folder/README.md`` (atomically), validate it, return the path.

    This is what ``Trainer.create_model_card`` calls for rcl_hf runs, so that
    ``trainer.push_to_hub()`` and ``scripts/push_to_hub.py`` upload the same card.
    """
    from ..atomic_io import atomic_write_bytes

    text = str(build_model_card(folder, repo_id, **card_kwargs))
    validate_model_card(text)
    path = Path(folder) / "README.md"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
