"""Offline checks of card metadata, the way the Hub will read it.

``ModelCard.validate()`` sends the card to the Hub, so it needs the network; these checks parse
the YAML front matter with huggingface_hub's own card classes (``RepoCard``) and the
``model-index`` with ``model_index_to_eval_results`` instead, and check repository ids with
``validate_repo_id``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import TOKEN_PATTERN, CardValidationError, one_line
from .run_folder import BAYES_METRICS, MODEL_CARD_METRICS

__all__ = ["LIBRARY_NAME", "PIPELINE_TAG", "check_repo_id", "front_matter", "validate_model_card", "with_namespace"]

PIPELINE_TAG = "image-classification"
LIBRARY_NAME = "transformers"
_REQUIRED_METRIC_TYPES = tuple(t for _, t, _ in MODEL_CARD_METRICS)


def check_repo_id(repo_id: str, what: str = "repo_id") -> str:
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
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repository id: {one_line(err)}") from None
    return repo_id


def with_namespace(repo_id: str, user: str) -> str:
    """``user/repo_id`` for a bare name (what ``Trainer.hub_model_id`` may hold), else ``repo_id``; validated."""
    if isinstance(repo_id, str) and repo_id and "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    return check_repo_id(repo_id)


def _read_card_text(card: Any) -> str:
    if isinstance(card, os.PathLike) or (isinstance(card, str) and "\n" not in card and os.path.isfile(card)):
        return Path(card).read_text(encoding="utf-8")
    return str(card)


def front_matter(text: str) -> Dict[str, Any]:
    """The YAML metadata of a README as ``huggingface_hub.RepoCard`` parses it.

    Raises:
        CardValidationError: no YAML block at the top, a block that does not parse, or one that
            is not a mapping.
    """
    import yaml
    from huggingface_hub import RepoCard

    try:
        card = RepoCard(text)
    except yaml.YAMLError as err:
        raise CardValidationError(f"The README's YAML front matter does not parse: {one_line(err)}") from None
    except ValueError as err:  # "repo card metadata block should be a dict"
        raise CardValidationError(f"The README's YAML front matter must be a mapping: {one_line(err)}") from None
    if card.text == text:  # RepoCard found no metadata block and kept the whole text as the body
        raise CardValidationError("The README has no YAML front matter (a block between '---' lines at the top)")
    return card.data.to_dict()


def validate_model_card(
    card: Any,
    *,
    expected_results: Optional[Dict[str, Dict[str, float]]] = None,
    require_datasets: bool = False,
    require_base_model: bool = False,
) -> Dict[str, Any]:
    """Check a model card's metadata offline.

    Parses the YAML front matter (:func:`front_matter`), checks ``license``, ``tags``,
    ``pipeline_tag`` (image-classification) and ``library_name``, checks that ``datasets`` /
    ``base_model`` (when present, or when required) are valid Hub ids, and parses ``model-index``
    with ``huggingface_hub.repocard_data.model_index_to_eval_results``: every evaluated split must
    report accuracy, CER, CMR and expected cost as finite numbers. With ``expected_results``
    (``{split: {metric key: value}}``, e.g. :func:`~rcl_hf.hub.collect_results`), the values must match.

    Args:
        card: a ``ModelCard``, README text, or a path to a README.md.

    Returns:
        ``{"metadata": dict, "model_name": str | None, "eval_results": list[EvalResult]}``.

    Raises:
        CardValidationError: naming the first problem found.
    """
    from huggingface_hub.repocard_data import model_index_to_eval_results

    text = _read_card_text(card)
    meta = front_matter(text)
    if TOKEN_PATTERN.search(text):
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
                check_repo_id(repo, key)
            except ValueError as err:
                raise CardValidationError(f"Card metadata {key!r}: {err}") from None
    model_name, evals = None, []
    if "model-index" in meta:
        try:
            model_name, evals = model_index_to_eval_results(meta["model-index"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CardValidationError(f"Card 'model-index' does not parse: {type(err).__name__}: {one_line(err)}") from None
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
    if "| true \\ predicted |" not in text:
        raise CardValidationError("Card body has no severity matrix table (SeverityMatrix.to_markdown())")
    return {"metadata": meta, "model_name": model_name, "eval_results": evals}


def _compare_results(found: Dict[str, Dict[str, float]], expected: Dict[str, Dict[str, float]]) -> None:
    types = {k: t for k, t, _ in MODEL_CARD_METRICS + BAYES_METRICS}
    for split, metrics in expected.items():
        for key, value in metrics.items():
            if key not in types:
                continue
            got = found.get(split, {}).get(types[key])
            if got is None:
                raise CardValidationError(f"model-index lacks {types[key]!r} for split {split!r}")
            if not math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-6):
                raise CardValidationError(f"model-index {types[key]!r} for split {split!r} is {got}, results say {value}")
